//! The RabbitMQ bus: a RabbitMQ stream per topic keeps its shared history and carries its live
//! events; a state store beside it (Redis, `[bus.state]`) keeps what a stream cannot — each
//! topic's epoch and head, idempotent publishes' keys, and the broker's leases, rate limits and
//! records. Written for RabbitMQ 3.10 and later (docs/rabbitmq.md says why each piece is where
//! it is).
//!
//! # Layout (prefix `P`)
//!
//! - stream `P.t.{topic}`, created on first use by any instance (idempotently) with a byte cap
//!   (`max-length-bytes`, segments of an eighth of it). An event with offset `n` is the
//!   stream's message at offset `n - 1` (stream offsets are contiguous from 0); its body is
//!   `wire.rs`'s.
//! - the state store's keys (`state.rs`): `P:q:m:{topic}` the epoch and head, `P:q:i:...` the
//!   idempotency keys.
//!
//! Retention is logical: a topic keeps its `history_events` ([`Retention`]) — a read after a
//! position older than `head - history_events` gets a gap — and the byte cap bounds the disk.
//! When the cap trims more than that (large events), a read finds the stream starting later
//! than asked and answers with a gap too.
//!
//! # Publishing
//!
//! RabbitMQ confirms a publish without saying where it was stored, so each publishing instance
//! keeps, per topic, a tail consumer (`tail.rs`) subscribed before its first publish; a publish
//! completes when the tail reads its message back, and its offset is the answer. The head in
//! the state store is then raised to it (`head`, `latest` and reads stop there: 3.10 has no
//! command answering a stream's last offset); a live feed raises it too, to the events it is
//! about to deliver, so that whatever was delivered live can be read. A publish that fails (or times out) has an
//! unknown outcome, as on the other broker buses: retry with `publish_once`.
//!
//! `publish_once` claims the key in the state store (`SET NX` with a short time to live), then
//! publishes and stores the position for `idempotency_window_ms`; a repeat finding the
//! position answers it as a duplicate, one finding the claim in flight waits for it (bounded).
//!
//! # Live delivery and epochs
//!
//! A subscription is a stream consumer from the cursor's next offset, with credit-based flow
//! control (a few chunks in flight), fed to the shared driver (`live.rs`), which checks every
//! offset and repairs from history. It ends when the connection drops or the server says the
//! stream changed (a metadata update: deleted, or its leader moved); the driver reopens it.
//! When this bus creates a stream that a previous epoch had events in (it was deleted, or lost),
//! the epoch is reset: old positions get a gap, never another history's events.
//!
//! # Files
//!
//! This file holds [`RabbitBus`] and its [`Bus`] methods; `address.rs` the URL,
//! `connection.rs` the stream protocol connection (on the `rabbitmq-stream-protocol` codec) and
//! `io.rs` its frames, routes and tasks, `publish.rs` publishing, `tail.rs` publishers'
//! read-back, `source.rs` history reads and live feeds, `state.rs` the state store, `wire.rs`
//! the message body.
//!
//! Not done here: several nodes (a stream's leader is assumed to be on the node connected to),
//! TLS, a NATS state store, and more than 256 subscriptions or publishing topics per instance
//! (the protocol's ids are a byte; one connection per bus instance).

mod address;
mod connection;
mod io;
mod publish;
mod source;
mod state;
mod tail;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub(crate) use self::address::Address;
use self::connection::{Conn, ConnError};
use self::state::State;
use self::tail::Tail;
use super::live::{self, Backoff};
use super::redis::RedisBus;
use super::{
    Bus, BusConfig, BusError, BusStats, IdempotencyKey, Published, Read, Retention, StartAt,
    Subscription,
};
use crate::event::{Event, Position, Topic};
use crate::trace::TraceContext;

/// Bytes a topic's stream keeps at most per event of its retention, and the bounds of its cap.
const BYTES_PER_EVENT: u64 = 4 * 1024;
const MIN_STREAM_BYTES: u64 = 8 * 1024 * 1024;
const MAX_STREAM_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The RabbitMQ Streams bus.
pub struct RabbitBus {
    inner: Arc<Inner>,
}

