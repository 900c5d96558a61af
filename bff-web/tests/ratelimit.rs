//! Rate limits of bff-web, against the real gateway served like production (peers recorded):
//! HTTP requests over the per-IP budget (shared by two instances on Redis) get 429 with
//! `Retry-After` and a GraphQL error; a socket message flood is closed with 1008; a `subscribe`
//! over the subscription rate gets an `error` message and the socket stays open.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, BusConfig, BusKind};
use switchyard_server::server::CancellationToken;
use test_support::graphql_ws::{Ws, connect_raw, recv, send};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

struct Instance {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn instance(config: bff_web::Config) -> Instance {
    // Each instance its own broker (its own connections), as two processes would have.
    let broker = match config.bus.kind {
        BusKind::Memory => Broker::memory(100),
        _ => Broker::connect(&config.bus),
    };
    let stop = CancellationToken::new();
    let app = bff_web::app(&config, &broker, stop.clone()).expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = stop.clone();
    tokio::spawn(async move {
        switchyard_server::server::serve(listener, app.router, s, Duration::from_secs(1)).await
    });
    Instance { addr, stop }
}

fn config() -> bff_web::Config {
    let mut c = bff_web::Config::default();
    c.sources.clear();
    c
}

async fn typename(i: &Instance) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/v1/graphql", i.addr))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_instances_on_redis_share_one_request_budget_and_refuse_with_a_graphql_error() {
    let mut c = config();
    c.bus = BusConfig {
        prefix: format!("t-web-rl-{}", std::process::id()),
        ..BusConfig::of(BusKind::Redis)
    };
    // A burst of 10 that refills slowly (1/s), so that how fast this machine sends the requests
    // hardly matters: one shared budget refuses about the 11th request, two budgets (one per
    // instance) would let at least 20 through.
    c.rate_limits.requests_per_s_per_ip = 1;
    c.rate_limits.requests_burst_per_ip = 10;
    let a = instance(c.clone()).await;
    let b = instance(c.clone()).await;
    let started = std::time::Instant::now();
    let mut n = 0;
    let refused = loop {
        let res = typename(if n % 2 == 0 { &a } else { &b }).await;
        n += 1;
        if res.status() == 429 {
            break res;
        }
        assert_eq!(res.status(), 200);
        assert!(
            n < 20,
            "never refused: each instance has a budget of its own"
        );
    };
    // What refilled while the requests were sent may let that many more through.
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!(
        (11..=11 + refilled).contains(&n),
        "refused at request {n} ({refilled} refilled at most)"
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 1);
    let _ = switchyard_core::bus::redis::RedisBus::new(&c.bus)
        .delete_all()
        .await;
}

async fn connect(i: &Instance) -> Ws {
    let url = format!("ws://{}/v1/graphql", i.addr);
    let mut ws = connect_raw(&url, Some("graphql-transport-ws"), None).await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "connection_ack"}));
    ws
}

#[tokio::test]
async fn a_socket_message_flood_is_closed_with_1008_and_a_retry_time() {
    let mut c = config();
    c.rate_limits.socket_messages_per_s = 5;
    c.rate_limits.socket_messages_burst = 5;
    let i = instance(c).await;
    let mut ws = connect(&i).await; // connection_init is the first message
    for _ in 0..20 {
        if ws
            .send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let (code, reason) = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed within 5 s");
        match msg {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                break (u16::from(code), reason.to_string());
            }
            Some(Ok(Message::Text(_))) => pongs += 1,
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("retry after 1 s"), "{reason}");
    assert!((4..=6).contains(&pongs), "{pongs} pongs before the close");
}

#[tokio::test]
async fn a_subscribe_over_the_subscription_rate_gets_an_error_and_the_socket_stays() {
    let mut c = config();
    c.rate_limits.subscriptions_per_min = 2;
    c.rate_limits.subscriptions_burst = 2;
    let i = instance(c).await;
    let mut ws = connect(&i).await;
    for id in ["a", "b"] {
        send(
            &mut ws,
            json!({"id": id, "type": "subscribe", "payload": {"query": "{ __typename }"}}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["type"], "next");
        assert_eq!(recv(&mut ws).await["type"], "complete");
    }
    send(
        &mut ws,
        json!({"id": "c", "type": "subscribe", "payload": {"query": "{ __typename }"}}),
    )
    .await;
    let refused = recv(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "c");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    assert_eq!(refused["payload"][0]["extensions"]["retryAfter"], 30);
    // Still open.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
}
