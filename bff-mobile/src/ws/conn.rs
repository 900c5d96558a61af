//! The protocol state machine of one socket (`docs/protocol/mobile-v1.md`): awaiting auth,
//! ready, draining; re-authentication and the token's expiry; subscriptions with resume; calls;
//! heartbeats; limits and every close code. One task per socket runs [`Conn::run`], which does
//! everything — reading, writing, timers, calls and every subscription — so an idle socket costs
//! one task, its small buffers and one hub subscriber per topic.
//!
//! It writes through the socket's bounded queue ([`super::transport`]) without ever waiting on
//! the client in a way that stops the rest: a stream event that finds the queue full cuts the
//! client off (4503); a state update replaces the queued update of its topic (conflation);
//! replies are bounded by the limits on subscriptions and calls.
//!
//! The event path runs one way: hub → [`super::subscriptions`] → here → the route's frames
//! ([`super::events`], encoded once for all sockets) → the queue. This module does not verify
//! tokens ([`crate::auth`]), run operations ([`crate::calls`]), know the demo's topics
//! ([`super::topics`]) or the channel catalog ([`super::channels`]), read payloads, or define
//! the messages (`mobile_proto`). Handling `sub` — routing, refusals, starting — and judging
//! channel subscriptions again on re-authentication is in [`subscribe`].

mod subscribe;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use demo_api::UserId;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use mobile_proto::{ClientMsg, Encoding, FrameKind, ServerMsg, close, code};
use serde_json::Value;
use switchyard_core::event::TopicClass;
use switchyard_core::hub::Item;
use switchyard_core::slots::Slot;
use tokio::time::Instant;

use super::channels::Claims;
use super::gateway::Gateway;
use super::subscriptions::Subscriptions;
use super::transport::{Closing, Io, Kind, Turn, message, read_error, write_queued};
use crate::WebSocketConfig;
use crate::calls::{self, CallError};

/// Most items taken from the subscriptions without waiting, after one that was waited for: they
/// go out in one write and one flush.
const READY_BATCH: usize = 32;

/// A call in flight: its id and its outcome.
type CallFuture = BoxFuture<'static, (u32, Result<Value, CallError>)>;

/// The state of one connection.
pub(super) struct Conn {
    gw: Arc<Gateway>,
    enc: Encoding,
    /// The signed-in user; `None` while awaiting auth.
    user: Option<UserId>,
    /// The claims of the user's latest accepted token (what catalog claim rules read).
    claims: Claims,
    /// The client's IP address (rate limits before `auth`).
    peer: Option<std::net::IpAddr>,
    subs: Subscriptions,
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
    /// The socket in the gateway's metrics: its client (named by `auth`), its queue depth.
    usage: Option<switchyard_server::metrics::ConnectionGuard>,
    queue_depth: switchyard_server::metrics::QueueDepth,
}