/// The connection and when it may next be tried.
struct Slot {
    conn: Option<(Arc<Conn>, u64)>,
    serial: u64,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

struct Inner {
    addr: Result<Address, String>,
    prefix: String,
    retention: Retention,
    window_ms: u64,
    connect_timeout: Duration,
    op_timeout: Duration,
    backoff: Backoff,
    state: Arc<State>,
    slot: tokio::sync::Mutex<Slot>,
    /// Streams known to exist, by topic: the connection serial and metadata-update count when
    /// that was learnt.
    ensured: Mutex<HashMap<Topic, (u64, u64)>>,
    tails: tokio::sync::Mutex<HashMap<Topic, Arc<Tail>>>,
    /// Streams this instance used (what `delete_all` deletes).
    streams: Mutex<HashSet<String>>,
    instance: u64,
    seq: AtomicU64,
    received: Arc<AtomicU64>,
    metrics: Arc<crate::bus::BusMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here are single map operations; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("rabbitmq: {e}"))
}

/// The state store of the rabbitmq bus `config` describes: a Redis bus on `[bus.state]` (the
/// local Redis when the section is missing), under the same prefix.
pub fn state_store(config: &BusConfig, retention: Retention) -> Arc<RedisBus> {
    let state = config
        .state
        .clone()
        .unwrap_or_else(|| super::BusStateConfig::redis(""));
    let redis_config = BusConfig {
        kind: super::BusKind::Redis,
        url: state.store_url().to_owned(),
        state: None,
        ..config.clone()
    };
    Arc::new(RedisBus::with(&redis_config, retention))
}

impl RabbitBus {
    /// A bus of `config` with its own state store ([`state_store`]), every topic keeping
    /// `history_events`.
    pub fn new(config: &BusConfig) -> Self {
        let retention = Retention::new(config.history_events, None);
        Self::with(config, retention.clone(), state_store(config, retention))
    }

    /// Its state store, which is also the broker's lease service.
    pub fn state(&self) -> Arc<RedisBus> {
        self.inner.state.redis().clone()
    }

    /// A bus on the RabbitMQ stream listener at `config.broker_url()`, with `state` (a Redis
    /// bus on `[bus.state]`) as its state store, each topic keeping what `retention` says.
    /// Connects lazily: a bus whose broker is down is built all the same.
    pub fn with(config: &BusConfig, retention: Retention, state: Arc<RedisBus>) -> Self {
        let addr = Address::parse(config.broker_url());
        if let Err(e) = &addr {
            tracing::error!(url = %config.broker_url(), error = %e, "invalid rabbitmq bus URL");
        }
        let backoff = Backoff::new(
            Duration::from_millis(config.reconnect_initial_ms.max(1)),
            Duration::from_millis(config.reconnect_max_ms.max(1)),
        );
        Self {
            inner: Arc::new(Inner {
                addr,
                prefix: config.prefix.clone(),
                retention,
                window_ms: config.idempotency_window_ms.max(1),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
                op_timeout: Duration::from_millis(config.operation_timeout_ms.max(1)),
                backoff: backoff.clone(),
                state: Arc::new(State::new(state)),
                slot: tokio::sync::Mutex::new(Slot {
                    conn: None,
                    serial: 0,
                    retry_at: None,
                    backoff,
                }),
                ensured: Mutex::new(HashMap::new()),
                tails: tokio::sync::Mutex::new(HashMap::new()),
                streams: Mutex::new(HashSet::new()),
                instance: rand::random(),
                seq: AtomicU64::new(1),
                received: Arc::new(AtomicU64::new(0)),
                metrics: Arc::default(),
            }),
        }
    }

    /// Its connections lost and live-feed repairs, for `/metrics`.
    pub fn metrics(&self) -> Arc<crate::bus::BusMetrics> {
        self.inner.metrics.clone()
    }

    /// Counters of this bus instance.
    pub fn stats(&self) -> BusStats {
        BusStats {
            received: self.inner.received.load(Ordering::Relaxed),
        }
    }

    /// Closes this instance's connection as if the broker had dropped it (for tests: every
    /// subscription must then deliver every event or a gap).
    pub async fn drop_connection(&self) {
        if let Some((conn, _)) = &self.inner.slot.lock().await.conn {
            conn.close();
        }
    }

    /// Deletes the stream of `topic` (for tests and operators); the next use creates it again,
    /// as a new epoch.
    pub async fn delete_topic(&self, topic: &Topic) -> Result<(), BusError> {
        let (conn, _) = self.inner.conn().await?;
        conn.delete_stream(&self.inner.stream_name(topic))
            .await
            .map_err(unavailable)?;
        lock(&self.inner.ensured).remove(topic);
        Ok(())
    }

