//! The `/v1/ws` socket speaking `switchyard-mobile.v1` (`docs/protocol/mobile-v1.md`): the
//! connection state machine (awaiting auth, ready, draining), re-authentication and the token's
//! expiry (one more deadline of the socket's one timer), subscriptions with resume, calls,
//! heartbeats, limits and every close code.
//!
//! One task per socket does everything — reading, writing, timers, calls and every subscription
//! — so an idle socket costs one task, its small buffers and one hub subscriber per topic. The
//! task writes from its own bounded queue without ever waiting on the client in a way that stops
//! the rest: a stream event that finds the queue full cuts the client off (4503); a state update
//! replaces the queued update of its topic (conflation); replies are bounded by the limits on
//! subscriptions and calls. An event is encoded once per (topic, position, encoding) for all
//! sockets ([`FrameCache`]).
//!
//! This module does not verify tokens ([`crate::auth`]), run operations ([`crate::calls`]), or
//! define the messages (`mobile_proto`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use demo_api::UserId;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesUnordered, SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use mobile_proto::{
    ClientMsg, Encoding, Frame, FrameKind, Position, ServerMsg, close, code, data, topic,
};
use serde_json::Value;
use switchyard_core::bus::StartAt;
use switchyard_core::event::{Event, Topic, TopicClass};
use switchyard_core::hub::{Hub, Item};
use switchyard_core::server::CancellationToken;
use switchyard_core::slots::{Slot, Slots};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_util::task::TaskTracker;

use crate::WebSocketConfig;
use crate::auth::Verifier;
use crate::calls::{self, CallError};

/// How long a close frame may take to reach the client (a slow consumer reads what its
/// buffers hold first), reading and discarding meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Longest wait for a client's close answer, and for flushing before a close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Longest wait for the bus when a subscription starts (its head, and the hub joining it).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries of the frame cache before it is emptied (it holds one frame per topic and encoding).
const FRAME_CACHE_ENTRIES: usize = 10_000;

/// Most items taken from the subscriptions without waiting, after one that was waited for: they
/// go out in one write and one flush.
const READY_BATCH: usize = 32;

/// Longest close reason (RFC 6455 allows 123 bytes).
const MAX_REASON_BYTES: usize = 123;

/// What the gateway's sockets share.
pub(crate) struct GatewayParts {
    pub(crate) hub: Hub,
    pub(crate) ops: operations::Operations,
    pub(crate) verifier: Verifier,
    /// Which browser pages may open a socket.
    pub(crate) origins: switchyard_core::origin::OriginPolicy,
    pub(crate) config: WebSocketConfig,
    pub(crate) operation_deadline: Duration,
    pub(crate) drain: Duration,
    pub(crate) sockets: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Message and subscription rate limits.
    pub(crate) limiter: Arc<switchyard_core::ratelimit::RateLimiter>,
}

/// The shared state of every socket.
pub(crate) struct Gateway {
    parts: GatewayParts,
    frames: FrameCache,
    /// Sockets open per signed-in user (`max_sockets_per_user`).
    user_sockets: Slots<String>,
}

impl Gateway {
    pub(crate) fn new(parts: GatewayParts) -> Arc<Self> {
        let user_sockets = Slots::new(parts.config.max_sockets_per_user, 0);
        Arc::new(Self {
            parts,
            frames: FrameCache::default(),
            user_sockets,
        })
    }

    /// The window announced in `bye`; the socket closes (1001) when it has passed.
    fn bye_window(&self) -> Duration {
        self.parts.drain.mul_f64(0.75)
    }
}

/// The `/ws` route.
pub(crate) fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(gateway)
}

async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !gw.parts.origins.allows(&headers) {
        return switchyard_core::server::JsonError::new(
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
    let max = gw.parts.config.max_frame_bytes as usize;
    let mut upgrade = upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // Small buffers: an idle socket should cost kilobytes, not tungstenite's default 128 KiB.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size((1 << 20) * 2);
    if let Some(enc) = encoding {
        upgrade = upgrade.protocols([enc.subprotocol()]);
    }
    let tracker = gw.parts.sockets.clone();
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| tracker.track_future(serve(socket, gw, encoding, peer)))
}

