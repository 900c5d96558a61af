//! The NATS bus: one JetStream stream per topic keeps its shared history and carries its live
//! events, so the stream's sequence *is* the topic's offset — except the channels of one catalog
//! pattern, which share one stream, a subject each, with their offsets in headers.
//!
//! # Layout (prefix `P`, topic encoded as `E`)
//!
//! Topic names may hold `. _ - : /`, and NATS uses `.` between subject tokens and forbids it in
//! stream names, so a topic is encoded: letters, digits and `-` stay, `_` becomes `__`, `.` `_d`,
//! `:` `_c`, `/` `_s` (unambiguous, and the prefix has no `_`). An encoding longer than 200
//! characters is cut at 150 and given a 64-bit hash of the whole name.
//!
//! - stream `P_E`, subject `P.t.E`, file storage, `max_msgs` = the topic's retention (a catalog
//!   channel's `history_events`, else `history_events` of `[bus]`; oldest discarded),
//!   `duplicate_window` = `idempotency_window_ms`, created on first use of the topic by any
//!   instance (idempotently). Both limits are set when the stream is created: a stream that
//!   exists keeps the ones it was created with.
//! - An idempotent publish carries its key as `Nats-Msg-Id`: JetStream remembers the ids of the
//!   stream's window, and acknowledges a repeat as a duplicate with the first one's sequence
//!   (so the key is scoped by topic, one stream per topic).
//! - The epoch is the stream's creation time (nanoseconds): a stream that is deleted and created
//!   again, or lost by the server, is a new history, and positions of the old one get a gap.
//!   The epoch of each stream is cached and forgotten whenever the connection drops (a server
//!   that restarted may have lost it) or a publish finds the stream gone.
//!
//! # Channels of one pattern: one stream for all of them
//!
//! The channels of a catalog pattern with a placeholder (a [`Group`](crate::bus::Group), from the
//! bus's [`Retention`]) do not get a stream each: the group has one stream `P_g_9G` (`G` the
//! pattern encoded by `naming::encode_group`) on `P.g.G.>`, and a channel is the subject
//! `P.g.G.E` in it. The stream keeps `max_msgs_per_subject` = the pattern's history (so each
//! channel its own), `max_age` = its `idle_expiry_ms` (a channel idle that long has no message
//! left), allows direct gets, and republishes every stored message to `P.gl.G.E`.
//!
//! - Each message carries its channel position in headers: `Sy-Epoch`, `Sy-Offset`, and
//!   `Sy-Prev` (the stream sequence of the channel's previous message).
//! - A publish reads the channel's last message (direct get last-by-subject) and publishes the
//!   next offset in its epoch with `Nats-Expected-Last-Subject-Sequence` = its sequence: a
//!   compare-and-set, so of two instances publishing at once one lands and the other reads again
//!   and retries (within `operation_timeout_ms`). Offsets stay contiguous per channel.
//! - An empty subject (never used, or every message expired) has no epoch: the first write gives
//!   it a random one — a publish (offset 1), or an epoch marker (offset 0, no payload) that a
//!   read or subscribe writes so the position it hands out stays valid. Both are compare-and-set
//!   on sequence 0, so one epoch wins, and all the messages on a subject share it. A reader of an
//!   expired epoch gets a gap.
//! - `publish_once`: the message id is `E#KEY` (de-duplication is per stream); a duplicate's
//!   position is read from the original message (a duplicate of a message no longer retained
//!   fails `Unavailable` rather than answer a wrong position).
//! - Reads walk the channel's messages one direct get each, forwards from its oldest or
//!   backwards along `Sy-Prev` from its newest, whichever is shorter.
//! - Live delivery is a plain subscription to the republished subject, made before the head is
//!   read: only stored messages are republished, so a publish that lost its compare-and-set or
//!   was a duplicate reaches nobody. One server subscription per bus subscription, no consumer.
//!   The client drops a message when a subscription's buffer is full and says so in a
//!   slow-consumer event naming the subscription: that feed then resyncs from history.
//!
//! Topics outside the catalog and exact channel names keep a stream each (below).
//!
//! # Live delivery and interest
//!
//! A subscription is an ordered push consumer on its topic's stream, starting right after the
//! cursor — created when the subscription opens and removed when it is dropped, so an instance
//! receives only the topics it has subscriptions for (the hub holds one per topic with local
//! interest). The ordered consumer's own flow control and heartbeats apply; the client's
//! per-subscription buffer is bounded (`subscription_capacity`). The shared driver (`live.rs`)
//! checks every offset and repairs jumps from history.
//!
//! # Outage
//!
//! The client connects in the background and reconnects with the configured backoff. While it is
//! known not to be connected, operations fail at once with [`BusError::Unavailable`], and `check`
//! fails. A publish in flight when the connection drops is another matter: the client may hold it
//! in its send buffer and send it after the reconnect, while the bus has already answered
//! `Unavailable` on its deadline. A failed publish therefore means "outcome unknown": publish
//! with an idempotency key (`publish_once`) and retry with the same key to land it once
//! (`tests/faults/broker.rs` shows it). Every live feed ends when the connection drops; the driver reopens it with
//! backoff once the server is back, reading history first — the events it missed, or a gap when
//! the stream was lost (new epoch) or trimmed past its position.
//!
//! # Files
//!
//! This file holds the bus itself ([`NatsBus`] and its [`Bus`] methods); `naming.rs` the topic
//! and group encodings, `connection.rs` the client, `streams.rs` the topics' streams (creation,
//! epochs, heads, reads, publishing), `groups.rs` the channels of one pattern in one stream (`group_reads.rs` their reads and live
//! feeds), `source.rs` history reads and live feeds for the shared driver,
//! `lease.rs` leases, `cas.rs` the compare-and-set streams of rate limits and records.
//!
//! Not done here: one stream per topic costs the server a stream per topic ever used (fine for
//! thousands, not for millions — which is why a pattern's channels share one, above); reads fetch
//! messages one request each (pipelined for a topic's stream, a walk for a channel of a group), as
//! NATS 2.9 has no batched direct get.