    /// Deletes the streams this instance used and every state-store key of its prefix (for
    /// tests and operators).
    pub async fn delete_all(&self) -> Result<usize, BusError> {
        let (conn, _) = self.inner.conn().await?;
        let names: Vec<String> = lock(&self.inner.streams).drain().collect();
        for name in &names {
            conn.delete_stream(name).await.map_err(unavailable)?;
        }
        lock(&self.inner.ensured).clear();
        self.inner.state.redis().delete_all().await?;
        Ok(names.len())
    }
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn stream_name(&self, topic: &Topic) -> String {
        format!("{}.t.{topic}", self.prefix)
    }

    /// The connection (and its serial), opened if needed and allowed by the backoff.
    async fn conn(&self) -> Result<(Arc<Conn>, u64), BusError> {
        let addr = self
            .addr
            .as_ref()
            .map_err(|e| BusError::Unavailable(format!("rabbitmq: invalid bus.url: {e}")))?;
        let mut slot = self.slot.lock().await;
        if let Some((conn, serial)) = &slot.conn {
            if conn.is_open() {
                return Ok((conn.clone(), *serial));
            }
            tracing::warn!("rabbitmq bus connection lost; reconnecting");
            self.metrics.connection_lost();
            slot.conn = None;
            slot.retry_at = Some(Instant::now() + slot.backoff.delay());
        }
        if slot.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(BusError::Unavailable(
                "rabbitmq: not connected (reconnecting)".into(),
            ));
        }
        match Conn::open(addr, self.connect_timeout, self.op_timeout).await {
            Ok(conn) => {
                slot.serial += 1;
                slot.conn = Some((conn.clone(), slot.serial));
                slot.retry_at = None;
                slot.backoff.reset();
                Ok((conn, slot.serial))
            }
            Err(e) => {
                slot.retry_at = Some(Instant::now() + slot.backoff.delay());
                Err(unavailable(e))
            }
        }
    }

    /// The connection, the topic's stream created if this connection does not know it exists.
    async fn ensure(&self, topic: &Topic) -> Result<Arc<Conn>, BusError> {
        let (conn, serial) = self.conn().await?;
        let known = (serial, conn.updates());
        if lock(&self.ensured).get(topic) == Some(&known) {
            return Ok(conn);
        }
        let name = self.stream_name(topic);
        let cap = (self.retention.history_of(topic) as u64)
            .saturating_mul(BYTES_PER_EVENT)
            .clamp(MIN_STREAM_BYTES, MAX_STREAM_BYTES);
        let args = HashMap::from([
            ("max-length-bytes".to_owned(), cap.to_string()),
            (
                "stream-max-segment-size-bytes".to_owned(),
                (cap / 8).to_string(),
            ),
        ]);
        lock(&self.streams).insert(name.clone());
        let created = conn.create_stream(&name, args).await.map_err(unavailable)?;
        if created {
            self.state.reset(topic).await?;
        }
        lock(&self.ensured).insert(topic.clone(), known);
        Ok(conn)
    }

    /// Forgets what is known of the topic's stream after an answer said it is gone.
    fn forget(&self, topic: &Topic, e: &ConnError) {
        if matches!(e, ConnError::Code(_)) {
            lock(&self.ensured).remove(topic);
        }
    }
}

#[async_trait::async_trait]
impl Bus for RabbitBus {
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        self.inner.publish(topic, &payload, trace).await
    }

    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        self.inner.publish_once(topic, payload, key, trace).await
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        live::Source::read(self.inner.as_ref(), topic, after, max).await
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
        let (epoch, head) = self.inner.state.meta(topic).await?;
        if head == 0 {
            return Ok(None);
        }
        let after = Position {
            epoch,
            offset: head - 1,
        };
        match live::Source::read(self.inner.as_ref(), topic, after, 1).await? {
            Read::Events { mut events, .. } => Ok(events.pop()),
            Read::Gap { .. } => Ok(None),
        }
    }

    async fn head(&self, topic: &Topic) -> Result<Position, BusError> {
        let (epoch, offset) = self.inner.state.meta(topic).await?;
        Ok(Position { epoch, offset })
    }

    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError> {
        live::subscribe(self.inner.clone(), topic, from, self.inner.backoff.clone()).await
    }

    async fn check(&self) -> Result<(), BusError> {
        self.inner.conn().await?;
        self.inner.state.redis().check().await
    }
}
