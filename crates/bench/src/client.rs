//! The benchmark's graphql-transport-ws client, the same code against bff-web and against the
//! baseline server: open a socket offering the `graphql-transport-ws` subprotocol, send
//! `connection_init` with a bearer token and wait for `connection_ack`, subscribe to the
//! signed-in user's conversions, and confirm with a `ping`/`pong` round trip that the server has
//! processed everything sent before it.
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
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A client socket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The longest any single step (connect, handshake, an answer) may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The one subscription every benchmark client makes (operation id `1`).
pub(crate) const SUBSCRIBE: &str =
    r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { conversions { id } }"}}"#;

/// The user every client signs in as, so that all of them share one execution at the gateway.
pub(crate) const USER: &str = "bench";

/// A bearer token for [`USER`] that the launcher's gateway accepts.
pub(crate) fn token() -> String {
    bff_web::auth::hs256_token(
        switchyard::DEMO_SECRET,
        USER,
        Duration::from_secs(24 * 3600),
    )
}

/// Opens a WebSocket to `url` (`ws://host:port/path`) offering `graphql-transport-ws`; no
/// protocol message is sent yet.
pub(crate) async fn open(url: &str) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
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

/// Sends `connection_init` with the bearer token and waits for `connection_ack`.
pub(crate) async fn init(ws: &mut Ws, token: &str) -> anyhow::Result<()> {
    let init = serde_json::json!({
        "type": "connection_init",
        "payload": {"authorization": format!("Bearer {token}")},
    });
    send(ws, init.to_string()).await?;
    expect(ws, "connection_ack").await
}

/// Subscribes to the conversions and waits for a `pong` to a `ping` sent after it: the server
/// has processed the subscription (at bff-web, the socket has joined the shared execution).
pub(crate) async fn subscribe(ws: &mut Ws) -> anyhow::Result<()> {
    send(ws, SUBSCRIBE.to_owned()).await?;
    send(ws, r#"{"type":"ping"}"#.to_owned()).await?;
    expect(ws, "pong").await
}

async fn send(ws: &mut Ws, text: String) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::Text(Utf8Bytes::from(text))))
        .await
        .map_err(|_| anyhow!("could not send within {STEP_TIMEOUT:?}"))??;
    Ok(())
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
pub(crate) async fn open_many(url: &str, n: usize, concurrency: usize) -> anyhow::Result<Vec<Ws>> {
    futures::stream::iter(0..n)
        .map(|i| async move { open(url).await.with_context(|| format!("socket {i}")) })
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
    token: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let connect = async {
                let mut ws = open(url).await?;
                init(&mut ws, token).await?;
                subscribe(&mut ws).await?;
                anyhow::Ok(ws)
            };
            connect.await.with_context(|| format!("socket {i}"))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}
