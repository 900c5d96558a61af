//! Idempotent publishing ([`super::Bus::publish_once`]): the caller's key ([`IdempotencyKey`]),
//! the answer ([`Published`]), and the in-memory bus's record of recent keys ([`Recent`]).
//!
//! Each bus keeps a key for `bus.idempotency_window_ms` after the publish that used it, scoped by
//! topic: the memory bus in [`Recent`] (bounded in count), the Redis bus in a key with that time
//! to live, the NATS bus in the stream's de-duplication window (JetStream's `Nats-Msg-Id`). A key
//! is never retried in the background: a publish that fails is not remembered and can be repeated
//! with the same key.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::event::{Position, Topic};

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 200;

/// Most keys the memory bus remembers at once; beyond it the oldest is forgotten early.
pub const MAX_REMEMBERED_KEYS: usize = 100_000;

/// A caller's name for one publish, repeated when it retries: 1 to 200 bytes of visible ASCII
/// (`!` to `~`, no space).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<str>);

/// Why a string cannot be an [`IdempotencyKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdempotencyKey {
    /// The key is empty.
    #[error("the idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the idempotency key has {0} bytes; at most {MAX_KEY_BYTES} are allowed")]
    TooLong(usize),
    /// The key has a byte outside visible ASCII.
    #[error("the idempotency key has a byte outside visible ASCII (0x21 to 0x7E) at {0}")]
    BadByte(usize),
}

impl IdempotencyKey {
    /// Checks a key.
    pub fn new(key: &str) -> Result<Self, InvalidIdempotencyKey> {
        if key.is_empty() {
            return Err(InvalidIdempotencyKey::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(InvalidIdempotencyKey::TooLong(key.len()));
        }
        if let Some(at) = key.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(InvalidIdempotencyKey::BadByte(at));
        }
        Ok(Self(key.into()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to an idempotent publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's position: the first publish's when this one was a duplicate.
    pub position: Position,
    /// Whether the key had already been published on the topic within the window, so that this
    /// publish published nothing.
    pub duplicate: bool,
}

/// The keys the memory bus published recently, by topic, each with the position it published:
/// forgotten after the window, and the oldest forgotten early when there are more than `max`.
#[derive(Debug)]
pub(crate) struct Recent {
    window: Duration,
    max: usize,
    /// Key → (position, when it expires, the generation of its entry in `order`).
    keys: HashMap<(Topic, IdempotencyKey), (Position, Instant, u64)>,
    /// Keys in the order they were published (so expiry order too: the window is fixed).
    order: VecDeque<(Instant, u64, Topic, IdempotencyKey)>,
    generation: u64,
}

impl Recent {
    /// Remembers keys for `window`, at most `max` at once (at least 1).
    pub(crate) fn new(window: Duration, max: usize) -> Self {
        Self {
            window,
            max: max.max(1),
            keys: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// The position `key` published on `topic`, if within the window.
    pub(crate) fn get(&mut self, topic: &Topic, key: &IdempotencyKey) -> Option<Position> {
        let now = Instant::now();
        self.expire(now);
        // Clones only on lookup of a hashed pair; both are small and bounded.
        self.keys
            .get(&(topic.clone(), key.clone()))
            .filter(|(_, expires, _)| *expires > now)
            .map(|(position, _, _)| *position)
    }

    /// Remembers that `key` published `position` on `topic`.
    pub(crate) fn insert(&mut self, topic: &Topic, key: &IdempotencyKey, position: Position) {
        let expires = Instant::now() + self.window;
        self.generation += 1;
        let generation = self.generation;
        self.keys.insert(
            (topic.clone(), key.clone()),
            (position, expires, generation),
        );
        self.order
            .push_back((expires, generation, topic.clone(), key.clone()));
        // Every remembered key has its entry in `order`: bounding `order` bounds both.
        while self.order.len() > self.max {
            self.pop_oldest();
        }
    }

    /// How many keys are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(at, ..)| *at <= now) {
            self.pop_oldest();
        }
    }

    /// Forgets the oldest entry of `order`, and its key unless the key was remembered again
    /// since.
    fn pop_oldest(&mut self) {
        if let Some((_, generation, topic, key)) = self.order.pop_front() {
            let pair = (topic, key);
            if self
                .keys
                .get(&pair)
                .is_some_and(|(_, _, g)| *g == generation)
            {
                self.keys.remove(&pair);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::new(s).expect("key")
    }

    #[test]
    fn keys_are_1_to_200_bytes_of_visible_ascii() {
        assert_eq!(key("order-42:retry/1").as_str(), "order-42:retry/1");
        assert!(IdempotencyKey::new("!~").is_ok());
        assert!(IdempotencyKey::new(&"k".repeat(200)).is_ok());
        assert_eq!(IdempotencyKey::new(""), Err(InvalidIdempotencyKey::Empty));
        assert_eq!(
            IdempotencyKey::new(&"k".repeat(201)),
            Err(InvalidIdempotencyKey::TooLong(201))
        );
        for bad in ["a b", "a\tb", "a\nb", "a\u{7f}", "a\u{0}", "clé", "a\rb"] {
            assert!(
                matches!(
                    IdempotencyKey::new(bad),
                    Err(InvalidIdempotencyKey::BadByte(_))
                ),
                "{bad:?}"
            );
        }
    }

    fn topic(s: &str) -> Topic {
        Topic::new(s).expect("topic")
    }

    fn at(offset: u64) -> Position {
        Position { epoch: 7, offset }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_scoped_by_topic_and_forgotten_after_the_window() {
        let mut recent = Recent::new(Duration::from_secs(10), 100);
        recent.insert(&topic("a"), &key("k"), at(1));
        assert_eq!(recent.get(&topic("a"), &key("k")), Some(at(1)));
        assert_eq!(recent.get(&topic("b"), &key("k")), None);
        assert_eq!(recent.get(&topic("a"), &key("K")), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        recent.insert(&topic("a"), &key("j"), at(2));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(recent.get(&topic("a"), &key("k")), None, "expired");
        assert_eq!(recent.get(&topic("a"), &key("j")), Some(at(2)));
        assert_eq!(recent.len(), 1, "expired keys are dropped, not kept");
        // Published again after expiry: the new entry survives the old one's removal.
        recent.insert(&topic("a"), &key("k"), at(3));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(recent.get(&topic("a"), &key("k")), Some(at(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_number_of_keys_is_bounded_and_the_oldest_go_first() {
        let mut recent = Recent::new(Duration::from_secs(60), 3);
        for i in 1..=5 {
            recent.insert(&topic("a"), &key(&format!("k{i}")), at(i));
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.get(&topic("a"), &key("k1")), None);
        assert_eq!(recent.get(&topic("a"), &key("k2")), None);
        assert_eq!(recent.get(&topic("a"), &key("k5")), Some(at(5)));
        // Remembering a key again does not let `order` grow past the bound either.
        for _ in 0..10 {
            recent.insert(&topic("a"), &key("k5"), at(5));
        }
        assert_eq!(recent.order.len(), 3);
        assert_eq!(recent.get(&topic("a"), &key("k5")), Some(at(5)));
    }
}
