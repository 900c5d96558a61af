//! Counted slots per key with a cap: at most `per_key` held at once for one key (a client IP, a
//! user) and at most `total` across all keys. A slot is an RAII guard ([`Slot`]): dropping it —
//! on whatever path its holder ends — gives it back, so a count can never leak.
//!
//! One mutex guards a small map; a key's entry is removed with its last slot, so the map holds
//! only keys with something open. This module does not decide what a refusal looks like (the
//! server closes the connection, a gateway closes the socket with its protocol's code).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Slots counted per key, with a cap per key and in total (0 = no cap).
#[derive(Debug)]
pub struct Slots<K: Eq + Hash> {
    inner: Arc<Inner<K>>,
}

impl<K: Eq + Hash> Clone for Slots<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    per_key: usize,
    total: usize,
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    held: usize,
    by_key: HashMap<K, usize>,
}

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The key already holds its cap.
    PerKey,
    /// All keys together hold the total cap.
    Total,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// At most `per_key` slots per key and `total` in all; 0 means no cap.
    pub fn new(per_key: usize, total: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_key,
                total,
                state: Mutex::new(State {
                    held: 0,
                    by_key: HashMap::new(),
                }),
            }),
        }
    }

    /// Takes a slot for `key`, or says which cap refuses it.
    pub fn try_acquire(&self, key: K) -> Result<Slot<K>, Refused> {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        if inner.total != 0 && state.held >= inner.total {
            return Err(Refused::Total);
        }
        let count = state.by_key.entry(key.clone()).or_insert(0);
        if inner.per_key != 0 && *count >= inner.per_key {
            return Err(Refused::PerKey);
        }
        *count += 1;
        state.held += 1;
        Ok(Slot {
            slots: self.inner.clone(),
            key: Some(key),
        })
    }

    /// Slots `key` holds now.
    pub fn held_by(&self, key: &K) -> usize {
        lock(&self.inner.state)
            .by_key
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Slots held now, all keys together.
    pub fn held(&self) -> usize {
        lock(&self.inner.state).held
    }

    /// The cap per key (0 = none).
    pub fn per_key(&self) -> usize {
        self.inner.per_key
    }
}

fn lock<K>(m: &Mutex<State<K>>) -> MutexGuard<'_, State<K>> {
    // The critical sections cannot panic midway; a poisoned lock still holds consistent counts.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One held slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash> {
    slots: Arc<Inner<K>>,
    key: Option<K>,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut state = lock(&self.slots.state);
        state.held = state.held.saturating_sub(1);
        if let Some(count) = state.by_key.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_key_and_in_total_and_gives_back_on_drop() {
        let slots = Slots::new(2, 3);
        let a1 = slots.try_acquire("a").expect("a1");
        let _a2 = slots.try_acquire("a").expect("a2");
        assert_eq!(slots.try_acquire("a").unwrap_err(), Refused::PerKey);
        let _b1 = slots.try_acquire("b").expect("b1");
        assert_eq!(slots.try_acquire("c").unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(slots.held_by(&"a"), 1);
        let _c1 = slots.try_acquire("c").expect("c1 after a1 left");
        assert_eq!(slots.held(), 3);
    }

    #[test]
    fn zero_means_no_cap_and_empty_keys_are_forgotten() {
        let slots = Slots::new(0, 0);
        let held: Vec<_> = (0..1_000)
            .map(|_| slots.try_acquire(1u8).expect("no cap"))
            .collect();
        assert_eq!(slots.held_by(&1), 1_000);
        drop(held);
        assert_eq!(slots.held(), 0);
        assert!(lock(&slots.inner.state).by_key.is_empty());
    }
}
