//! graphql-transport-ws conformance, with a real WebSocket client against the real gateway:
//! every close code the gateway ships, ping/pong, complete from either side, operation ids reused
//! after complete, auth at `connection_init`, per-user delivery, origin checks and limits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::publish_conversion;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, Bus};
use switchyard_server::server::CancellationToken;
use test_support::TestServer;
use test_support::graphql_ws::{Ws, connect_raw, recv, send};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

const SECRET: &str = "protocol-test-secret";

struct Gateway {
    server: TestServer,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    app_executions: Box<dyn Fn() -> usize>,
    active_topics: Box<dyn Fn() -> usize>,
}

async fn gateway() -> Gateway {
    gateway_with(|_| {}).await
}

async fn gateway_with(tune: impl FnOnce(&mut bff_web::Config)) -> Gateway {
    let mut config = bff_web::Config::default();
    config.auth.hs256_secret = SECRET.into();
    config.websocket.init_timeout_ms = 300;
    config.websocket.max_operations = 3;
    config.websocket.max_message_bytes = 4_096;
    config.cors.allowed_origins = vec!["https://app.example.com".into()];
    tune(&mut config);
    let broker = Broker::memory(100);
    let bus = broker.bus();
    let shutdown = CancellationToken::new();
    let app = Arc::new(bff_web::app(&config, &broker, shutdown.clone()).expect("app"));
    let (a, b) = (app.clone(), app.clone());
    Gateway {
        server: test_support::serve(app.router.clone()).await,
        bus,
        shutdown,
        app_executions: Box::new(move || a.v1_executions()),
        active_topics: Box::new(move || b.active_topics()),
    }
}

async fn connect_with(g: &Gateway, protocol: Option<&str>, origin: Option<&str>) -> Ws {
    connect_raw(
        &format!("ws://{}/v1/graphql", g.server.addr),
        protocol,
        origin,
    )
    .await
}

async fn connect(g: &Gateway) -> Ws {
    connect_with(g, Some("graphql-transport-ws"), None).await
}

/// Waits for the server to close the socket and returns the close code and reason.
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed within 5 s");
        match msg {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (code.into(), reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
        }
    }
}

async fn init(ws: &mut Ws, payload: Option<Value>) {
    let mut m = json!({"type": "connection_init"});
    if let Some(p) = payload {
        m["payload"] = p;
    }
    send(ws, m).await;
    assert_eq!(recv(ws).await, json!({"type": "connection_ack"}));
}

fn token(user: &str) -> Value {
    json!({"authorization": format!("Bearer {}", bff_web::auth::hs256_token(SECRET, user, Duration::from_secs(600)))})
}

fn subscribe(id: &str, query: &str) -> Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query}})
}

const CONVERSIONS: &str = "subscription { conversions { id converted } }";

#[tokio::test]
async fn init_ack_and_ping_pong() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    // Ping is allowed before init too.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
    init(&mut ws, None).await;
    send(&mut ws, json!({"type": "ping", "payload": {"n": 1}})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "pong", "payload": {"n": 1}})
    );
    // An unsolicited pong is fine and answered by nothing.
    send(&mut ws, json!({"type": "pong"})).await;
    send(&mut ws, subscribe("q", "{ __typename }")).await;
    assert_eq!(recv(&mut ws).await["type"], "next");
}

#[tokio::test]
async fn invalid_messages_close_with_4400() {
    let g = gateway().await;
    for bad in [
        Message::Text("not json".into()),
        Message::Text(r#"{"type":"nonsense"}"#.into()),
        Message::Text(r#"{"type":"subscribe","id":"1"}"#.into()),
        Message::Text(r#"{"id":"1"}"#.into()),
        Message::Binary(vec![1, 2, 3].into()),
    ] {
        let mut ws = connect(&g).await;
        init(&mut ws, None).await;
        ws.send(bad.clone()).await.expect("send");
        assert_eq!(closed(&mut ws).await.0, 4400, "{bad:?}");
    }
}

#[tokio::test]
async fn subscribe_before_ack_closes_with_4401() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    send(&mut ws, subscribe("1", "{ __typename }")).await;
    assert_eq!(closed(&mut ws).await, (4401, "Unauthorized".into()));
}

#[tokio::test]
async fn a_bad_token_at_init_closes_with_4403() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authorization": "Bearer nope"}}),
    )
    .await;
    assert_eq!(closed(&mut ws).await.0, 4403);
    let mut ws = connect(&g).await;
    let wrong = bff_web::auth::hs256_token("another-secret", "alice", Duration::from_secs(60));
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"token": wrong}}),
    )
    .await;
    assert_eq!(closed(&mut ws).await.0, 4403);
}

