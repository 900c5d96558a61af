//! The Redis bus: Redis Streams keep each topic's shared history; pub/sub carries live events to
//! the instances that have local interest in a topic, and only to them.
//!
//! # Layout (every key and channel starts with the configured prefix `P`)
//!
//! - `P:t:{topic}` — a stream; an event with offset `n` is the entry `0-n` with one field `p`
//!   (the payload). Trimmed to the topic's retention (exact `MAXLEN`) at every publish.
//! - `P:m:{topic}` — a hash: `epoch` (decimal u64, random) and `seq` (the last offset assigned).
//! - `P:c:{topic}` — the pub/sub channel; each message is `{epoch}:{offset}:{payload}`.
//! - `P:i:{topic}#{key}` — an idempotent publish's key (`#` is in no topic name, so topic and
//!   key cannot be confused): `{epoch}:{offset}` of its publish, expiring after
//!   `idempotency_window_ms`. One key per idempotent publish, so their number is the publish rate
//!   times the window.
//!
//! A topic's stream keeps what the bus's [`Retention`] says: a catalog channel's
//! `history_events`, else `history_events` of `[bus]`. A catalog channel with an
//! `idle_expiry_ms` has its stream and hash `PEXPIRE`d to it at every publish (and its hash when
//! a read creates it), so a channel nobody publishes on for that long is gone from Redis; its next
//! use starts a new epoch, and a reader of the old one gets a gap.
//!
//! Publishing is one Lua script, so offsets are assigned once, atomically, in the shared history:
//! it creates the epoch if the hash is missing (a fresh topic, or a broker that lost its data —
//! flushed, or restarted without persistence; any leftover stream is deleted with it, so a new
//! epoch always starts at offset 1), increments `seq`, adds the entry, trims, and publishes the
//! event on the channel. An idempotent publish is a sibling script that first looks for its key
//! (a duplicate: answer with the stored position, publish nothing), and otherwise publishes the
//! same way and sets the key, in the same atomic step. Reads are one script too (epoch, head, oldest retained, entries), and
//! create the epoch the same way, so a position handed out before anything was published stays
//! valid. A position of another epoch gets a gap.
//!
//! # Live delivery and interest
//!
//! One pub/sub connection per bus instance, owned by a dispatcher task. A subscription registers
//! with it; the first local subscription of a topic SUBSCRIBEs its channel (confirmed before
//! `subscribe` returns) and the last one to go UNSUBSCRIBEs, so an instance receives only the
//! topics it has local subscribers for (the hub holds one bus subscription per topic with local
//! interest). Each subscription has a bounded queue; when it is full the message is dropped and
//! the subscription is told to resync from the stream. The shared driver (`live.rs`) turns the
//! feed into deliveries, repairing any jump from history.
//!
//! # Outage
//!
//! Commands go over one multiplexed connection, opened lazily and reopened after a failure, no
//! sooner than the backoff allows (calls meanwhile fail at once with [`BusError::Unavailable`]):
//! nothing is queued while Redis is down. A call that times out drops the connection only if
//! nothing else was answered on it meanwhile (a slow broker keeps its connection; a dead one
//! answers nothing). The dispatcher sends the SUBSCRIBEs (and UNSUBSCRIBEs) queued for it as one
//! command each, pings its connection, reconnects with
//! backoff, re-SUBSCRIBEs every channel with interest, and tells every subscription to resync —
//! so they get what they missed from the stream, or a gap when the stream lost it (a restart
//! without persistence means a new epoch). Subscriptions opened while Redis is down fail.
//!
//! # Files
//!
//! This file holds the bus itself ([`RedisBus`] and its [`Bus`] methods); `scripts.rs` the
//! publish and read scripts and their replies, `connection.rs` the command connection,
//! `dispatcher.rs` the task owning the pub/sub connection, `feed.rs` a subscription's live feed
//! (what the shared driver reads), `lease.rs` leases.
//!
//! Not done here: Redis Cluster (the keys of a topic would need a hash tag).

mod connection;
mod dispatcher;
mod feed;
mod lease;
mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::sync::mpsc;

