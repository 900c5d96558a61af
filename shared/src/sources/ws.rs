//! The WebSocket transport of the `json-ws` and `socketio` sources: connecting (headers, TLS, a
//! deadline, bounded frames), keeping the upstream's requests equal to the wanted channels,
//! feeding every text message to the kind's [`WsProtocol`], keep-alives and silence detection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::rules::Outcome;
use super::template::Vars;
use super::{End, SourceState};
use crate::channels::ChannelName;

/// Longest time one batch of frames may take to write before the connection counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time the close handshake is waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a protocol module makes of an upstream message or a tick.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send this text frame.
    Send(String),
    /// Send a WebSocket ping (an upstream that answers nothing else still answers it).
    Ping,
    /// What the rules made of a message (the frame is the raw text, for logs).
    Deliver(Outcome),
    /// The message could not be read (why).
    Unparsable(String),
    /// Binary data arrived where it is refused (what).
    Binary(String),
    /// The upstream refused or did not acknowledge a request (why).
    UpstreamError(String),
    /// The upstream said something sensible (a handshake, an acknowledgement).
    Healthy,
    /// The connection is unusable and must be reopened (why).
    Lost(String),
}

/// A protocol spoken over the WebSocket transport. One value per source; [`WsProtocol::opened`]
/// resets its per-connection state.
pub(crate) trait WsProtocol: Send + 'static {
    /// The URL to open.
    fn url(&self) -> &str;
    /// A connection opened: the frames to send first.
    fn opened(&mut self) -> Vec<Step>;
    /// Whether channel requests may be sent now (Socket.IO: once the namespace is joined).
    fn ready(&self) -> bool;
    /// The frames that ask the upstream for `channel`.
    fn want(&mut self, channel: &ChannelName, vars: &Vars) -> Vec<Step>;
    /// The frames that release `channel` upstream.
    fn release(&mut self, channel: &ChannelName, vars: &Vars) -> Vec<Step>;
    /// One text message from the upstream.
    fn text(&mut self, text: &str) -> Vec<Step>;
    /// One binary message from the upstream.
    fn binary(&mut self, len: usize) -> Vec<Step> {
        vec![Step::Binary(format!("a binary message of {len} bytes"))]
    }
    /// How often [`WsProtocol::tick`] runs.
    fn tick_every(&self) -> Duration;
    /// Runs every [`WsProtocol::tick_every`]: keep-alives to send, or [`Step::Lost`] when the
    /// upstream has been silent too long. `heard` says whether anything arrived since the last
    /// tick.
    fn tick(&mut self, heard: bool) -> Vec<Step>;
}

/// Starts the source's task over the WebSocket transport with `protocol`.
pub(super) fn spawn<P: WsProtocol>(state: Arc<SourceState>, protocol: P) -> Result<(), String> {
    let connector = tls_connector(&state, protocol.url())?;
    let protocol = Arc::new(tokio::sync::Mutex::new(protocol));
    tokio::spawn(state.run(move |state| {
        let (protocol, connector) = (protocol.clone(), connector.clone());
        async move {
            let mut protocol = protocol.lock().await;
            let ws = connect(&state, protocol.url(), connector).await?;
            state.opened();
            Ok(serve(&state, &mut *protocol, ws).await)
        }
    }));
    Ok(())
}

/// The TLS connector of a `wss://` upstream (`None` for `ws://`), or why its settings are
/// unusable.
fn tls_connector(state: &SourceState, url: &str) -> Result<Option<Connector>, String> {
    let config = &state.checked.config;
    let secure = url
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("wss://"));
    if secure {
        crate::tls::client_config(&config.tls, &[])
            .map(|c| Some(Connector::Rustls(c)))
            .map_err(|e| format!("sources.{}.tls: {e}", state.name))
    } else if config.tls.is_set() {
        Err(format!(
            "sources.{}.tls: TLS settings need a wss:// or https:// url",
            state.name
        ))
    } else {
        Ok(None)
    }
}

