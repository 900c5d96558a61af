//! Upstream WebSocket bridges: one connection to a backend's own WebSocket API, carrying one
//! upstream watch per topic that has local interest, however many local subscribers it has.
//!
//! A bridge is an interest-driven publisher. Callers (the hub, through [`Feeder`]) take a
//! [`WatchGuard`] per topic; the bridge keeps the set of wanted topics with a reference count each,
//! and one task per bridge reconciles that *desired* set with what it has asked the upstream for
//! on its current connection: it sends a watch frame for every wanted topic not yet watched and an
//! unwatch frame for every watched topic no longer wanted. Each upstream message for a watched
//! topic is published on the bus, which assigns its offset; the hub's pump fans it out like any
//! other event. Because the task works from the desired *state* rather than a queue of commands,
//! the hand-over from guards to the task is bounded however fast guards come and go, and
//! resubscribing after a reconnect is the same reconciliation from an empty connection.
//!
//! The connection is lazy: it is opened when the first topic is wanted, and closed when nothing is
//! wanted any more. A failed connect or a lost connection is retried with exponential backoff and
//! full jitter (`reconnect_initial_ms` doubling up to `reconnect_max_ms`); an opening connection
//! has a deadline (`connect_timeout_ms`); inbound messages are capped at [`MAX_MESSAGE_BYTES`], and
//! a silent connection is probed with pings and dropped when nothing answers.
//!
//! What this module deliberately does not do: it does not know any upstream's protocol (an
//! [`UpstreamProtocol`] supplied from outside encodes watches and decodes messages), it does not
//! interpret payloads, and it cannot recover upstream messages sent while the connection was down
//! (upstream WebSocket APIs have no resume): that suits state topics, which only need the next
//! value. It speaks `ws://`, and `wss://` with rustls and the bridge's
//! [`TlsConfig`](crate::tls::TlsConfig) (extra CA roots, client certificate); a TLS setting that
//! cannot be used (a missing file, `tls` on a `ws://` URL) is logged when the bridge starts and
//! fails every connect attempt with that reason.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::backoff::Backoff;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::{CancellationToken, DropGuard};

mod config;

pub use config::BridgeConfig;

use crate::bus::Bus;
use crate::event::Topic;
use crate::hub::Feeder;

/// Largest message (and frame) accepted from an upstream; a larger one drops the connection, which
/// is then reopened like any lost connection.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Longest time one batch of frames may take to write before the connection counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time between two pings on a connection; one that has received nothing since the last ping
/// when the next is due counts as lost (a half-open TCP connection is otherwise never noticed).
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Longest time the close handshake is waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Characters of an upstream error or undecodable frame shown in logs.
const LOGGED_CHARS: usize = 256;

/// An upstream's own WebSocket protocol: how to ask it for a topic and how to read its messages.
///
/// Implemented outside the core, next to the knowledge of the upstream's API. Frames are text;
/// binary messages from the upstream are logged and ignored.
pub trait UpstreamProtocol: Send + Sync + 'static {
    /// The text frame that starts the upstream sending `topic`, or `None` when this upstream does
    /// not serve that topic.
    fn watch(&self, topic: &Topic) -> Option<String>;

    /// The text frame that stops the upstream sending `topic`, or `None` when there is nothing to
    /// send.
    fn unwatch(&self, topic: &Topic) -> Option<String>;

    /// Reads one text message from the upstream. Must not panic, whatever the input.
    fn decode(&self, frame: &str) -> Decoded;
}

/// What one upstream message means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// An event to publish on `topic`.
    Event {
        /// Where to publish it.
        topic: Topic,
        /// The payload, as gateways will decode it.
        payload: Bytes,
    },
    /// A message with nothing to publish (an acknowledgement, a heartbeat).
    Ignore,
    /// The upstream reported an error, or the message could not be read. Logged; the connection
    /// stays up.
    Error(String),
}

/// A bridge's counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeStats {
    /// Whether the upstream connection is open right now.
    pub connected: bool,
    /// Topics with at least one watch: the bridge holds (or is restoring) one upstream watch for
    /// each.
    pub watched_topics: usize,
    /// Upstream connections opened since start.
    pub connects_total: u64,
    /// Upstream messages published on the bus since start.
    pub events_total: u64,
}