use self::connection::{Commands, Replies};
use self::dispatcher::Ctl;
use self::scripts::{as_u64, new_epoch};
use super::live::{self, Backoff};
use super::{
    Bus, BusConfig, BusError, BusStats, IdempotencyKey, Published, Read, Retention, StartAt,
    Subscription,
};
use crate::event::{Event, Position, Topic};
use crate::trace::TraceContext;

/// The publish scripts' `traceparent` argument: the value, or empty for none.
fn traceparent_arg(trace: Option<&TraceContext>) -> Vec<u8> {
    trace.map(|t| t.to_bytes().to_vec()).unwrap_or_default()
}

/// The Redis bus. Cheap to share: clone the `Arc` it is usually held in.
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Result<redis::Client, String>,
    prefix: String,
    retention: Retention,
    /// How long an idempotent publish's key is kept, in milliseconds.
    window_ms: u64,
    connect_timeout: Duration,
    op_timeout: Duration,
    backoff: Backoff,
    publish: redis::Script,
    publish_once: redis::Script,
    read: redis::Script,
    lease_scripts: [redis::Script; 3],
    commands: tokio::sync::Mutex<Commands>,
    /// When the command connection last answered (whether a timed-out call's connection is dead).
    replies: Replies,
    dispatcher: Mutex<Option<mpsc::UnboundedSender<Ctl>>>,
    /// Whether the dispatcher's pub/sub connection is up (it is not started until the first
    /// subscription; `true` until then so an idle bus is judged by its command connection).
    live_up: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    /// Connections lost, live-feed repairs (publishes are timed by the broker).
    metrics: Arc<crate::bus::BusMetrics>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only take or replace a sender; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("redis: {e}"))
}

/// Whether an error means the connection is unusable (rather than a refused command).
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

impl RedisBus {
    /// A bus on the Redis at `config.broker_url()`, every topic keeping `history_events`.
    /// Connects lazily: a bus whose broker is down is built all the same and reports
    /// unavailable until the broker answers.
    pub fn new(config: &BusConfig) -> Self {
        Self::with(config, Retention::new(config.history_events, None))
    }

