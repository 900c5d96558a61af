//! The background task that owns the socket: one per [`Client`](crate::Client). It connects,
//! authenticates, resubscribes with resume positions, answers pings, matches call answers to
//! their callers, delivers updates (dropping duplicates, turning holes into gaps) and
//! reconnects with backoff until the client closes or a fatal close stops it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mobile_proto::{ClientMsg, Encoding, Frame, FrameKind, Position, ServerMsg, close, code};
use rand::Rng;
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{CallError, Config, Error, Update};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a normal close may take to send before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the handles and the task share.
#[derive(Debug)]
pub(crate) struct TaskStatus {
    /// Connections that reached `welcome`.
    pub(crate) connections: AtomicU64,
    /// The fatal error the task stopped on.
    pub(crate) fatal: watch::Receiver<Option<Error>>,
}

/// A request from a handle to the task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        topic: String,
        id: u64,
        updates: mpsc::Sender<Update>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// `id: None` ends the topic's subscription whichever it is; `Some` only that one (a dropped
    /// [`Subscription`](crate::Subscription) must not end a newer one of the same topic).
    Unsubscribe {
        topic: String,
        id: Option<u64>,
    },
    Call {
        op: String,
        args: Map<String, Value>,
        reply: oneshot::Sender<Result<Value, CallError>>,
    },
    /// A fresh token: re-authenticate now, and use it for every later reconnect.
    Reauthenticate {
        token: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A new subscription's id.
pub(crate) fn next_subscription_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A uniformly random duration between zero and `cap` (full jitter). The same rule as the
/// server core's `switchyard_core::backoff`, written again on purpose: a client library must not
/// depend on the server's core (axum, the brokers' clients) to draw a random number.
pub(crate) fn jitter(cap: Duration) -> Duration {
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

/// An authenticated connection.
#[derive(Debug)]
pub(crate) struct Conn {
    ws: Ws,
    heartbeat: Duration,
}

/// Opens the socket, sends `auth` and waits for `welcome`, all within the connect timeout.
pub(crate) async fn connect_once(config: &Config) -> Result<Conn, Error> {
    let enc = config.encoding;
    let connect_error = |e: &dyn std::fmt::Display| Error::Connect {
        url: config.url.clone(),
        message: e.to_string(),
    };
    let attempt = async {
        let mut req = config
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| connect_error(&e))?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(enc.subprotocol()),
        );
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| connect_error(&e))?;
        let picked = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_subprotocol);
        if picked != Some(enc) {
            return Err(Error::Subprotocol {
                offered: enc.subprotocol(),
            });
        }
        let auth = ClientMsg::Auth(mobile_proto::Auth {
            token: config.token.clone(),
            client: config.client.clone(),
        });
        send(&mut ws, enc, &auth).await?;
        loop {
            match read(&mut ws, enc, config.max_message_bytes).await? {
                ServerMsg::Welcome(w) => {
                    let hb = Duration::from_millis(u64::from(w.heartbeat_ms.max(1)));
                    return Ok(Conn { ws, heartbeat: hb });
                }
                ServerMsg::Ping(p) => {
                    send(
                        &mut ws,
                        enc,
                        &ClientMsg::Pong(mobile_proto::Pong { n: p.n }),
                    )
                    .await?;
                }
                ServerMsg::Pong(_) => {}
                other => {
                    return Err(Error::Protocol(format!(
                        "expected welcome, got {}",
                        other.type_name()
                    )));
                }
            }
        }
    };
    let limit = Duration::from_millis(config.connect_timeout_ms);
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Err(Error::Timeout("no welcome within the connect timeout")))
}

fn lost(message: impl std::fmt::Display) -> Error {
    Error::Closed {
        code: 1006,
        reason: format!("connection lost: {message}"),
    }
}