#[tokio::test]
async fn an_unsupported_subprotocol_is_refused_with_4406() {
    let g = gateway().await;
    // Offering no subprotocol: the socket opens and is closed with 4406 at once.
    let mut ws = connect_with(&g, None, None).await;
    assert_eq!(closed(&mut ws).await.0, 4406);
    // Offering only another one (the legacy `graphql-ws`): the server selects none, so the
    // handshake itself fails on the client, as RFC 6455 requires; if the client went on anyway,
    // it would get 4406 like above.
    let mut req = format!("ws://{}/v1/graphql", g.server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-ws"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Protocol(e)) => {
            assert!(e.to_string().contains("subprotocol"), "{e}");
        }
        other => panic!("expected the handshake to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn no_init_in_time_closes_with_4408() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut ws).await.0, 4408);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_users_socket_over_the_cap_closes_with_4429_while_others_get_in() {
    let g = gateway_with(|c| c.websocket.max_sockets_per_user = 2).await;
    let mut alice = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(&g).await;
        init(&mut ws, Some(token("alice"))).await;
        alice.push(ws);
    }
    let mut third = connect(&g).await;
    send(
        &mut third,
        json!({"type": "connection_init", "payload": token("alice")}),
    )
    .await;
    let (code, reason) = closed(&mut third).await;
    assert_eq!(code, 4429);
    assert!(reason.contains("per user"), "{reason}");
    // /v2 counts against the same cap.
    let (mut v2, _) = tokio_tungstenite::connect_async({
        let mut req = format!("ws://{}/v2/graphql", g.server.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        req
    })
    .await
    .expect("connect v2");
    send(
        &mut v2,
        json!({"type": "connection_init", "payload": token("alice")}),
    )
    .await;
    assert_eq!(closed(&mut v2).await.0, 4429);
    let mut bob = connect(&g).await;
    init(&mut bob, Some(token("bob"))).await;
    let mut anonymous = connect(&g).await;
    init(&mut anonymous, None).await;
    drop(alice.pop());
    // Once the closed socket's task has ended, alice gets in again.
    let again = test_support::eventually(Duration::from_secs(5), || async {
        let mut ws = connect(&g).await;
        send(
            &mut ws,
            json!({"type": "connection_init", "payload": token("alice")}),
        )
        .await;
        matches!(
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("connection_ack")
        )
    })
    .await;
    assert!(again, "a slot is given back when a socket ends");
}

#[tokio::test]
async fn a_second_init_closes_with_4429() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, None).await;
    send(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(closed(&mut ws).await.0, 4429);
}

#[tokio::test]
async fn a_duplicate_active_id_closes_with_4409() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, Some(token("alice"))).await;
    send(&mut ws, subscribe("dup", CONVERSIONS)).await;
    send(&mut ws, subscribe("dup", CONVERSIONS)).await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 4409);
    assert!(reason.contains("dup"), "{reason}");
}

#[tokio::test]
async fn single_results_complete_and_their_ids_can_be_reused() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, None).await;
    for _ in 0..2 {
        send(&mut ws, subscribe("same", "{ __typename }")).await;
        let next = recv(&mut ws).await;
        assert_eq!(
            next,
            json!({"id": "same", "type": "next", "payload": {"data": {"__typename": "Query"}}})
        );
        assert_eq!(
            recv(&mut ws).await,
            json!({"id": "same", "type": "complete"})
        );
    }
}

#[tokio::test]
async fn validation_errors_are_an_error_message_without_complete() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, None).await;
    send(&mut ws, subscribe("bad", "subscription { noSuchField }")).await;
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["id"], "bad");
    assert!(
        error["payload"].as_array().is_some_and(|a| !a.is_empty()),
        "{error}"
    );
    // The id is free again, and no complete follows the error.
    send(&mut ws, subscribe("bad", "{ __typename }")).await;
    assert_eq!(recv(&mut ws).await["type"], "next");
    assert_eq!(recv(&mut ws).await["type"], "complete");
}

