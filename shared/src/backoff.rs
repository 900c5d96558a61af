//! Exponential backoff with full jitter — the one way Switchyard waits before trying again:
//! backend retries (`upstream`), upstream source reconnects (`sources`), broker reconnects and
//! resubscriptions (`bus`), and the mobile client's reconnects.
//!
//! Attempt `n` (counted from 0) waits a time drawn uniformly between zero and its ceiling,
//! `min(max, initial × 2^n)` ("full jitter", as in AWS's "Exponential Backoff And Jitter"): many
//! clients that lost the same peer at the same moment spread their retries over the whole window
//! instead of arriving in step. It does not sleep by itself except in [`Retrying::wait`], and
//! knows nothing of what is retried.

use std::time::Duration;

use rand::Rng as _;

/// A backoff policy: the ceiling of each attempt's delay, and a random delay below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Ceilings start at `initial` and double up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// [`Backoff::new`] in milliseconds, as configuration spells it.
    pub fn from_millis(initial_ms: u64, max_ms: u64) -> Self {
        Self::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// The longest delay of attempt `attempt` (from 0): `initial × 2^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random delay for attempt `attempt`: uniform between zero and [`Backoff::ceiling`].
    pub fn delay(&self, attempt: u32) -> Duration {
        full_jitter(self.ceiling(attempt))
    }
}

/// A uniformly random duration between zero and `ceiling` (millisecond steps).
pub fn full_jitter(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// A backoff with its attempt count, for a loop that retries until it succeeds: every
/// [`Retrying::delay`] is the next attempt's, until [`Retrying::reset`].
#[derive(Debug, Clone)]
pub struct Retrying {
    backoff: Backoff,
    attempt: u32,
}

impl Retrying {
    /// Starts at attempt 0 of `Backoff::new(initial, max)`; the first ceiling is at least 1 ms,
    /// so a loop that fails at once never spins.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(initial.max(Duration::from_millis(1)), max),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; the one after it may be up to twice as long.
    pub fn delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delay()).await;
    }

    /// Back to attempt 0 after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let b = Backoff::from_millis(100, 1_000);
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(
            Backoff::from_millis(100, 5_000)
                .ceiling(u32::MAX)
                .as_millis(),
            5_000
        );
        assert_eq!(
            Backoff::from_millis(u64::MAX, 5_000).ceiling(3).as_millis(),
            u128::from(u64::MAX)
        );
        assert_eq!(Backoff::from_millis(0, 5_000).ceiling(7), Duration::ZERO);
    }

    #[test]
    fn delays_use_the_whole_window_below_the_ceiling() {
        // Full jitter: draws reach well below half the ceiling, never above it.
        let b = Backoff::from_millis(1_000, 1_000);
        let draws: Vec<Duration> = (0..2_000).map(|_| b.delay(0)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(750)));
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn retrying_grows_until_reset() {
        let mut r = Retrying::new(Duration::ZERO, Duration::from_millis(8));
        // The first ceiling is 1 ms even for a zero initial delay; then 2, 4, 8, 8.
        let ceilings: Vec<u128> = (0..5)
            .map(|_| {
                let c = r.backoff.ceiling(r.attempt).as_millis();
                let d = r.delay();
                assert!(d.as_millis() <= c);
                c
            })
            .collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 8]);
        r.reset();
        assert_eq!(r.attempt, 0);
    }
}
