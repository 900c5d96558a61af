//! GraphQL over WebSocket with the `graphql-transport-ws` subprotocol, exactly as the graphql-ws
//! library's PROTOCOL.md specifies it. async-graphql is the execution engine; this module owns the
//! protocol: the connection state machine, every close code, auth at `connection_init`, limits.
//!
//! Close codes: 4400 invalid message, 4401 subscribe before `connection_ack`, 4403 forbidden
//! (bad token at init or at a re-authentication, a re-authentication as another user, or the
//! token's `exp` passed without one), 4406 subprotocol not acceptable, 4408 no `connection_init`
//! in time, 4409 operation id already active, 4429 a second `connection_init` or a user over its
//! socket cap (`max_sockets_per_user`); and outside the graphql-ws set,
//! 1001 when the server drains (reconnect elsewhere), 1009 for a message over the size limit and
//! 1013 for a client too slow to read a stream subscription (reconnect and refetch), 1008 for a
//! client over its socket message rate (the reason says when to retry). A `subscribe` over the
//! subscription rate gets an `error` message (code `RATE_LIMITED`), the socket stays open.
//!
//! One task per socket does everything — reading, the init timer, single-result operations and
//! every subscription — so an idle subscribed socket costs one task, its buffers and one
//! broadcast receiver per subscription. Subscriptions are shared executions ([`crate::fanout`]).
//!
//! A socket authenticated with a token lives until the token's `exp` (plus the leeway), the same
//! timer as the init timeout; a `ping` whose payload carries a token of the same user
//! (`{"token": "…"}`) re-authenticates it and moves that deadline, answered by a `pong` with
//! `{"reauthenticated": true, "exp": …}` (docs/protocol/web.md).

use std::collections::HashMap;
use std::time::Duration;

use async_graphql::{ObjectType, Schema, SubscriptionType};
use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use switchyard_core::server::CancellationToken;
use switchyard_core::slots::{Slot, Slots};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use crate::auth::{Principal, Verifier};
use crate::fanout::{Fanout, Frame, Visibility};

/// The subprotocol.
pub(crate) const PROTOCOL: &str = "graphql-transport-ws";

/// Close codes this server sends.
pub(crate) mod close {
    /// The message was not a valid graphql-transport-ws message.
    pub(crate) const INVALID_MESSAGE: u16 = 4400;
    /// `subscribe` before `connection_ack`.
    pub(crate) const UNAUTHORIZED: u16 = 4401;
    /// The `connection_init` or re-authentication credentials were refused, a re-authentication
    /// named another user, or the token expired without one.
    pub(crate) const FORBIDDEN: u16 = 4403;
    /// The client did not offer `graphql-transport-ws`.
    pub(crate) const SUBPROTOCOL_NOT_ACCEPTABLE: u16 = 4406;
    /// No `connection_init` within the configured time.
    pub(crate) const INIT_TIMEOUT: u16 = 4408;
    /// An operation with that id is already active.
    pub(crate) const DUPLICATE_ID: u16 = 4409;
    /// More than one `connection_init`.
    pub(crate) const TOO_MANY_INIT: u16 = 4429;
    /// The user already has `max_sockets_per_user` sockets open (same code: "too many").
    pub(crate) const TOO_MANY_SOCKETS: u16 = 4429;
    /// The server is draining: reconnect (elsewhere).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The client did not read fast enough and missed events of a stream subscription.
    pub(crate) const SLOW_CONSUMER: u16 = 1013;
    /// The client sent messages faster than its rate limit.
    pub(crate) const RATE_LIMITED: u16 = 1008;
}

/// What the socket layer needs to serve one schema.
pub(crate) struct Socket<Q, M, S> {
    pub(crate) schema: Schema<Q, M, S>,
    pub(crate) fanout: std::sync::Arc<Fanout<Q, M, S>>,
    pub(crate) verifier: std::sync::Arc<Verifier>,
    pub(crate) limits: Limits,
    pub(crate) shutdown: CancellationToken,
    /// Sockets open per signed-in user.
    pub(crate) user_sockets: Slots<String>,
    /// Socket message and subscription rate limits ([`crate::ratelimits`]).
    pub(crate) limiter: std::sync::Arc<switchyard_core::ratelimit::RateLimiter>,
}

