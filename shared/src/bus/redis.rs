//! The Redis bus: Redis Streams keep each topic's shared history; pub/sub carries live events to
//! the instances that have local interest in a topic, and only to them.
//!
//! # Layout (every key and channel starts with the configured prefix `P`)
//!
//! - `P:t:{topic}` — a stream; an event with offset `n` is the entry `0-n` with one field `p`
//!   (the payload). Trimmed to `history_events` entries (exact `MAXLEN`) at every publish.
//! - `P:m:{topic}` — a hash: `epoch` (decimal u64, random) and `seq` (the last offset assigned).
//! - `P:c:{topic}` — the pub/sub channel; each message is `{epoch}:{offset}:{payload}`.
//!
//! Publishing is one Lua script, so offsets are assigned once, atomically, in the shared history:
//! it creates the epoch if the hash is missing (a fresh topic, or a broker that lost its data —
//! flushed, or restarted without persistence; any leftover stream is deleted with it, so a new
//! epoch always starts at offset 1), increments `seq`, adds the entry, trims, and publishes the
//! event on the channel. Reads are one script too (epoch, head, oldest retained, entries), and
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
//! nothing is queued while Redis is down. The dispatcher pings its connection, reconnects with
//! backoff, re-SUBSCRIBEs every channel with interest, and tells every subscription to resync —
//! so they get what they missed from the stream, or a gap when the stream lost it (a restart
//! without persistence means a new epoch). Subscriptions opened while Redis is down fail.
//!
//! Not done here: Redis Cluster (the keys of a topic would need a hash tag), and expiry of idle
//! topics' keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use redis::Value;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, oneshot};

use super::BusConfig;
use super::live::{self, Backoff, LiveFeed, LiveItem};
use super::{Bus, BusError, BusStats, Read, StartAt, Subscription};
use crate::event::{Event, Position, Topic};

/// Live events queued per subscription before it is told to resync from the stream.
const FEED_QUEUE: usize = 1024;

/// How often the dispatcher pings an idle pub/sub connection to notice a dead broker.
const PING_EVERY: Duration = Duration::from_secs(2);

const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local id = string.format('0-%d', seq)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], id, 'p', ARGV[1])
redis.call('PUBLISH', ARGV[4], epoch .. ':' .. string.format('%d', seq) .. ':' .. ARGV[1])
return {epoch, seq}
";

const READ: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', 0)
end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq'))
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local oldest = false
if first[1] then oldest = first[1][1] end
local entries = {}
if tonumber(ARGV[3]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
local last = {}
if ARGV[4] == '1' then last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1) end
return {epoch, seq, oldest, entries, last}
";

const LEASE_ACQUIRE: &str = r"
local h = redis.call('GET', KEYS[1])
if not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const LEASE_RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const LEASE_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// The Redis bus. Cheap to share: clone the `Arc` it is usually held in.
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Result<redis::Client, String>,
    prefix: String,
    history: usize,
    connect_timeout: Duration,
    op_timeout: Duration,
    backoff: Backoff,
    publish: redis::Script,
    read: redis::Script,
    lease_scripts: [redis::Script; 3],
    commands: tokio::sync::Mutex<Commands>,
    dispatcher: Mutex<Option<mpsc::UnboundedSender<Ctl>>>,
    /// Whether the dispatcher's pub/sub connection is up (it is not started until the first
    /// subscription; `true` until then so an idle bus is judged by its command connection).
    live_up: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    next_id: AtomicU64,
}

