//! The baseline of the WebSocket benchmarks: a minimal tokio-tungstenite broadcast server.
//!
//! It accepts WebSockets (echoing the subprotocol of its [`Protocol`]), runs one task per
//! connection, answers the sign-in and pings, and on the subscription starts forwarding every
//! frame published on one `tokio::sync::broadcast` channel — the frame it waited for and every
//! frame already waiting behind it, fed to the socket one by one and flushed once, so a
//! connection that is behind writes several frames per system call. In graphql-transport-ws it answers
//! `connection_init` with `connection_ack`, `ping` with `pong` and starts on `subscribe`; in
//! switchyard-mobile.v1 (CBOR) it answers `auth` with `welcome`, `ping` with `pong`, `sub` with
//! `subbed`. The publisher encodes each frame once — the same shape and size as the gateway's
//! `next` or `event` message — and every connection writes those bytes. A connection that falls
//! the channel's capacity behind is closed with 1013.
//!
//! It deliberately does nothing else: no GraphQL, no auth, no limits, no drain. By default the
//! sockets use tungstenite's default `WebSocketConfig` (128 KiB read and write buffers), as a
//! minimal server would; [`Buffers::Small`] uses the gateways' sizes instead, to separate what the
//! buffers cost from what the gateway's own per-socket state costs. The sizes matter for speed
//! too: tungstenite zero-fills the free part of its read buffer before every read attempt, so the
//! whole default 128 KiB stays resident per socket and is rewritten on many wake-ups. Accepted TCP
//! streams get `TCP_NODELAY`, as the gateway's do.

use std::net::SocketAddr;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::client::{MOBILE, Protocol, mobile_message};

/// Which socket buffer sizes the baseline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Buffers {
    /// tungstenite's defaults (what a minimal server gets).
    Default,
    /// The gateways': a 4 KiB read buffer, frames gathered up to 8 KiB before a write.
    Small,
}

/// A running baseline server; dropping it stops the server and closes every connection.
pub(crate) struct Baseline {
    addr: SocketAddr,
    tx: broadcast::Sender<Message>,
    accept: tokio::task::JoinHandle<()>,
}

impl Baseline {
    /// Starts a server on a loopback port; each connection may fall `capacity` frames behind.
    pub(crate) async fn start(
        capacity: usize,
        buffers: Buffers,
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("baseline: cannot listen")?;
        let addr = listener.local_addr()?;
        let (tx, _) = broadcast::channel(capacity.max(1));
        let config = match buffers {
            Buffers::Default => WebSocketConfig::default(),
            Buffers::Small => WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(switchyard_server::websocket::WRITE_BATCH_BYTES)
                .max_write_buffer_size(256 * 1024),
        };
        let accept = tokio::spawn(accept(listener, tx.clone(), config, protocol));
        Ok(Self { addr, tx, accept })
    }

    /// The URL clients connect to.
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Sends one frame to every subscribed connection.
    pub(crate) fn publish(&self, frame: Message) {
        // No subscriber right now is not an error: the bench checks deliveries itself.
        let _ = self.tx.send(frame);
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        // The accept task owns every connection task: aborting it drops them all.
        self.accept.abort();
    }
}

/// Most frames a connection takes from the channel without waiting, after one it waited for:
/// they go out with one flush (the gateways' batch).
const READY_BATCH: usize = 32;

async fn accept(
    listener: TcpListener,
    tx: broadcast::Sender<Message>,
    config: WebSocketConfig,
    protocol: Protocol,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        connections.spawn(serve(stream, tx.clone(), config, protocol));
    }
}

/// The `type` of a graphql-transport-ws client message; nothing else is read.
#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    ty: String,
}

/// What the server does with a client message.
enum Action {
    Answer(Message),
    Subscribe(Option<Message>),
    Ignore,
    Hang,
}