/// Serves one socket until it closes.
async fn serve(
    socket: WebSocket,
    gw: Arc<Gateway>,
    encoding: Option<Encoding>,
    peer: Option<std::net::IpAddr>,
) {
    let (sink, stream) = socket.split();
    let mut io = Io {
        sink,
        stream,
        queue: Queue::default(),
    };
    let Some(enc) = encoding else {
        io.close(Closing::new(
            close::SUBPROTOCOL_REQUIRED,
            "offer switchyard-mobile.v1.cbor or switchyard-mobile.v1.json",
        ))
        .await;
        return;
    };
    let now = Instant::now();
    let mut conn = Conn {
        gw,
        enc,
        user: None,
        peer,
        subs: Vec::new(),
        streams: StreamMap::new(),
        next_sub: 0,
        calls: FuturesUnordered::new(),
        call_ids: HashSet::new(),
        opened: now,
        last_heard: now,
        next_ping: now,
        ping_n: 0,
        closes_at: None,
        _user_slot: None,
        token_valid_until: None,
    };
    match conn.run(&mut io).await {
        Some(closing) => io.close(closing).await,
        None => {
            // The client is gone or closed: flush whatever close answer is pending.
            let _ = tokio::time::timeout(CLOSE_WAIT, io.sink.flush()).await;
        }
    }
}

/// How to close a socket.
struct Closing {
    code: u16,
    reason: String,
}

impl Closing {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Self { code, reason }
    }
}

/// What a queued message is, for bounding and conflation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// An answer (`welcome`, `subbed`, `result`, `error`, …): never dropped.
    Reply,
    /// An event or gap of a stream topic: counts against the send queue.
    Stream,
    /// An event of a state topic (by subscription id): replaced by a newer one while queued.
    State(u32),
    /// A server `ping`: at most one queued.
    Ping,
    /// A `pong`: at most one queued (the newest).
    Pong,
}

/// The socket's outgoing queue.
struct Queue {
    items: VecDeque<(Kind, Message)>,
    /// Whether something was handed to the sink and not yet flushed.
    dirty: bool,
    /// When the queue last moved (or last became non-empty).
    progress: Instant,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            dirty: false,
            progress: Instant::now(),
        }
    }
}

impl Queue {
    fn busy(&self) -> bool {
        !self.items.is_empty() || self.dirty
    }