/// The command connection and when it may next be tried.
struct Commands {
    conn: Option<MultiplexedConnection>,
    retry_at: Option<Instant>,
    backoff: Backoff,
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
    /// A bus on the Redis at `config.broker_url()`. Connects lazily: a bus whose broker is down
    /// is built all the same and reports unavailable until the broker answers.
    pub fn new(config: &BusConfig) -> Self {
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
                history: config.history_events.max(1),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
                op_timeout: Duration::from_millis(config.operation_timeout_ms.max(1)),
                backoff: backoff.clone(),
                publish: redis::Script::new(PUBLISH),
                read: redis::Script::new(READ),
                lease_scripts: [
                    redis::Script::new(LEASE_ACQUIRE),
                    redis::Script::new(LEASE_RENEW),
                    redis::Script::new(LEASE_RELEASE),
                ],
                commands: tokio::sync::Mutex::new(Commands {
                    conn: None,
                    retry_at: None,
                    backoff,
                }),
                dispatcher: Mutex::new(None),
                live_up: Arc::new(AtomicBool::new(true)),
                received: Arc::new(AtomicU64::new(0)),
                next_id: AtomicU64::new(1),
            }),
        }
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

    fn client(&self) -> Result<&redis::Client, BusError> {
        self.client
            .as_ref()
            .map_err(|e| BusError::Unavailable(format!("redis: invalid bus.url: {e}")))
    }

    /// The command connection, opened if needed (and allowed by the backoff).
    async fn conn(&self) -> Result<MultiplexedConnection, BusError> {
        let client = self.client()?;
        let mut c = self.commands.lock().await;
        if let Some(conn) = &c.conn {
            return Ok(conn.clone());
        }
        if c.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(BusError::Unavailable(
                "redis: not connected (reconnecting)".into(),
            ));
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let opened = tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match opened {
            Ok(Ok(conn)) => {
                c.conn = Some(conn.clone());
                c.retry_at = None;
                c.backoff.reset();
                Ok(conn)
            }
            Ok(Err(e)) => {
                c.retry_at = Some(Instant::now() + c.backoff.delay());
                Err(unavailable(e))
            }
            Err(_) => {
                c.retry_at = Some(Instant::now() + c.backoff.delay());
                Err(BusError::Unavailable("redis: connect timed out".into()))
            }
        }
    }

    /// Forgets the command connection after it failed.
    async fn drop_conn(&self) {
        let mut c = self.commands.lock().await;
        if c.conn.take().is_some() {
            tracing::warn!("redis bus connection lost; reconnecting");
        }
        c.retry_at = Some(Instant::now() + c.backoff.delay());
    }

    /// Runs a script with a deadline, dropping the connection when it proves unusable.
    async fn run(&self, inv: redis::ScriptInvocation<'_>) -> Result<Value, BusError> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(self.op_timeout, inv.invoke_async::<Value>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if connection_lost(&e) {
                    self.drop_conn().await;
                }
                Err(unavailable(e))
            }
            Err(_) => {
                self.drop_conn().await;
                Err(BusError::Unavailable("redis: operation timed out".into()))
            }
        }
    }

    /// Epoch, head, oldest retained offset, the entries after `after` (up to `max`), and the
    /// last entry when `last` is asked for.
    async fn view(
        &self,
        topic: &Topic,
        after: u64,
        max: usize,
        last: bool,
    ) -> Result<View, BusError> {
        let mut inv = self.read.prepare_invoke();
        inv.key(self.stream_key(topic))
            .key(self.meta_key(topic))
            .arg(new_epoch().to_string())
            .arg(after)
            .arg(max)
            .arg(if last { "1" } else { "0" });
        let v = self.run(inv).await?;
        View::parse(topic, v).ok_or_else(|| unavailable("unexpected reply to the read script"))
    }

    fn dispatcher(&self) -> mpsc::UnboundedSender<Ctl> {
        let mut d = lock(&self.dispatcher);
        if let Some(tx) = d.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Dispatcher {
            client: self.client.as_ref().ok().cloned(),
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            backoff: self.backoff.clone(),
            channels: HashMap::new(),
            up: self.live_up.clone(),
            received: self.received.clone(),
        };
        tokio::spawn(task.run(rx));
        *d = Some(tx.clone());
        tx
    }
}

/// A random epoch: 63 bits, so it survives any signed 64-bit representation.
fn new_epoch() -> u64 {
    rand::random::<u64>() >> 1
}

/// The read script's answer.
struct View {
    epoch: u64,
    head: u64,
    oldest: u64,
    entries: Vec<Event>,
    last: Option<Event>,
}