mod cas;
mod connection;
mod group_reads;
mod groups;
mod lease;
mod naming;
mod source;
mod streams;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{OnceCell, watch};

use super::live::{self, Backoff};
use super::{
    Bus, BusConfig, BusError, BusStats, IdempotencyKey, Published, Read, Retention, StartAt,
    Subscription,
};
use crate::event::{Event, Position, Topic};
use crate::trace::TraceContext;

/// The NATS JetStream bus.
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    retention: Retention,
    /// The streams' de-duplication window.
    idempotency_window: Duration,
    connect_timeout: Duration,
    op_timeout: Duration,
    reconnect: (Duration, Duration),
    backoff: Backoff,
    conn: OnceCell<Result<(async_nats::Client, jetstream::Context), String>>,
    /// Bumped on every connect and disconnect event: live feeds end when it moves.
    generation: Arc<watch::Sender<u64>>,
    /// Epochs of the streams, by topic, with the client's connection count when they were
    /// learned: an epoch learned before the latest reconnect is not trusted.
    epochs: Mutex<HashMap<Topic, (u64, u64)>>,
    /// The groups' streams, by stream name, with the client's connection count when they were
    /// looked up (looked up again after a reconnect).
    groups: Mutex<HashMap<String, (jetstream::stream::Stream, u64)>>,
    received: Arc<AtomicU64>,
    /// The live feeds of group channels, by client subscription id: the client drops a message
    /// for a subscription whose buffer is full (a slow consumer) and says so only in an event,
    /// which wakes the feed of that subscription to resync from history (`group_reads.rs`).
    slow: SlowFeeds,
    /// Connections lost, live-feed repairs (publishes are timed by the broker).
    metrics: Arc<crate::bus::BusMetrics>,
}

/// Group live feeds by the client's subscription id (see `Inner::slow`).
type SlowFeeds = Arc<Mutex<HashMap<u64, Arc<tokio::sync::Notify>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here are single map operations; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("nats: {e}"))
}

