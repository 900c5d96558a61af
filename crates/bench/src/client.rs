//! The benchmark's WebSocket client, the same code against a gateway and against the baseline
//! server, in one of two protocols ([`Protocol`]):
//!
//! - graphql-transport-ws (bff-web): open a socket offering `graphql-transport-ws`, send
//!   `connection_init` with a bearer token and wait for `connection_ack`, subscribe to the
//!   signed-in user's conversions, and confirm with a `ping`/`pong` round trip that the server
//!   has processed everything sent before it;
//! - switchyard-mobile.v1 in CBOR (bff-mobile): open a socket offering
//!   `switchyard-mobile.v1.cbor`, send `auth` with the token and wait for `welcome`, send `sub`
//!   for `conversions` and wait for `subbed` (sent once the subscription is live).
//!
//! Every wait is bounded by [`STEP_TIMEOUT`] and fails with an error naming the socket and the
//! step; opening many sockets is done with bounded concurrency. It does not read events: the
//! benchmarks own their receive loops.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// A client socket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The longest any single step (connect, handshake, an answer) may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The one subscription every benchmark client makes (operation id `1`).
pub(crate) const SUBSCRIBE: &str =
    r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { conversions { id } }"}}"#;

/// The user every client signs in as, so that all of them share one execution at the gateway.
pub(crate) const USER: &str = "bench";

/// The WebSocket protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// graphql-transport-ws, as bff-web serves it.
    Graphql,
    /// switchyard-mobile.v1 in CBOR, as bff-mobile serves it.
    Mobile,
}

impl Protocol {
    /// The subprotocol the client offers (and the baseline echoes).
    pub(crate) fn subprotocol(self) -> &'static str {
        match self {
            Protocol::Graphql => "graphql-transport-ws",
            Protocol::Mobile => mobile_proto::SUBPROTOCOL_CBOR,
        }
    }

    /// The name of the flag value (`--protocol`).
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Protocol::Graphql => "graphql",
            Protocol::Mobile => "mobile",
        }
    }
}

/// The mobile protocol's encoding in every benchmark (what apps use).
pub(crate) const MOBILE: mobile_proto::Encoding = mobile_proto::Encoding::Cbor;

/// A mobile-protocol message as a WebSocket message.
pub(crate) fn mobile_message(frame: mobile_proto::Frame) -> Message {
    match frame {
        mobile_proto::Frame::Text(s) => Message::Text(Utf8Bytes::from(s)),
        mobile_proto::Frame::Binary(b) => Message::Binary(Bytes::from(b)),
    }
}

/// Decodes a message a mobile server sent; `None` for control frames.
pub(crate) fn mobile_decode(msg: &Message) -> Option<anyhow::Result<mobile_proto::ServerMsg>> {
    let (kind, bytes) = match msg {
        Message::Binary(b) => (mobile_proto::FrameKind::Binary, b.as_ref()),
        Message::Text(t) => (mobile_proto::FrameKind::Text, t.as_bytes()),
        _ => return None,
    };
    Some(
        MOBILE
            .decode_server(kind, bytes, 1 << 20)
            .map_err(|e| anyhow!("undecodable server message: {e}")),
    )
}

/// A bearer token for [`USER`] that the launcher's gateway accepts.
pub(crate) fn token() -> String {
    bff_web::auth::hs256_token(
        switchyard::DEMO_SECRET,
        USER,
        Duration::from_secs(24 * 3600),
    )
}

/// Opens a WebSocket to `url` (`ws://host:port/path`) offering `protocol`'s subprotocol; no
/// protocol message is sent yet.
pub(crate) async fn open(url: &str, protocol: Protocol) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(protocol.subprotocol()),
    );
    let authority = request
        .uri()
        .authority()
        .ok_or_else(|| anyhow!("{url} has no host"))?
        .to_string();
    // The client's buffers are the same whichever server it talks to; small ones keep 10,000
    // sockets cheap in the bench process.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let handshake = async {
        let tcp = TcpStream::connect(&authority).await?;
        tcp.set_nodelay(true)?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("no WebSocket handshake with {url} within {STEP_TIMEOUT:?}"))?
}

/// Signs in: `connection_init` with the bearer token, `connection_ack` awaited (graphql), or
/// `auth` with the token, `welcome` awaited (mobile).
pub(crate) async fn init(ws: &mut Ws, protocol: Protocol, token: &str) -> anyhow::Result<()> {
    if protocol == Protocol::Mobile {
        let auth = mobile_proto::ClientMsg::Auth(mobile_proto::Auth {
            token: token.to_owned(),
            client: None,
        });
        return mobile_step(ws, auth, "welcome").await;
    }
    let init = serde_json::json!({
        "type": "connection_init",
        "payload": {"authorization": format!("Bearer {token}")},
    });
    send(ws, init.to_string()).await?;
    expect(ws, "connection_ack").await
}