impl View {
    fn parse(topic: &Topic, v: Value) -> Option<Self> {
        let Value::Array(mut parts) = v else {
            return None;
        };
        if parts.len() != 5 {
            return None;
        }
        let last = parts.pop()?;
        let entries = parts.pop()?;
        let oldest = parts.pop()?;
        let head = as_u64(&parts.pop()?)?;
        let epoch = as_u64(&parts.pop()?)?;
        let entry_list = |v: Value| -> Option<Vec<Event>> {
            let Value::Array(items) = v else {
                return None;
            };
            items
                .into_iter()
                .map(|item| entry(topic, epoch, item))
                .collect()
        };
        let oldest = match oldest {
            Value::Nil => head + 1,
            id => parse_id(&as_bytes(&id)?)?,
        };
        Some(Self {
            epoch,
            head,
            oldest,
            entries: entry_list(entries)?,
            last: entry_list(last)?.pop(),
        })
    }

    /// The answer to a read after `after`, as the trait describes it.
    fn read(self, after: Position) -> Read {
        let resume = Position {
            epoch: self.epoch,
            offset: self.oldest - 1,
        };
        let covered =
            after.epoch == self.epoch && after.offset >= resume.offset && after.offset <= self.head;
        if !covered {
            return Read::Gap { resume };
        }
        let next = self.entries.last().map_or(after, Event::position);
        Read::Events {
            events: self.entries,
            next,
        }
    }
}

fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(&as_bytes(other)?).ok()?.parse().ok(),
    }
}

/// The offset of a stream entry id `0-n`.
fn parse_id(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id.strip_prefix(b"0-")?)
        .ok()?
        .parse()
        .ok()
}

/// A stream entry `[id, [field, value, ...]]` as an event.
fn entry(topic: &Topic, epoch: u64, v: Value) -> Option<Event> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let Value::Array(fields) = parts.pop()? else {
        return None;
    };
    let offset = parse_id(&as_bytes(&parts.pop()?)?)?;
    let mut fields = fields.into_iter();
    let payload = loop {
        let name = as_bytes(&fields.next()?)?;
        let value = fields.next()?;
        if name == b"p" {
            break as_bytes(&value)?;
        }
    };
    Some(Event {
        topic: topic.clone(),
        epoch,
        offset,
        payload: Bytes::from(payload),
    })
}

