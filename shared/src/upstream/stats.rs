//! Counters of one backend's calls, for the metrics exporter: calls by outcome, retries and a
//! latency histogram, all plain atomics (a call pays a few relaxed increments, no lock, no
//! allocation). Read with [`CallStats::snapshot`] at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::UpstreamErrorKind;

/// The outcomes a call is counted under: `ok`, then every [`UpstreamErrorKind::code`].
pub const OUTCOMES: [&str; 9] = [
    "ok",
    "timeout",
    "connect",
    "status",
    "decode",
    "circuit_open",
    "unknown_backend",
    "transport",
    "too_large",
];

/// Upper bounds of the latency histogram's buckets, in seconds (`+Inf` is implied).
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// One backend's call counters.
#[derive(Debug, Default)]
pub struct CallStats {
    outcomes: [AtomicU64; OUTCOMES.len()],
    retries: AtomicU64,
    /// Calls per latency bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A copy of [`CallStats`], read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSnapshot {
    /// Calls by outcome, in the order of [`OUTCOMES`].
    pub outcomes: [u64; OUTCOMES.len()],
    /// Attempts made again after a retryable failure.
    pub retries: u64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then `+Inf` (the number of calls).
    pub cumulative_buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the calls' durations, in seconds.
    pub latency_sum_seconds: f64,
}

impl CallStats {
    /// Counts one finished call (all its attempts): its outcome and how long it took.
    pub(super) fn record(&self, outcome: Result<(), &UpstreamErrorKind>, took: Duration) {
        let code = match outcome {
            Ok(()) => "ok",
            Err(kind) => kind.code(),
        };
        let index = OUTCOMES.iter().position(|o| *o == code).unwrap_or(0);
        self.outcomes[index].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts one retry.
    pub(super) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CallSnapshot {
        let outcomes = std::array::from_fn(|i| self.outcomes[i].load(Ordering::Relaxed));
        let mut running = 0;
        let cumulative_buckets = std::array::from_fn(|i| {
            running += self.buckets[i].load(Ordering::Relaxed);
            running
        });
        CallSnapshot {
            outcomes,
            retries: self.retries.load(Ordering::Relaxed),
            cumulative_buckets,
            latency_sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_an_outcome() {
        for kind in [
            UpstreamErrorKind::Timeout,
            UpstreamErrorKind::Connect(String::new()),
            UpstreamErrorKind::Status {
                status: 500,
                code: None,
                message: None,
            },
            UpstreamErrorKind::Decode(String::new()),
            UpstreamErrorKind::CircuitOpen,
            UpstreamErrorKind::UnknownBackend,
            UpstreamErrorKind::Transport(String::new()),
            UpstreamErrorKind::TooLarge { limit_bytes: 1 },
        ] {
            assert!(OUTCOMES.contains(&kind.code()), "{}", kind.code());
        }
    }

    #[test]
    fn buckets_are_cumulative() {
        let stats = CallStats::default();
        stats.record(Ok(()), Duration::from_millis(3));
        stats.record(Err(&UpstreamErrorKind::Timeout), Duration::from_millis(300));
        stats.record(Ok(()), Duration::from_secs(9));
        let s = stats.snapshot();
        assert_eq!(s.outcomes[0], 2);
        assert_eq!(s.outcomes[1], 1);
        assert_eq!(s.cumulative_buckets[0], 1);
        assert_eq!(s.cumulative_buckets[6], 2);
        assert_eq!(s.cumulative_buckets[LATENCY_BUCKETS.len()], 3);
        assert!((s.latency_sum_seconds - 9.303).abs() < 1e-6);
    }
}
