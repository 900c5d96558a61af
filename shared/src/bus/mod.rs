//! The event bus: where events are published, numbered and kept.
//!
//! A bus assigns each event its offset when it is published, keeps a bounded history per topic,
//! and lets a reader ask for the events after a position — learning explicitly, through
//! [`Delivery::Gap`] or [`Read::Gap`], when history no longer covers that position. The in-memory
//! bus ([`memory`]) is the embedded default; the broker buses — [`redis`] (Redis Streams and
//! pub/sub), [`nats`] (NATS JetStream) and [`rabbitmq`] (RabbitMQ Streams, with a Redis state
//! store beside them) — implement the same trait, chosen by configuration
//! ([`BusConfig`], the `[bus]` section), so callers do not change. With a broker bus the history, the offsets and
//! the epochs are shared: every instance delivers the same offsets, so a client can resume on any
//! of them.
//!
//! The bus has no per-subscriber queues: a subscription is a cursor over the topic's history, so
//! a subscriber that does not read never blocks the publisher or anyone else; it only falls
//! behind, and then gets a gap. Local fan-out with bounded queues is the hub's job. The broker
//! buses share one subscription driver (`live.rs`): a live feed from the broker, trusted only
//! for the next offset, repaired from history otherwise. A broker subscription exists only while
//! a bus subscription does, so an instance receives only the topics it has local interest in.
//!
//! # One constructor
//!
//! A process builds its bus ONCE, with [`Broker::connect`], and takes everything that lives on
//! the broker from that one [`Broker`], so that it all shares one set of connections (lazy, in
//! the background: a gateway starts while its broker is down):
//!
//! ```no_run
//! # fn wiring(config: &switchyard_core::bus::BusConfig) {
//! use switchyard_core::bus::Broker;
//! use switchyard_core::ratelimit::{RateLimitConfig, RateLimiter};
//!
//! let broker = Broker::connect(config);
//! let bus = broker.bus(); // for the hub, the sources' feeders, /readyz
//! let lease = broker.lease(); // for `leased::LeasedFeeder`
//! let limiter = RateLimiter::new("bff-web", &RateLimitConfig::default(), &broker);
//! let devices = switchyard_core::records::on(&broker, "devices");
//! # }
//! ```
//!
//! There is no other way to a broker's bus or leases: a second [`Broker`] is a second set of
//! connections (what two instances in one test process each have).
//!
//! Each topic keeps `bus.history_events` events, but a catalog channel's topic keeps its entry's
//! `history_events` ([`Retention`], given to [`Broker::connect_with`]).
//!
//! # Idempotent publishing
//!
//! [`Bus::publish_once`] publishes once per caller's key ([`IdempotencyKey`]) and topic within
//! `bus.idempotency_window_ms`: a repeat publishes nothing and answers with the first publish's
//! position ([`Published`]). The memory bus remembers at most [`MAX_REMEMBERED_KEYS`] keys (the
//! oldest forgotten first), the Redis bus one key with that time to live per publish, the NATS
//! bus uses JetStream's de-duplication (`Nats-Msg-Id`, the stream's `duplicate_window`), the
//! RabbitMQ bus one key per publish in its state store.
//!
//! This module does not retry publishes: a publish while the broker is down fails with
//! [`BusError::Unavailable`], and the caller decides.

mod broker;
mod config;
mod idempotency;
pub mod lease;
mod live;
pub mod memory;
pub mod metrics;
pub mod nats;
pub mod rabbitmq;
pub mod redis;
mod retention;

pub use broker::Broker;
pub(crate) use broker::Clients;
pub use config::{BusConfig, BusKind, BusStateConfig};
pub use idempotency::{
    IdempotencyKey, InvalidIdempotencyKey, MAX_KEY_BYTES, MAX_REMEMBERED_KEYS, Published,
};
pub use metrics::{BusMetrics, BusMetricsSnapshot, REPAIR_REASONS};
pub use retention::{Group, Retention};

use bytes::Bytes;
use futures::stream::BoxStream;

use crate::event::{Event, Position, Topic};
use crate::trace::TraceContext;

/// A bus failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The broker cannot be reached or refused the operation.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus is shutting down.
    #[error("bus closed")]
    Closed,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the next event published.
    Live,
    /// After this position: every retained event after it, then live ones.
    After(Position),
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The next event.
    Event(Event),
    /// Events were lost between `after` and `resume`: history no longer covers them (they were
    /// trimmed, or the epoch changed). Delivery continues after `resume`.
    Gap {
        /// The position the reader had.
        after: Position,
        /// The position delivery continues from.
        resume: Position,
    },
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The events after the position, oldest first (possibly none), and the position after the
    /// last of them (the position asked for when there are none).
    Events {
        /// The events.
        events: Vec<Event>,
        /// Where the next read should start.
        next: Position,
    },
    /// History does not cover the position asked for; `resume` is the oldest position it can
    /// continue from.
    Gap {
        /// The oldest position history can continue from.
        resume: Position,
    },
}

/// A live subscription: events and gaps, in offset order.
pub type Subscription = BoxStream<'static, Delivery>;

/// An event bus.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `topic`; the returned event carries its assigned offset.
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<Event, BusError> {
        self.publish_traced(topic, payload, None).await
    }

    /// [`Self::publish`], the event carrying `trace` (the trace of the write that caused it),
    /// which every reader of the event gets with it.
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError>;

    /// Publishes `payload` on `topic` once per `key` within the bus's de-duplication window
    /// (`bus.idempotency_window_ms`): a publish repeating a key already published on that topic
    /// in the window publishes nothing and returns the first publish's position with
    /// `duplicate: true` (whatever its payload). A publish that fails is not remembered: it
    /// published nothing, and repeating it with the same key publishes.
    async fn publish_once(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
    ) -> Result<Published, BusError> {
        self.publish_once_traced(topic, payload, key, None).await
    }

    /// [`Self::publish_once`], the event carrying `trace` (a duplicate keeps the first
    /// publish's).
    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError>;

    /// Reads up to `max` retained events after `after`.
    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError>;

    /// The latest event on `topic`, if any is retained.
    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError>;

    /// The current head of `topic`: the position of its latest event (offset 0 if none yet).
    async fn head(&self, topic: &Topic) -> Result<Position, BusError>;

    /// Subscribes to `topic`. Once this returns, every event published afterwards is delivered.
    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError>;

    /// Whether the bus is reachable (for /readyz).
    async fn check(&self) -> Result<(), BusError>;
}

/// Counters of a broker bus instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Live messages this instance received from the broker (for all its subscriptions): the
    /// measure of interest-based routing.
    pub received: u64,
}