async fn connect(
    state: &SourceState,
    url: &str,
    connector: Option<Connector>,
) -> Result<Ws, String> {
    let config = &state.checked.config;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in &config.headers {
        // Checked when the configuration was read.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            request.headers_mut().insert(name, value);
        }
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let timeout = config.connect_timeout();
    match tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector),
    )
    .await
    {
        Err(_) => Err(format!("no connection within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// Serves one open connection until the source stops, nothing is wanted, or it fails.
async fn serve<P: WsProtocol>(state: &SourceState, protocol: &mut P, mut ws: Ws) -> End {
    let name = state.name.as_str();
    // Channels asked for on this connection (a fresh one has none: everything is asked again).
    let mut upstream: BTreeMap<ChannelName, Vars> = BTreeMap::new();
    let mut healthy = false;
    let mut heard = false;
    let every = protocol.tick_every();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = protocol.opened();
    if let Err(why) = act(state, &mut ws, first, &mut healthy).await {
        tracing::warn!(source = %name, error = %why, "upstream connection lost");
        return End::Lost { healthy };
    }
    loop {
        if protocol.ready() {
            let wanted = state.wanted();
            let mut steps = Vec::new();
            let gone: Vec<ChannelName> = upstream
                .keys()
                .filter(|c| !wanted.contains_key(*c))
                .cloned()
                .collect();
            for channel in gone {
                if let Some(vars) = upstream.remove(&channel) {
                    tracing::debug!(source = %name, %channel, "releasing upstream");
                    steps.extend(protocol.release(&channel, &vars));
                }
            }
            for (channel, vars) in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    upstream.entry(channel.clone())
                {
                    tracing::debug!(source = %name, %channel, "asking upstream");
                    steps.extend(protocol.want(&channel, &vars));
                    slot.insert(vars);
                }
            }
            if let Err(why) = act(state, &mut ws, steps, &mut healthy).await {
                tracing::warn!(source = %name, error = %why, "upstream connection lost");
                return End::Lost { healthy };
            }
            if upstream.is_empty() && state.is_idle() {
                close(ws).await;
                return End::Idle;
            }
        } else if state.is_idle() {
            close(ws).await;
            return End::Idle;
        }
        // Unbiased: neither a busy upstream nor churning interest can starve the other.
        let msg = tokio::select! {
            () = state.stop.cancelled() => {
                close(ws).await;
                return End::Stopped;
            }
            () = state.changed.notified() => continue,
            _ = tick.tick() => {
                let steps = protocol.tick(heard);
                heard = false;
                if let Err(why) = act(state, &mut ws, steps, &mut healthy).await {
                    tracing::warn!(source = %name, error = %why, "upstream connection lost");
                    return End::Lost { healthy };
                }
                continue;
            }
            msg = ws.next() => msg,
        };
        heard = true;
        let steps = match msg {
            None => {
                tracing::warn!(source = %name, "upstream closed the connection; reconnecting");
                return End::Lost { healthy };
            }
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                state.oversized(size);
                tracing::warn!(source = %name, bytes = size, "upstream frame over max_message_bytes; reconnecting");
                return End::Lost { healthy };
            }
            Some(Err(error)) => {
                tracing::warn!(source = %name, %error, "upstream read failed; reconnecting");
                return End::Lost { healthy };
            }
            Some(Ok(Message::Text(text))) => {
                let steps = protocol.text(text.as_str());
                if let Err(why) = act_on(state, &mut ws, steps, &mut healthy, text.as_str()).await {
                    tracing::warn!(source = %name, error = %why, "upstream connection lost");
                    return End::Lost { healthy };
                }
                continue;
            }
            Some(Ok(Message::Binary(data))) => protocol.binary(data.len()),
            // Pings are answered by the WebSocket layer; after a Close the next read ends.
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_),
            )) => {
                continue;
            }
        };
        if let Err(why) = act(state, &mut ws, steps, &mut healthy).await {
            tracing::warn!(source = %name, error = %why, "upstream connection lost");
            return End::Lost { healthy };
        }
    }
}

async fn act(
    state: &SourceState,
    ws: &mut Ws,
    steps: Vec<Step>,
    healthy: &mut bool,
) -> Result<(), String> {
    act_on(state, ws, steps, healthy, "").await
}

/// Carries out `steps` (`raw`: the message they came from, for logs); an error means the
/// connection is lost.
async fn act_on(
    state: &SourceState,
    ws: &mut Ws,
    steps: Vec<Step>,
    healthy: &mut bool,
    raw: &str,
) -> Result<(), String> {
    let mut frames = Vec::new();
    for step in steps {
        match step {
            Step::Send(text) => frames.push(Message::text(text)),
            Step::Ping => frames.push(Message::Ping(bytes::Bytes::new())),
            Step::Deliver(outcome) => {
                if state.deliver(outcome, raw).await {
                    *healthy = true;
                }
            }
            Step::Unparsable(why) => state.unparsable(&why, raw),
            Step::Binary(what) => state.binary(&what),
            Step::UpstreamError(why) => state.upstream_error(&why),
            Step::Healthy => *healthy = true,
            Step::Lost(why) => {
                send(ws, frames).await.ok();
                return Err(why);
            }
        }
    }
    send(ws, frames).await
}

async fn send(ws: &mut Ws, frames: Vec<Message>) -> Result<(), String> {
    if frames.is_empty() {
        return Ok(());
    }
    let write = async {
        for frame in frames {
            ws.feed(frame).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(format!("write not done within {WRITE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
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