/// Subscribes to the conversions and waits for a `pong` to a `ping` sent after it: the server
/// has processed the subscription (at bff-web, the socket has joined the shared execution). In
/// the mobile protocol, `subbed` says the same.
pub(crate) async fn subscribe(ws: &mut Ws, protocol: Protocol) -> anyhow::Result<()> {
    if protocol == Protocol::Mobile {
        let sub = mobile_proto::ClientMsg::Sub(mobile_proto::Sub {
            topic: mobile_proto::topic::CONVERSIONS.to_owned(),
            resume: None,
        });
        return mobile_step(ws, sub, "subbed").await;
    }
    send(ws, SUBSCRIBE.to_owned()).await?;
    send(ws, r#"{"type":"ping"}"#.to_owned()).await?;
    expect(ws, "pong").await
}

/// Subscribes a mobile-protocol socket to `topic` (any gateway topic or catalog channel) and
/// waits for `subbed`.
pub(crate) async fn subscribe_topic(ws: &mut Ws, topic: &str) -> anyhow::Result<()> {
    let sub = mobile_proto::ClientMsg::Sub(mobile_proto::Sub {
        topic: topic.to_owned(),
        resume: None,
    });
    mobile_step(ws, sub, "subbed").await
}

async fn send(ws: &mut Ws, text: String) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::Text(Utf8Bytes::from(text))))
        .await
        .map_err(|_| anyhow!("could not send within {STEP_TIMEOUT:?}"))??;
    Ok(())
}

/// Sends a mobile-protocol message and waits for the answer of type `ty`; server pings are
/// answered on the way, anything else (a close included) is an error.
async fn mobile_step(ws: &mut Ws, msg: mobile_proto::ClientMsg, ty: &str) -> anyhow::Result<()> {
    let msg = mobile_message(MOBILE.encode_client(&msg));
    tokio::time::timeout(STEP_TIMEOUT, ws.send(msg))
        .await
        .map_err(|_| anyhow!("could not send within {STEP_TIMEOUT:?}"))??;
    let end = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(end, ws.next())
            .await
            .map_err(|_| anyhow!("no `{ty}` within {STEP_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("the server closed the connection before `{ty}`"))??;
        if let Message::Close(frame) = msg {
            bail!("closed by the server before `{ty}`: {frame:?}");
        }
        let Some(decoded) = mobile_decode(&msg) else {
            continue;
        };
        match decoded? {
            mobile_proto::ServerMsg::Ping(p) => {
                let pong = mobile_proto::ClientMsg::Pong(mobile_proto::Pong { n: p.n });
                ws.send(mobile_message(MOBILE.encode_client(&pong))).await?;
            }
            m if m.type_name() == ty => return Ok(()),
            m => bail!("expected `{ty}`, got {m:?}"),
        }
    }
}

/// Waits for a message of type `ty`; anything else (a close included) is an error.
async fn expect(ws: &mut Ws, ty: &str) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(end, ws.next())
            .await
            .map_err(|_| anyhow!("no `{ty}` within {STEP_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow!("the server closed the connection before `{ty}`"))??;
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())
                    .with_context(|| format!("the server sent a non-JSON message: {t}"))?;
                if v["type"] == ty {
                    return Ok(());
                }
                bail!("expected `{ty}`, got {t}");
            }
            Message::Close(frame) => bail!("closed by the server before `{ty}`: {frame:?}"),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Binary(_) => bail!("expected `{ty}`, got a binary frame"),
        }
    }
}

/// Opens `n` sockets to `url`, at most `concurrency` handshakes at a time.
pub(crate) async fn open_many(
    url: &str,
    protocol: Protocol,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            open(url, protocol)
                .await
                .with_context(|| format!("socket {i}"))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// Runs `step` on every socket, at most `concurrency` at a time; the first failure names its
/// socket.
pub(crate) async fn each<'a, F, Fut>(
    sockets: &'a mut [Ws],
    concurrency: usize,
    step: F,
) -> anyhow::Result<()>
where
    F: Fn(&'a mut Ws) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + 'a,
{
    let step = &step;
    futures::stream::iter(sockets.iter_mut().enumerate())
        .map(|(i, ws)| async move { step(ws).await.with_context(|| format!("socket {i}")) })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Opens `n` sockets, each initialised and subscribed, at most `concurrency` at a time.
pub(crate) async fn connect_subscribed(
    url: &str,
    protocol: Protocol,
    token: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let connect = async {
                let mut ws = open(url, protocol).await?;
                init(&mut ws, protocol, token).await?;
                subscribe(&mut ws, protocol).await?;
                anyhow::Ok(ws)
            };
            connect.await.with_context(|| format!("socket {i}"))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}
