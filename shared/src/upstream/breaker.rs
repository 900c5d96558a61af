//! A per-backend circuit breaker: closed → open after consecutive failures → half-open after a
//! cool-down, where exactly one probe call is let through; its outcome closes or re-opens the
//! circuit.
//!
//! The breaker only counts; it does not decide what a failure is. The caller reports each call's
//! outcome through the [`Permit`] it was given. A permit dropped without an outcome (the caller
//! was cancelled) counts as neither, but frees the half-open probe slot.
//! Time is `tokio::time::Instant`, so tests can pause the clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitConfig;

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
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

/// The circuit is open: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: &CircuitConfig) -> Self {
        Self {
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
        if ok {
            *state = State::Closed { failures: 0 };
            return;
        }
        let open = State::Open {
            until: Instant::now() + self.open_for,
        };
        *state = match *state {
            _ if probe => open,
            State::Closed { failures } if failures + 1 >= self.threshold => {
                tracing::warn!(failures = failures + 1, "circuit opened");
                open
            }
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            // A call that started before the circuit opened finished late: it changes nothing.
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
        CircuitBreaker::new(&CircuitConfig {
            failure_threshold: 3,
            open_ms: 1_000,
        })
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
