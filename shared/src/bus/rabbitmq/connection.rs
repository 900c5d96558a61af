//! One connection of RabbitMQ's stream protocol (port 5552), written on the codec of the
//! `rabbitmq-stream-protocol` crate: the handshake (PeerProperties, SASL PLAIN, Tune, Open — and
//! no ExchangeCommandVersions, which RabbitMQ 3.10 refuses), then requests with bounded waits,
//! streams created and deleted, publishers and subscriptions as handles whose drop releases
//! them. The reader task that routes what the server sends and the writer task are `io.rs`'s.
//!
//! What it does not do: reconnect (the bus opens a new connection when this one is closed),
//! follow a stream's leader to another node (a single node, or a load balancer in front of
//! every node's stream port, is assumed), TLS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rabbitmq_stream_protocol::commands::create_stream::CreateStreamCommand;
use rabbitmq_stream_protocol::commands::credit::CreditCommand;
use rabbitmq_stream_protocol::commands::declare_publisher::DeclarePublisherCommand;
use rabbitmq_stream_protocol::commands::delete::Delete;
use rabbitmq_stream_protocol::commands::delete_publisher::DeletePublisherCommand;
use rabbitmq_stream_protocol::commands::open::OpenCommand;
use rabbitmq_stream_protocol::commands::peer_properties::PeerPropertiesCommand;
use rabbitmq_stream_protocol::commands::publish::PublishCommand;
use rabbitmq_stream_protocol::commands::sasl_authenticate::SaslAuthenticateCommand;
use rabbitmq_stream_protocol::commands::sasl_handshake::SaslHandshakeCommand;
use rabbitmq_stream_protocol::commands::subscribe::{OffsetSpecification, SubscribeCommand};
use rabbitmq_stream_protocol::commands::tune::TunesCommand;
use rabbitmq_stream_protocol::commands::unsubscribe::UnSubscribeCommand;
use rabbitmq_stream_protocol::message::Message;
use rabbitmq_stream_protocol::types::PublishedMessage;
use rabbitmq_stream_protocol::{Response, ResponseCode, ResponseKind};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::address::Address;
use super::io::{
    HEARTBEAT_S, MAX_FRAME, Routes, Waiter, decode, lock, read_frame, read_loop, request,
    write_loop,
};

/// Messages a subscription was delivered: one chunk of the stream.
pub(crate) struct Chunk {
    /// The stream offset of the chunk's first message.
    pub(crate) first: u64,
    pub(crate) messages: Vec<Message>,
}

/// A failed operation: the connection is gone, or the server answered with a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnError {
    /// The connection is closed (or never opened, or timed out).
    Closed(String),
    /// The server refused.
    Code(ResponseCode),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed(why) => write!(f, "connection closed: {why}"),
            Self::Code(code) => write!(f, "server answered {code:?}"),
        }
    }
}