async fn send(ws: &mut Ws, enc: Encoding, msg: &ClientMsg) -> Result<(), Error> {
    let message = match enc.encode_client(msg) {
        Frame::Text(s) => Message::Text(s.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    };
    ws.send(message).await.map_err(lost)
}

/// The error a close frame stands for.
fn closed(frame: Option<CloseFrame>) -> Error {
    let (code, reason) = frame.map_or((1005, String::new()), |f| {
        (u16::from(f.code), f.reason.to_string())
    });
    if code == close::UNAUTHENTICATED {
        Error::Unauthenticated { reason }
    } else {
        Error::Closed { code, reason }
    }
}

fn decode(enc: Encoding, message: Message, max_bytes: usize) -> Option<Result<ServerMsg, Error>> {
    let decoded = match &message {
        Message::Text(t) => enc.decode_server(FrameKind::Text, t.as_bytes(), max_bytes),
        Message::Binary(b) => enc.decode_server(FrameKind::Binary, b, max_bytes),
        Message::Close(f) => return Some(Err(closed(f.clone()))),
        _ => return None,
    };
    Some(decoded.map_err(|e| Error::Protocol(e.to_string())))
}

/// The next protocol message (WebSocket control frames are answered by tungstenite itself).
async fn read(ws: &mut Ws, enc: Encoding, max_bytes: usize) -> Result<ServerMsg, Error> {
    loop {
        match ws.next().await {
            None => return Err(lost("the socket ended")),
            Some(Err(e)) => return Err(lost(e)),
            Some(Ok(message)) => {
                if let Some(result) = decode(enc, message, max_bytes) {
                    return result;
                }
            }
        }
    }
}

/// Sends a normal close, without waiting long.
async fn close_normally(ws: &mut Ws, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One subscription as the task keeps it.
#[derive(Debug)]
struct Sub {
    id: u64,
    updates: mpsc::Sender<Update>,
    /// The position of the last update delivered (or of `subbed`, on a stream topic).
    last: Option<Position>,
    /// A stream topic (every event matters, offsets grow by one) rather than a state topic.
    stream: bool,
    /// The `subscribe` call waiting for `subbed`.
    pending: Option<oneshot::Sender<Result<(), Error>>>,
}

/// How a connection ended.
enum End {
    /// Reconnect: after this delay, or after the backoff's.
    Reconnect(Option<Duration>),
    /// The client closed, or every handle is gone.
    Stop,
    /// A fatal error: stop.
    Fatal(Error),
}

/// The connection broke (sending failed, or the server's close said to reconnect).
struct Broken;

struct Task {
    config: Config,
    commands: mpsc::Receiver<Command>,
    shared: std::sync::Arc<TaskStatus>,
    fatal: watch::Sender<Option<Error>>,
    subs: HashMap<String, Sub>,
    calls: HashMap<u32, oneshot::Sender<Result<Value, CallError>>>,
    next_call: u32,
    close_reply: Option<oneshot::Sender<()>>,
    /// Re-authentications sent and waiting for `welcome`.
    reauths: Vec<oneshot::Sender<Result<(), Error>>>,
}

/// Starts the task on an authenticated connection.
pub(crate) fn spawn(
    config: Config,
    conn: Conn,
    commands: mpsc::Receiver<Command>,
    shared: std::sync::Arc<TaskStatus>,
    fatal: watch::Sender<Option<Error>>,
) {
    let task = Task {
        config,
        commands,
        shared,
        fatal,
        subs: HashMap::new(),
        calls: HashMap::new(),
        next_call: 0,
        close_reply: None,
        reauths: Vec::new(),
    };
    tokio::spawn(task.run(conn));
}

impl Task {
    async fn run(mut self, first: Conn) {
        let mut conn = Some(first);
        let mut attempt = 0u32;
        loop {
            let end = match conn.take() {
                Some(c) => {
                    // The backoff starts again only after a connection that lasted: a server
                    // that welcomes then closes at once still gets growing delays.
                    let opened = Instant::now();
                    let end = self.serve(c).await;
                    if opened.elapsed() >= Duration::from_millis(self.config.backoff.max_ms) {
                        attempt = 0;
                    }
                    end
                }
                None => match connect_once(&self.config).await {
                    Ok(c) => {
                        self.shared.connections.fetch_add(1, Ordering::Relaxed);
                        conn = Some(c);
                        continue;
                    }
                    Err(e) if e.is_fatal() => End::Fatal(e),
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "reconnect failed");
                        End::Reconnect(None)
                    }
                },
            };
            let delay = match end {
                End::Stop => return self.stop(None),
                End::Fatal(e) => return self.stop(Some(e)),
                End::Reconnect(delay) => {
                    self.connection_lost();
                    delay.unwrap_or_else(|| {
                        let d = self.config.backoff.delay(attempt);
                        attempt = attempt.saturating_add(1);
                        d
                    })
                }
            };
            if !self.wait(delay).await {
                return self.stop(None);
            }
        }
    }

    /// Serves handles while disconnected for `delay`; `false` when the client closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Close { reply }) => {
                        self.close_reply = Some(reply);
                        return false;
                    }
                    Some(Command::Call { reply, .. }) => {
                        let _ = reply.send(Err(CallError::NotConnected));
                    }
                    Some(Command::Subscribe { topic, id, updates, reply }) => {
                        if self.subs.contains_key(&topic) {
                            let _ = reply.send(Err(Error::AlreadySubscribed(topic)));
                        } else {
                            // Made on the next connection.
                            let _ = reply.send(Ok(()));
                            self.subs.insert(topic.clone(), new_sub(&topic, id, updates, None));
                        }
                    }
                    Some(Command::Unsubscribe { topic, id }) => {
                        if is_it(&self.subs, &topic, id) {
                            self.subs.remove(&topic);
                        }
                    }
                    Some(Command::Reauthenticate { token, reply }) => {
                        // Used by the next connection's `auth`.
                        self.config.token = token;
                        let _ = reply.send(Ok(()));
                    }
                },
            }
        }
    }

    /// Calls in flight have an unknown outcome; subscriptions wait for the next connection.
    fn connection_lost(&mut self) {
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(CallError::ConnectionLost));
        }
        // The new token is kept: the next connection authenticates with it.
        for reply in self.reauths.drain(..) {
            let _ = reply.send(Ok(()));
        }
        for sub in self.subs.values_mut() {
            if let Some(reply) = sub.pending.take() {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn stop(mut self, fatal: Option<Error>) {
        if let Some(e) = &fatal {
            tracing::warn!(error = %e, "mobile client stopped");
        }
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(CallError::ClientClosed));
        }
        for reply in self.reauths.drain(..) {
            let _ = reply.send(Err(fatal.clone().unwrap_or(Error::ClientClosed)));
        }
        for (_, sub) in self.subs.drain() {
            if let Some(reply) = sub.pending {
                let _ = reply.send(Err(fatal.clone().unwrap_or(Error::ClientClosed)));
            }
        }
        if fatal.is_some() {
            self.fatal.send_replace(fatal);
        }
        // No more commands: handles see the client as closed.
        self.commands.close();
        if let Some(reply) = self.close_reply.take() {
            let _ = reply.send(());
        }
    }

    fn enc(&self) -> Encoding {
        self.config.encoding
    }

    async fn serve(&mut self, conn: Conn) -> End {
        let Conn { mut ws, heartbeat } = conn;
        let enc = self.enc();
        // Resubscribe, each stream topic from the last position delivered.
        let resubs: Vec<ClientMsg> = self
            .subs
            .iter()
            .map(|(topic, sub)| {
                ClientMsg::Sub(mobile_proto::Sub {
                    topic: topic.clone(),
                    resume: if sub.stream { sub.last } else { None },
                })
            })
            .collect();
        for msg in &resubs {
            if send(&mut ws, enc, msg).await.is_err() {
                return End::Reconnect(None);
            }
        }
        let mut last_heard = Instant::now();
        let mut bye_at: Option<Instant> = None;
        loop {
            let silence = last_heard + heartbeat * 2;
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => {
                        close_normally(&mut ws, "client gone").await;
                        return End::Stop;
                    }
                    Some(Command::Close { reply }) => {
                        self.close_reply = Some(reply);
                        close_normally(&mut ws, "client closed").await;
                        return End::Stop;
                    }
                    Some(command) => {
                        if self.command(&mut ws, command).await.is_err() {
                            return End::Reconnect(None);
                        }
                    }
                },
                message = ws.next() => {
                    last_heard = Instant::now();
                    let message = match message {
                        None => return End::Reconnect(None),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "connection lost");
                            return End::Reconnect(None);
                        }
                        Some(Ok(m)) => m,
                    };
                    match decode(enc, message, self.config.max_message_bytes) {
                        None => {}
                        Some(Err(e)) if e.is_fatal() => return End::Fatal(e),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "connection closed");
                            return End::Reconnect(None);
                        }
                        Some(Ok(msg)) => {
                            if let ServerMsg::Bye(bye) = &msg {
                                // Reconnect at a random moment of the window (spreading the
                                // instance's clients over it); keep serving until then.
                                let window = Duration::from_millis(u64::from(bye.reconnect_within_ms));
                                bye_at.get_or_insert(Instant::now() + jitter(window));
                            } else if self.message(&mut ws, msg).await.is_err() {
                                return End::Reconnect(None);
                            }
                        }
                    }
                },
                () = tokio::time::sleep_until(silence) => {
                    tracing::debug!("nothing heard for 2 x hb: reconnecting");
                    return End::Reconnect(None);
                }
                () = sleep_until_opt(bye_at) => {
                    close_normally(&mut ws, "reconnecting after bye").await;
                    return End::Reconnect(Some(Duration::ZERO));
                }
            }
        }
    }

    async fn command(&mut self, ws: &mut Ws, command: Command) -> Result<(), Broken> {
        let enc = self.enc();
        match command {
            Command::Subscribe {
                topic,
                id,
                updates,
                reply,
            } => {
                if self.subs.contains_key(&topic) {
                    let _ = reply.send(Err(Error::AlreadySubscribed(topic)));
                    return Ok(());
                }
                self.subs
                    .insert(topic.clone(), new_sub(&topic, id, updates, Some(reply)));
                let msg = ClientMsg::Sub(mobile_proto::Sub {
                    topic,
                    resume: None,
                });
                send(ws, enc, &msg).await.map_err(|_| Broken)
            }
            Command::Unsubscribe { topic, id } => {
                if !is_it(&self.subs, &topic, id) {
                    return Ok(());
                }
                self.subs.remove(&topic);
                let msg = ClientMsg::Unsub(mobile_proto::Unsub { topic });
                send(ws, enc, &msg).await.map_err(|_| Broken)
            }
            Command::Call { op, args, reply } => {
                let id = self.call_id();
                self.calls.insert(id, reply);
                let msg = ClientMsg::Call(mobile_proto::Call { id, op, args });
                send(ws, enc, &msg).await.map_err(|_| Broken)
            }
            Command::Reauthenticate { token, reply } => {
                self.config.token = token.clone();
                self.reauths.push(reply);
                let msg = ClientMsg::Auth(mobile_proto::Auth {
                    token,
                    client: None,
                });
                send(ws, enc, &msg).await.map_err(|_| Broken)
            }
            Command::Close { .. } => Ok(()),
        }
    }

    /// A fresh correlation id, not in flight.
    fn call_id(&mut self) -> u32 {
        loop {
            self.next_call = self.next_call.wrapping_add(1);
            if !self.calls.contains_key(&self.next_call) {
                return self.next_call;
            }
        }
    }

    async fn message(&mut self, ws: &mut Ws, msg: ServerMsg) -> Result<(), Broken> {
        let enc = self.enc();
        match msg {
            ServerMsg::Ping(p) => {
                let pong = ClientMsg::Pong(mobile_proto::Pong { n: p.n });
                return send(ws, enc, &pong).await.map_err(|_| Broken);
            }
            ServerMsg::Subbed(s) => {
                if let Some(sub) = self.subs.get_mut(&s.topic) {
                    if sub.stream {
                        sub.last = Some(s.position());
                    }
                    if let Some(reply) = sub.pending.take() {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            ServerMsg::Event(e) => {
                let position = e.position();
                let Some(sub) = self.subs.get(&e.topic) else {
                    return Ok(());
                };
                if let Some(last) = sub.last {
                    if position.epoch == last.epoch && position.offset <= last.offset {
                        return Ok(()); // already delivered
                    }
                    let next = position.epoch == last.epoch && position.offset == last.offset + 1;
                    if sub.stream && !next {
                        // A hole the server did not announce: a loss is always a gap.
                        let gap = Update::Gap {
                            topic: e.topic.clone(),
                            position: Position {
                                epoch: position.epoch,
                                offset: position.offset.saturating_sub(1),
                            },
                        };
                        self.deliver(ws, gap).await?;
                    }
                }
                let update = Update::Event {
                    topic: e.topic,
                    position,
                    data: e.data,
                };
                self.deliver(ws, update).await?;
            }
            ServerMsg::Gap(g) => {
                let position = g.position();
                self.deliver(
                    ws,
                    Update::Gap {
                        topic: g.topic,
                        position,
                    },
                )
                .await?;
            }
            ServerMsg::Result(r) => {
                if let Some(reply) = self.calls.remove(&r.id) {
                    let _ = reply.send(Ok(r.data));
                }
            }
            ServerMsg::Error(e) => self.error(e),
            // Only a re-authentication is answered by `welcome` after the first.
            ServerMsg::Welcome(_) => {
                if !self.reauths.is_empty() {
                    let reply = self.reauths.remove(0);
                    let _ = reply.send(Ok(()));
                }
            }
            ServerMsg::Unsubbed(_) | ServerMsg::Pong(_) | ServerMsg::Bye(_) => {}
        }
        Ok(())
    }

    fn error(&mut self, e: mobile_proto::ErrorMsg) {
        if let Some(id) = e.id {
            if let Some(reply) = self.calls.remove(&id) {
                let _ = reply.send(Err(CallError::Server {
                    code: e.code,
                    message: e.message,
                }));
            }
        } else if let Some(topic) = e.topic {
            if e.code == code::DRAINING {
                // The server is going away: the subscription is made on the next connection.
                if let Some(reply) = self.subs.get_mut(&topic).and_then(|s| s.pending.take()) {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
            let Some(sub) = self.subs.remove(&topic) else {
                return;
            };
            let refused = Error::Refused {
                topic,
                code: e.code,
                message: e.message,
            };
            match sub.pending {
                Some(reply) => {
                    let _ = reply.send(Err(refused));
                }
                // A resubscription refused: its stream ends.
                None => tracing::warn!(error = %refused, "subscription ended"),
            }
        } else {
            tracing::warn!(code = %e.code, message = %e.message, "server error");
        }
    }

    /// Hands an update to its subscription (waiting while its buffer is full) and moves the
    /// subscription's position; a subscription whose stream was dropped is ended.
    async fn deliver(&mut self, ws: &mut Ws, update: Update) -> Result<(), Broken> {
        let topic = update.topic().to_owned();
        let position = update.position();
        let Some(sub) = self.subs.get_mut(&topic) else {
            return Ok(());
        };
        if sub.updates.send(update).await.is_ok() {
            sub.last = Some(position);
            return Ok(());
        }
        self.subs.remove(&topic);
        let msg = ClientMsg::Unsub(mobile_proto::Unsub { topic });
        send(ws, self.enc(), &msg).await.map_err(|_| Broken)
    }
}

fn new_sub(
    topic: &str,
    id: u64,
    updates: mpsc::Sender<Update>,
    pending: Option<oneshot::Sender<Result<(), Error>>>,
) -> Sub {
    Sub {
        id,
        updates,
        last: None,
        stream: !topic.starts_with(mobile_proto::topic::RATES_PREFIX),
        pending,
    }
}

/// Whether an unsubscribe of `topic` (`id: None`: whichever) names the current subscription.
fn is_it(subs: &HashMap<String, Sub>, topic: &str, id: Option<u64>) -> bool {
    subs.get(topic)
        .is_some_and(|s| id.is_none_or(|id| id == s.id))
}
