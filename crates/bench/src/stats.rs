//! Latency samples and their summary (throughput, p50, p99).

use std::time::Duration;

/// One measured run: how long it took and every operation's latency.
pub(crate) struct Sample {
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl Sample {
    pub(crate) fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

/// Milliseconds with three decimals.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// The median of some numbers.
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The `p` quantile of sorted nanosecond samples (0 when there are none).
pub(crate) fn percentile_ns(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Nanoseconds as milliseconds with three decimals.
pub(crate) fn ms_ns(ns: u64) -> String {
    ms(Duration::from_nanos(ns))
}
