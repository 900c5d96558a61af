//! A latency histogram of plain atomics for the metrics exporter: fixed bucket bounds chosen at
//! build time, one relaxed increment per bucket hit and one for the sum (no lock, no
//! allocation), read with [`Latency::snapshot`] at scrape time. Used for bus publishes and the
//! demo services' requests; backend calls keep their own (`upstream::CallStats`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds (seconds) for fast operations: a bus publish, a demo service's request.
pub const FAST_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A histogram of durations over fixed bucket bounds (`+Inf` implied).
#[derive(Debug)]
pub struct Latency {
    bounds: &'static [f64],
    /// Counts per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A copy of a [`Latency`], read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound, cumulative count)` per bucket, the last one `+Inf` (the total count).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the durations, in seconds.
    pub sum_seconds: f64,
}

impl LatencySnapshot {
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new(&FAST_BUCKETS)
    }
}

impl Latency {
    /// An empty histogram over `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The histogram now.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter())
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        LatencySnapshot {
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets() {
        let h = Latency::new(&[0.001, 0.01]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(5));
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            [(0.001, 1), (0.01, 3), (f64::INFINITY, 4)].to_vec()
        );
        assert_eq!(s.count(), 4);
        assert!((s.sum_seconds - 1.0105).abs() < 1e-9);
    }
}
