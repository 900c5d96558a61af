//! A broker's counters for `/metrics`: publish latency (a histogram) and failures, broker
//! connections lost (each followed by a reconnect in the background), and live-feed repairs —
//! the times a broker subscription stopped trusting its live feed and went back to the shared
//! history (`live.rs`), by why. Plain atomics: a publish pays two clock reads and a few relaxed
//! increments, a delivery nothing. One set per [`super::Broker`], read with
//! [`BusMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::latency::{Latency, LatencySnapshot};

/// Why a live feed was repaired from history (the `reason` label).
pub const REPAIR_REASONS: [&str; 3] = ["jump", "resync", "lost"];

/// Why a live feed went back to history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// An event that was not the cursor's next offset (a jump, or another epoch).
    Jump,
    /// The feed said something may be missing (its bounded queue overflowed, its connection
    /// came back).
    Resync,
    /// The feed ended (its connection was lost).
    Lost,
}

/// A broker's counters (see the module docs).
#[derive(Debug, Default)]
pub struct BusMetrics {
    publish: Latency,
    publish_errors: AtomicU64,
    connections_lost: AtomicU64,
    repairs: [AtomicU64; REPAIR_REASONS.len()],
}

/// A copy of [`BusMetrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct BusMetricsSnapshot {
    /// Durations of publishes that succeeded.
    pub publish: LatencySnapshot,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Broker connections lost (each reopened in the background).
    pub connections_lost: u64,
    /// Live-feed repairs, in the order of [`REPAIR_REASONS`].
    pub repairs: [u64; REPAIR_REASONS.len()],
}

impl BusMetrics {
    /// Counts one publish and how long it took.
    pub fn published(&self, ok: bool, took: Duration) {
        if ok {
            self.publish.record(took);
        } else {
            self.publish_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a broker connection lost.
    pub fn connection_lost(&self) {
        self.connections_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a live feed sent back to history.
    pub fn repaired(&self, why: Repair) {
        let i = match why {
            Repair::Jump => 0,
            Repair::Resync => 1,
            Repair::Lost => 2,
        };
        self.repairs[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> BusMetricsSnapshot {
        BusMetricsSnapshot {
            publish: self.publish.snapshot(),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            connections_lost: self.connections_lost.load(Ordering::Relaxed),
            repairs: std::array::from_fn(|i| self.repairs[i].load(Ordering::Relaxed)),
        }
    }
}
