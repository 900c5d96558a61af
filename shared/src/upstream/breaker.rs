//! A per-backend circuit breaker: closed → open after consecutive failures → half-open after a
//! cool-down, where exactly one probe call is let through; its outcome closes or re-opens the
//! circuit. Only the probe decides: a call that was let through while the circuit was closed and
//! answers after it opened (a late success or failure) changes nothing. The "circuit opened"
//! warning names the backend.
//!
//! The breaker only counts; it does not decide what a failure is. The caller reports each call's
//! outcome through the [`Permit`] it was given. A permit dropped without an outcome (the caller
//! was cancelled) counts as neither, but frees the half-open probe slot.
//! Time is `tokio::time::Instant`, so tests can pause the clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::CircuitConfig;

/// The breaker's state, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe call is allowed; the rest fail fast.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker for one backend.
#[derive(Debug)]
pub struct CircuitBreaker {
    backend: Arc<str>,
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// The circuit is open: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

impl CircuitBreaker {
    /// A closed breaker for the backend called `backend` (the name its log lines carry).
    pub fn new(backend: impl Into<Arc<str>>, config: &CircuitConfig) -> Self {
        Self {
            backend: backend.into(),
            threshold: config.failure_threshold.max(1),
            open_for: Duration::from_millis(config.open_ms),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data updated in one assignment; a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state (an open circuit whose cool-down has passed reports half-open).
    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if Instant::now() < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Asks to make a call. Fails fast while the circuit is open or a probe is in flight.
    pub fn acquire(&self) -> Result<Permit<'_>, Open> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Permit::new(self, false)),
            State::Open { until } if Instant::now() < until => Err(Open),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(Permit::new(self, true))
            }
            State::HalfOpen { probing: true } => Err(Open),
        }
    }

    fn record(&self, probe: bool, ok: bool) {
        let mut state = self.lock();
        let open = State::Open {
            until: Instant::now() + self.open_for,
        };
        *state = match *state {
            // Only the half-open probe's outcome closes or re-opens the circuit.
            _ if probe && ok => State::Closed { failures: 0 },
            _ if probe => open,
            State::Closed { .. } if ok => State::Closed { failures: 0 },
            State::Closed { failures } if failures + 1 >= self.threshold => {
                tracing::warn!(
                    backend = %self.backend,
                    failures = failures + 1,
                    "circuit opened"
                );
                open
            }
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            // A call that started before the circuit opened finished late, however it went: it
            // changes nothing.
            State::Open { until } => State::Open { until },
            State::HalfOpen { probing } => State::HalfOpen { probing },
        };
    }

    fn abandon(&self, probe: bool) {
        if probe {
            let mut state = self.lock();
            if let State::HalfOpen { probing: true } = *state {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

/// Permission for one call. Report its outcome with [`Permit::success`] or [`Permit::failure`].
#[derive(Debug)]
#[must_use = "report the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl<'a> Permit<'a> {
    fn new(breaker: &'a CircuitBreaker, probe: bool) -> Self {
        Self {
            breaker,
            probe,
            done: false,
        }
    }

    /// The backend answered properly.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.probe, true);
    }

    /// The backend failed (connect error, timeout, 5xx).
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandon(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "svc",
            &CircuitConfig {
                failure_threshold: 3,
                open_ms: 1_000,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_half_open() {
        let b = breaker();
        for _ in 0..2 {
            b.acquire().unwrap().failure();
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.acquire().unwrap_err(), Open);

        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let probe = b.acquire().unwrap();
        assert_eq!(b.acquire().unwrap_err(), Open, "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
        b.acquire().unwrap().success();
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = breaker();
        for _ in 0..3 {
            b.acquire().unwrap().failure();
        }
        tokio::time::advance(Duration::from_millis(1_001)).await;
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_frees_the_slot() {
        let b = breaker();
        for _ in 0..3 {
            b.acquire().unwrap().failure();
        }
        tokio::time::advance(Duration::from_millis(1_001)).await;
        drop(b.acquire().unwrap());
        b.acquire().unwrap().success();
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_success_does_not_close_an_open_circuit() {
        let b = breaker();
        // Started while the circuit was closed; answers after it opened.
        let late = b.acquire().unwrap();
        let later = b.acquire().unwrap();
        for _ in 0..3 {
            b.acquire().unwrap().failure();
        }
        assert_eq!(b.state(), CircuitState::Open);
        late.success();
        assert_eq!(b.state(), CircuitState::Open, "a late success closed it");
        assert_eq!(b.acquire().unwrap_err(), Open);

        // Nor while half-open: only the probe's own outcome decides.
        tokio::time::advance(Duration::from_millis(1_001)).await;
        let probe = b.acquire().unwrap();
        later.success();
        assert_eq!(
            b.state(),
            CircuitState::HalfOpen,
            "a late success closed it"
        );
        assert_eq!(b.acquire().unwrap_err(), Open, "still one probe at a time");
        probe.failure();
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_opened_warning_names_the_backend() {
        let buffer = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = {
            let buffer = buffer.clone();
            move || Captured(buffer.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let b = CircuitBreaker::new(
                "quotes-eu",
                &CircuitConfig {
                    failure_threshold: 2,
                    open_ms: 1_000,
                },
            );
            b.acquire().unwrap().failure();
            b.acquire().unwrap().failure();
            assert_eq!(b.state(), CircuitState::Open);
        });
        let log = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("circuit opened"))
            .unwrap_or_else(|| panic!("no warning in {log:?}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("backend=quotes-eu"), "{line}");
    }

    /// A `tracing` writer into a shared buffer.
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = breaker();
        b.acquire().unwrap().failure();
        b.acquire().unwrap().failure();
        b.acquire().unwrap().success();
        b.acquire().unwrap().failure();
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Closed);
    }
}
