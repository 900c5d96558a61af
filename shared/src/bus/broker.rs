//! [`Broker`]: the one place a process turns its `[bus]` section into a bus, a lease service, and
//! the connections that rate limits and records keep their shared state on.
//!
//! With a broker bus every one of those works over ONE client of the broker (Redis: one command
//! connection, plus the pub/sub connection once something subscribes; NATS: one client; RabbitMQ:
//! one stream connection, and its Redis state store's, which leases, rate limits and records
//! use), opened
//! lazily and in the background, so [`Broker::connect`] never waits and never fails: a process
//! starts while its broker is down and reports not-ready ([`super::Bus::check`]) until it answers.
//! This module does not know what rate limits or records store; they take a [`Broker`] and use
//! its connections ([`crate::ratelimit::RateLimiter::new`], [`crate::records::on`]).
//!
//! The broker's counters ([`BusMetrics`]: publish latency, connections lost, live-feed repairs)
//! are one set per broker ([`Broker::metrics`]); its bus times every publish ([`Metered`]).

use std::sync::Arc;

use std::time::Instant;

use bytes::Bytes;

use super::lease::{Lease, MemoryLease};
use super::memory::MemoryBus;
use super::metrics::BusMetrics;
use super::nats::NatsBus;
use super::rabbitmq::RabbitBus;
use super::redis::RedisBus;
use super::{
    Bus, BusConfig, BusError, BusKind, IdempotencyKey, Published, Read, Retention, StartAt,
    Subscription,
};
use crate::event::{Event, Position, Topic};
use crate::trace::TraceContext;

/// A process's broker: its bus, its lease service and their shared connections. Cheap to clone
/// (clones share everything).
#[derive(Clone)]
pub struct Broker {
    kind: BusKind,
    bus: Arc<dyn Bus>,
    lease: Arc<dyn Lease>,
    clients: Clients,
    metrics: Arc<BusMetrics>,
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
        let (bus, lease, clients, metrics): (Arc<dyn Bus>, Arc<dyn Lease>, _, _) = match config.kind
        {
            BusKind::Memory => (
                Arc::new(MemoryBus::with(retention, config.idempotency_window())),
                Arc::new(MemoryLease::new()),
                Clients::Memory,
                Arc::new(BusMetrics::default()),
            ),
            BusKind::Redis => {
                let redis = Arc::new(RedisBus::with(config, retention));
                let metrics = redis.metrics();
                (redis.clone(), redis.clone(), Clients::Redis(redis), metrics)
            }
            BusKind::Nats => {
                // Pattern streams unless turned off (`nats_pattern_streams`, on by default).
                let retention = if config.nats_pattern_streams {
                    retention
                } else {
                    retention.without_pattern_groups()
                };
                let nats = Arc::new(NatsBus::with(config, retention));
                let metrics = nats.metrics();
                (nats.clone(), nats.clone(), Clients::Nats(nats), metrics)
            }
            BusKind::Rabbitmq => {
                // The state store: a Redis bus on `[bus.state]`, whose leases, rate limits and
                // records are the broker's.
                let redis = super::rabbitmq::state_store(config, retention.clone());
                let rabbit = Arc::new(RabbitBus::with(config, retention, redis.clone()));
                let metrics = rabbit.metrics();
                (rabbit, redis.clone(), Clients::Redis(redis), metrics)
            }
        };
        Self {
            kind: config.kind,
            bus: Arc::new(Metered {
                bus,
                metrics: metrics.clone(),
            }),
            lease,
            clients,
            metrics,
        }
    }

    /// The broker's counters (publish latency, connections lost, live-feed repairs).
    pub fn metrics(&self) -> Arc<BusMetrics> {
        self.metrics.clone()
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
        self.kind
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

/// A bus whose publishes are timed into the broker's [`BusMetrics`]; everything else passes
/// through.
struct Metered {
    bus: Arc<dyn Bus>,
    metrics: Arc<BusMetrics>,
}

#[async_trait::async_trait]
impl Bus for Metered {
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        let start = Instant::now();
        let published = self.bus.publish_traced(topic, payload, trace).await;
        self.metrics.published(published.is_ok(), start.elapsed());
        published
    }

    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        let start = Instant::now();
        let published = self
            .bus
            .publish_once_traced(topic, payload, key, trace)
            .await;
        self.metrics.published(published.is_ok(), start.elapsed());
        published
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        self.bus.read(topic, after, max).await
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
        self.bus.latest(topic).await
    }

    async fn head(&self, topic: &Topic) -> Result<Position, BusError> {
        self.bus.head(topic).await
    }

    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError> {
        self.bus.subscribe(topic, from).await
    }

    async fn check(&self) -> Result<(), BusError> {
        self.bus.check().await
    }
}