/// An open connection. Dropping the last handle closes it.
pub(crate) struct Conn {
    out: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU32,
    routes: Arc<Mutex<Routes>>,
    closed: CancellationToken,
    timeout: Duration,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl Conn {
    /// Connects, logs in and opens the virtual host within `connect_timeout`; `timeout` bounds
    /// every later request.
    pub(crate) async fn open(
        addr: &Address,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Arc<Self>, ConnError> {
        let opened = tokio::time::timeout(connect_timeout, Self::handshake(addr)).await;
        let (stream, heartbeat) = match opened {
            Ok(r) => r.map_err(ConnError::Closed)?,
            Err(_) => return Err(ConnError::Closed("connect timed out".into())),
        };
        let (rd, wr) = stream.into_split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let closed = CancellationToken::new();
        tokio::spawn(write_loop(wr, out_rx, closed.clone(), heartbeat));
        tokio::spawn(read_loop(rd, routes.clone(), closed.clone(), heartbeat * 3));
        Ok(Arc::new(Self {
            out,
            next_id: AtomicU32::new(100),
            routes,
            closed,
            timeout,
        }))
    }

    async fn handshake(addr: &Address) -> Result<(TcpStream, Duration), String> {
        let mut s = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut props = HashMap::new();
        props.insert("product".to_owned(), "switchyard".to_owned());
        props.insert("connection_name".to_owned(), "switchyard-bus".to_owned());
        let step = async |s: &mut TcpStream, frame: Vec<u8>| -> Result<Response, String> {
            s.write_all(&frame).await.map_err(|e| e.to_string())?;
            decode(&read_frame(s).await.map_err(|e| e.to_string())?)
        };
        step(&mut s, request(PeerPropertiesCommand::new(1, props))).await?;
        match step(&mut s, request(SaslHandshakeCommand::new(2)))
            .await?
            .kind()
        {
            ResponseKind::SaslHandshake(h) if h.mechanisms.iter().any(|m| m == "PLAIN") => {}
            other => return Err(format!("no SASL PLAIN: {other:?}")),
        }
        let sasl = [b"\0", addr.user.as_bytes(), b"\0", addr.password.as_bytes()].concat();
        let auth = SaslAuthenticateCommand::new(3, "PLAIN".into(), sasl);
        match step(&mut s, request(auth)).await?.kind() {
            ResponseKind::Generic(g) if g.is_ok() => {}
            ResponseKind::Generic(g) => return Err(format!("login refused: {:?}", g.code())),
            other => return Err(format!("unexpected answer to the login: {other:?}")),
        }
        let tune = match decode(&read_frame(&mut s).await.map_err(|e| e.to_string())?)?.kind() {
            ResponseKind::Tunes(t) => t,
            other => return Err(format!("expected Tune, got {other:?}")),
        };
        let frame_max = match tune.max_frame_size {
            0 => MAX_FRAME,
            n => n.min(MAX_FRAME),
        };
        let heartbeat = match tune.heartbeat {
            0 => HEARTBEAT_S,
            n => n.min(HEARTBEAT_S),
        };
        s.write_all(&request(TunesCommand::new(frame_max, heartbeat)))
            .await
            .map_err(|e| e.to_string())?;
        match step(&mut s, request(OpenCommand::new(4, addr.vhost.clone())))
            .await?
            .kind()
        {
            ResponseKind::Open(o) if o.is_ok() => {}
            ResponseKind::Open(o) => return Err(format!("vhost refused: {:?}", o.code())),
            other => return Err(format!("unexpected answer to Open: {other:?}")),
        }
        Ok((s, Duration::from_secs(u64::from(heartbeat))))
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        !self.closed.is_cancelled()
    }

    /// Metadata updates received so far (see [`Routes`]).
    pub(crate) fn updates(&self) -> u64 {
        lock(&self.routes).updates
    }

    /// Closes the connection (its subscriptions end, its waiters fail).
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    fn send(&self, frame: Vec<u8>) -> Result<(), ConnError> {
        self.out
            .send(frame)
            .map_err(|_| ConnError::Closed("writer gone".into()))
    }

    fn correlation(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request and waits (bounded) for its answer's code.
    async fn call(&self, corr: u32, frame: Vec<u8>) -> Result<(), ConnError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = lock(&self.routes);
            if routes.closed {
                return Err(ConnError::Closed("closed".into()));
            }
            routes.waiters.insert(corr, Waiter::Reply(tx));
        }
        self.send(frame)?;
        let answer = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(ConnError::Closed("closed while waiting".into())),
            Err(_) => {
                lock(&self.routes).waiters.remove(&corr);
                return Err(ConnError::Closed("request timed out".into()));
            }
        };
        match answer.kind() {
            ResponseKind::Generic(g) if g.is_ok() => Ok(()),
            ResponseKind::Generic(g) => Err(ConnError::Code(g.code().clone())),
            other => Err(ConnError::Closed(format!("unexpected answer {other:?}"))),
        }
    }

