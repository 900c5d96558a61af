//! A small graphql-transport-ws client for tests: connect, `connection_init` with an optional
//! bearer token, subscribe, read messages by operation id — every read bounded by a timeout.
//! Beneath it, the raw socket ([`connect_raw`], [`send`], [`recv`]) for conformance tests that
//! send what a client library would not (no subprotocol, a foreign origin, messages out of
//! order).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A raw client socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket to `url` offering `protocol` (none: no subprotocol header) with `origin` (none:
/// no `Origin` header), within 10 s; nothing is sent.
pub async fn connect_raw(url: &str, protocol: Option<&str>, origin: Option<&str>) -> Ws {
    let mut req = url.into_client_request().expect("a ws:// URL");
    if let Some(p) = protocol {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).expect("header"));
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("connect within 10 s")
    .expect("connect")
    .0
}

/// Sends `v` as a text message.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next protocol message (text) within 5 s, skipping WebSocket pings; panics on a close.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("socket open")
            .expect("no error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(c) => panic!("closed unexpectedly: {c:?}"),
            _ => continue,
        }
    }
}

/// A connected, acknowledged graphql-transport-ws client.
pub struct Client {
    ws: Ws,
}

impl Client {
    /// Connects to `url` (`ws://host:port/v1/graphql`) and completes `connection_init` with the
    /// token, if any.
    pub async fn connect(url: &str, token: Option<&str>) -> Self {
        let payload = token.map(|t| json!({"authorization": format!("Bearer {t}")}));
        Self::connect_with_payload(url, payload.unwrap_or(Value::Null)).await
    }

    /// Connects to `url` and completes `connection_init` with `payload` (`null`: none).
    pub async fn connect_with_payload(url: &str, payload: Value) -> Self {
        let ws = connect_raw(url, Some("graphql-transport-ws"), None).await;
        let mut client = Self { ws };
        let payload = (!payload.is_null()).then_some(payload);
        client
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        let ack = client.recv().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    /// Sends one protocol message.
    pub async fn send(&mut self, message: Value) {
        send(&mut self.ws, message).await;
    }

    /// Starts an operation.
    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({"id": id, "type": "subscribe",
            "payload": {"query": query, "variables": variables}}))
            .await;
    }

    /// Completes an operation.
    pub async fn complete(&mut self, id: &str) {
        self.send(json!({"id": id, "type": "complete"})).await;
    }

    /// The next protocol message, within 10 s.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("a message within 10 s")
    }

    /// The next protocol message within `timeout`, or None if none came.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(end, self.ws.next()).await.ok()?;
            match msg.expect("socket open").expect("no socket error") {
                Message::Text(t) => return Some(serde_json::from_str(t.as_str()).expect("JSON")),
                Message::Close(c) => panic!("closed by the server: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Closes the socket normally.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