/// A handle to one upstream WebSocket bridge; clones share the bridge.
///
/// The bridge's task stops, closing the upstream connection, when [`UpstreamBridge::shutdown`] is
/// called or the last handle is dropped. Outstanding [`WatchGuard`]s do not keep it running.
#[derive(Clone)]
pub struct UpstreamBridge {
    handle: Arc<Handle>,
}

/// Owned by the handles only: dropping the last one stops the task.
struct Handle {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// What the handles, the guards and the task share.
struct Shared {
    name: String,
    protocol: Arc<dyn UpstreamProtocol>,
    /// Wanted topics and how many guards want each (never zero: a topic at zero is removed).
    desired: Mutex<HashMap<Topic, usize>>,
    /// Wakes the task when `desired` changes (one stored permit at most, so it is bounded too).
    changed: Notify,
    stop: CancellationToken,
    connected: AtomicBool,
    connects_total: AtomicU64,
    events_total: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only update a counter map; poisoning cannot leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UpstreamBridge {
    /// Starts the bridge named `name` (used in logs) to `config.url`, publishing on `bus` what
    /// `protocol` decodes. Spawns its one task on the current tokio runtime; nothing is connected
    /// until a topic is watched.
    pub fn start(
        name: &str,
        config: &BridgeConfig,
        protocol: Arc<dyn UpstreamProtocol>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            protocol,
            desired: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            stop: stop.clone(),
            connected: AtomicBool::new(false),
            connects_total: AtomicU64::new(0),
            events_total: AtomicU64::new(0),
        });
        let timings = Timings::from(config);
        let tls = tls_connector(config);
        if let Err(error) = &tls {
            tracing::error!(bridge = %name, url = %config.url, %error, "unusable TLS settings");
        }
        tokio::spawn(run(shared.clone(), config.url.clone(), tls, timings, bus));
        Self {
            handle: Arc::new(Handle {
                shared,
                _stop: stop.drop_guard(),
            }),
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// Wants `topic` until the returned guard is dropped. The first guard of a topic makes the
    /// bridge watch it upstream (connecting if needed); dropping the last one unwatches it, and
    /// closes the connection when no topic is wanted any more.
    pub fn watch(&self, topic: &Topic) -> WatchGuard {
        let shared = &self.handle.shared;
        let first = {
            let mut desired = lock(&shared.desired);
            let refs = desired.entry(topic.clone()).or_insert(0);
            *refs += 1;
            *refs == 1
        };
        if first {
            shared.changed.notify_one();
        }
        WatchGuard {
            shared: shared.clone(),
            topic: topic.clone(),
        }
    }

    /// The bridge's counters now.
    pub fn stats(&self) -> BridgeStats {
        let shared = &self.handle.shared;
        BridgeStats {
            connected: shared.connected.load(Ordering::SeqCst),
            watched_topics: lock(&shared.desired).len(),
            connects_total: shared.connects_total.load(Ordering::SeqCst),
            events_total: shared.events_total.load(Ordering::SeqCst),
        }
    }

    /// Stops the bridge: its task closes the upstream connection and ends. Watches taken later
    /// are counted but never sent upstream.
    pub fn shutdown(&self) {
        self.handle.shared.stop.cancel();
    }
}

impl fmt::Debug for UpstreamBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBridge")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Feeder for UpstreamBridge {
    /// A [`WatchGuard`] for `topic`, when the bridge's protocol serves it.
    fn feed(&self, topic: &Topic) -> Option<Box<dyn Any + Send>> {
        self.handle.shared.protocol.watch(topic)?;
        Some(Box::new(self.watch(topic)))
    }
}

/// One caller's interest in a topic of a bridge; dropping it releases that interest.
pub struct WatchGuard {
    shared: Arc<Shared>,
    topic: Topic,
}

impl WatchGuard {
    /// The watched topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }
}

impl fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchGuard")
            .field("bridge", &self.shared.name)
            .field("topic", &self.topic)
            .finish()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let last = {
            let mut desired = lock(&self.shared.desired);
            match desired.get_mut(&self.topic) {
                Some(refs) if *refs > 1 => {
                    *refs -= 1;
                    false
                }
                Some(_) => {
                    desired.remove(&self.topic);
                    true
                }
                None => false,
            }
        };
        if last {
            self.shared.changed.notify_one();
        }
    }
}

