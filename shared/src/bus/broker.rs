//! [`Broker`]: the one place a process turns its `[bus]` section into a bus, a lease service, and
//! the connections that rate limits and records keep their shared state on.
//!
//! With a broker bus every one of those works over ONE client of the broker (Redis: one command
//! connection, plus the pub/sub connection once something subscribes; NATS: one client), opened
//! lazily and in the background, so [`Broker::connect`] never waits and never fails: a process
//! starts while its broker is down and reports not-ready ([`super::Bus::check`]) until it answers.
//! This module does not know what rate limits or records store; they take a [`Broker`] and use
//! its connections ([`crate::ratelimit::RateLimiter::new`], [`crate::records::on`]).

use std::sync::Arc;

use super::lease::{Lease, MemoryLease};
use super::memory::MemoryBus;
use super::nats::NatsBus;
use super::redis::RedisBus;
use super::{Bus, BusConfig, BusKind, Retention};

/// A process's broker: its bus, its lease service and their shared connections. Cheap to clone
/// (clones share everything).
#[derive(Clone)]
pub struct Broker {
    bus: Arc<dyn Bus>,
    lease: Arc<dyn Lease>,
    clients: Clients,
}

/// The broker clients behind a [`Broker`], for the core's other shared state.
#[derive(Clone)]
pub(crate) enum Clients {
    /// No broker: everything stays in this process.
    Memory,
    /// The Redis bus, whose command connection rate limits and records run their scripts on.
    Redis(Arc<RedisBus>),
    /// The NATS bus, whose client rate limits and records write their streams with.
    Nats(Arc<NatsBus>),
}

impl Broker {
    /// The broker `config` describes: the in-memory bus and process-local leases, or a Redis or
    /// NATS bus that is also the lease service. Connects lazily (see the module docs). An
    /// invalid URL is rejected when the configuration is loaded ([`BusConfig::validate`]).
    /// Every topic keeps `config.history_events` events; [`Self::connect_with`] gives catalog
    /// channels their own.
    pub fn connect(config: &BusConfig) -> Self {
        Self::connect_with(config, Retention::new(config.history_events, None))
    }

    /// [`Self::connect`], keeping what `retention` says per topic (a catalog channel's own
    /// `history_events`) instead of `config.history_events` for all.
    pub fn connect_with(config: &BusConfig, retention: Retention) -> Self {
        match config.kind {
            BusKind::Memory => Self {
                bus: Arc::new(MemoryBus::with(retention, config.idempotency_window())),
                lease: Arc::new(MemoryLease::new()),
                clients: Clients::Memory,
            },
            BusKind::Redis => {
                let redis = Arc::new(RedisBus::with(config, retention));
                Self {
                    bus: redis.clone(),
                    lease: redis.clone(),
                    clients: Clients::Redis(redis),
                }
            }
            BusKind::Nats => {
                let nats = Arc::new(NatsBus::with(config, retention));
                Self {
                    bus: nats.clone(),
                    lease: nats.clone(),
                    clients: Clients::Nats(nats),
                }
            }
        }
    }

    /// The in-memory broker keeping the last `history_events` events of each topic:
    /// [`Self::connect`] with the default `[bus]` but that.
    pub fn memory(history_events: usize) -> Self {
        Self::connect(&BusConfig {
            history_events,
            ..BusConfig::default()
        })
    }

    /// The event bus.
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    /// The cluster-wide lease service, on the bus's connections.
    pub fn lease(&self) -> Arc<dyn Lease> {
        self.lease.clone()
    }

    /// Which kind of bus this is; anything but [`BusKind::Memory`] shares its state with every
    /// instance on the same broker and prefix.
    pub fn kind(&self) -> BusKind {
        match self.clients {
            Clients::Memory => BusKind::Memory,
            Clients::Redis(_) => BusKind::Redis,
            Clients::Nats(_) => BusKind::Nats,
        }
    }

    /// The broker clients, for rate limits and records.
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}
