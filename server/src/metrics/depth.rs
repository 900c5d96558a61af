//! Queue depths sampled at scrape time: each socket owns one atomic ([`QueueDepth`]) that it
//! sets to its send queue's length with a relaxed store once per turn of its loop (its own cache
//! line, never contended); a scrape sums them and takes the deepest. Registering takes a lock
//! once per socket; a delivery takes none.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The queues registered so far (dead ones are pruned as registrations double the list).
#[derive(Debug, Default)]
pub(super) struct Depths {
    slots: Mutex<Vec<Weak<AtomicUsize>>>,
}

/// One socket's queue depth, counted while the handle lives.
#[derive(Debug)]
pub struct QueueDepth(Arc<AtomicUsize>);

impl QueueDepth {
    /// Sets the depth now.
    pub fn set(&self, queued: usize) {
        self.0.store(queued, Ordering::Relaxed);
    }
}

/// Queues at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sample {
    pub(super) queued: u64,
    pub(super) max: u64,
    pub(super) queues: u64,
}

impl Depths {
    pub(super) fn register(&self) -> QueueDepth {
        let depth = Arc::new(AtomicUsize::new(0));
        let mut slots = super::lock(&self.slots);
        if slots.len() >= 64 && slots.len().is_power_of_two() {
            slots.retain(|w| w.strong_count() > 0);
        }
        slots.push(Arc::downgrade(&depth));
        QueueDepth(depth)
    }

    pub(super) fn sample(&self) -> Sample {
        let mut slots = super::lock(&self.slots);
        slots.retain(|w| w.strong_count() > 0);
        let mut sample = Sample::default();
        for depth in slots.iter().filter_map(Weak::upgrade) {
            let queued = depth.load(Ordering::Relaxed) as u64;
            sample.queued += queued;
            sample.max = sample.max.max(queued);
            sample.queues += 1;
        }
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_queues_are_summed_and_dropped_ones_forgotten() {
        let depths = Depths::default();
        let a = depths.register();
        let b = depths.register();
        a.set(3);
        b.set(5);
        assert_eq!(
            depths.sample(),
            Sample {
                queued: 8,
                max: 5,
                queues: 2
            }
        );
        drop(b);
        assert_eq!(
            depths.sample(),
            Sample {
                queued: 3,
                max: 3,
                queues: 1
            }
        );
    }
}
