//! Latency samples and their summary (throughput, p50, p99), and a process's CPU time from `/proc`.

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

/// utime + stime of process `pid` (every thread), in clock ticks, from `/proc/<pid>/stat`.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("reading /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces): utime is field 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat: {stat}"))
    };
    Ok(tick(11)? + tick(12)?)
}
