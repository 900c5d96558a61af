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
//! Not done here: one stream per topic costs the server a stream per topic ever used (fine for
//! thousands, not for millions: per-subject sequences in one stream would need an offset index);
//! reads fetch messages one request each (pipelined), as NATS 2.9 has no batched direct get.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{OnceCell, watch};

use super::BusConfig;
use super::live::{self, Backoff, LiveFeed, LiveItem};
use super::{Bus, BusError, BusStats, Read, StartAt, Subscription};
use crate::event::{Event, Position, Topic};

/// Messages the client buffers per subscription before it drops (and the driver resyncs).
const SUBSCRIPTION_CAPACITY: usize = 4096;

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

/// A topic name as a stream-name and subject token (see the module docs).
fn encode(topic: &Topic) -> String {
    let mut out = String::with_capacity(topic.as_str().len() + 8);
    for c in topic.as_str().chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            ':' => out.push_str("_c"),
            '/' => out.push_str("_s"),
            c => out.push(c),
        }
    }
    if out.len() > 200 {
        // FNV-1a over the whole name keeps long names apart after the cut.
        let hash = topic
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        let mut cut = 150;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("_h{hash:016x}"));
    }
    out
}

/// How many times the client has connected so far.
fn connects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// The epoch of a stream: its creation time in nanoseconds (63 bits).
fn epoch_of(info: &stream::Info) -> u64 {
    let nanos = info.created.unix_timestamp_nanos();
    (u64::try_from(nanos).unwrap_or(0) & (u64::MAX >> 1)).max(1)
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

/// A stream's state as one read needs it.
struct Head {
    epoch: u64,
    /// The oldest retained offset (the next one when none is retained).
    oldest: u64,
    last: u64,
}

impl Inner {
    fn stream_name(&self, topic: &Topic) -> String {
        format!("{}_{}", self.prefix, encode(topic))
    }

    fn subject(&self, topic: &Topic) -> String {
        format!("{}.t.{}", self.prefix, encode(topic))
    }

    /// The client and JetStream context, created on first use; connected or not.
    async fn client(&self) -> Result<&(async_nats::Client, jetstream::Context), BusError> {
        let generation = self.generation.clone();
        let (initial, max) = self.reconnect;
        let made = self
            .conn
            .get_or_init(|| async {
                let options = async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(self.connect_timeout)
                    .request_timeout(Some(self.op_timeout))
                    .subscription_capacity(SUBSCRIPTION_CAPACITY)
                    .reconnect_delay_callback(move |attempts| {
                        let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                        crate::backoff::Backoff::new(initial, max).delay(attempt)
                    })
                    .event_callback(move |event| {
                        let generation = generation.clone();
                        async move {
                            match event {
                                async_nats::Event::Connected => {
                                    tracing::info!("nats bus connected");
                                    generation.send_modify(|g| *g += 1);
                                }
                                async_nats::Event::Disconnected => {
                                    tracing::warn!("nats bus disconnected; reconnecting");
                                    generation.send_modify(|g| *g += 1);
                                }
                                other => tracing::debug!(event = %other, "nats bus event"),
                            }
                        }
                    });
                match options.connect(self.url.as_str()).await {
                    Ok(client) => {
                        // The client connects in the background: give it the connect timeout
                        // (and its connected event) before the first operation is judged.
                        let mut events = self.generation.subscribe();
                        let ready = tokio::time::timeout(self.connect_timeout, async {
                            while client.connection_state() != State::Connected
                                || *events.borrow_and_update() == 0
                            {
                                tokio::select! {
                                    _ = events.changed() => {}
                                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                                }
                            }
                        })
                        .await;
                        if ready.is_err() {
                            tracing::warn!(url = %self.url, "nats bus not connected yet; retrying in the background");
                        }
                        let js = jetstream::new(client.clone());
                        Ok((client, js))
                    }
                    Err(e) => {
                        tracing::error!(url = %self.url, error = %e, "nats bus cannot be set up");
                        Err(e.to_string())
                    }
                }
            })
            .await;
        made.as_ref().map_err(unavailable)
    }

    /// The client and JetStream context if connected right now.
    async fn connected(&self) -> Result<&(async_nats::Client, jetstream::Context), BusError> {
        let conn = self.client().await?;
        if conn.0.connection_state() != State::Connected {
            return Err(BusError::Unavailable(
                "nats: not connected (reconnecting)".into(),
            ));
        }
        Ok(conn)
    }

    async fn deadline<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(BusError::Unavailable(format!("nats: {what} timed out"))),
        }
    }

    /// The topic's stream (created if missing), with fresh info.
    async fn stream(&self, topic: &Topic) -> Result<stream::Stream, BusError> {
        let (_, js) = self.connected().await?;
        let config = stream::Config {
            name: self.stream_name(topic),
            subjects: vec![self.subject(topic)],
            description: Some(format!("switchyard topic {topic}")),
            max_messages: i64::try_from(self.history).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            duplicate_window: Duration::from_secs(1),
            ..Default::default()
        };
        let connects = connects(&self.connected().await?.0);
        let stream = self
            .deadline("stream lookup", js.get_or_create_stream(config))
            .await?;
        let epoch = epoch_of(stream.cached_info());
        lock(&self.epochs).insert(topic.clone(), (epoch, connects));
        Ok(stream)
    }

    /// The cached epoch of the topic's stream, learning it when unknown or stale.
    async fn epoch(&self, topic: &Topic) -> Result<u64, BusError> {
        let connects = connects(&self.connected().await?.0);
        let cached = lock(&self.epochs).get(topic).copied();
        match cached {
            Some((epoch, c)) if c == connects => Ok(epoch),
            _ => Ok(epoch_of(self.stream(topic).await?.cached_info())),
        }
    }

    async fn head(&self, topic: &Topic) -> Result<(stream::Stream, Head), BusError> {
        let stream = self.stream(topic).await?;
        let info = stream.cached_info();
        let state = &info.state;
        let head = Head {
            epoch: epoch_of(info),
            oldest: if state.messages == 0 {
                state.last_sequence + 1
            } else {
                state.first_sequence
            },
            last: state.last_sequence,
        };
        Ok((stream, head))
    }

    async fn get(
        &self,
        stream: &stream::Stream,
        topic: &Topic,
        epoch: u64,
        seq: u64,
    ) -> Result<Event, BusError> {
        let msg = self
            .deadline("message read", stream.get_raw_message(seq))
            .await?;
        Ok(Event {
            topic: topic.clone(),
            epoch,
            offset: msg.sequence,
            payload: msg.payload,
        })
    }

    async fn publish_once(&self, topic: &Topic, payload: Bytes) -> Result<Event, BusError> {
        let epoch = self.epoch(topic).await?;
        let (_, js) = self.connected().await?;
        let ack = self
            .deadline("publish", async {
                js.publish(self.subject(topic), payload.clone())
                    .await?
                    .await
            })
            .await?;
        Ok(Event {
            topic: topic.clone(),
            epoch,
            offset: ack.sequence,
            payload,
        })
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
        let after = match from {
            StartAt::Live => None,
            StartAt::After(p) => Some(p),
        };
        live::subscribe(self.inner.clone(), topic, after, self.inner.backoff.clone()).await
    }

    async fn check(&self) -> Result<(), BusError> {
        // A round trip to the server (the account-info API is not used: its reply shape differs
        // between server versions).
        let (client, _) = self.inner.connected().await?;
        self.inner.deadline("ping", client.flush()).await
    }
}

