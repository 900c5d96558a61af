//! The graphql-transport-ws state machine of one socket: the handshake (`connection_init`,
//! its timeout, the user's socket slot), authentication and re-authentication by `ping` (the same
//! user only; new claims apply at once, ending channel subscriptions they no longer admit), the
//! token's expiry, the message rate, and every client message in turn. Operations are started
//! and completed in [`super::ops`]; bytes reach the client through [`super::transport`].

use async_graphql::{ObjectType, SubscriptionType};
use axum::extract::ws::{Message, WebSocket};
use futures::FutureExt;
use serde::Deserialize;
use serde_json::Value;
use switchyard_core::slots::Slot;
use tokio::time::Instant;

use super::Socket;
use super::ops::Running;
use super::transport::{
    Closing, close, frame_message, send_all, send_complete, send_frame, send_text,
};
use crate::auth::Principal;
use crate::fanout::Frame;
use crate::request::RequestBody;

/// Most subscription messages written at once, with one flush: what is ready when the socket's
/// task runs, so a client that keeps up gets each event at once and a busy gateway writes
/// several per system call.
const READY_BATCH: usize = 32;

/// A message from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: RequestBody,
    },
    Complete {
        id: String,
    },
}

/// Where the connection is in its handshake.
enum Init {
    /// Waiting for `connection_init` since then.
    Waiting(Instant),
    /// Acknowledged, as this principal (`None`: anonymous).
    Acked(Option<Principal>),
}

/// One socket's graphql-transport-ws connection.
pub(super) struct Connection<Q, M, S> {
    ctx: Socket<Q, M, S>,
    init: Init,
    /// When the connection's token stops being valid (`exp` + leeway); `None` when anonymous.
    token_valid_until: Option<Instant>,
    /// The operations active on the socket.
    ops: Running,
    /// The signed-in user's socket slot, held from `connection_init` until the socket is gone.
    _user_slot: Option<Slot<String>>,
    /// The client's IP address, for rate limits before (or without) a signed-in user.
    peer: Option<std::net::IpAddr>,
    /// The socket in the gateway's metrics, its client named by `connection_init`.
    usage: Option<switchyard_server::metrics::ConnectionGuard>,
}

