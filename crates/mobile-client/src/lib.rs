//! A Rust client for the bff-mobile protocol, `switchyard-mobile.v1`
//! (`docs/protocol/mobile-v1.md`), used by the tests and the bench.
//!
//! [`Client::connect`] opens the socket, authenticates and then hands the socket to ONE
//! background task; the [`Client`] handle talks to it through bounded channels:
//!
//! - [`Client::subscribe`] returns a [`Subscription`], a stream of [`Update`]s (events and gaps).
//! - [`Client::call`] runs an operation; the correlation id is chosen inside.
//! - [`Client::reauthenticate`] hands over a fresh token: sent at once as a re-authentication
//!   (`auth` after `welcome`; subscriptions go on) and used for every later reconnect. The server
//!   closes a connection whose token expired without one (`4440`); the task then reconnects.
//! - [`Client::close`] closes the connection normally (1000) and stops the task.
//!
//! When the connection drops (a lost network, a server close that allows a retry, or silence
//! for twice the heartbeat), or after the server's `bye` (at a random moment within its `ms`),
//! the task reconnects with exponential backoff and full jitter, authenticates again and
//! resubscribes every topic with the position it last delivered: the application sees every
//! event of a stream topic once, in order, or a [`Update::Gap`] where events were lost. Calls are
//! never retried (`convert` is not idempotent): one in flight when the connection drops fails
//! with [`CallError::ConnectionLost`]. Fatal closes (`4400`, `4401`, `4403`, `4406`, `4409`, `1009`)
//! stop the task: subscriptions end and [`Client::error`] says why.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mobile_client::{Client, Config, Update};
//!
//! let client = Client::connect(Config::new("ws://127.0.0.1:8081/v1/ws", "eyJ…")).await?;
//! let mut conversions = client.subscribe("conversions").await?;
//! let quote = client
//!     .call("quote", serde_json::json!({"from": "EUR", "to": "USD", "amount": "10.00"}))
//!     .await?;
//! while let Some(update) = conversions.next().await {
//!     match update {
//!         Update::Event { position, data, .. } => println!("{position:?}: {data}"),
//!         Update::Gap { .. } => println!("events were lost: refetch the dashboard"),
//!     }
//! }
//! # let _ = quote;
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use mobile_proto::close;
pub use mobile_proto::{Encoding, Position};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

mod task;

/// How long reconnects wait: exponential backoff with full jitter. Attempt `n` (from 0) waits
/// a random time between 0 and `min(max_ms, initial_ms × 2^n)`; a connection that stayed up for
/// at least `max_ms` starts the count again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The cap of the first attempt's delay, in milliseconds.
    pub initial_ms: u64,
    /// The largest cap, in milliseconds.
    pub max_ms: u64,
}

impl Default for Backoff {
    /// 0.5 s doubling to 30 s, as the protocol suggests.
    fn default() -> Self {
        Self {
            initial_ms: 500,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// The cap of attempt `attempt`'s delay (from 0).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u64.checked_shl(attempt.min(62)).unwrap_or(u64::MAX);
        Duration::from_millis(self.initial_ms.saturating_mul(factor).min(self.max_ms))
    }

    /// A random delay for attempt `attempt`: uniform between 0 and [`cap`](Self::cap).
    pub fn delay(&self, attempt: u32) -> Duration {
        task::jitter(self.cap(attempt))
    }
}

/// What [`Client::connect`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The gateway's socket, `ws://host:port/v1/ws`.
    pub url: String,
    /// The encoding to offer (CBOR by default; JSON for debugging).
    pub encoding: Encoding,
    /// The bearer token sent in `auth` (a JWT, without `Bearer `).
    pub token: String,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Longest time from opening the TCP connection to `welcome`, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest time [`Client::call`] waits for its answer, in milliseconds (the server has its
    /// own, shorter deadline; this one guards against a server that never answers).
    pub call_timeout_ms: u64,
    /// Updates buffered per subscription; when the application reads slower than that, the
    /// task waits for it (and the server eventually cuts the connection, which resumes).
    pub subscription_buffer: usize,
    /// Largest server message accepted, in bytes.
    pub max_message_bytes: usize,
    /// The application and its version, `name/version`, sent in `auth` for the server's usage
    /// metrics; `None` (the default) sends none.
    pub client: Option<String>,
}

impl Config {
    /// CBOR, default backoff (0.5 s to 30 s), 10 s to connect, 30 s per call, 256 updates per
    /// subscription, messages up to 1 MiB.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            encoding: Encoding::Cbor,
            token: token.into(),
            backoff: Backoff::default(),
            connect_timeout_ms: 10_000,
            call_timeout_ms: 30_000,
            subscription_buffer: 256,
            max_message_bytes: 1 << 20,
            client: None,
        }
    }

    /// The same naming the application as `client` (`name/version`) in `auth`.
    pub fn with_client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// The same with `encoding`.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The same with `backoff`.
    pub fn with_backoff(mut self, initial_ms: u64, max_ms: u64) -> Self {
        self.backoff = Backoff { initial_ms, max_ms };
        self
    }
}