    fn push(&mut self, kind: Kind, msg: Message) {
        if !self.busy() {
            self.progress = Instant::now();
        }
        let same = |k: &Kind| match (&kind, k) {
            (Kind::State(a), Kind::State(b)) => a == b,
            (Kind::Ping, Kind::Ping) | (Kind::Pong, Kind::Pong) => true,
            _ => false,
        };
        if matches!(kind, Kind::State(_) | Kind::Ping | Kind::Pong)
            && let Some(slot) = self.items.iter_mut().find(|(k, _)| same(k))
        {
            // Conflation: the newer value replaces the unsent one, in its place.
            if kind != Kind::Ping {
                slot.1 = msg;
            }
            return;
        }
        self.items.push_back((kind, msg));
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// The socket's two halves and its outgoing queue.
struct Io {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    queue: Queue,
}

/// Writes queued messages and flushes; resolves once the queue is empty and flushed. Cancel-safe:
/// a message leaves the queue only when the sink has taken it.
async fn write_queued(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &mut Queue,
) -> Result<(), axum::Error> {
    futures::future::poll_fn(|cx| {
        while !queue.items.is_empty() {
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if let Some((_, msg)) = queue.items.pop_front() {
                sink.start_send_unpin(msg)?;
                queue.dirty = true;
                queue.progress = Instant::now();
            }
        }
        match sink.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => {
                queue.dirty = false;
                queue.progress = Instant::now();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    })
    .await
}

impl Io {
    /// Closes the socket: flushes what is queued (except for a slow consumer, whose queue is
    /// dropped), sends the close frame and lingers, reading and discarding, until the client has
    /// it (a slow consumer gets its close frame only once it reads what its socket buffers hold:
    /// give it as long as any write).
    async fn close(&mut self, closing: Closing) {
        if closing.code == close::SLOW_CONSUMER {
            self.queue.items.clear();
        }
        let _ =
            tokio::time::timeout(CLOSE_WAIT, write_queued(&mut self.sink, &mut self.queue)).await;
        switchyard_core::websocket::close(
            &mut self.sink,
            &mut self.stream,
            closing.code,
            &closing.reason,
            CLOSE_LINGER,
        )
        .await;
    }
}

/// One subscription's items; `None` once, when the hub ended it.
type SubStream = BoxStream<'static, Option<Item>>;

/// A call in flight: its id and its outcome.
type CallFuture = BoxFuture<'static, (u32, Result<Value, CallError>)>;

/// One subscription of a socket.
struct SubInfo {
    /// The key of its stream in [`Conn::streams`] (cheap to copy on every item).
    id: u32,
    /// The client topic.
    name: String,
    /// The hub topic it maps to.
    hub_topic: Topic,
    class: TopicClass,
}

/// The state of one connection.
struct Conn {
    gw: Arc<Gateway>,
    enc: Encoding,
    /// The signed-in user; `None` while awaiting auth.
    user: Option<UserId>,
    /// The client's IP address (rate limits before `auth`).
    peer: Option<std::net::IpAddr>,
    /// At most `max_subscriptions`, so lookups by name are a short scan.
    subs: Vec<SubInfo>,
    streams: StreamMap<u32, SubStream>,
    next_sub: u32,
    calls: FuturesUnordered<CallFuture>,
    call_ids: HashSet<u32>,
    opened: Instant,
    last_heard: Instant,
    next_ping: Instant,
    ping_n: u32,
    /// Set once `bye` was sent: when the socket closes with 1001.
    closes_at: Option<Instant>,
    /// The user's socket slot, held from `auth` until the socket is gone.
    _user_slot: Option<Slot<String>>,
    /// When the token of the last `auth` stops being valid (`exp` + leeway): the socket closes
    /// with 4440 then, unless a re-authentication moved it.
    token_valid_until: Option<Instant>,
}

impl Conn {
    fn config(&self) -> &WebSocketConfig {
        &self.gw.parts.config
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.config().write_timeout_ms.max(1))
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(u64::from(self.config().heartbeat_ms.max(1)))
    }

    /// Runs the protocol; returns how to close, or `None` when the client is already gone.
    async fn run(&mut self, io: &mut Io) -> Option<Closing> {
        // Made once per socket, not once per turn of the loop: the cancellation future and ONE
        // timer for every deadline. The timer is moved only when a deadline comes earlier than
        // the one it is set for; deadlines that move later (the client was heard, the queue
        // moved) cost one early wake-up, when everything is checked and the timer re-armed.
        let mut shutdown = std::pin::pin!(self.gw.parts.shutdown.clone().cancelled_owned());
        let auth_deadline =
            self.opened + Duration::from_millis(self.gw.parts.config.auth_timeout_ms);
        let far = || Instant::now() + Duration::from_secs(86_400);
        let mut armed = far();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(armed));
        loop {
            let authed = self.user.is_some();
            let silence_deadline = self.last_heard + self.heartbeat() * 2;
            let write_deadline = io.queue.progress + self.write_timeout();
            let busy = io.queue.busy();
            let next = [
                Some(silence_deadline),
                self.closes_at,
                (!authed).then_some(auth_deadline),
                authed.then_some(self.next_ping),
                self.token_valid_until,
                busy.then_some(write_deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(silence_deadline);
            if next < armed {
                armed = next;
                timer.as_mut().reset(next);
            }
            // Biased: timers first, then writing, so that the queue only grows while the
            // socket itself is blocked (a client that reads keeps it near empty), then input.
            tokio::select! {
                biased;
                () = &mut shutdown, if self.closes_at.is_none() => {
                    let window = self.gw.bye_window();
                    let ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
                    self.closes_at = Some(Instant::now() + window);
                    self.reply(io, &ServerMsg::Bye(mobile_proto::Bye { reconnect_within_ms: ms }));
                }
                () = &mut timer => {
                    // Re-armed at the top of the loop for whatever is due next.
                    armed = far();
                    let now = Instant::now();
                    if self.closes_at.is_some_and(|at| now >= at) {
                        return Some(Closing::new(close::GOING_AWAY, "server draining: reconnect"));
                    }
                    if !authed && now >= auth_deadline {
                        return Some(Closing::new(close::TIMEOUT, "no auth in time"));
                    }
                    if self.token_valid_until.is_some_and(|at| now >= at) {
                        return Some(Closing::new(
                            close::TOKEN_EXPIRED,
                            "the token has expired: send auth with a fresh token before exp",
                        ));
                    }
                    if now >= silence_deadline {
                        return Some(Closing::new(close::TIMEOUT, "no frame for 2 x hb"));
                    }
                    if busy && now >= write_deadline {
                        tracing::info!("cutting off a socket whose client has not read for {:?}", self.write_timeout());
                        return Some(Closing::new(
                            close::SLOW_CONSUMER,
                            "too slow: the client stopped reading; reconnect and resume",
                        ));
                    }
                    if authed && now >= self.next_ping {
                        self.ping_n = self.ping_n.wrapping_add(1);
                        self.next_ping += self.heartbeat();
                        let frame = self.enc.encode_server(&ServerMsg::Ping(mobile_proto::Ping { n: self.ping_n }));
                        io.queue.push(Kind::Ping, message(frame));
                    }
                }
                written = write_queued(&mut io.sink, &mut io.queue), if busy => {
                    if written.is_err() {
                        return None;
                    }
                }
                incoming = io.stream.next() => {
                    self.last_heard = Instant::now();
                    let msg = match incoming {
                        None => return None,
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => return read_error(&e),
                    };
                    if let Some(closing) = self.on_message(io, msg).await {
                        return Some(closing);
                    }
                }
                Some((id, outcome)) = self.calls.next(), if !self.calls.is_empty() => {
                    self.call_ids.remove(&id);
                    let msg = match outcome {
                        Ok(d) => ServerMsg::Result(mobile_proto::CallResult { id, data: d }),
                        Err(e) => ServerMsg::call_error(id, e.code, e.message),
                    };
                    self.reply(io, &msg);
                }
                Some((sub, item)) = self.streams.next(), if !self.streams.is_empty() => {
                    if let Some(closing) = self.on_item(io, sub, item) {
                        return Some(closing);
                    }
                    // Take what else is ready now, so that one write and one flush carry it all
                    // (the next turn polls the streams again with this task's waker).
                    for _ in 0..READY_BATCH {
                        let Some(Some((sub, item))) = self.streams.next().now_or_never() else {
                            break;
                        };
                        if let Some(closing) = self.on_item(io, sub, item) {
                            return Some(closing);
                        }
                    }
                }
            }
            if io.queue.len() > self.reply_bound() {
                // Only a client that keeps asking while it does not read gets here.
                return Some(Closing::new(
                    close::SLOW_CONSUMER,
                    "too slow: the send queue is full; reconnect and resume",
                ));
            }
        }
    }

    /// The most messages the queue may hold at all: the send queue plus the replies the limits
    /// allow.
    fn reply_bound(&self) -> usize {
        let c = self.config();
        c.send_queue_messages + c.max_subscriptions as usize + c.max_calls as usize + 16
    }

    fn reply(&self, io: &mut Io, msg: &ServerMsg) {
        io.queue
            .push(Kind::Reply, message(self.enc.encode_server(msg)));
    }

    /// An item of a subscription; returns a closing when the client is too slow.
    fn on_item(&mut self, io: &mut Io, id: u32, item: Option<Item>) -> Option<Closing> {
        let index = self.subs.iter().position(|s| s.id == id)?;
        let class = self.subs[index].class;
        let Some(item) = item else {
            let sub = self.subs.swap_remove(index);
            tracing::warn!(topic = %sub.hub_topic, "the hub ended a subscription");
            let msg = ServerMsg::topic_error(
                &sub.name,
                code::EVENTS_UNAVAILABLE,
                "the topic's event source stopped; subscribe again (with resume) later",
            );
            self.reply(io, &msg);
            return None;
        };
        let (kind, msg) = match item {
            Item::Event(event) => {
                let msg = self
                    .gw
                    .frames
                    .frame(self.enc, &self.subs[index].name, &event)?;
                match class {
                    TopicClass::State => (Kind::State(id), msg),
                    TopicClass::Stream => (Kind::Stream, msg),
                }
            }
            Item::Gap { resume, .. } => {
                let gap = ServerMsg::Gap(mobile_proto::Gap {
                    topic: self.subs[index].name.clone(),
                    epoch: resume.epoch,
                    offset: resume.offset,
                });
                tracing::debug!(topic = %self.subs[index].hub_topic, "gap signalled to a client");
                (Kind::Stream, message(self.enc.encode_server(&gap)))
            }
        };
        if kind == Kind::Stream && io.queue.len() >= self.config().send_queue_messages {
            tracing::info!(topic = %self.subs[index].hub_topic, "cutting off a client too slow for a stream topic");
            return Some(Closing::new(
                close::SLOW_CONSUMER,
                "too slow: the send queue is full; reconnect and resume",
            ));
        }
        io.queue.push(kind, msg);
        None
    }

    async fn on_message(&mut self, io: &mut Io, msg: Message) -> Option<Closing> {
        let (kind, bytes) = match &msg {
            Message::Text(t) => (FrameKind::Text, t.as_bytes()),
            Message::Binary(b) => (FrameKind::Binary, b.as_ref()),
            // Control frames count as heard (done by the caller); tungstenite answers pings.
            Message::Ping(_) | Message::Pong(_) => return None,
            // The WebSocket layer answers the close frame itself.
            Message::Close(_) => return Some(Closing::new(close::NORMAL, "")),
        };
        let max = self.config().max_frame_bytes as usize;
        let decoded = match self.enc.decode_client(kind, bytes, max) {
            Ok(m) => m,
            Err(e) => return Some(Closing::new(e.close_code(), e.to_string())),
        };
        let user = self.user.as_ref().map(ToString::to_string);
        if let Err(r) = self
            .gw
            .parts
            .limiter
            .check_message(user.as_deref(), self.peer)
            .await
        {
            let (id, topic) = match &decoded {
                ClientMsg::Call(c) => (Some(c.id), None),
                ClientMsg::Sub(s) => (None, Some(s.topic.as_str())),
                _ => (None, None),
            };
            let retry = u32::try_from(r.millis()).unwrap_or(u32::MAX);
            self.reply(io, &ServerMsg::rate_limited(id, topic, retry));
            return None;
        }
        match (decoded, self.user.clone()) {
            (ClientMsg::Ping(p), _) => {
                let frame = self
                    .enc
                    .encode_server(&ServerMsg::Pong(mobile_proto::Pong { n: p.n }));
                io.queue.push(Kind::Pong, message(frame));
            }
            (ClientMsg::Pong(_), _) => {}
            (ClientMsg::Auth(a), current) => match self.gw.parts.verifier.verify(&a.token).await {
                // A re-authentication: same user, a later expiry, the same `welcome`.
                Ok(v) if current.as_ref().is_some_and(|u| *u != v.subject) => {
                    return Some(Closing::new(
                        close::FORBIDDEN,
                        "re-authentication as another user: open a new connection",
                    ));
                }
                Ok(v) => {
                    // The socket takes a slot of its user at the first `auth` only.
                    if current.is_none() {
                        match self.gw.user_sockets.try_acquire(v.subject.to_string()) {
                            Ok(slot) => self._user_slot = Some(slot),
                            Err(_) => {
                                return Some(Closing::new(
                                    close::TOO_MANY_CONNECTIONS,
                                    format!(
                                        "too many connections: at most {} per user",
                                        self.config().max_sockets_per_user
                                    ),
                                ));
                            }
                        }
                    }
                    self.token_valid_until = Some(v.deadline());
                    let user = v.subject;
                    let c = self.config();
                    let welcome = ServerMsg::Welcome(mobile_proto::Welcome {
                        user: user.to_string(),
                        heartbeat_ms: c.heartbeat_ms,
                        limits: mobile_proto::Limits {
                            max_subscriptions: c.max_subscriptions,
                            max_calls: c.max_calls,
                            max_frame_bytes: c.max_frame_bytes,
                        },
                    });
                    if current.is_none() {
                        self.next_ping = Instant::now() + self.heartbeat();
                    }
                    self.user = Some(user);
                    self.reply(io, &welcome);
                }
                Err(why) => {
                    return Some(Closing::new(
                        close::UNAUTHENTICATED,
                        format!("token refused: {why}"),
                    ));
                }
            },
            (_, None) => {
                return Some(Closing::new(close::UNAUTHENTICATED, "send auth first"));
            }
            (ClientMsg::Sub(sub), Some(user)) => self.subscribe(io, &user, sub).await,
            (ClientMsg::Unsub(unsub), Some(_)) => {
                if let Some(index) = self.subs.iter().position(|s| s.name == unsub.topic) {
                    let sub = self.subs.swap_remove(index);
                    self.streams.remove(&sub.id);
                }
                let msg = ServerMsg::Unsubbed(mobile_proto::Unsubbed { topic: unsub.topic });
                self.reply(io, &msg);
            }
            (ClientMsg::Call(call), Some(user)) => return self.call(io, user, call),
        }
        None
    }

    fn call(&mut self, io: &mut Io, user: UserId, call: mobile_proto::Call) -> Option<Closing> {
        let id = call.id;
        if self.call_ids.contains(&id) {
            return Some(Closing::new(
                close::CONFLICT,
                format!("call {id} is still in flight"),
            ));
        }
        let refusal = if self.call_ids.len() >= self.config().max_calls as usize {
            Some((
                code::TOO_MANY_CALLS,
                format!("at most {} calls in flight", self.config().max_calls),
            ))
        } else if self
            .closes_at
            .is_some_and(|at| at < Instant::now() + self.gw.parts.operation_deadline)
        {
            Some((
                code::DRAINING,
                "the server closes before this could finish: send it on a new connection"
                    .to_owned(),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.reply(io, &ServerMsg::call_error(id, code, message));
            return None;
        }
        self.call_ids.insert(id);
        let ops = self.gw.parts.ops.clone();
        self.calls.push(Box::pin(async move {
            let outcome = calls::run(&ops, &user, &call).await;
            (id, outcome)
        }));
        None
    }

    /// The hub topic of a client topic, for `user`.
    fn hub_topic(user: &UserId, name: &str) -> Option<Topic> {
        if name == topic::CONVERSIONS {
            return Topic::new(&demo_api::conversions_topic(user)).ok();
        }
        let pair: demo_api::Pair = topic::rates_pair(name)?.parse().ok()?;
        Some(operations::sources::rates_topic(&pair))
    }

    async fn subscribe(&mut self, io: &mut Io, user: &UserId, sub: mobile_proto::Sub) {
        let name = sub.topic;
        let Some(hub_topic) = Self::hub_topic(user, &name) else {
            let msg = ServerMsg::topic_error(&name, code::UNKNOWN_TOPIC, "no such topic");
            return self.reply(io, &msg);
        };
        if sub
            .resume
            .as_ref()
            .is_some_and(|p| p.epoch > i64::MAX as u64 || p.offset > i64::MAX as u64)
        {
            // Positions the server hands out are always below 2^63 (the spec promises it, so
            // they fit a Kotlin Long); one above is not ours, and is never echoed back.
            let msg = ServerMsg::topic_error(
                &name,
                code::INVALID_ARGS,
                "`resume` is not a position this server gave: positions are below 2^63",
            );
            return self.reply(io, &msg);
        }
        if self.subs.iter().any(|s| s.name == name) {
            let msg = ServerMsg::topic_error(&name, code::ALREADY_SUBSCRIBED, "already subscribed");
            return self.reply(io, &msg);
        }
        if self.subs.len() >= self.config().max_subscriptions as usize {
            let msg = ServerMsg::topic_error(
                &name,
                code::TOO_MANY_SUBSCRIPTIONS,
                format!("at most {} subscriptions", self.config().max_subscriptions),
            );
            return self.reply(io, &msg);
        }
        let limiter = &self.gw.parts.limiter;
        if let Err(r) = limiter
            .check_subscription(Some(user.as_str()), self.peer)
            .await
        {
            let retry = u32::try_from(r.millis()).unwrap_or(u32::MAX);
            return self.reply(io, &ServerMsg::rate_limited(None, Some(&name), retry));
        }
        let hub = &self.gw.parts.hub;
        let class = hub.class_of(&hub_topic);
        let started = async {
            let head = hub.bus().head(&hub_topic).await?;
            let (subbed, from) = match (class, sub.resume) {
                (TopicClass::Stream, Some(p)) => {
                    let p = switchyard_core::event::Position {
                        epoch: p.epoch,
                        offset: p.offset,
                    };
                    (p, StartAt::After(p))
                }
                // From the head read above: nothing published meanwhile is missed.
                (TopicClass::Stream, None) => (head, StartAt::After(head)),
                (TopicClass::State, _) => (head, StartAt::Live),
            };
            let subscriber = hub.subscribe(&hub_topic, from).await?;
            Ok::<_, switchyard_core::bus::BusError>((subbed, subscriber))
        };
        // The socket's task waits for the bus here: bounded, so a stuck broker cannot hang it.
        let started = tokio::time::timeout(SUBSCRIBE_TIMEOUT, started);
        let (position, subscriber) = match started.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(topic = %hub_topic, error = %e, "subscription failed");
                let msg = ServerMsg::topic_error(
                    &name,
                    code::EVENTS_UNAVAILABLE,
                    "the topic's event source is unavailable; retry later",
                );
                return self.reply(io, &msg);
            }
            Err(_) => {
                let e = "timed out";
                tracing::warn!(topic = %hub_topic, error = %e, "subscription failed");
                let msg = ServerMsg::topic_error(
                    &name,
                    code::EVENTS_UNAVAILABLE,
                    "the topic's event source is unavailable; retry later",
                );
                return self.reply(io, &msg);
            }
        };
        self.reply(
            io,
            &ServerMsg::Subbed(mobile_proto::Subbed {
                topic: name.clone(),
                epoch: position.epoch,
                offset: position.offset,
            }),
        );
        let stream = futures::stream::unfold(Some(subscriber), |s| async move {
            let mut s = s?;
            match s.next().await {
                Some(item) => Some((Some(item), Some(s))),
                // Said once, so the client is never left subscribed to a silent topic.
                None => Some((None, None)),
            }
        })
        .boxed();
        let id = self.next_sub;
        self.next_sub = self.next_sub.wrapping_add(1);
        self.streams.insert(id, stream);
        self.subs.push(SubInfo {
            id,
            name,
            hub_topic,
            class,
        });
    }
}

/// The close owed to the client for a read error (1009 too big, 1007 invalid UTF-8, 1002
/// protocol violation), or nothing when the client is gone.
fn read_error(e: &axum::Error) -> Option<Closing> {
    switchyard_core::websocket::read_error_close(e).map(|(code, reason)| Closing::new(code, reason))
}

/// A protocol frame as a WebSocket message (no copy).
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(s) => Message::Text(Utf8Bytes::from(s)),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
}

/// The last encoded frame per (hub topic, encoding): every subscriber of a topic in one
/// encoding gets the same bytes, encoded once.
#[derive(Default)]
pub(crate) struct FrameCache {
    frames: Mutex<HashMap<(Topic, Encoding), (Position, Message)>>,
}

impl FrameCache {
    /// The `event` frame of `event` for `client_topic` in `enc`; `None` (logged) when its
    /// payload cannot be read.
    fn frame(&self, enc: Encoding, client_topic: &str, event: &Event) -> Option<Message> {
        let position = Position {
            epoch: event.epoch,
            offset: event.offset,
        };
        let key = (event.topic.clone(), enc);
        if let Some((p, m)) = self.lock().get(&key)
            && *p == position
        {
            return Some(m.clone());
        }
        let msg = message(encode_event(enc, client_topic, position, event)?);
        let mut frames = self.lock();
        if frames.len() >= FRAME_CACHE_ENTRIES {
            frames.clear();
        }
        frames.insert(key, (position, msg.clone()));
        Some(msg)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Topic, Encoding), (Position, Message)>> {
        // Critical sections only look up or insert: a panic cannot leave torn state.
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads a hub payload (JSON of `demo_api` types) and encodes it as an `event`.
fn encode_event(
    enc: Encoding,
    client_topic: &str,
    position: Position,
    event: &Event,
) -> Option<Frame> {
    let encoded = if client_topic == topic::CONVERSIONS {
        serde_json::from_slice::<demo_api::ConversionEvent>(&event.payload)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let d: data::Conversion = calls::conversion(&c.conversion);
                enc.encode_event(client_topic, position, &d)
                    .map_err(|e| e.to_string())
            })
    } else {
        serde_json::from_slice::<demo_api::Rate>(&event.payload)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                enc.encode_event(client_topic, position, &calls::rate(&r))
                    .map_err(|e| e.to_string())
            })
    };
    match encoded {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(topic = %event.topic, offset = event.offset, error = %e, "unreadable event payload skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_event(offset: u64) -> Event {
        Event {
            topic: Topic::new("rates.EUR/USD").unwrap(),
            epoch: 7,
            offset,
            payload: bytes::Bytes::from_static(br#"{"pair":"EUR/USD","rate":"1.0842","seq":3}"#),
        }
    }

    fn ptr(m: &Message) -> *const u8 {
        match m {
            Message::Binary(b) => b.as_ptr(),
            Message::Text(t) => t.as_str().as_ptr(),
            _ => std::ptr::null(),
        }
    }

    #[test]
    fn an_event_is_encoded_once_per_encoding_and_shared() {
        let cache = FrameCache::default();
        for enc in Encoding::ALL {
            let a = cache.frame(enc, "rates:EUR/USD", &rate_event(1)).unwrap();
            let b = cache.frame(enc, "rates:EUR/USD", &rate_event(1)).unwrap();
            // The same bytes, not an equal copy.
            assert_eq!(ptr(&a), ptr(&b));
            let c = cache.frame(enc, "rates:EUR/USD", &rate_event(2)).unwrap();
            assert_ne!(ptr(&a), ptr(&c));
        }
        let cbor = cache
            .frame(Encoding::Cbor, "rates:EUR/USD", &rate_event(2))
            .unwrap();
        let Message::Binary(bytes) = cbor else {
            panic!("CBOR travels in binary frames")
        };
        let ServerMsg::Event(ev) = Encoding::Cbor
            .decode_server(FrameKind::Binary, &bytes, 1 << 20)
            .unwrap()
        else {
            panic!("an event")
        };
        assert_eq!(
            (ev.topic.as_str(), ev.epoch, ev.offset),
            ("rates:EUR/USD", 7, 2)
        );
        assert_eq!(ev.data_as::<data::Rate>().unwrap().rate, "1.0842");
    }

    #[test]
    fn an_unreadable_payload_is_skipped_not_a_panic() {
        let cache = FrameCache::default();
        let mut e = rate_event(1);
        e.payload = bytes::Bytes::from_static(b"\xff not json");
        assert!(cache.frame(Encoding::Json, "rates:EUR/USD", &e).is_none());
    }

    #[test]
    fn close_reasons_are_cut_at_123_bytes_on_a_char_boundary() {
        let c = Closing::new(4400, "é".repeat(100));
        assert!(c.reason.len() <= MAX_REASON_BYTES);
        assert!(c.reason.len() >= MAX_REASON_BYTES - 1);
    }
}