    /// Creates a stream; `Ok(true)` when this call created it, `Ok(false)` when it existed.
    pub(crate) async fn create_stream(
        &self,
        name: &str,
        args: HashMap<String, String>,
    ) -> Result<bool, ConnError> {
        let corr = self.correlation();
        let frame = request(CreateStreamCommand::new(corr, name.to_owned(), args));
        match self.call(corr, frame).await {
            Ok(()) => Ok(true),
            Err(ConnError::Code(ResponseCode::StreamAlreadyExists)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a stream (a missing one is not an error).
    pub(crate) async fn delete_stream(&self, name: &str) -> Result<(), ConnError> {
        let corr = self.correlation();
        match self
            .call(corr, request(Delete::new(corr, name.to_owned())))
            .await
        {
            Err(ConnError::Code(ResponseCode::StreamDoesNotExist)) => Ok(()),
            other => other,
        }
    }

    fn take_id(&self, publisher: bool) -> Result<u8, ConnError> {
        let mut routes = lock(&self.routes);
        let ids = if publisher {
            &mut routes.publisher_ids
        } else {
            &mut routes.subscription_ids
        };
        let free = ids
            .iter()
            .position(|used| !used)
            .ok_or_else(|| ConnError::Closed("all 256 ids of the connection are in use".into()))?;
        ids[free] = true;
        // `free` < 256: the array has 256 entries.
        Ok(u8::try_from(free).unwrap_or(u8::MAX))
    }

    fn free_id(&self, id: u8, publisher: bool) {
        let mut routes = lock(&self.routes);
        if publisher {
            routes.publisher_ids[usize::from(id)] = false;
        } else {
            routes.subscription_ids[usize::from(id)] = false;
        }
    }

    /// Declares a publisher on `stream`; it is deleted when the returned handle is dropped.
    pub(crate) async fn declare_publisher(
        self: &Arc<Self>,
        stream: &str,
    ) -> Result<Publisher, ConnError> {
        let id = self.take_id(true)?;
        let corr = self.correlation();
        let cmd = DeclarePublisherCommand::new(corr, id, None, stream.to_owned());
        match self.call(corr, request(cmd)).await {
            Ok(()) => Ok(Publisher {
                conn: self.clone(),
                id,
            }),
            Err(e) => {
                // The server has no such publisher: the id can be reused at once.
                self.free_id(id, true);
                Err(e)
            }
        }
    }

    /// Subscribes to `stream` from `offset` with `credit` chunks in flight; the subscription
    /// ends when the handle is dropped, the connection closes, or the stream changes (deleted,
    /// its leader moved).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        stream: &str,
        offset: OffsetSpecification,
        credit: u16,
    ) -> Result<Consumer, ConnError> {
        let id = self.take_id(false)?;
        let (tx, rx) = mpsc::channel(usize::from(credit) + 1);
        lock(&self.routes)
            .subscriptions
            .insert(id, (stream.to_owned(), tx));
        let corr = self.correlation();
        let cmd =
            SubscribeCommand::new(corr, id, stream.to_owned(), offset, credit, HashMap::new());
        match self.call(corr, request(cmd)).await {
            Ok(()) => Ok(Consumer {
                conn: self.clone(),
                id,
                rx,
            }),
            Err(e) => {
                lock(&self.routes).subscriptions.remove(&id);
                match &e {
                    // Refused: the server holds nothing under this id.
                    ConnError::Code(_) => self.free_id(id, false),
                    // Unknown outcome: release it properly (a no-op on a closed connection).
                    ConnError::Closed(_) => self.release(id, false),
                }
                Err(e)
            }
        }
    }

    /// Tells the server a subscription or publisher is done; its id is reused only once the
    /// server has answered (so a late delivery never reaches a new owner of the id).
    fn release(&self, id: u8, publisher: bool) {
        let corr = self.correlation();
        let frame = if publisher {
            request(DeletePublisherCommand::new(corr, id))
        } else {
            lock(&self.routes).subscriptions.remove(&id);
            request(UnSubscribeCommand::new(corr, id))
        };
        let waiter = if publisher {
            Waiter::FreePublisher(id)
        } else {
            Waiter::FreeSubscription(id)
        };
        let mut routes = lock(&self.routes);
        if !routes.closed {
            routes.waiters.insert(corr, waiter);
            drop(routes);
            let _ = self.send(frame);
        }
    }
}

/// A declared publisher.
pub(crate) struct Publisher {
    conn: Arc<Conn>,
    id: u8,
}

impl Publisher {
    /// Publishes one message as `publishing_id` (unique for this publisher) and waits, bounded,
    /// for the server's confirm.
    pub(crate) async fn publish(&self, publishing_id: u64, body: Vec<u8>) -> Result<(), ConnError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = lock(&self.conn.routes);
            if routes.closed {
                return Err(ConnError::Closed("closed".into()));
            }
            routes.confirms.insert((self.id, publishing_id), tx);
        }
        let message = Message::builder().body(body).build();
        let published = PublishedMessage::new(publishing_id, message, None);
        let frame = request(PublishCommand::new(self.id, vec![published], 1));
        self.conn.send(frame)?;
        match tokio::time::timeout(self.conn.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(code))) => Err(ConnError::Code(code)),
            Ok(Err(_)) => Err(ConnError::Closed("closed before the confirm".into())),
            Err(_) => {
                lock(&self.conn.routes)
                    .confirms
                    .remove(&(self.id, publishing_id));
                Err(ConnError::Closed("publish confirm timed out".into()))
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.conn.release(self.id, true);
    }
}

/// A subscription's deliveries.
pub(crate) struct Consumer {
    conn: Arc<Conn>,
    id: u8,
    rx: mpsc::Receiver<Chunk>,
}

impl Consumer {
    /// The next chunk (`None` once the subscription has ended); each chunk taken gives the
    /// server one credit back, so at most `credit` chunks are ever buffered.
    pub(crate) async fn next(&mut self) -> Option<Chunk> {
        let chunk = self.rx.recv().await?;
        let _ = self.conn.send(request(CreditCommand::new(self.id, 1)));
        Some(chunk)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.conn.release(self.id, false);
    }
}
