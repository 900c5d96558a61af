//! A graphql-transport-ws socket lives no longer than its token: closed with 4403 at `exp`
//! (+ `auth.leeway_s`), unless the client re-authenticated with a `ping` carrying a fresh token of
//! the same user (answered by a `pong` with `{"reauthenticated": true, …}`), which keeps its
//! subscriptions; a re-authentication with another user's token, on an anonymous socket, or
//! with a bad token closes with 4403. Real gateway, real WebSocket client.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::publish_conversion;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, Bus};
use switchyard_server::server::CancellationToken;
use test_support::TestServer;
use test_support::graphql_ws::{Ws, connect_raw, send};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const SECRET: &str = "token-test-secret-that-is-32-bytes!";
const CONVERSIONS: &str = "subscription { conversions { id } }";

struct Gateway {
    server: TestServer,
    bus: Arc<dyn Bus>,
    _shutdown: CancellationToken,
}

async fn gateway(leeway_s: u64) -> Gateway {
    let mut config = bff_web::Config::default();
    config.auth.hs256_secret = SECRET.into();
    config.auth.leeway_s = leeway_s;
    let broker = Broker::memory(100);
    let bus = broker.bus();
    let shutdown = CancellationToken::new();
    let app = bff_web::app(&config, &broker, shutdown.clone()).expect("app");
    Gateway {
        server: test_support::serve(app.router.clone()).await,
        bus,
        _shutdown: shutdown,
    }
}

async fn connect(g: &Gateway) -> Ws {
    let url = format!("ws://{}/v1/graphql", g.server.addr);
    connect_raw(&url, Some("graphql-transport-ws"), None).await
}

/// An HS256 token for `user` signed with `secret`, expiring `ttl_s` seconds from now.
fn token_with(user: &str, secret: &str, ttl_s: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": now + ttl_s}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(user: &str, ttl_s: i64) -> String {
    token_with(user, SECRET, ttl_s)
}

/// What the socket gave next within `wait`: a message, a close (code), or nothing.
#[derive(Debug)]
enum Next {
    Msg(Value),
    Closed(u16),
    Nothing,
}

async fn next_within(ws: &mut Ws, wait: Duration) -> Next {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await else {
            return Next::Nothing;
        };
        match msg {
            Some(Ok(Message::Text(t))) => return Next::Msg(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                return Next::Closed(code.into());
            }
            Some(Ok(Message::Close(None))) => return Next::Closed(1005),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Next::Closed(1006),
        }
    }
}

async fn recv(ws: &mut Ws) -> Value {
    match next_within(ws, Duration::from_secs(5)).await {
        Next::Msg(v) => v,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Reads until the socket closes; its code, or `None` if it is still open after `wait`.
async fn close_within(ws: &mut Ws, wait: Duration) -> Option<u16> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match next_within(ws, left).await {
            Next::Msg(_) => continue,
            Next::Closed(code) => return Some(code),
            Next::Nothing => return None,
        }
    }
}

async fn init(ws: &mut Ws, token: &str) {
    send(
        ws,
        json!({"type": "connection_init", "payload": {"token": token}}),
    )
    .await;
    assert_eq!(recv(ws).await, json!({"type": "connection_ack"}));
}