/// Reads a client message of `protocol`.
fn action(protocol: Protocol, msg: &Message) -> Action {
    use mobile_proto::{ClientMsg, ServerMsg};
    match protocol {
        Protocol::Graphql => {
            let Message::Text(text) = msg else {
                return Action::Ignore;
            };
            let Ok(message) = serde_json::from_str::<ClientMessage>(text.as_str()) else {
                return Action::Hang;
            };
            match message.ty.as_str() {
                "connection_init" => Action::Answer(Message::text(r#"{"type":"connection_ack"}"#)),
                "ping" => Action::Answer(Message::text(r#"{"type":"pong"}"#)),
                "subscribe" => Action::Subscribe(None),
                _ => Action::Ignore,
            }
        }
        Protocol::Mobile => {
            let Message::Binary(bytes) = msg else {
                return Action::Ignore;
            };
            let answer = |m: &ServerMsg| mobile_message(MOBILE.encode_server(m));
            match MOBILE.decode_client(mobile_proto::FrameKind::Binary, bytes, 16 * 1024) {
                Ok(ClientMsg::Auth(_)) => {
                    Action::Answer(answer(&ServerMsg::Welcome(mobile_proto::Welcome {
                        user: crate::client::USER.to_owned(),
                        heartbeat_ms: 20_000,
                        limits: mobile_proto::Limits {
                            max_subscriptions: 32,
                            max_calls: 16,
                            max_frame_bytes: 16 * 1024,
                        },
                    })))
                }
                Ok(ClientMsg::Ping(p)) => {
                    Action::Answer(answer(&ServerMsg::Pong(mobile_proto::Pong { n: p.n })))
                }
                Ok(ClientMsg::Sub(sub)) => {
                    Action::Subscribe(Some(answer(&ServerMsg::Subbed(mobile_proto::Subbed {
                        topic: sub.topic,
                        epoch: 0,
                        offset: 0,
                    }))))
                }
                Ok(_) => Action::Ignore,
                Err(_) => Action::Hang,
            }
        }
    }
}

async fn serve(
    stream: TcpStream,
    tx: broadcast::Sender<Message>,
    config: WebSocketConfig,
    protocol: Protocol,
) {
    let _ = stream.set_nodelay(true);
    // The error type is tungstenite's `Callback` signature, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let offer = |request: &Request, response: Response| offer_protocol(protocol, request, response);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, offer, Some(config));
    let Ok(Ok(mut ws)) = tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await
    else {
        return;
    };
    let mut rx: Option<broadcast::Receiver<Message>> = None;
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let msg = match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(msg)) => msg,
                };
                let answer = match action(protocol, &msg) {
                    Action::Answer(answer) => answer,
                    Action::Subscribe(answer) => {
                        rx.get_or_insert_with(|| tx.subscribe());
                        match answer {
                            Some(answer) => answer,
                            None => continue,
                        }
                    }
                    Action::Ignore => continue,
                    Action::Hang => return,
                };
                if ws.send(answer).await.is_err() {
                    return;
                }
            }
            frame = recv(&mut rx) => match frame {
                Ok(frame) => {
                    // Everything already waiting goes out with this frame: fed one by one, then
                    // ONE flush (one system call for the batch, as the gateways do).
                    if ws.feed(frame).await.is_err() {
                        return;
                    }
                    let mut lagged = false;
                    if let Some(rx) = rx.as_mut() {
                        for _ in 0..READY_BATCH {
                            match rx.try_recv() {
                                Ok(frame) => {
                                    if ws.feed(frame).await.is_err() {
                                        return;
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                    if lagged {
                        let close = CloseFrame { code: CloseCode::Again, reason: "too slow".into() };
                        let _ = ws.close(Some(close)).await;
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let close = CloseFrame { code: CloseCode::Again, reason: "too slow".into() };
                    let _ = ws.close(Some(close)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Echoes `protocol`'s subprotocol when the client offers it.
// The error type is tungstenite's `Callback` signature, not ours to shrink.
#[allow(clippy::result_large_err)]
fn offer_protocol(
    protocol: Protocol,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let name = protocol.subprotocol();
    let offered = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == name));
    if offered {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(name));
    }
    Ok(response)
}

/// The next broadcast frame, or never when not subscribed.
async fn recv(
    rx: &mut Option<broadcast::Receiver<Message>>,
) -> Result<Message, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
