//! A small mobile-proto v1 client for the tests, over tokio-tungstenite: it sends exactly the
//! messages (or raw frames) a test asks for and reads the server's answers one by one, every
//! read bounded, so a test can drive the protocol step by step (the `mobile-client` crate, by
//! contrast, hides the protocol behind reconnects and resumes).
//!
//! It speaks the wire contract (`mobile-proto`) only, not the gateway, whose own tests use it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mobile_proto::{ClientMsg, Encoding, FrameKind, ServerMsg};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// How long a client waits for its connection and for each message unless told otherwise
/// ([`Client::connect_within`]).
pub const WAIT: Duration = Duration::from_secs(5);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol client.
pub struct Client {
    /// The socket, for tests that write or read frames of their own.
    pub ws: Ws,
    /// The encoding the server picked (`None`: it picked no subprotocol).
    pub enc: Option<Encoding>,
    wait: Duration,
    skip_pings: bool,
}

/// What a client saw at the end.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The socket closed with this code (1005: no code; 1006: no close frame).
    Closed(u16),
    /// Nothing came in time.
    Timeout,
}

impl Client {
    /// Opens a socket to `url` offering `protocols` (none: no subprotocol header); the
    /// connection must open within [`WAIT`], and each message come within it.
    pub async fn connect(url: &str, protocols: &[&str]) -> Self {
        Self::connect_within(url, protocols, WAIT).await
    }

    /// [`Client::connect_within`] with extra headers on the upgrade request (a `traceparent`).
    pub async fn connect_with_headers(
        url: &str,
        protocols: &[&str],
        headers: &[(&'static str, &str)],
    ) -> Self {
        Self::connect_as(url, protocols, headers, WAIT).await
    }

    /// [`Client::connect`] waiting up to `wait` for the connection and for each message.
    pub async fn connect_within(url: &str, protocols: &[&str], wait: Duration) -> Self {
        Self::connect_as(url, protocols, &[], wait).await
    }

    async fn connect_as(
        url: &str,
        protocols: &[&str],
        headers: &[(&'static str, &str)],
        wait: Duration,
    ) -> Self {
        let mut req = url.into_client_request().expect("a ws:// URL");
        for (name, value) in headers {
            req.headers_mut()
                .insert(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        if !protocols.is_empty() {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&protocols.join(", ")).expect("a header value"),
            );
        }
        let (ws, resp) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("connect");
        let enc = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_subprotocol);
        Self {
            ws,
            enc,
            wait,
            skip_pings: false,
        }
    }

    /// Opens a socket to `url` with `enc` and signs in with `token` as `user`.
    pub async fn signed_in(url: &str, enc: Encoding, token: String, user: &str) -> Self {
        let mut c = Self::connect(url, &[enc.subprotocol()]).await;
        c.sign_in(token, user).await;
        c
    }

    /// Sends `auth` with `token`; the answer must be `welcome` for `user`.
    pub async fn sign_in(&mut self, token: String, user: &str) {
        self.sign_in_as(token, user, None).await;
    }

    /// [`Self::sign_in`], naming the client application (`name/version`) in `auth`.
    pub async fn sign_in_as(&mut self, token: String, user: &str, client: Option<&str>) {
        let client = client.map(str::to_owned);
        self.send(&ClientMsg::Auth(mobile_proto::Auth { token, client }))
            .await;
        match self.recv().await {
            ServerMsg::Welcome(w) => assert_eq!(w.user, user),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// The same client passing over the server's pings (for tests that are not about the
    /// heartbeat and may run long enough to see one).
    pub fn skipping_pings(mut self) -> Self {
        self.skip_pings = true;
        self
    }

    fn enc(&self) -> Encoding {
        self.enc.expect("a subprotocol was picked")
    }

    /// Sends one message in the client's encoding.
    pub async fn send(&mut self, msg: &ClientMsg) {
        let frame = self.enc().encode_client(msg);
        self.send_raw(frame.kind(), frame.into_bytes()).await;
    }

    /// Sends `bytes` as a frame of `kind`, whatever they hold.
    pub async fn send_raw(&mut self, kind: FrameKind, bytes: Vec<u8>) {
        let msg = match kind {
            FrameKind::Text => Message::Text(String::from_utf8(bytes).expect("UTF-8").into()),
            FrameKind::Binary => Message::Binary(bytes.into()),
        };
        self.ws.send(msg).await.expect("send");
    }

    /// The next protocol message, answering nothing; panics on close or timeout.
    pub async fn recv(&mut self) -> ServerMsg {
        match self.recv_within(self.wait).await {
            Ok(m) => m,
            Err(end) => panic!("expected a message, got {end:?}"),
        }
    }

    /// The next protocol message within `wait`, or how the socket ended.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<ServerMsg, End> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(End::Timeout),
                Ok(n) => n,
            };
            let (kind, bytes) = match next {
                Some(Ok(Message::Text(t))) => (FrameKind::Text, t.as_bytes().to_vec()),
                Some(Ok(Message::Binary(b))) => (FrameKind::Binary, b.to_vec()),
                Some(Ok(Message::Close(f))) => {
                    return Err(End::Closed(f.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(End::Closed(1006)),
            };
            let msg = self
                .enc()
                .decode_server(kind, &bytes, 1 << 20)
                .expect("the server sends valid messages");
            if self.skip_pings && matches!(msg, ServerMsg::Ping(_)) {
                continue;
            }
            return Ok(msg);
        }
    }

    /// Reads until the socket closes, skipping messages; the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.recv_within(self.wait).await {
                Ok(_) => continue,
                Err(End::Closed(code)) => return code,
                Err(End::Timeout) => panic!("the socket did not close"),
            }
        }
    }

    /// Reads until the next message that is not a ping.
    pub async fn recv_skipping_pings(&mut self) -> ServerMsg {
        loop {
            match self.recv().await {
                ServerMsg::Ping(_) => continue,
                other => return other,
            }
        }
    }

    /// Sends `sub` for `topic` (resuming after `resume` if given).
    pub async fn sub(&mut self, topic: &str, resume: Option<mobile_proto::Position>) {
        self.send(&ClientMsg::Sub(mobile_proto::Sub {
            topic: topic.to_owned(),
            resume,
        }))
        .await;
    }

    /// Subscribes and returns the `subbed` answer.
    pub async fn subbed(
        &mut self,
        topic: &str,
        resume: Option<mobile_proto::Position>,
    ) -> mobile_proto::Subbed {
        self.sub(topic, resume).await;
        match self.recv().await {
            ServerMsg::Subbed(s) => {
                assert_eq!(s.topic, topic);
                s
            }
            other => panic!("expected subbed, got {other:?}"),
        }
    }

    /// The next message, which must be an event.
    pub async fn event(&mut self) -> mobile_proto::Event {
        match self.recv().await {
            ServerMsg::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn quiet(&mut self, wait: Duration) {
        match self.recv_within(wait).await {
            Err(End::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}