/// The timings of [`BridgeConfig`], as durations.
#[derive(Debug, Clone, Copy)]
struct Timings {
    connect_timeout: Duration,
    reconnect_initial_ms: u64,
    reconnect_max_ms: u64,
}

impl From<&BridgeConfig> for Timings {
    fn from(c: &BridgeConfig) -> Self {
        Self {
            connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
            reconnect_initial_ms: c.reconnect_initial_ms,
            reconnect_max_ms: c.reconnect_max_ms,
        }
    }
}

/// The frames that bring an upstream connection from watching `upstream` to watching `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Topics to watch, in order.
    watch: Vec<Topic>,
    /// Topics to unwatch, in order.
    unwatch: Vec<Topic>,
}

fn plan(desired: &HashMap<Topic, usize>, upstream: &BTreeSet<Topic>) -> Plan {
    let mut watch: Vec<Topic> = desired
        .keys()
        .filter(|t| !upstream.contains(*t))
        .cloned()
        .collect();
    watch.sort();
    let unwatch = upstream
        .iter()
        .filter(|t| !desired.contains_key(*t))
        .cloned()
        .collect();
    Plan { watch, unwatch }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection ended.
enum End {
    /// The bridge was stopped.
    Stopped,
    /// Nothing is wanted any more; the connection was closed on purpose.
    Idle,
    /// The connection failed; `healthy` when the upstream had answered sensibly on it first.
    Lost { healthy: bool },
}

/// The bridge's task: waits for interest, connects, serves the connection, and reconnects with
/// backoff until stopped.
async fn run(
    shared: Arc<Shared>,
    url: String,
    tls: Result<Option<Connector>, String>,
    timings: Timings,
    bus: Arc<dyn Bus>,
) {
    let name = shared.name.clone();
    let mut failures: u32 = 0;
    loop {
        if !wait_for_interest(&shared).await {
            break;
        }
        let attempt = tokio::select! {
            () = shared.stop.cancelled() => break,
            r = connect(&url, &tls, timings.connect_timeout) => r,
        };
        match attempt {
            Ok(ws) => {
                shared.connects_total.fetch_add(1, Ordering::SeqCst);
                shared.connected.store(true, Ordering::SeqCst);
                tracing::info!(bridge = %name, %url, "upstream connected");
                let end = serve(&shared, bus.as_ref(), ws).await;
                shared.connected.store(false, Ordering::SeqCst);
                match end {
                    End::Stopped => break,
                    End::Idle => {
                        tracing::debug!(bridge = %name, "nothing watched; upstream closed");
                        failures = 0;
                        continue;
                    }
                    End::Lost { healthy } => {
                        if healthy {
                            failures = 0;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(bridge = %name, %url, %error, failures, "upstream connect failed");
            }
        }
        // Full jitter, so that many bridges that lost the same upstream do not reconnect in step.
        let wait = Backoff::from_millis(timings.reconnect_initial_ms, timings.reconnect_max_ms)
            .delay(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            () = shared.stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!(bridge = %name, "bridge stopped");
}

/// Waits until some topic is wanted (true) or the bridge is stopped (false).
async fn wait_for_interest(shared: &Shared) -> bool {
    loop {
        if shared.stop.is_cancelled() {
            return false;
        }
        if !lock(&shared.desired).is_empty() {
            return true;
        }
        // A change made between the check and this wait left a permit: no wake-up is lost.
        tokio::select! {
            () = shared.stop.cancelled() => return false,
            () = shared.changed.notified() => {}
        }
    }
}

/// The TLS connector of a `wss://` bridge (`None` for `ws://`), or why its settings are unusable.
fn tls_connector(config: &BridgeConfig) -> Result<Option<Connector>, String> {
    let secure = config
        .url
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("wss://"));
    if secure {
        crate::tls::client_config(&config.tls, &[])
            .map(|c| Some(Connector::Rustls(c)))
            .map_err(|e| format!("bridge `{}`: {e}", config.url))
    } else if config.tls.is_set() {
        Err(format!(
            "bridge `{}`: tls settings need a wss:// url",
            config.url
        ))
    } else {
        Ok(None)
    }
}

async fn connect(
    url: &str,
    tls: &Result<Option<Connector>, String>,
    timeout: Duration,
) -> Result<Ws, String> {
    let connector = tls.clone()?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    match tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector),
    )
    .await
    {
        Err(_) => Err(format!("no connection within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// Serves one open connection: keeps its watches equal to the desired set and publishes what
/// the upstream sends for them, until the bridge stops, nothing is wanted, or the connection fails.
async fn serve(shared: &Shared, bus: &dyn Bus, mut ws: Ws) -> End {
    let name = shared.name.as_str();
    // Topics asked for on this connection (a fresh connection has none: everything is re-sent).
    let mut upstream: BTreeSet<Topic> = BTreeSet::new();
    let mut healthy = false;
    let mut heard = true;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (Plan { watch, unwatch }, idle) = {
            let desired = lock(&shared.desired);
            (plan(&desired, &upstream), desired.is_empty())
        };
        let mut frames = Vec::with_capacity(watch.len() + unwatch.len());
        for topic in unwatch {
            if let Some(frame) = shared.protocol.unwatch(&topic) {
                frames.push(Message::text(frame));
            }
            tracing::debug!(bridge = %name, %topic, "unwatching upstream");
            upstream.remove(&topic);
        }
        for topic in watch {
            match shared.protocol.watch(&topic) {
                Some(frame) => {
                    tracing::debug!(bridge = %name, %topic, "watching upstream");
                    frames.push(Message::text(frame));
                }
                // Recorded anyway, so an unserved topic is not retried on every change.
                None => tracing::warn!(bridge = %name, %topic, "upstream does not serve topic"),
            }
            upstream.insert(topic);
        }
        if !frames.is_empty()
            && let Err(error) = send(&mut ws, frames).await
        {
            tracing::warn!(bridge = %name, %error, "upstream write failed; reconnecting");
            return End::Lost { healthy };
        }
        if idle {
            close(ws).await;
            return End::Idle;
        }
        // Unbiased: neither a busy upstream nor churning watches can starve the other.
        let msg = tokio::select! {
            () = shared.stop.cancelled() => {
                close(ws).await;
                return End::Stopped;
            }
            () = shared.changed.notified() => continue,
            _ = ping.tick() => {
                if !heard {
                    tracing::warn!(bridge = %name, "upstream silent; reconnecting");
                    return End::Lost { healthy };
                }
                heard = false;
                if let Err(error) = send(&mut ws, vec![Message::Ping(Bytes::new())]).await {
                    tracing::warn!(bridge = %name, %error, "upstream write failed; reconnecting");
                    return End::Lost { healthy };
                }
                continue;
            }
            msg = ws.next() => msg,
        };
        heard = true;
        let text = match msg {
            None => {
                tracing::warn!(bridge = %name, "upstream closed the connection; reconnecting");
                return End::Lost { healthy };
            }
            Some(Err(error)) => {
                tracing::warn!(bridge = %name, %error, "upstream read failed; reconnecting");
                return End::Lost { healthy };
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(data))) => {
                tracing::warn!(bridge = %name, bytes = data.len(), "binary upstream message ignored");
                continue;
            }
            // Pings are answered by the WebSocket layer; after a Close the next read ends.
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_),
            )) => {
                continue;
            }
        };
        match shared.protocol.decode(text.as_str()) {
            Decoded::Event { topic, payload } => {
                healthy = true;
                if !upstream.contains(&topic) {
                    // In flight when it was unwatched, or never asked for: nobody wants it.
                    tracing::debug!(bridge = %name, %topic, "upstream event for an unwatched topic dropped");
                    continue;
                }
                match bus.publish(&topic, payload).await {
                    Ok(_) => {
                        shared.events_total.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => {
                        tracing::warn!(bridge = %name, %topic, %error, "publishing an upstream event failed");
                    }
                }
            }
            Decoded::Ignore => healthy = true,
            Decoded::Error(error) => {
                let error: String = error.chars().take(LOGGED_CHARS).collect();
                tracing::warn!(bridge = %name, %error, "upstream message refused or unreadable");
            }
        }
    }
}

async fn send(ws: &mut Ws, frames: Vec<Message>) -> Result<(), String> {
    let write = async {
        for frame in frames {
            ws.feed(frame).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(format!("write not done within {WRITE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(())) => Ok(()),
    }
}

/// Sends a Close frame and waits briefly for the upstream's, so the close is clean.
async fn close(mut ws: Ws) {
    let handshake = async {
        if ws.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
}

#[cfg(test)]
mod tests;
