//! Shared fixtures of the socket tests: a gateway on a loopback port over a memory bus, tokens,
//! and a small protocol client over tokio-tungstenite.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bff_mobile::Config;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use mobile_proto::{ClientMsg, Encoding, FrameKind, ServerMsg};
use switchyard_core::bus::Bus;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::event::{Event, Topic};
use switchyard_core::server::CancellationToken;
use test_support::TestServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The HS256 secret of the test gateway.
pub const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

/// How long a test waits for one message.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running gateway.
pub struct Gateway {
    pub server: TestServer,
    pub bus: Arc<dyn Bus>,
    pub shutdown: CancellationToken,
    pub app_topics: Box<dyn Fn() -> usize + Send + Sync>,
}

/// The test configuration: HS256 auth, no upstream bridge (rates are published on the bus by
/// the tests), backends nowhere unless a test sets them.
pub fn config() -> Config {
    let mut c = Config::default();
    c.auth.hs256_secret = SECRET.to_owned();
    c.bridges.clear();
    c
}

/// Starts a gateway with `config` over a memory bus keeping `history` events per topic.
pub async fn start(config: Config, history: usize) -> Gateway {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(history));
    let shutdown = CancellationToken::new();
    let app = bff_mobile::app(&config, bus.clone(), shutdown.clone()).expect("app builds");
    let server = test_support::serve(app.router.clone()).await;
    let app = Arc::new(app);
    Gateway {
        server,
        bus,
        shutdown,
        app_topics: Box::new(move || app.active_topics()),
    }
}

impl Gateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.server.addr)
    }

    /// Opens a socket with `enc` and signs in as `user` (answered by `welcome`).
    pub async fn signed_in(&self, enc: Encoding, user: &str) -> Client {
        let mut c = Client::connect(&self.ws_url(), &[enc.subprotocol()]).await;
        c.send(&ClientMsg::Auth(mobile_proto::Auth { token: token(user) }))
            .await;
        match c.recv().await {
            ServerMsg::Welcome(w) => assert_eq!(w.user, user),
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    /// Publishes a conversion event for `user` with conversion id `id`.
    pub async fn publish_conversion(&self, user: &str, id: &str) -> Event {
        let topic = Topic::new(&format!("conversions.{user}")).unwrap();
        let payload = serde_json::json!({
            "type": "conversion.completed",
            "conversion": {
                "id": id, "user": user, "from": "EUR", "to": "USD", "amount": "10.00",
                "rate": "1.0842", "converted": "10.84", "at": "2026-01-01T00:00:00Z"
            }
        });
        self.bus
            .publish(&topic, Bytes::from(payload.to_string()))
            .await
            .expect("publish")
    }

    /// Publishes a rate tick of `pair` with tick number `seq`.
    pub async fn publish_rate(&self, pair: &str, seq: u64) -> Event {
        let topic = Topic::new(&format!("rates.{pair}")).unwrap();
        let payload = serde_json::json!({"pair": pair, "rate": format!("1.{seq:04}"), "seq": seq});
        self.bus
            .publish(&topic, Bytes::from(payload.to_string()))
            .await
            .expect("publish")
    }
}

/// An HS256 token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(user, SECRET, 3600)
}

/// An HS256 token signed with `secret`, expiring `ttl_s` seconds from now (negative: expired).
pub fn token_with(user: &str, secret: &str, ttl_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({"sub": user, "iat": now, "exp": now + ttl_s});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol client.
pub struct Client {
    pub ws: Ws,
    /// The encoding the server picked (`None`: it picked no subprotocol).
    pub enc: Option<Encoding>,
}

/// What a client saw at the end.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Closed(u16),
    Timeout,
}

impl Client {
    pub async fn connect(url: &str, protocols: &[&str]) -> Self {
        let mut req = url.into_client_request().unwrap();
        if !protocols.is_empty() {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&protocols.join(", ")).unwrap(),
            );
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        let enc = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(Encoding::from_subprotocol);
        Self { ws, enc }
    }

    fn enc(&self) -> Encoding {
        self.enc.expect("a subprotocol was picked")
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        let frame = self.enc().encode_client(msg);
        self.send_raw(frame.kind(), frame.into_bytes()).await;
    }

    pub async fn send_raw(&mut self, kind: FrameKind, bytes: Vec<u8>) {
        let msg = match kind {
            FrameKind::Text => Message::Text(String::from_utf8(bytes).unwrap().into()),
            FrameKind::Binary => Message::Binary(bytes.into()),
        };
        self.ws.send(msg).await.expect("send");
    }

    /// The next protocol message, answering nothing; panics on close or timeout.
    pub async fn recv(&mut self) -> ServerMsg {
        match self.recv_within(WAIT).await {
            Ok(m) => m,
            Err(end) => panic!("expected a message, got {end:?}"),
        }
    }

    /// The next protocol message within `wait`, or how the socket ended.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<ServerMsg, End> {
        loop {
            let next = match tokio::time::timeout(wait, self.ws.next()).await {
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
            return Ok(self
                .enc()
                .decode_server(kind, &bytes, 1 << 20)
                .expect("the server sends valid messages"));
        }
    }

    /// Reads until the socket closes, skipping messages; the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.recv_within(WAIT).await {
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