impl<Q, M, S> Clone for Socket<Q, M, S> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            fanout: self.fanout.clone(),
            verifier: self.verifier.clone(),
            limits: self.limits.clone(),
            shutdown: self.shutdown.clone(),
            user_sockets: self.user_sockets.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

/// Per-socket limits and the schema's subscription policy.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// How long a socket may stay without `connection_init`.
    pub(crate) init_timeout: Duration,
    /// Operations (subscriptions and single results) active at once per socket.
    pub(crate) max_operations: usize,
    /// Longest time one write may wait for the client to read; then it is cut off (1013).
    pub(crate) write_timeout: Duration,
    /// Root subscription fields whose results are the same for every client (public data).
    /// A subscription selecting anything else, anywhere in its root selection (through
    /// fragments, inline fragments, or under `@skip`), is treated as user-scoped: its
    /// execution is shared only with the same principal's sockets.
    pub(crate) public: &'static [&'static str],
    /// Root subscription fields that are state (latest value only): conflated, replayed to
    /// late joiners, never a reason to cut a slow client off.
    pub(crate) state: &'static [&'static str],
}

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
        payload: crate::http::RequestBody,
    },
    Complete {
        id: String,
    },
}

/// Why the socket ends.
pub(crate) struct Closing(u16, String);

impl Closing {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        // A close reason must fit a control frame (123 bytes).
        while reason.len() > 120 {
            reason.pop();
        }
        Self(code, reason)
    }
}

struct Active {
    /// Whether it is a state subscription (conflated rather than cut off when the client lags).
    state: bool,
}

type Single = BoxFuture<'static, (String, u64, Frame)>;

/// Serves one upgraded socket until it closes.
pub(crate) async fn serve<Q, M, S>(
    socket: WebSocket,
    ctx: Socket<Q, M, S>,
    protocol_ok: bool,
    peer: Option<std::net::IpAddr>,
) where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let mut socket = socket;
    if !protocol_ok {
        close(
            socket,
            Closing::new(
                close::SUBPROTOCOL_NOT_ACCEPTABLE,
                "Subprotocol not acceptable",
            ),
        )
        .await;
        return;
    }
    let mut conn = Connection {
        ctx,
        init: Init::Waiting(Instant::now()),
        token_valid_until: None,
        active: HashMap::new(),
        streams: StreamMap::new(),
        singles: FuturesUnordered::new(),
        single_ids: HashMap::new(),
        next_single: 0,
        _user_slot: None,
        peer,
    };
    let closing = conn.run(&mut socket).await;
    if let Some(closing) = closing {
        close(socket, closing).await;
    }
}

enum Init {
    Waiting(Instant),
    Acked(Option<Principal>),
}

struct Connection<Q, M, S> {
    ctx: Socket<Q, M, S>,
    init: Init,
    /// When the connection's token stops being valid (`exp` + leeway); `None` when anonymous.
    token_valid_until: Option<Instant>,
    active: HashMap<String, Active>,
    streams: StreamMap<String, SubStream>,
    singles: FuturesUnordered<Single>,
    /// Active single-result operations, by id, with the generation of their future (an id
    /// completed by the client and reused must not receive the old operation's result).
    single_ids: HashMap<String, u64>,
    next_single: u64,
    /// The signed-in user's socket slot, held from `connection_init` until the socket is gone.
    _user_slot: Option<Slot<String>>,
    /// The client's IP address, for rate limits before (or without) a signed-in user.
    peer: Option<std::net::IpAddr>,
}

/// A socket's view of a shared execution: the replayed latest result, then the broadcast.
struct SubStream {
    initial: Option<Frame>,
    rx: tokio_stream::wrappers::BroadcastStream<Frame>,
    _execution: crate::fanout::ExecutionGuard,
}

impl futures::Stream for SubStream {
    type Item = Result<Frame, u64>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(f) = self.initial.take() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        self.rx.poll_next_unpin(cx).map(|o| {
            o.map(|r| {
                r.map_err(|tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)| n)
            })
        })
    }
}