/// Publishes conversions for `user` until the socket delivers one (the subscription starts
/// asynchronously), within 5 s; returns its id.
async fn receive_conversion(g: &Gateway, ws: &mut Ws, user: &str, id: &str) -> String {
    for _ in 0..50 {
        publish_conversion(&g.bus, user, id).await;
        match next_within(ws, Duration::from_millis(100)).await {
            Next::Msg(v) if v["type"] == "next" => {
                return v["payload"]["data"]["conversions"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            Next::Msg(v) => panic!("unexpected {v}"),
            Next::Closed(code) => panic!("closed with {code}"),
            Next::Nothing => {}
        }
    }
    panic!("no conversion delivered within 5 s");
}

#[tokio::test]
async fn a_socket_is_closed_with_4403_when_its_token_expires() {
    let g = gateway(0).await;
    let mut ws = connect(&g).await;
    init(&mut ws, &token("alice", 2)).await;
    send(
        &mut ws,
        json!({"id": "c", "type": "subscribe", "payload": {"query": CONVERSIONS}}),
    )
    .await;
    assert_eq!(receive_conversion(&g, &mut ws, "alice", "c-1").await, "c-1");
    assert_eq!(
        close_within(&mut ws, Duration::from_secs(10)).await,
        Some(4403)
    );
}

#[tokio::test]
async fn the_leeway_applies_and_anonymous_sockets_do_not_expire() {
    // A 3 s leeway: a token expiring within a second keeps the socket open for the next 2 s
    // (its `exp` + 3 s is more than 3 s away), then it is closed; an anonymous socket stays.
    let g = gateway(3).await;
    let mut ws = connect(&g).await;
    init(&mut ws, &token("alice", 1)).await;
    let mut anonymous = connect(&g).await;
    send(&mut anonymous, json!({"type": "connection_init"})).await;
    assert_eq!(recv(&mut anonymous).await["type"], "connection_ack");
    assert_eq!(close_within(&mut ws, Duration::from_secs(2)).await, None);
    assert_eq!(
        close_within(&mut ws, Duration::from_secs(10)).await,
        Some(4403)
    );
    send(&mut anonymous, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut anonymous).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_ping_with_a_fresh_token_keeps_the_subscriptions_past_the_first_exp() {
    let g = gateway(0).await;
    let mut ws = connect(&g).await;
    init(&mut ws, &token("alice", 2)).await;
    send(
        &mut ws,
        json!({"id": "c", "type": "subscribe", "payload": {"query": CONVERSIONS}}),
    )
    .await;
    assert_eq!(
        receive_conversion(&g, &mut ws, "alice", "before").await,
        "before"
    );
    send(
        &mut ws,
        json!({"type": "ping", "payload": {"token": token("alice", 3600)}}),
    )
    .await;
    let pong = recv(&mut ws).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["payload"]["reauthenticated"], true);
    assert!(pong["payload"]["exp"].as_u64().unwrap() > 0);
    // Past the first token's expiry: still open, and the subscription still delivers.
    assert_eq!(close_within(&mut ws, Duration::from_secs(3)).await, None);
    assert_eq!(
        receive_conversion(&g, &mut ws, "alice", "after").await,
        "after"
    );
    // A plain ping is still a plain ping.
    send(&mut ws, json!({"type": "ping", "payload": {"n": 1}})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "pong", "payload": {"n": 1}})
    );
}

#[tokio::test]
async fn reauthentication_as_another_user_or_on_an_anonymous_socket_closes_with_4403() {
    let g = gateway(0).await;
    let mut ws = connect(&g).await;
    init(&mut ws, &token("alice", 3600)).await;
    send(
        &mut ws,
        json!({"type": "ping", "payload": {"token": token("bob", 3600)}}),
    )
    .await;
    assert_eq!(
        close_within(&mut ws, Duration::from_secs(5)).await,
        Some(4403)
    );

    let mut anonymous = connect(&g).await;
    send(&mut anonymous, json!({"type": "connection_init"})).await;
    assert_eq!(recv(&mut anonymous).await["type"], "connection_ack");
    send(
        &mut anonymous,
        json!({"type": "ping", "payload": {"token": token("bob", 3600)}}),
    )
    .await;
    assert_eq!(
        close_within(&mut anonymous, Duration::from_secs(5)).await,
        Some(4403)
    );
}

#[tokio::test]
async fn reauthentication_with_a_bad_token_closes_with_4403() {
    let g = gateway(0).await;
    for bad in [
        json!({"token": token_with("alice", "another-secret-that-is-32-bytes-long", 3600)}),
        json!({"token": token("alice", -3600)}),
        json!({"token": "garbage"}),
        json!({"token": ""}),
        json!({"token": 42}),
        json!({"authorization": "Basic YWxpY2U6cHc="}),
    ] {
        let mut ws = connect(&g).await;
        init(&mut ws, &token("alice", 3600)).await;
        send(&mut ws, json!({"type": "ping", "payload": bad})).await;
        assert_eq!(
            close_within(&mut ws, Duration::from_secs(5)).await,
            Some(4403),
            "{bad}"
        );
    }
}