/// A lease's holder and the sequence of the message that says so.
struct Held {
    holder: Bytes,
    seq: u64,
}

impl Inner {
    /// The names of the streams starting with `start`.
    async fn stream_names(&self, start: &str) -> Result<Vec<String>, BusError> {
        let (_, js) = self.connected().await?;
        let mut all = js.stream_names();
        let mut names = Vec::new();
        let listed = tokio::time::timeout(self.op_timeout * 4, async {
            while let Some(name) = all.next().await {
                let name = name.map_err(unavailable)?;
                if name.starts_with(start) {
                    names.push(name);
                }
            }
            Ok::<(), BusError>(())
        })
        .await;
        match listed {
            Ok(r) => r.map(|()| names),
            Err(_) => Err(BusError::Unavailable(
                "nats: stream listing timed out".into(),
            )),
        }
    }

    /// The lease stream of one time to live (`max_age` is per stream), created if missing, and
    /// the subject of `name` in it.
    async fn lease_stream(
        &self,
        name: &Topic,
        ttl: Duration,
    ) -> Result<(stream::Stream, String), BusError> {
        let (_, js) = self.connected().await?;
        let ttl = ttl.max(Duration::from_millis(100));
        let ttl_ms = ttl.as_millis();
        let config = stream::Config {
            name: format!("{}_lease_{ttl_ms}", self.prefix),
            subjects: vec![format!("{}.lease.{ttl_ms}.>", self.prefix)],
            description: Some("switchyard leases".into()),
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        };
        let stream = self
            .deadline("lease stream lookup", js.get_or_create_stream(config))
            .await?;
        Ok((
            stream,
            format!("{}.lease.{ttl_ms}.{}", self.prefix, encode(name)),
        ))
    }