#[tokio::test]
async fn complete_from_the_client_stops_delivery_and_frees_the_id() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, Some(token("alice"))).await;
    send(&mut ws, subscribe("s", CONVERSIONS)).await;
    // Make sure the subscription is live before publishing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish_conversion(&g.bus, "alice", "cv-1").await;
    let next = recv(&mut ws).await;
    assert_eq!(next["payload"]["data"]["conversions"]["id"], "cv-1");
    send(&mut ws, json!({"id": "s", "type": "complete"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish_conversion(&g.bus, "alice", "cv-2").await;
    // Reuse the id: only events after the new subscribe arrive, under the same id.
    send(&mut ws, subscribe("s", CONVERSIONS)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish_conversion(&g.bus, "alice", "cv-3").await;
    let next = recv(&mut ws).await;
    assert_eq!(next["id"], "s");
    assert_eq!(
        next["payload"]["data"]["conversions"]["id"], "cv-3",
        "cv-2 was sent after complete"
    );
}

#[tokio::test]
async fn the_server_completes_a_subscription_it_refuses() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, None).await; // anonymous
    send(&mut ws, subscribe("c", CONVERSIONS)).await;
    let next = recv(&mut ws).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{next}"
    );
    assert_eq!(recv(&mut ws).await, json!({"id": "c", "type": "complete"}));
}