/// Why a connection could not be made or went on no longer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The WebSocket could not be opened (refused, unreachable, a bad URL, an HTTP error).
    #[error("cannot open {url}: {message}")]
    Connect {
        /// The URL tried.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server picked no v1 subprotocol (it closes such a socket with 4406).
    #[error("the server did not accept subprotocol {offered}")]
    Subprotocol {
        /// The subprotocol offered.
        offered: &'static str,
    },
    /// The server refused the token (close 4401): get a fresh token and connect again.
    #[error("the server refused the token (close 4401): {reason}")]
    Unauthenticated {
        /// The close reason, for people.
        reason: String,
    },
    /// The server closed the connection.
    #[error("the server closed the connection with {code}: {reason}")]
    Closed {
        /// The close code ([`mobile_proto::close`]).
        code: u16,
        /// The close reason, for people.
        reason: String,
    },
    /// The server sent something that is not a v1 message, or not in its place.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection or the welcome took longer than the connect timeout, or the server was
    /// silent for twice its heartbeat.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The client was closed ([`Client::close`], or every handle dropped).
    #[error("the client is closed")]
    ClientClosed,
    /// A subscription the server refused (`error` with a topic).
    #[error("subscription to {topic} refused: {code}: {message}")]
    Refused {
        /// The topic.
        topic: String,
        /// The error code ([`mobile_proto::code`]).
        code: String,
        /// The message, for people.
        message: String,
    },
    /// Already subscribed to this topic on this client.
    #[error("already subscribed to {0}")]
    AlreadySubscribed(String),
}

impl Error {
    /// Whether reconnecting would only repeat this error: a refused token, a subprotocol the
    /// server does not speak, or a client bug the server closed for (4400, 4409, 1009).
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Subprotocol { .. } | Self::Unauthenticated { .. } | Self::Protocol(_) => true,
            Self::Closed { code, .. } => matches!(
                *code,
                close::PROTOCOL_VIOLATION
                    | close::UNAUTHENTICATED
                    | close::FORBIDDEN
                    | close::SUBPROTOCOL_REQUIRED
                    | close::CONFLICT
                    | close::MESSAGE_TOO_BIG
            ),
            _ => false,
        }
    }
}

/// Why a call has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The server answered with an `error` ([`mobile_proto::code`]).
    #[error("{code}: {message}")]
    Server {
        /// The error code.
        code: String,
        /// The message, for people.
        message: String,
    },
    /// The connection dropped after the call was sent and before its answer: it may or may not
    /// have happened (check before resending a `convert`). Never retried automatically.
    #[error("the connection dropped before the answer: the call's outcome is unknown")]
    ConnectionLost,
    /// There is no connection right now (the client is reconnecting); the call was not sent.
    #[error("not connected: the call was not sent")]
    NotConnected,
    /// No answer within the call timeout; the outcome is unknown.
    #[error("no answer within {0:?}: the call's outcome is unknown")]
    Timeout(Duration),
    /// `args` was not a JSON object.
    #[error("call arguments must be a JSON object")]
    InvalidArgs,
    /// The client is closed, or stopped after a fatal error ([`Client::error`]).
    #[error("the client is closed")]
    ClientClosed,
}

/// One update of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// An event.
    Event {
        /// The topic.
        topic: String,
        /// Its position.
        position: Position,
        /// Its data (shapes in [`mobile_proto::data`]).
        data: Value,
    },
    /// Events were lost before this point (history no longer covered the resume position, or
    /// the server lost them): refetch state. Delivery continues after `position`.
    Gap {
        /// The topic.
        topic: String,
        /// The position delivery continues after.
        position: Position,
    },
}

impl Update {
    /// The topic.
    pub fn topic(&self) -> &str {
        match self {
            Self::Event { topic, .. } | Self::Gap { topic, .. } => topic,
        }
    }

    /// The position: the event's, or the one delivery continues after a gap.
    pub fn position(&self) -> Position {
        match self {
            Self::Event { position, .. } | Self::Gap { position, .. } => *position,
        }
    }
}