impl Conn {
    pub(super) fn new(
        gw: Arc<Gateway>,
        enc: Encoding,
        peer: Option<std::net::IpAddr>,
        usage: Option<switchyard_server::metrics::ConnectionGuard>,
    ) -> Self {
        let now = Instant::now();
        let queue_depth = gw.parts.metrics.socket_queue();
        Self {
            usage,
            queue_depth,
            gw,
            enc,
            user: None,
            claims: Claims::default(),
            peer,
            subs: Subscriptions::default(),
            calls: FuturesUnordered::new(),
            call_ids: HashSet::new(),
            opened: now,
            last_heard: now,
            next_ping: now,
            ping_n: 0,
            closes_at: None,
            _user_slot: None,
            token_valid_until: None,
        }
    }

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
    pub(super) async fn run(&mut self, io: &mut Io) -> Option<Closing> {
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
            let write_deadline = io.queue.progress() + self.write_timeout();
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
                turn = io.turn(busy) => match turn {
                    Turn::Written(Ok(())) => {}
                    Turn::Written(Err(_)) => return None,
                    Turn::Incoming(incoming) => {
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
                },
                Some((id, outcome)) = self.calls.next(), if !self.calls.is_empty() => {
                    self.call_ids.remove(&id);
                    let msg = match outcome {
                        Ok(d) => ServerMsg::Result(mobile_proto::CallResult { id, data: d }),
                        Err(e) => ServerMsg::call_error(id, e.code, e.message),
                    };
                    self.reply(io, &msg);
                }
                Some((sub, item)) = self.subs.items().next(), if !self.subs.is_idle() => {
                    if let Some(closing) = self.on_item(io, sub, item) {
                        return Some(closing);
                    }
                    // Take what else is ready now, so that one write and one flush carry it all
                    // (the next turn polls the streams again with this task's waker).
                    for _ in 0..READY_BATCH {
                        let Some(Some((sub, item))) = self.subs.items().next().now_or_never() else {
                            break;
                        };
                        if let Some(closing) = self.on_item(io, sub, item) {
                            return Some(closing);
                        }
                    }
                    // Write the batch now rather than on the next turn of the loop: one pass
                    // less per batch. A write the socket cannot take yet is left (it is
                    // cancel-safe) to the loop's write branch, which waits for it.
                    if io.queue.busy()
                        && let Some(Err(_)) = write_queued(&mut io.socket, &mut io.queue).now_or_never()
                    {
                        return None;
                    }
                }
            }
            self.queue_depth.set(io.queue.len());
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
    fn on_item(&mut self, io: &mut Io, id: u32, item: Option<Arc<Item>>) -> Option<Closing> {
        let Some(item) = item else {
            let sub = self.subs.ended(id)?;
            tracing::warn!(topic = %sub.hub_topic(), "the hub ended a subscription");
            let msg = ServerMsg::topic_error(
                sub.name(),
                code::EVENTS_UNAVAILABLE,
                "the topic's event source stopped; subscribe again (with resume) later",
            );
            self.reply(io, &msg);
            return None;
        };
        let enc = self.enc;
        let send_queue = self.config().send_queue_messages;
        let sub = self.subs.get_mut(id)?;
        let (kind, msg) = match &*item {
            Item::Event(event) => {
                let msg = sub.frames.frame_at(enc, event, &mut sub.cursor)?;
                match sub.class {
                    TopicClass::State => (Kind::State(id), msg),
                    TopicClass::Stream => (Kind::Stream, msg),
                }
            }
            Item::Gap { resume, .. } => {
                let gap = ServerMsg::Gap(mobile_proto::Gap {
                    topic: sub.name().to_owned(),
                    epoch: resume.epoch,
                    offset: resume.offset,
                });
                tracing::debug!(topic = %sub.hub_topic(), "gap signalled to a client");
                (Kind::Stream, message(self.enc.encode_server(&gap)))
            }
        };
        if kind == Kind::Stream && io.queue.len() >= send_queue {
            tracing::info!(topic = %sub.hub_topic(), "cutting off a client too slow for a stream topic");
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
        let max = self.config().max_message_bytes as usize;
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
                    if let Some(usage) = &mut self.usage {
                        usage.identify(a.client.as_deref());
                    }
                    self.claims = v.claims;
                    let user = v.subject;
                    let c = self.config();
                    let welcome = ServerMsg::Welcome(mobile_proto::Welcome {
                        user: user.to_string(),
                        heartbeat_ms: c.heartbeat_ms,
                        limits: mobile_proto::Limits {
                            max_subscriptions: c.max_subscriptions,
                            max_calls: c.max_calls,
                            max_frame_bytes: c.max_message_bytes,
                        },
                    });
                    if current.is_none() {
                        self.next_ping = Instant::now() + self.heartbeat();
                    }
                    self.reply(io, &welcome);
                    if current.is_some() {
                        // Other claims may no longer admit a channel: its subscription ends.
                        self.recheck_channels(io, &user);
                    }
                    self.user = Some(user);
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
                self.subs.remove(&unsub.topic);
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
}