    async fn lease_holder(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<Held>, BusError> {
        let last = tokio::time::timeout(
            self.op_timeout,
            stream.get_last_raw_message_by_subject(subject),
        )
        .await
        .map_err(|_| BusError::Unavailable("nats: lease read timed out".into()))?;
        match last {
            Ok(msg) => Ok(Some(Held {
                holder: msg.payload,
                seq: msg.sequence,
            })),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Writes `holder` as the lease's message if the subject's last sequence is still `seq`
    /// (0: no message). `false` when someone else wrote first.
    async fn lease_write(&self, subject: &str, holder: &str, seq: u64) -> Result<bool, BusError> {
        let (_, js) = self.connected().await?;
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::copy_from_slice(holder.as_bytes()))
            .expected_last_subject_sequence(seq);
        let sent = tokio::time::timeout(self.op_timeout, async {
            js.send_publish(subject.to_owned(), message).await?.await
        })
        .await
        .map_err(|_| BusError::Unavailable("nats: lease write timed out".into()))?;
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// Leases in NATS: one JetStream stream per time to live, one message per lease (the holder),
/// expired by the server (`max_age`); every write is a compare-and-set on the subject's last
/// sequence, so two instances never both win.
#[async_trait::async_trait]
impl super::lease::Lease for NatsBus {
    async fn acquire(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        let inner = &self.inner;
        let (stream, subject) = inner.lease_stream(name, ttl).await?;
        match inner.lease_holder(&stream, &subject).await? {
            None => inner.lease_write(&subject, holder, 0).await,
            Some(held) if held.holder == holder.as_bytes() => {
                inner.lease_write(&subject, holder, held.seq).await
            }
            Some(_) => Ok(false),
        }
    }

    async fn renew(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        let inner = &self.inner;
        let (stream, subject) = inner.lease_stream(name, ttl).await?;
        match inner.lease_holder(&stream, &subject).await? {
            Some(held) if held.holder == holder.as_bytes() => {
                inner.lease_write(&subject, holder, held.seq).await
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, name: &Topic, holder: &str) -> Result<(), BusError> {
        // The time to live is part of the stream's name; release looks in the streams of every
        // time to live this lease could have been taken with.
        let inner = &self.inner;
        let start = format!("{}_lease_", inner.prefix);
        let names = inner.stream_names(&start).await?;
        for stream_name in names {
            let Some(ttl_ms) = stream_name
                .strip_prefix(&start)
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let (stream, subject) = inner
                .lease_stream(name, Duration::from_millis(ttl_ms))
                .await?;
            if let Some(held) = inner.lease_holder(&stream, &subject).await?
                && held.holder == holder.as_bytes()
            {
                inner
                    .deadline("lease release", stream.delete_message(held.seq))
                    .await?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl live::Source for Inner {
    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        let (stream, head) = self.head(topic).await?;
        let resume = Position {
            epoch: head.epoch,
            offset: head.oldest - 1,
        };
        let covered =
            after.epoch == head.epoch && after.offset >= resume.offset && after.offset <= head.last;
        if !covered {
            return Ok(Read::Gap { resume });
        }
        let end = head.last.min(
            after
                .offset
                .saturating_add(u64::try_from(max).unwrap_or(u64::MAX)),
        );
        let reads = (after.offset + 1..=end).map(|seq| self.get(&stream, topic, head.epoch, seq));
        match futures::future::try_join_all(reads).await {
            Ok(events) => {
                let next = events.last().map_or(after, Event::position);
                Ok(Read::Events { events, next })
            }
            Err(e) => {
                // Trimmed between the info and the reads: the next read answers with the gap.
                let (_, now) = self.head(topic).await?;
                if now.oldest > after.offset + 1 {
                    Ok(Read::Gap {
                        resume: Position {
                            epoch: now.epoch,
                            offset: now.oldest - 1,
                        },
                    })
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn open(
        &self,
        topic: &Topic,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError> {
        // Subscribed first: a connection change while the consumer is made ends the feed too.
        let gen_rx = self.generation.subscribe();
        let (stream, head) = self.head(topic).await?;
        let cursor = after.unwrap_or(Position {
            epoch: head.epoch,
            offset: head.last,
        });
        let (client, _) = self.connected().await?;
        let config = consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: self.subject(topic),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: cursor.offset + 1,
            },
            ..Default::default()
        };
        let consumer = self
            .deadline("consumer create", stream.create_consumer(config))
            .await?;
        let messages = self.deadline("consumer start", consumer.messages()).await?;
        let (epoch, topic, received) = (head.epoch, topic.clone(), self.received.clone());
        let state = (messages, gen_rx);
        let feed = futures::stream::unfold(state, move |(mut messages, mut gen_rx)| {
            let topic = topic.clone();
            let received = received.clone();
            async move {
                let msg = tokio::select! {
                    msg = messages.next() => msg?.ok()?,
                    // The connection dropped or came back: the server may have lost the stream.
                    _ = gen_rx.changed() => return None,
                };
                received.fetch_add(1, Ordering::Relaxed);
                let item = match msg.info() {
                    Ok(info) => LiveItem::Event(Event {
                        topic,
                        epoch,
                        offset: info.stream_sequence,
                        payload: msg.payload.clone(),
                    }),
                    Err(_) => LiveItem::Resync,
                };
                Some((item, (messages, gen_rx)))
            }
        });
        Ok((Box::pin(feed), cursor))
    }
}

/// Plumbing for the core's other shared state on this server (rate limits, records): a stream
/// of one message per subject, read by subject and written with compare-and-set, like leases.
impl NatsBus {
    /// The stream `P_{name}` on subjects `P.{token}.>` (one message per subject, messages older
    /// than `max_age` dropped when given), created if missing; and the subject prefix
    /// `P.{token}.`. `name` must not be producible by a topic's encoding (use a `_` followed
    /// by a digit in it).
    pub(crate) async fn cas_stream(
        &self,
        name: &str,
        token: &str,
        max_age: Option<Duration>,
    ) -> Result<(stream::Stream, String), BusError> {
        let inner = &self.inner;
        let (_, js) = inner.connected().await?;
        let config = stream::Config {
            name: format!("{}_{name}", inner.prefix),
            subjects: vec![format!("{}.{token}.>", inner.prefix)],
            description: Some("switchyard shared state".into()),
            max_messages_per_subject: 1,
            max_age: max_age.unwrap_or_default(),
            duplicate_window: max_age
                .unwrap_or(Duration::from_secs(120))
                .min(Duration::from_secs(120)),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        };
        let stream = inner
            .deadline("state stream lookup", js.get_or_create_stream(config))
            .await?;
        Ok((stream, format!("{}.{token}.", inner.prefix)))
    }

    /// The last message on `subject` and its sequence, if any.
    pub(crate) async fn cas_get(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<(Bytes, u64)>, BusError> {
        Ok(self
            .inner
            .lease_holder(stream, subject)
            .await?
            .map(|h| (h.holder, h.seq)))
    }

    /// Writes `payload` on `subject` if its last sequence is still `seq` (0: no message yet);
    /// `false` when another writer came first.
    pub(crate) async fn cas_put(
        &self,
        subject: &str,
        payload: &[u8],
        seq: u64,
    ) -> Result<bool, BusError> {
        let (_, js) = self.inner.connected().await?;
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::copy_from_slice(payload))
            .expected_last_subject_sequence(seq);
        let sent = tokio::time::timeout(self.inner.op_timeout, async {
            js.send_publish(subject.to_owned(), message).await?.await
        })
        .await
        .map_err(|_| BusError::Unavailable("nats: write timed out".into()))?;
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_encode_apart_and_within_limits() {
        let t = |s: &str| encode(&Topic::new(s).expect("topic"));
        assert_eq!(t("rates.EUR/USD"), "rates_dEUR_sUSD");
        assert_eq!(t("a:b_c-d"), "a_cb__c-d");
        assert_ne!(t("a_d"), t("a.d"));
        assert_ne!(t("a__"), t("a_d_"));
        let long_a = format!("{}a", "_".repeat(199));
        let long_b = format!("{}b", "_".repeat(199));
        assert!(t(&long_a).len() <= 200);
        assert_ne!(t(&long_a), t(&long_b));
        assert!(
            t(&long_a)
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }
}