/// The stream of one topic's updates; ends when the topic is unsubscribed, the client closes
/// or stops on a fatal error. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    topic: String,
    id: u64,
    updates: mpsc::Receiver<Update>,
    commands: mpsc::WeakSender<task::Command>,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next update; `None` once the subscription ended.
    pub async fn next(&mut self) -> Option<Update> {
        self.updates.recv().await
    }
}

impl futures::Stream for Subscription {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.updates.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.upgrade() {
            // Best effort: a full queue leaves it to the task, which unsubscribes when it finds
            // the receiver gone.
            let _ = commands.try_send(task::Command::Unsubscribe {
                topic: std::mem::take(&mut self.topic),
                id: Some(self.id),
            });
        }
    }
}

/// A connection to the gateway that keeps itself alive; cheap to clone (every clone talks to the
/// same background task).
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<task::Command>,
    shared: Arc<task::TaskStatus>,
    call_timeout: Duration,
    buffer: usize,
}

impl Client {
    /// Connects and authenticates once, then starts the background task. Fails — without
    /// retrying — when this first connection fails (unreachable, refused token, no welcome
    /// within the connect timeout).
    pub async fn connect(config: Config) -> Result<Client, Error> {
        let conn = task::connect_once(&config).await?;
        let (commands, rx) = mpsc::channel(64);
        let (fatal_tx, fatal) = watch::channel(None);
        let shared = Arc::new(task::TaskStatus {
            connections: AtomicU64::new(1),
            fatal,
        });
        let client = Client {
            commands,
            shared: shared.clone(),
            call_timeout: Duration::from_millis(config.call_timeout_ms),
            buffer: config.subscription_buffer.max(1),
        };
        task::spawn(config, conn, rx, shared, fatal_tx);
        Ok(client)
    }

    /// Subscribes to `topic` (`conversions`, `rates:EUR/USD`). When connected, waits for the
    /// server's `subbed` (or its refusal); when reconnecting, the subscription is made on the
    /// next connection.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        let (tx, updates) = mpsc::channel(self.buffer);
        let (reply, answer) = oneshot::channel();
        let id = task::next_subscription_id();
        self.send(task::Command::Subscribe {
            topic: topic.to_owned(),
            id,
            updates: tx,
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.closed_error())??;
        Ok(Subscription {
            topic: topic.to_owned(),
            id,
            updates,
            commands: self.commands.downgrade(),
        })
    }

    /// Ends the subscription to `topic` (its stream ends).
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), Error> {
        self.send(task::Command::Unsubscribe {
            topic: topic.to_owned(),
            id: None,
        })
        .await
    }

    /// Runs operation `op` (`quote`, `dashboard`, `convert`) with `args` (a JSON object) and
    /// returns its result. Never retried: a call in flight when the connection drops fails with
    /// [`CallError::ConnectionLost`].
    pub async fn call(&self, op: &str, args: Value) -> Result<Value, CallError> {
        let Value::Object(args) = args else {
            return Err(CallError::InvalidArgs);
        };
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(task::Command::Call {
                op: op.to_owned(),
                args,
                reply,
            })
            .await
            .map_err(|_| CallError::ClientClosed)?;
        match tokio::time::timeout(self.call_timeout, answer).await {
            Err(_) => Err(CallError::Timeout(self.call_timeout)),
            Ok(Err(_)) => Err(CallError::ClientClosed),
            Ok(Ok(result)) => result,
        }
    }

    /// Replaces the token: while connected, re-authenticates the connection with it (an `auth`
    /// after `welcome`, answered by `welcome`; subscriptions go on) and resolves once the server
    /// accepted it; while disconnected, resolves at once. Either way every later reconnect uses
    /// it. Call it before the current token's `exp`. A token the server refuses ends the
    /// connection (`4401`, or `4403` for another user's token) and stops the client with that
    /// error.
    pub async fn reauthenticate(&self, token: impl Into<String>) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(task::Command::Reauthenticate {
            token: token.into(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.closed_error())?
    }

    /// Closes the connection normally (1000) and stops the task: no reconnect, every
    /// subscription ends, calls in flight fail with [`CallError::ClientClosed`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(task::Command::Close { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// The fatal error the client stopped on, if it did (a refused token on reconnect, a close
    /// for a client bug).
    pub fn error(&self) -> Option<Error> {
        self.shared.fatal.borrow().clone()
    }

    /// How many connections reached `welcome` so far (1 after [`connect`](Self::connect); each
    /// reconnect adds one).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    async fn send(&self, command: task::Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> Error {
        self.error().unwrap_or(Error::ClientClosed)
    }
}

#[cfg(test)]
mod tests;