    /// [`Self::new`], each topic keeping what `retention` says.
    pub fn with(config: &BusConfig, retention: Retention) -> Self {
        let client = redis::Client::open(config.broker_url()).map_err(|e| e.to_string());
        if let Err(e) = &client {
            tracing::error!(url = %config.broker_url(), error = %e, "invalid redis bus URL");
        }
        let backoff = Backoff::new(
            Duration::from_millis(config.reconnect_initial_ms),
            Duration::from_millis(config.reconnect_max_ms),
        );
        Self {
            inner: Arc::new(Inner {
                client,
                prefix: config.prefix.clone(),
                retention,
                window_ms: config.idempotency_window_ms.max(1),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
                op_timeout: Duration::from_millis(config.operation_timeout_ms.max(1)),
                backoff: backoff.clone(),
                publish: redis::Script::new(scripts::PUBLISH),
                publish_once: redis::Script::new(scripts::PUBLISH_ONCE),
                read: redis::Script::new(scripts::READ),
                lease_scripts: lease::scripts(),
                commands: tokio::sync::Mutex::new(Commands::new(backoff)),
                replies: Replies::new(),
                dispatcher: Mutex::new(None),
                live_up: Arc::new(AtomicBool::new(true)),
                received: Arc::new(AtomicU64::new(0)),
                metrics: Arc::default(),
                next_id: AtomicU64::new(1),
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

    /// Deletes every key of this bus's prefix (for tests and operators; uses SCAN).
    pub async fn delete_all(&self) -> Result<usize, BusError> {
        let mut conn = self.inner.conn().await?;
        let pattern = format!("{}:*", self.inner.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                deleted += keys.len();
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn stream_key(&self, topic: &Topic) -> String {
        format!("{}:t:{topic}", self.prefix)
    }

    fn meta_key(&self, topic: &Topic) -> String {
        format!("{}:m:{topic}", self.prefix)
    }

    fn channel(&self, topic: &Topic) -> String {
        format!("{}:c:{topic}", self.prefix)
    }

    fn idempotency_key(&self, topic: &Topic, key: &IdempotencyKey) -> String {
        format!("{}:i:{topic}#{key}", self.prefix)
    }

    /// The topic's idle expiry in milliseconds, `0` for none (the scripts' argument).
    fn expiry_ms(&self, topic: &Topic) -> u64 {
        self.retention.idle_expiry_of(topic).map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }

    fn client(&self) -> Result<&redis::Client, BusError> {
        self.client
            .as_ref()
            .map_err(|e| BusError::Unavailable(format!("redis: invalid bus.url: {e}")))
    }
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        let inner = &self.inner;
        let mut inv = inner.publish.prepare_invoke();
        inv.key(inner.stream_key(topic))
            .key(inner.meta_key(topic))
            .arg(payload.as_ref())
            .arg(inner.retention.history_of(topic))
            .arg(new_epoch().to_string())
            .arg(inner.channel(topic))
            .arg(traceparent_arg(trace.as_ref()).as_slice())
            .arg(inner.expiry_ms(topic));
        let v = inner.run("publish", inv).await?;
        let parsed = match &v {
            Value::Array(parts) if parts.len() == 2 => as_u64(&parts[0]).zip(as_u64(&parts[1])),
            _ => None,
        };
        let (epoch, offset) =
            parsed.ok_or_else(|| unavailable("unexpected reply to the publish script"))?;
        Ok(Event {
            topic: topic.clone(),
            epoch,
            offset,
            payload,
            trace,
        })
    }

    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        let inner = &self.inner;
        let mut inv = inner.publish_once.prepare_invoke();
        inv.key(inner.stream_key(topic))
            .key(inner.meta_key(topic))
            .key(inner.idempotency_key(topic, key))
            .arg(payload.as_ref())
            .arg(inner.retention.history_of(topic))
            .arg(new_epoch().to_string())
            .arg(inner.channel(topic))
            .arg(traceparent_arg(trace.as_ref()).as_slice())
            .arg(inner.expiry_ms(topic))
            .arg(inner.window_ms);
        let v = inner.run("idempotent publish", inv).await?;
        let parsed = match &v {
            Value::Array(parts) if parts.len() == 3 => {
                match (as_u64(&parts[0]), as_u64(&parts[1]), as_u64(&parts[2])) {
                    (Some(epoch), Some(offset), Some(dup)) => Some((epoch, offset, dup == 1)),
                    _ => None,
                }
            }
            _ => None,
        };
        let (epoch, offset, duplicate) =
            parsed.ok_or_else(|| unavailable("unexpected reply to the publish-once script"))?;
        Ok(Published {
            position: Position { epoch, offset },
            duplicate,
        })
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        live::Source::read(self.inner.as_ref(), topic, after, max).await
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
        Ok(self.inner.view(topic, 0, 0, true).await?.last)
    }

    async fn head(&self, topic: &Topic) -> Result<Position, BusError> {
        let view = self.inner.view(topic, 0, 0, false).await?;
        Ok(Position {
            epoch: view.epoch,
            offset: view.head,
        })
    }

    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError> {
        live::subscribe(self.inner.clone(), topic, from, self.inner.backoff.clone()).await
    }

    async fn check(&self) -> Result<(), BusError> {
        if !self.inner.live_up.load(Ordering::Relaxed) {
            return Err(BusError::Unavailable(
                "redis: pub/sub connection down (reconnecting)".into(),
            ));
        }
        let mut conn = self.inner.conn().await?;
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.inner.op_timeout, ping).await {
            Ok(Ok(_)) => {
                self.inner.replies.answered();
                Ok(())
            }
            Ok(Err(e)) => {
                self.inner.call_failed(started, &e).await;
                Err(unavailable(e))
            }
            Err(_) => {
                self.inner.timed_out(started).await;
                Err(BusError::Unavailable("redis: ping timed out".into()))
            }
        }
    }
}

/// Plumbing for the core's other shared state on this broker (rate limits, records): a script
/// run on the bus's command connection, with its deadline and reconnect handling.
impl RedisBus {
    /// A key of this bus's namespace: `P:{suffix}`.
    pub(crate) fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.inner.prefix)
    }

    /// Runs a prepared script invocation.
    pub(crate) async fn run_script(
        &self,
        op: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<Value, BusError> {
        self.inner.run(op, inv).await
    }
}
