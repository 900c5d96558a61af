//! A bridge's task and its upstream connection: waiting for interest, connecting (with TLS and
//! a deadline), reconciling the upstream watches with the desired set, publishing what the
//! upstream sends, pinging a silent connection, and reconnecting with backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::{BridgeConfig, BridgeState, Decoded, MAX_MESSAGE_BYTES, lock};
use crate::backoff::Backoff;
use crate::bus::Bus;
use crate::event::Topic;

/// Longest time one batch of frames may take to write before the connection counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time between two pings on a connection; one that has received nothing since the last ping
/// when the next is due counts as lost (a half-open TCP connection is otherwise never noticed).
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Longest time the close handshake is waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Characters of an upstream error or undecodable frame shown in logs.
const LOGGED_CHARS: usize = 256;

/// The timings of [`BridgeConfig`], as durations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timings {
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
pub(super) struct Plan {
    /// Topics to watch, in order.
    pub(super) watch: Vec<Topic>,
    /// Topics to unwatch, in order.
    pub(super) unwatch: Vec<Topic>,
}

pub(super) fn plan(desired: &HashMap<Topic, usize>, upstream: &BTreeSet<Topic>) -> Plan {
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
pub(super) async fn run(
    shared: Arc<BridgeState>,
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
async fn wait_for_interest(shared: &BridgeState) -> bool {
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
pub(super) fn tls_connector(config: &BridgeConfig) -> Result<Option<Connector>, String> {
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
async fn serve(shared: &BridgeState, bus: &dyn Bus, mut ws: Ws) -> End {
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