#[tokio::test]
async fn users_receive_only_their_own_conversions() {
    let g = gateway().await;
    let mut alice = connect(&g).await;
    init(&mut alice, Some(token("alice"))).await;
    let mut bob = connect(&g).await;
    init(&mut bob, Some(token("bob"))).await;
    send(&mut alice, subscribe("a", CONVERSIONS)).await;
    send(&mut bob, subscribe("b", CONVERSIONS)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish_conversion(&g.bus, "alice", "for-alice").await;
    publish_conversion(&g.bus, "bob", "for-bob").await;
    assert_eq!(
        recv(&mut alice).await["payload"]["data"]["conversions"]["id"],
        "for-alice"
    );
    assert_eq!(
        recv(&mut bob).await["payload"]["data"]["conversions"]["id"],
        "for-bob"
    );
    // Nothing else arrives for either.
    for ws in [&mut alice, &mut bob] {
        send(ws, json!({"type": "ping"})).await;
        assert_eq!(recv(ws).await, json!({"type": "pong"}));
    }
}

#[tokio::test]
async fn operations_per_socket_are_limited() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, Some(token("alice"))).await;
    for id in ["1", "2", "3"] {
        send(&mut ws, subscribe(id, CONVERSIONS)).await;
    }
    send(&mut ws, subscribe("4", CONVERSIONS)).await;
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["id"], "4");
    assert_eq!(
        error["payload"][0]["extensions"]["code"],
        "TOO_MANY_OPERATIONS"
    );
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, None).await;
    let big = subscribe("big", &format!("{{ __typename {} }}", " ".repeat(10_000)));
    send(&mut ws, big).await;
    assert_eq!(closed(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn a_page_of_another_site_cannot_open_a_socket() {
    let g = gateway().await;
    let mut req = format!("ws://{}/v1/graphql", g.server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    req.headers_mut().insert(
        "origin",
        HeaderValue::from_static("https://evil.example.org"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    // The allowed origin gets in.
    let mut ws = connect_with(
        &g,
        Some("graphql-transport-ws"),
        Some("https://app.example.com"),
    )
    .await;
    init(&mut ws, None).await;
}

#[tokio::test]
async fn draining_closes_sockets_with_1001() {
    let g = gateway().await;
    let mut ws = connect(&g).await;
    init(&mut ws, None).await;
    g.shutdown.cancel();
    assert_eq!(closed(&mut ws).await.0, 1001);
}

#[tokio::test]
async fn identical_subscriptions_share_one_execution_per_visibility() {
    let g = gateway().await;
    let mut sockets = Vec::new();
    for user in ["alice", "alice", "alice", "bob"] {
        let mut ws = connect(&g).await;
        init(&mut ws, Some(token(user))).await;
        send(&mut ws, subscribe("c", CONVERSIONS)).await;
        sockets.push(ws);
    }
    assert!(
        test_support::eventually(Duration::from_secs(2), || async {
            (g.app_executions)() == 2
        })
        .await,
        "three alice sockets share one execution, bob has his own: {}",
        (g.app_executions)()
    );
    assert_eq!((g.active_topics)(), 2, "one hub topic per user");
    publish_conversion(&g.bus, "alice", "shared").await;
    for ws in &mut sockets[..3] {
        assert_eq!(
            recv(ws).await["payload"]["data"]["conversions"]["id"],
            "shared"
        );
    }
    drop(sockets);
    assert!(
        test_support::eventually(Duration::from_secs(2), || async {
            (g.app_executions)() == 0 && (g.active_topics)() == 0
        })
        .await,
        "executions and hub topics are released with the last socket"
    );
}

#[tokio::test]
async fn a_dns_rebinding_page_cannot_open_a_socket() {
    use test_support::raw_ws::RawSocket;
    let g = gateway().await;
    let port = g.server.addr.port();
    let cases = [
        // A foreign name re-pointed at the gateway: Host and Origin agree, and are refused.
        (
            format!("Host: evil.example:{port}"),
            format!("Origin: http://evil.example:{port}"),
            403,
        ),
        // The gateway's own origin on an IP address passes.
        (
            format!("Host: 127.0.0.1:{port}"),
            format!("Origin: http://127.0.0.1:{port}"),
            101,
        ),
        (
            format!("Host: localhost:{port}"),
            format!("Origin: http://localhost:{port}"),
            101,
        ),
        // An allowed origin passes whatever the host.
        (
            format!("Host: evil.example:{port}"),
            "Origin: https://app.example.com".to_owned(),
            101,
        ),
    ];
    for (host, origin, expected) in cases {
        let (status, _) = RawSocket::try_connect(
            g.server.addr,
            "/v1/graphql",
            "graphql-transport-ws",
            &[&host, &origin],
        )
        .await;
        assert_eq!(status, expected, "{host} / {origin}");
    }
}

#[tokio::test]
async fn websocket_protocol_violations_get_their_rfc_6455_close_codes() {
    use test_support::raw_ws::{Ending, RawSocket};
    let g = gateway().await;
    let wait = Duration::from_secs(5);
    let open = || RawSocket::connect(g.server.addr, "/v1/graphql", "graphql-transport-ws", &[]);
    let mut s = open().await;
    s.send_frame(0x81, &[0xff, 0xfe, 0xfd], true).await;
    assert_eq!(
        s.ending(wait).await,
        Ending::Close(Some(1007)),
        "invalid UTF-8"
    );
    let mut s = open().await;
    s.send_frame(0xC1, b"{}", true).await;
    assert_eq!(
        s.ending(wait).await,
        Ending::Close(Some(1002)),
        "reserved bits"
    );
    let mut s = open().await;
    s.send_frame(0x81, b"{}", false).await;
    assert_eq!(s.ending(wait).await, Ending::Close(Some(1002)), "unmasked");
    let mut s = open().await;
    s.send_frame(0x09, b"ping", true).await;
    assert_eq!(
        s.ending(wait).await,
        Ending::Close(Some(1002)),
        "fragmented ping"
    );
    let mut s = open().await;
    let mut header = vec![0x81u8, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.send_raw(&header).await;
    assert_eq!(
        s.ending(wait).await,
        Ending::Close(Some(1009)),
        "huge declared length"
    );
}

#[tokio::test]
async fn a_client_cut_off_for_not_reading_still_gets_1013_when_it_reads_later() {
    let mut config = bff_web::Config::default();
    config.auth.hs256_secret = SECRET.into();
    config.sources.clear();
    config.websocket.write_timeout_ms = 300;
    let broker = Broker::memory(100_000);
    let bus = broker.bus();
    let app = bff_web::app(&config, &broker, CancellationToken::new()).expect("app");
    let server = test_support::serve(app.router.clone()).await;
    let g = Gateway {
        server,
        bus,
        shutdown: CancellationToken::new(),
        app_executions: Box::new(|| 0),
        active_topics: Box::new(|| 0),
    };
    let mut slow = connect(&g).await;
    init(&mut slow, Some(token("quinn"))).await;
    send(
        &mut slow,
        subscribe("c", "subscription { conversions { id } }"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let big = "x".repeat(8 * 1024);
    for i in 0..3_000 {
        publish_conversion(&g.bus, "quinn", &big).await;
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Long after the cut-off, the client reads what its buffers hold, then the close code.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => break u16::from(frame.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1013);
}