impl NatsBus {
    /// A bus on the NATS server at `config.broker_url()`, every topic keeping `history_events`.
    /// Connects lazily, in the background: a bus whose server is down is built all the same and
    /// reports unavailable until it answers.
    pub fn new(config: &BusConfig) -> Self {
        Self::with(config, Retention::new(config.history_events, None))
    }

    /// [`Self::new`], each topic's stream keeping what `retention` says.
    pub fn with(config: &BusConfig, retention: Retention) -> Self {
        let reconnect = (
            Duration::from_millis(config.reconnect_initial_ms.max(1)),
            Duration::from_millis(config.reconnect_max_ms.max(1)),
        );
        Self {
            inner: Arc::new(Inner {
                url: config.broker_url().to_owned(),
                prefix: config.prefix.clone(),
                retention,
                idempotency_window: config.idempotency_window(),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
                op_timeout: Duration::from_millis(config.operation_timeout_ms.max(1)),
                reconnect,
                backoff: Backoff::new(reconnect.0, reconnect.1),
                conn: OnceCell::new(),
                generation: Arc::new(watch::channel(0).0),
                epochs: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
                received: Arc::new(AtomicU64::new(0)),
                slow: SlowFeeds::default(),
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

    /// Deletes every stream of this bus's prefix (for tests and operators).
    pub async fn delete_all(&self) -> Result<usize, BusError> {
        let (_, js) = self.inner.connected().await?;
        let names = self
            .inner
            .stream_names(&format!("{}_", self.inner.prefix))
            .await?;
        for name in &names {
            js.delete_stream(name).await.map_err(unavailable)?;
        }
        lock(&self.inner.epochs).clear();
        lock(&self.inner.groups).clear();
        Ok(names.len())
    }
}

impl Inner {
    /// Publishes (with `key` as message id when given), retrying once if the stream is gone.
    async fn publish(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<(Event, bool), BusError> {
        if let Some(group) = self.retention.group_of(topic) {
            return self.group_publish(topic, &group, payload, key, trace).await;
        }
        match self
            .publish_attempt(topic, payload.clone(), key, trace)
            .await
        {
            Ok(published) => Ok(published),
            Err(first) => {
                // The stream may be gone (deleted, or lost by the server): learn it afresh,
                // recreating it, and try once more. A publish with no stream reaches nobody.
                // The retry needs a connected client (`stream` fails otherwise). With a key, a
                // first attempt that did land (its answer lost) makes this one its duplicate.
                lock(&self.epochs).remove(topic);
                self.stream(topic).await.map_err(|_| first)?;
                self.publish_attempt(topic, payload, key, trace).await
            }
        }
    }
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        Ok(self.inner.publish(topic, payload, None, trace).await?.0)
    }

    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        let (event, duplicate) = self.inner.publish(topic, payload, Some(key), trace).await?;
        Ok(Published {
            position: event.position(),
            duplicate,
        })
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        live::Source::read(self.inner.as_ref(), topic, after, max).await
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
        if let Some(group) = self.inner.retention.group_of(topic) {
            return self.inner.group_latest(topic, &group).await;
        }
        let (stream, head) = self.inner.head(topic).await?;
        if head.oldest > head.last {
            return Ok(None);
        }
        let event = self
            .inner
            .get(&stream, topic, head.epoch, head.last)
            .await?;
        Ok(Some(event))
    }

    async fn head(&self, topic: &Topic) -> Result<Position, BusError> {
        if let Some(group) = self.inner.retention.group_of(topic) {
            let (_, head, _) = self.inner.group_head(topic, &group).await?;
            return Ok(Position {
                epoch: head.epoch,
                offset: head.offset,
            });
        }
        let (_, head) = self.inner.head(topic).await?;
        Ok(Position {
            epoch: head.epoch,
            offset: head.last,
        })
    }

    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError> {
        live::subscribe(self.inner.clone(), topic, from, self.inner.backoff.clone()).await
    }

    async fn check(&self) -> Result<(), BusError> {
        // A round trip to the server (the account-info API is not used: its reply shape differs
        // between server versions).
        let (client, _) = self.inner.connected().await?;
        self.inner.deadline("ping", client.flush()).await
    }
}