impl<Q, M, S> Connection<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    /// A connection waiting for `connection_init` from now on.
    pub(super) fn new(
        ctx: Socket<Q, M, S>,
        peer: Option<std::net::IpAddr>,
        usage: Option<switchyard_server::metrics::ConnectionGuard>,
    ) -> Self {
        let mut ops = Running::default();
        ops.streams.conflations = Some(ctx.metrics.conflations());
        Self {
            usage,
            ctx,
            init: Init::Waiting(Instant::now()),
            token_valid_until: None,
            ops,
            _user_slot: None,
            peer,
        }
    }

    /// Runs the protocol; returns how to close, or None when the client is already gone.
    pub(super) async fn run(&mut self, socket: &mut WebSocket) -> Option<Closing> {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            // One timer: the init timeout, then the token's expiry.
            let deadline = match self.init {
                Init::Waiting(since) => Some(since + self.ctx.limits.init_timeout),
                Init::Acked(_) => self.token_valid_until,
            };
            tokio::select! {
                () = shutdown.cancelled() => {
                    return Some(Closing::new(close::GOING_AWAY, "server shutting down"));
                }
                () = sleep_until_opt(deadline) => {
                    if let Init::Acked(_) = self.init {
                        return Some(Closing::new(close::FORBIDDEN, "Forbidden: the token has expired"));
                    }
                    return Some(Closing::new(close::INIT_TIMEOUT, "Connection initialisation timeout"));
                }
                incoming = socket.recv() => {
                    let msg = match incoming {
                        None => return None,
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => {
                            // 1009 too big, 1007 invalid UTF-8, 1002 protocol violation.
                            return switchyard_server::websocket::read_error_close(&e)
                                .map(|(code, reason)| Closing::new(code, reason));
                        }
                    };
                    if let Some(closing) = self.on_message(socket, msg).await {
                        return Some(closing);
                    }
                }
                Some((id, frame)) = self.ops.singles.next(), if !self.ops.singles.is_empty() => {
                    if let Err(closing) = send_frame(socket, &id, &frame, self.ctx.limits.write_timeout).await {
                        return closing;
                    }
                    if matches!(frame, Frame::Next(_))
                        && let Err(closing) = send_complete(socket, &id, self.ctx.limits.write_timeout).await
                    {
                        return closing;
                    }
                }
                Some(item) = self.ops.streams.next(), if !self.ops.streams.is_empty() => {
                    // Take what else is ready now too, so that one write and one flush (one
                    // system call, one timer) carry it all.
                    let mut batch = Vec::new();
                    let mut next = Some(item);
                    let mut missed = None;
                    while let Some(item) = next.take() {
                        match item {
                            Ok((id, frame)) => batch.push(frame_message(&id, &frame)),
                            Err(n) => {
                                missed = Some(n);
                                break;
                            }
                        }
                        if batch.len() < READY_BATCH {
                            next = self.ops.streams.next().now_or_never().flatten();
                        }
                    }
                    let sent = send_all(socket, batch, self.ctx.limits.write_timeout).await;
                    if let Some(missed) = missed {
                        tracing::info!(missed, "cutting off a client too slow for its subscription");
                        return Some(Closing::new(close::SLOW_CONSUMER, "too slow: events were missed; reconnect"));
                    }
                    if let Err(closing) = sent {
                        return closing;
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, socket: &mut WebSocket, msg: Message) -> Option<Closing> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return Some(Closing::new(
                    close::INVALID_MESSAGE,
                    "Invalid message received: binary frames are not supported",
                ));
            }
            // The WebSocket layer answers the close frame itself; nothing is left to do.
            Message::Close(_) => return Some(Closing::new(1000, "")),
            Message::Ping(_) | Message::Pong(_) => return None,
        };
        if let Err(closing) =
            crate::ratelimits::message(&self.ctx.limiter, self.user(), self.peer).await
        {
            return Some(closing);
        }
        let message: ClientMessage = match serde_json::from_str(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                return Some(Closing::new(
                    close::INVALID_MESSAGE,
                    format!("Invalid message received: {e}"),
                ));
            }
        };
        match message {
            ClientMessage::ConnectionInit { payload } => {
                if let Init::Acked(_) = self.init {
                    return Some(Closing::new(
                        close::TOO_MANY_INIT,
                        "Too many initialisation requests",
                    ));
                }
                crate::auth::adopt_trace(payload.as_ref());
                let verified = match self.ctx.verifier.from_init_payload(payload.as_ref()).await {
                    Ok(p) => p,
                    Err(e) => {
                        return Some(Closing::new(close::FORBIDDEN, format!("Forbidden: {e}")));
                    }
                };
                if let Some(v) = &verified {
                    match self
                        .ctx
                        .user_sockets
                        .try_acquire(v.subject.user.to_string())
                    {
                        Ok(slot) => self._user_slot = Some(slot),
                        Err(_) => {
                            return Some(Closing::new(
                                close::TOO_MANY_SOCKETS,
                                format!(
                                    "Too many sockets: at most {} per user",
                                    self.ctx.user_sockets.per_key()
                                ),
                            ));
                        }
                    }
                }
                self.token_valid_until = verified.as_ref().map(|v| v.deadline());
                self.init = Init::Acked(verified.map(|v| v.subject));
                if let Some(usage) = &mut self.usage {
                    usage.identify(client_of(payload.as_ref()));
                }
                if let Err(closing) = send_text(
                    socket,
                    r#"{"type":"connection_ack"}"#.to_owned(),
                    self.ctx.limits.write_timeout,
                )
                .await
                {
                    return closing;
                }
            }
            ClientMessage::Ping { payload } => {
                if let Init::Acked(current) = &self.init
                    && let Some(checked) =
                        self.ctx.verifier.from_ping_payload(payload.as_ref()).await
                {
                    let verified = match checked {
                        Ok(v) if current.as_ref().is_some_and(|p| p.user == v.subject.user) => v,
                        Ok(_) => {
                            return Some(Closing::new(
                                close::FORBIDDEN,
                                "Forbidden: re-authentication as another user",
                            ));
                        }
                        Err(e) => {
                            return Some(Closing::new(close::FORBIDDEN, format!("Forbidden: {e}")));
                        }
                    };
                    self.token_valid_until = Some(verified.deadline());
                    // The new token's claims count from now on: for new operations, and for
                    // the channels already subscribed, which must still admit them.
                    let claims_changed =
                        current.as_ref().map(|p| &p.claims) != Some(&verified.subject.claims);
                    if claims_changed {
                        let who = verified.subject.subscriber();
                        let refused = self.ops.streams.recheck(&self.ctx.catalog, &who);
                        self.init = Init::Acked(Some(verified.subject.clone()));
                        for id in refused {
                            if let Err(closing) = send_frame(
                                socket,
                                &id,
                                &refused_frame(),
                                self.ctx.limits.write_timeout,
                            )
                            .await
                            {
                                return closing;
                            }
                        }
                    }
                    let exp = verified
                        .expires_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let pong = serde_json::json!({
                        "type": "pong",
                        "payload": {"reauthenticated": true, "exp": exp},
                    });
                    if let Err(closing) =
                        send_text(socket, pong.to_string(), self.ctx.limits.write_timeout).await
                    {
                        return closing;
                    }
                    return None;
                }
                let pong = match payload {
                    Some(p) => serde_json::json!({"type": "pong", "payload": p}).to_string(),
                    None => r#"{"type":"pong"}"#.to_owned(),
                };
                if let Err(closing) = send_text(socket, pong, self.ctx.limits.write_timeout).await {
                    return closing;
                }
            }
            ClientMessage::Pong { .. } => {}
            ClientMessage::Subscribe { id, payload } => {
                let Init::Acked(principal) = &self.init else {
                    return Some(Closing::new(close::UNAUTHORIZED, "Unauthorized"));
                };
                let principal = principal.clone();
                if self.ops.contains(&id) {
                    return Some(Closing::new(
                        close::DUPLICATE_ID,
                        format!("Subscriber for {id} already exists"),
                    ));
                }
                if self.ops.len() >= self.ctx.limits.max_operations {
                    let errors = serde_json::json!([{
                        "message": format!("at most {} operations per socket", self.ctx.limits.max_operations),
                        "extensions": {"code": "TOO_MANY_OPERATIONS"}
                    }]);
                    let frame = Frame::Error(errors.to_string().into());
                    if let Err(closing) =
                        send_frame(socket, &id, &frame, self.ctx.limits.write_timeout).await
                    {
                        return closing;
                    }
                    return None;
                }
                if let Err(frame) =
                    crate::ratelimits::subscription(&self.ctx.limiter, self.user(), self.peer).await
                {
                    if let Err(closing) =
                        send_frame(socket, &id, &frame, self.ctx.limits.write_timeout).await
                    {
                        return closing;
                    }
                    return None;
                }
                self.ops.start(&self.ctx, id, payload, principal);
            }
            ClientMessage::Complete { id } => {
                self.ops.complete(&id);
            }
        }
        None
    }

    /// The signed-in user, for per-user rate limits.
    fn user(&self) -> Option<String> {
        match &self.init {
            Init::Acked(Some(p)) => Some(p.user.to_string()),
            _ => None,
        }
    }
}

/// The `error` a channel subscription ends with when a re-authentication's claims no longer
/// admit it.
fn refused_frame() -> Frame {
    let errors = serde_json::json!([{
        "message": "the re-authenticated token may not subscribe to this channel",
        "extensions": {"code": "FORBIDDEN"}
    }]);
    Frame::Error(errors.to_string().into())
}

/// The client application a `connection_init` payload names: `{"client": "name/version"}`.
fn client_of(payload: Option<&Value>) -> Option<&str> {
    payload?.get("client")?.as_str()
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