/// A channel message `{epoch}:{offset}:{payload}` as an event.
fn channel_event(topic: &Topic, msg: &[u8]) -> Option<Event> {
    let mut parts = msg.splitn(3, |b| *b == b':');
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let payload = parts.next()?;
    Some(Event {
        topic: topic.clone(),
        epoch,
        offset,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<Event, BusError> {
        let inner = &self.inner;
        let mut inv = inner.publish.prepare_invoke();
        inv.key(inner.stream_key(topic))
            .key(inner.meta_key(topic))
            .arg(payload.as_ref())
            .arg(inner.history)
            .arg(new_epoch().to_string())
            .arg(inner.channel(topic));
        let v = inner.run(inv).await?;
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
        let after = match from {
            StartAt::Live => None,
            StartAt::After(p) => Some(p),
        };
        live::subscribe(self.inner.clone(), topic, after, self.inner.backoff.clone()).await
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
        match tokio::time::timeout(self.inner.op_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if connection_lost(&e) {
                    self.inner.drop_conn().await;
                }
                Err(unavailable(e))
            }
            Err(_) => {
                self.inner.drop_conn().await;
                Err(BusError::Unavailable("redis: ping timed out".into()))
            }
        }
    }
}

impl Inner {
    /// Runs lease script `which` (0 acquire, 1 renew, 2 release) on `name`'s key.
    async fn lease(
        &self,
        which: usize,
        name: &Topic,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BusError> {
        let mut inv = self.lease_scripts[which].prepare_invoke();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        inv.key(format!("{}:l:{name}", self.prefix))
            .arg(holder)
            .arg(ttl_ms);
        Ok(as_u64(&self.run(inv).await?) == Some(1))
    }
}

/// Leases in Redis: the key `P:l:{name}` holds the holder, with Redis's own expiry (`PX`);
/// renew and release compare the holder first, in one script.
#[async_trait::async_trait]
impl super::lease::Lease for RedisBus {
    async fn acquire(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        self.inner.lease(0, name, holder, ttl).await
    }

    async fn renew(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        self.inner.lease(1, name, holder, ttl).await
    }

    async fn release(&self, name: &Topic, holder: &str) -> Result<(), BusError> {
        self.inner
            .lease(2, name, holder, Duration::from_millis(1))
            .await
            .map(|_| ())
    }
}

#[async_trait::async_trait]
impl live::Source for Inner {
    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        let view = self.view(topic, after.offset, max, false).await?;
        Ok(view.read(after))
    }

    async fn open(
        &self,
        topic: &Topic,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let resync = Arc::new(Notify::new());
        let (done_tx, done_rx) = oneshot::channel();
        let dispatcher = self.dispatcher();
        let channel = self.channel(topic);
        let target = Target {
            topic: topic.clone(),
            tx,
            resync: resync.clone(),
        };
        dispatcher
            .send(Ctl::Subscribe {
                channel: channel.clone(),
                id,
                target,
                done: done_tx,
            })
            .map_err(|_| BusError::Closed)?;
        // The guard unsubscribes when the feed is dropped, whatever happens from here on.
        let guard = Unsubscribe {
            dispatcher,
            channel,
            id,
        };
        match tokio::time::timeout(self.op_timeout + self.connect_timeout, done_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(BusError::Closed),
            Err(_) => return Err(BusError::Unavailable("redis: subscribe timed out".into())),
        }
        // Subscribed before the head is read: nothing published from here on can be missed.
        let cursor = match after {
            Some(p) => p,
            None => {
                let view = self.view(topic, 0, 0, false).await?;
                Position {
                    epoch: view.epoch,
                    offset: view.head,
                }
            }
        };
        let feed = Feed {
            rx,
            resync,
            _guard: guard,
        };
        let stream = futures::stream::unfold(feed, |mut feed| async move {
            let item = tokio::select! {
                biased;
                item = feed.rx.recv() => LiveItem::Event(item?),
                () = feed.resync.notified() => LiveItem::Resync,
            };
            Some((item, feed))
        });
        Ok((Box::pin(stream), cursor))
    }
}

/// One subscription's end of the dispatcher.
struct Feed {
    rx: mpsc::Receiver<Event>,
    resync: Arc<Notify>,
    _guard: Unsubscribe,
}

struct Unsubscribe {
    dispatcher: mpsc::UnboundedSender<Ctl>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self.dispatcher.send(Ctl::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

/// Orders to the dispatcher. The queue is unbounded but holds at most two orders per
/// subscription (one subscribe, one unsubscribe), so it is bounded by the subscriptions.
enum Ctl {
    Subscribe {
        channel: String,
        id: u64,
        target: Target,
        done: oneshot::Sender<Result<(), BusError>>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
}

struct Target {
    topic: Topic,
    tx: mpsc::Sender<Event>,
    resync: Arc<Notify>,
}

/// The task owning the pub/sub connection: channels with interest, and who wants them.
struct Dispatcher {
    client: Option<redis::Client>,
    connect_timeout: Duration,
    op_timeout: Duration,
    backoff: Backoff,
    channels: HashMap<String, HashMap<u64, Target>>,
    up: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

impl Dispatcher {
    async fn run(mut self, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
        let mut conn: Option<(PubSubSink, PubSubStream)> = None;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            if conn.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.connect().await {
                    Ok(c) => {
                        conn = Some(c);
                        self.up.store(true, Ordering::Relaxed);
                        self.backoff.reset();
                        tracing::info!(
                            channels = self.channels.len(),
                            "redis bus pub/sub connected"
                        );
                        // Anything may have been published while we were away.
                        for target in self.channels.values().flat_map(HashMap::values) {
                            target.resync.notify_one();
                        }
                    }
                    Err(e) => {
                        self.up.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "redis bus pub/sub cannot connect; retrying");
                        retry_at = tokio::time::Instant::now() + self.backoff.delay();
                    }
                }
            }
            let Some((sink, stream)) = conn.as_mut() else {
                tokio::select! {
                    order = ctl.recv() => match order {
                        None => return,
                        Some(order) => self.order_while_down(order),
                    },
                    () = tokio::time::sleep_until(retry_at) => {}
                }
                continue;
            };
            let alive = tokio::select! {
                order = ctl.recv() => match order {
                    None => return,
                    Some(order) => self.order(sink, order).await,
                },
                msg = stream.next() => match msg {
                    None => false,
                    Some(msg) => {
                        self.deliver(&msg);
                        true
                    }
                },
                () = tokio::time::sleep(PING_EVERY) => {
                    matches!(
                        tokio::time::timeout(self.op_timeout, sink.ping::<String>()).await,
                        Ok(Ok(_))
                    )
                }
            };
            if !alive {
                tracing::warn!("redis bus pub/sub connection lost; reconnecting");
                conn = None;
                self.up.store(false, Ordering::Relaxed);
                retry_at = tokio::time::Instant::now() + self.backoff.delay();
            }
        }
    }

    /// Opens the pub/sub connection and subscribes every channel with interest.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), BusError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("redis: invalid bus.url".into()))?;
        let pubsub = tokio::time::timeout(self.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| BusError::Unavailable("redis: connect timed out".into()))?
            .map_err(unavailable)?;
        let (mut sink, stream) = pubsub.split();
        let channels: Vec<&String> = self.channels.keys().collect();
        if !channels.is_empty() {
            tokio::time::timeout(self.op_timeout, sink.subscribe(&channels))
                .await
                .map_err(|_| BusError::Unavailable("redis: subscribe timed out".into()))?
                .map_err(unavailable)?;
        }
        Ok((sink, stream))
    }

    /// Handles an order on a live connection; `false` when the connection proved dead.
    async fn order(&mut self, sink: &mut PubSubSink, order: Ctl) -> bool {
        match order {
            Ctl::Subscribe {
                channel,
                id,
                target,
                done,
            } => {
                if let Some(targets) = self.channels.get_mut(&channel) {
                    targets.insert(id, target);
                    let _ = done.send(Ok(()));
                    return true;
                }
                match tokio::time::timeout(self.op_timeout, sink.subscribe(&channel)).await {
                    Ok(Ok(())) => {
                        self.channels.insert(channel, HashMap::from([(id, target)]));
                        let _ = done.send(Ok(()));
                        true
                    }
                    Ok(Err(e)) => {
                        let _ = done.send(Err(unavailable(&e)));
                        !connection_lost(&e)
                    }
                    Err(_) => {
                        let _ = done.send(Err(BusError::Unavailable(
                            "redis: subscribe timed out".into(),
                        )));
                        false
                    }
                }
            }
            Ctl::Unsubscribe { channel, id } => {
                let Some(targets) = self.channels.get_mut(&channel) else {
                    return true;
                };
                targets.remove(&id);
                if !targets.is_empty() {
                    return true;
                }
                self.channels.remove(&channel);
                match tokio::time::timeout(self.op_timeout, sink.unsubscribe(&channel)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => !connection_lost(&e),
                    Err(_) => false,
                }
            }
        }
    }

    /// Handles an order while disconnected: subscriptions fail (a subscriber must learn that
    /// the bus is down); unsubscriptions only forget.
    fn order_while_down(&mut self, order: Ctl) {
        match order {
            Ctl::Subscribe { done, .. } => {
                let _ = done.send(Err(BusError::Unavailable(
                    "redis: pub/sub not connected (reconnecting)".into(),
                )));
            }
            Ctl::Unsubscribe { channel, id } => {
                if let Some(targets) = self.channels.get_mut(&channel) {
                    targets.remove(&id);
                    if targets.is_empty() {
                        self.channels.remove(&channel);
                    }
                }
            }
        }
    }

    fn deliver(&self, msg: &redis::Msg) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let Some(targets) = self.channels.get(msg.get_channel_name()) else {
            return; // An unsubscribed channel's last messages.
        };
        for target in targets.values() {
            let Some(event) = channel_event(&target.topic, msg.get_payload_bytes()) else {
                tracing::warn!(
                    channel = msg.get_channel_name(),
                    "malformed bus message ignored"
                );
                target.resync.notify_one();
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = target.tx.try_send(event) {
                // Never wait for a subscriber: it catches up from the stream instead.
                target.resync.notify_one();
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
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<Value, BusError> {
        self.inner.run(inv).await
    }
}
