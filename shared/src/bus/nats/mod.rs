//! The NATS bus: one JetStream stream per topic keeps its shared history and carries its live
//! events, so the stream's sequence *is* the topic's offset.
//!
//! # Layout (prefix `P`, topic encoded as `E`)
//!
//! Topic names may hold `. _ - : /`, and NATS uses `.` between subject tokens and forbids it in
//! stream names, so a topic is encoded: letters, digits and `-` stay, `_` becomes `__`, `.` `_d`,
//! `:` `_c`, `/` `_s` (unambiguous, and the prefix has no `_`). An encoding longer than 200
//! characters is cut at 150 and given a 64-bit hash of the whole name.
//!
//! - stream `P_E`, subject `P.t.E`, file storage, `max_msgs` = `history_events` (oldest
//!   discarded), created on first use of the topic by any instance (idempotently).
//! - The epoch is the stream's creation time (nanoseconds): a stream that is deleted and created
//!   again, or lost by the server, is a new history, and positions of the old one get a gap.
//!   The epoch of each stream is cached and forgotten whenever the connection drops (a server
//!   that restarted may have lost it) or a publish finds the stream gone.
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
//! not connected, operations fail at once with [`BusError::Unavailable`] (nothing is queued), and
//! `check` fails. Every live feed ends when the connection drops; the driver reopens it with
//! backoff once the server is back, reading history first — the events it missed, or a gap when
//! the stream was lost (new epoch) or trimmed past its position.
//!
//! # Files
//!
//! This file holds the bus itself ([`NatsBus`] and its [`Bus`] methods); `naming.rs` the topic
//! encoding, `connection.rs` the client, `streams.rs` the topics' streams (creation, epochs,
//! heads, reads, publishing), `source.rs` history reads and live feeds for the shared driver,
//! `lease.rs` leases, `cas.rs` the compare-and-set streams of rate limits and records.
//!
//! Not done here: one stream per topic costs the server a stream per topic ever used (fine for
//! thousands, not for millions: per-subject sequences in one stream would need an offset index);
//! reads fetch messages one request each (pipelined), as NATS 2.9 has no batched direct get.

mod cas;
mod connection;
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
use super::{Bus, BusConfig, BusError, BusStats, Read, StartAt, Subscription};
use crate::event::{Event, Position, Topic};

/// The NATS JetStream bus.
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    history: usize,
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
    received: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here are single map operations; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("nats: {e}"))
}

impl NatsBus {
    /// A bus on the NATS server at `config.broker_url()`. Connects lazily, in the background: a
    /// bus whose server is down is built all the same and reports unavailable until it answers.
    pub fn new(config: &BusConfig) -> Self {
        let reconnect = (
            Duration::from_millis(config.reconnect_initial_ms.max(1)),
            Duration::from_millis(config.reconnect_max_ms.max(1)),
        );
        Self {
            inner: Arc::new(Inner {
                url: config.broker_url().to_owned(),
                prefix: config.prefix.clone(),
                history: config.history_events.max(1),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
                op_timeout: Duration::from_millis(config.operation_timeout_ms.max(1)),
                reconnect,
                backoff: Backoff::new(reconnect.0, reconnect.1),
                conn: OnceCell::new(),
                generation: Arc::new(watch::channel(0).0),
                epochs: Mutex::new(HashMap::new()),
                received: Arc::new(AtomicU64::new(0)),
            }),
        }
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
        Ok(names.len())
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
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<Event, BusError> {
        match self.inner.publish_once(topic, payload.clone()).await {
            Ok(event) => Ok(event),
            Err(first) => {
                // The stream may be gone (deleted, or lost by the server): learn it afresh,
                // recreating it, and try once more. A publish with no stream reaches nobody.
                lock(&self.inner.epochs).remove(topic);
                self.inner.stream(topic).await.map_err(|_| first)?;
                self.inner.publish_once(topic, payload).await
            }
        }
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        live::Source::read(self.inner.as_ref(), topic, after, max).await
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
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
