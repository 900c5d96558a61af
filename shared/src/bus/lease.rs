//! Cluster-wide leases: at most one holder of a named lease at a time, until it expires unless
//! renewed — for work that must run once across the instances sharing a broker (one upstream
//! subscription per channel for the whole cluster, say), rather than once per instance.
//!
//! A lease is named by a [`Topic`] (the usual thing to lease is a topic's feed) and held by an
//! opaque holder id (an instance id). The holder renews well within the time to live, and stops
//! the leased work as soon as a renewal says the lease was lost (or cannot be confirmed: a broker
//! outage means the holder no longer knows, and must assume it lost it).
//!
//! Implementations: [`MemoryLease`] (one process), the Redis bus (`SET NX PX` and compare-and-
//! delete scripts, Redis's clock), the NATS bus (a JetStream stream per time to live with one
//! message per lease and `max_age` = the time to live, written with compare-and-set on the
//! subject's last sequence; the server's clock). This module does not decide what is leased or
//! run the renewal loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BusError;
use crate::event::Topic;

/// A cluster-wide lease service.
#[async_trait::async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Takes `name` for `holder` for `ttl` if nobody else holds it, or extends it if `holder`
    /// already does. `true` when `holder` holds it afterwards.
    async fn acquire(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError>;

    /// Extends `name` for another `ttl` if `holder` still holds it; `false` when it was lost
    /// (it expired, and perhaps someone else took it).
    async fn renew(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError>;

    /// Gives `name` up if `holder` holds it, so another instance can take it at once.
    async fn release(&self, name: &Topic, holder: &str) -> Result<(), BusError>;
}

/// Leases within one process (the embedded default: every lease is uncontended across
/// instances because there is one instance).
#[derive(Debug, Default)]
pub struct MemoryLease {
    held: Mutex<HashMap<Topic, (String, Instant)>>,
}

impl MemoryLease {
    /// No lease held.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Topic, (String, Instant)>) -> T) -> T {
        // Each critical section is one map operation; poisoning cannot leave torn state.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        held.retain(|_, (_, until)| *until > now);
        f(&mut held)
    }
}

#[async_trait::async_trait]
impl Lease for MemoryLease {
    async fn acquire(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        Ok(self.with(|held| match held.get_mut(name) {
            Some((h, until)) if h == holder => {
                *until = Instant::now() + ttl;
                true
            }
            Some(_) => false,
            None => {
                held.insert(name.clone(), (holder.to_owned(), Instant::now() + ttl));
                true
            }
        }))
    }

    async fn renew(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        Ok(self.with(|held| match held.get_mut(name) {
            Some((h, until)) if h == holder => {
                *until = Instant::now() + ttl;
                true
            }
            _ => false,
        }))
    }

    async fn release(&self, name: &Topic, holder: &str) -> Result<(), BusError> {
        self.with(|held| {
            if held.get(name).is_some_and(|(h, _)| h == holder) {
                held.remove(name);
            }
        });
        Ok(())
    }
}
