//! A small graphql-transport-ws client for tests: connect, `connection_init` with an optional
//! bearer token, subscribe, read messages by operation id — every read bounded by a timeout.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected, acknowledged graphql-transport-ws client.
pub struct Client {
    ws: Ws,
}

impl Client {
    /// Connects to `url` (`ws://host:port/v1/graphql`) and completes `connection_init` with the
    /// token, if any.
    pub async fn connect(url: &str, token: Option<&str>) -> Self {
        let mut req = url.into_client_request().expect("a ws:// URL");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("connect within 10 s")
        .expect("connect");
        let mut client = Self { ws };
        let payload = token.map(|t| json!({"authorization": format!("Bearer {t}")}));
        client
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        let ack = client.recv().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    /// Sends one protocol message.
    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
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
