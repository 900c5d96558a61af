//! Warnings that can come thousands of times a second in an outage (every request, every
//! resuming subscriber failing on the same broker), logged at most once per interval with how
//! many were left out: a line each would cost the gateway more than the failures themselves.
//!
//! [`LogThrottle`] is `const`-constructible, so each call site keeps one in a `static`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Says when a warning may be logged: at most once every `every_ms`.
pub struct LogThrottle {
    every_ms: u64,
    /// When the next line may be written, in ms since the process's first use of any throttle.
    next_ms: AtomicU64,
    /// Occurrences left out since the last line.
    skipped: AtomicU64,
}

impl LogThrottle {
    /// A throttle allowing one line every `every_ms` milliseconds.
    pub const fn new(every_ms: u64) -> Self {
        Self {
            every_ms,
            next_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence may be logged, `n` being how many were left out since the
    /// last line; `None` when it is to be left out (and is counted).
    pub fn allow(&self) -> Option<u64> {
        static BASE: OnceLock<Instant> = OnceLock::new();
        let now = BASE.get_or_init(Instant::now).elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let t = LogThrottle::new(60_000);
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        // The interval has passed (as if): the next line carries the two left out.
        t.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(t.allow(), Some(2));
    }
}