impl<Q, M, S> Connection<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    /// Runs the protocol; returns how to close, or None when the client is already gone.
    async fn run(&mut self, socket: &mut WebSocket) -> Option<Closing> {
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
                            return switchyard_core::websocket::read_error_close(&e)
                                .map(|(code, reason)| Closing::new(code, reason));
                        }
                    };
                    if let Some(closing) = self.on_message(socket, msg).await {
                        return Some(closing);
                    }
                }
                Some((id, generation, frame)) = self.singles.next(), if !self.singles.is_empty() => {
                    if self.single_ids.get(&id) != Some(&generation) {
                        continue; // Completed by the client meanwhile: its result is dropped.
                    }
                    self.single_ids.remove(&id);
                    if let Err(closing) = send_frame(socket, &id, &frame, self.ctx.limits.write_timeout).await {
                        return closing;
                    }
                    if matches!(frame, Frame::Next(_))
                        && let Err(closing) = send_complete(socket, &id, self.ctx.limits.write_timeout).await
                    {
                        return closing;
                    }
                }
                Some((id, item)) = self.streams.next(), if !self.streams.is_empty() => {
                    match item {
                        Ok(frame) => {
                            let ends = !matches!(frame, Frame::Next(_));
                            if ends {
                                self.streams.remove(&id);
                                self.active.remove(&id);
                            }
                            if let Err(closing) = send_frame(socket, &id, &frame, self.ctx.limits.write_timeout).await {
                                return closing;
                            }
                        }
                        Err(missed) => {
                            let state = self.active.get(&id).is_some_and(|a| a.state);
                            if !state {
                                tracing::info!(missed, "cutting off a client too slow for its subscription");
                                return Some(Closing::new(close::SLOW_CONSUMER, "too slow: events were missed; reconnect"));
                            }
                            // State subscriptions conflate: the next frame is the newest value.
                        }
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
                        Ok(v) if current.as_ref() == Some(&v.subject) => v,
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
                if self.active.contains_key(&id) || self.single_ids.contains_key(&id) {
                    return Some(Closing::new(
                        close::DUPLICATE_ID,
                        format!("Subscriber for {id} already exists"),
                    ));
                }
                if self.active.len() + self.single_ids.len() >= self.ctx.limits.max_operations {
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
                self.start(id, payload, principal);
            }
            ClientMessage::Complete { id } => {
                self.streams.remove(&id);
                self.active.remove(&id);
                // A single-result operation completes on its own; its result is dropped.
                self.single_ids.remove(&id);
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

    /// Starts an operation: a shared execution for subscriptions, a local future otherwise.
    fn start(
        &mut self,
        id: String,
        payload: crate::http::RequestBody,
        principal: Option<Principal>,
    ) {
        let variables = payload.variables.clone().unwrap_or(Value::Null);
        let root = root_fields(&payload.query, payload.operation_name.as_deref());
        let query = payload.query.clone();
        let operation_name = payload.operation_name.clone();
        match root {
            Some(Root::Subscription(fields)) => {
                let limits = &self.ctx.limits;
                let public = fields
                    .iter()
                    .all(|f| f == "__typename" || limits.public.contains(&f.as_str()));
                let state = fields.iter().all(|f| limits.state.contains(&f.as_str()));
                // A public execution runs with no principal at all, so nothing user-scoped can
                // ever end up in results shared across principals; anything else is keyed by
                // the principal (anonymous sockets share only with anonymous ones).
                let (visibility, principal) = if public {
                    (Visibility::Public, None)
                } else {
                    let visibility = match &principal {
                        Some(p) => Visibility::User(p.user.to_string()),
                        None => Visibility::Anonymous,
                    };
                    (visibility, principal)
                };
                let make_request =
                    move || crate::http::with_principal(payload.into_request(), principal);
                let sub = self.ctx.fanout.subscribe(
                    &query,
                    &variables,
                    operation_name.as_deref(),
                    visibility,
                    state,
                    make_request,
                );
                let stream = SubStream {
                    initial: sub.initial,
                    rx: tokio_stream::wrappers::BroadcastStream::new(sub.rx),
                    _execution: sub.execution,
                };
                self.streams.insert(id.clone(), stream);
                self.active.insert(id, Active { state });
            }
            // Queries, mutations and anything unparsable: one result (syntax errors included).
            _ => {
                let make_request =
                    move || crate::http::with_principal(payload.into_request(), principal);
                let schema = self.ctx.schema.clone();
                self.next_single += 1;
                let generation = self.next_single;
                self.single_ids.insert(id.clone(), generation);
                self.singles.push(Box::pin(async move {
                    let response = schema.execute(make_request()).await;
                    (id, generation, crate::fanout::encode(&response, true))
                }));
            }
        }
    }
}

enum Root {
    /// A subscription, with every root field name its selection can reach.
    Subscription(Vec<String>),
    Other,
}

/// The most root field names collected from one subscription; a selection with more is
/// classified as user-scoped (never shared across principals) without looking further.
const MAX_ROOT_FIELDS: usize = 64;

/// The operation to run, and when it is a subscription every root field its selection can
/// reach: fields of the root selection set, of inline fragments in it and of fragments spread
/// into it (recursively), whatever their directives say. Over-approximating is the safe side:
/// a field listed here but skipped at run time can only make an execution less shared.
fn root_fields(query: &str, operation_name: Option<&str>) -> Option<Root> {
    use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    if op.node.ty != OperationType::Subscription {
        return Some(Root::Other);
    }
    let mut fields = Vec::new();
    let mut pending = vec![&op.node.selection_set];
    let mut spread = std::collections::HashSet::new();
    while let Some(set) = pending.pop() {
        for item in &set.node.items {
            match &item.node {
                Selection::Field(f) => {
                    let name = f.node.name.node.as_str();
                    if !fields.iter().any(|n: &String| n == name) {
                        fields.push(name.to_owned());
                    }
                }
                Selection::InlineFragment(i) => pending.push(&i.node.selection_set),
                Selection::FragmentSpread(s) => {
                    let name = &s.node.fragment_name.node;
                    // Each fragment once: cycles and repeated spreads end here.
                    if spread.insert(name.clone()) {
                        match doc.fragments.get(name) {
                            Some(fragment) => pending.push(&fragment.node.selection_set),
                            // An unknown fragment fails validation; never share it.
                            None => fields.push(format!("...{name}")),
                        }
                    }
                }
            }
            if fields.len() > MAX_ROOT_FIELDS {
                fields.push("...".to_owned());
                return Some(Root::Subscription(fields));
            }
        }
    }
    Some(Root::Subscription(fields))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// How long a close frame may take to reach the client, reading and discarding meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Why a write failed: `None` when the client is gone, or the close owed to a client that
/// stopped reading (its frame is still sent, and lingers until it reads or the linger ends).
type Sent = Result<(), Option<Closing>>;

async fn send_text(socket: &mut WebSocket, text: String, timeout: Duration) -> Sent {
    let write = socket.send(Message::Text(Utf8Bytes::from(text)));
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => {
            tracing::info!("cutting off a socket whose client has not read for {timeout:?}");
            Err(Some(Closing::new(
                close::SLOW_CONSUMER,
                "too slow: the client stopped reading; reconnect",
            )))
        }
    }
}

async fn send_frame(socket: &mut WebSocket, id: &str, frame: &Frame, timeout: Duration) -> Sent {
    let id_json = serde_json::Value::String(id.to_owned()).to_string();
    let text = match frame {
        Frame::Next(payload) => envelope(&id_json, "next", payload),
        Frame::Error(errors) => envelope(&id_json, "error", errors),
        Frame::Complete => format!(r#"{{"id":{id_json},"type":"complete"}}"#),
    };
    send_text(socket, text, timeout).await
}

async fn send_complete(socket: &mut WebSocket, id: &str, timeout: Duration) -> Sent {
    send_frame(socket, id, &Frame::Complete, timeout).await
}

/// `{"id":…,"type":…,"payload":…}` around an already-serialised payload.
fn envelope(id_json: &str, ty: &str, payload: &[u8]) -> String {
    let payload = std::str::from_utf8(payload).unwrap_or("null");
    let mut s = String::with_capacity(id_json.len() + payload.len() + 40);
    s.push_str(r#"{"id":"#);
    s.push_str(id_json);
    s.push_str(r#","type":""#);
    s.push_str(ty);
    s.push_str(r#"","payload":"#);
    s.push_str(payload);
    s.push('}');
    s
}

/// Sends the close frame and lingers until the client has it (a slow consumer cut off with
/// 1013 must read what its buffers hold before the frame reaches it).
async fn close(socket: WebSocket, closing: Closing) {
    let (mut sink, mut stream) = socket.split();
    switchyard_core::websocket::close(&mut sink, &mut stream, closing.0, &closing.1, CLOSE_LINGER)
        .await;
}
