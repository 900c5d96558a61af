//! The `/v1/ws` socket speaking `switchyard-mobile.v1` (`docs/protocol/mobile-v1.md`): the
//! route and the upgrade (origin, subprotocol, small buffers), then one tracked task per socket.
//!
//! Split by concern, each module using only the ones below it, so the event path runs one way
//! (hub → subscriptions → conn → events → the queue) and nothing calls back up:
//!
//! - [`conn`]: the protocol state machine (`Conn`: auth, subscriptions, calls, heartbeat,
//!   drain with `bye`, every close code), on top of
//! - [`subscriptions`]: a socket's subscription table and starting one through the hub;
//! - [`topics`]: demo topic routing (client topic → hub topic and payload type);
//! - [`channels`]: catalog channel routing (a channel name → its bus topic, judged by its
//!   entry's subscribe rule for the user's token);
//! - [`events`]: payload translation and the encode-once frames, shared per route;
//! - [`transport`]: the bounded send queue, cancel-safe writes, the close;
//! - [`gateway`]: what every socket shares.
//!
//! Calls run in [`crate::calls`]; demo values take the protocol's shapes in
//! [`crate::shapes`], which both calls and events use. Tokens are verified in
//! [`crate::auth`]; messages are defined by `mobile_proto`.

mod channels;
mod conn;
mod events;
mod gateway;
mod subscriptions;
mod topics;
mod transport;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mobile_proto::{Encoding, close};

use conn::Conn;
pub(crate) use gateway::{Gateway, GatewayParts};
use switchyard_server::lifecycle::{self, SocketEnd};
use transport::{Closing, Io};

/// The socket's read buffer. tungstenite keeps it for the socket's life and fills it with zeros
/// up to this size before every read, so every idle socket holds it resident: the client's
/// messages are small (`auth`'s token is the largest; a bigger frame grows the buffer to its
/// size and is read in more system calls), so 512 bytes, not 4 KiB (issue 15: a million idle
/// sockets).
const READ_BUFFER_BYTES: usize = 512;

/// The `/ws` route.
pub(crate) fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(gateway)
}

async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    usage: Option<axum::Extension<switchyard_server::metrics::Usage>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !gw.parts.origins.allows(&headers) {
        return switchyard_server::errors::JsonError::new(
            axum::http::StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open a socket",
        )
        .into_response();
    }
    let peer = gw
        .parts
        .limiter
        .client_ip_from(peer.map(|p| (p.0).0), &headers);
    // The server's preference (CBOR) decides, not the order of the client's offer.
    let encoding = Encoding::negotiate(
        headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let max = gw.parts.config.max_message_bytes as usize;
    let mut upgrade = upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: an idle socket should cost kilobytes, not tungstenite's default 128 KiB.
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames handed over together are written together (one system call per batch, not
        // per frame) up to this much; the buffer is empty until a socket has traffic.
        .write_buffer_size(switchyard_server::websocket::WRITE_BATCH_BYTES)
        .max_write_buffer_size((1 << 20) * 2);
    if let Some(enc) = encoding {
        upgrade = upgrade.protocols([enc.subprotocol()]);
    }
    let tracker = gw.parts.sockets.clone();
    // The socket runs in the trace of its upgrade request (its `traceparent`, if valid).
    let trace = switchyard_core::trace::current();
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            // Counted in the gateway's metrics while the socket is open.
            let open = usage.map(|u| u.connection());
            // Boxed: the wrappers (tracking, lifecycle, axum's upgrade task) each hold the future
            // they wrap, and an async wrapper's state holds it more than once — unboxed, each
            // socket's task was about three times the size of `serve`'s own state.
            let serve = Box::pin(serve(socket, gw, encoding, peer, open));
            tracker.track_future(lifecycle::socket("bff-mobile", "v1", trace, serve))
        })
}

/// Serves one socket until it closes.
async fn serve(
    socket: WebSocket,
    gw: Arc<Gateway>,
    encoding: Option<Encoding>,
    peer: Option<std::net::IpAddr>,
    usage: Option<switchyard_server::metrics::ConnectionGuard>,
) -> SocketEnd {
    let mut io = Io::new(socket);
    io.queue.conflations = Some(gw.parts.metrics.conflations());
    let Some(enc) = encoding else {
        io.close(Closing::new(
            close::SUBPROTOCOL_REQUIRED,
            "offer switchyard-mobile.v1.cbor or switchyard-mobile.v1.json",
        ))
        .await;
        return SocketEnd::Closed(close::SUBPROTOCOL_REQUIRED);
    };
    let metrics = gw.parts.metrics.clone();
    let mut conn = Conn::new(gw, enc, peer, usage);
    match conn.run(&mut io).await {
        Some(closing) => {
            let code = closing.code;
            if code == close::SLOW_CONSUMER {
                metrics.cut_off(closing.reason.contains("queue is full"));
            }
            io.close(closing).await;
            SocketEnd::Closed(code)
        }
        None => {
            io.finish().await;
            SocketEnd::ClientGone
        }
    }
}
