//! A scripted workload against the three gateways of one stack — HTTP requests per API version,
//! sockets naming their client in `connection_init` and `auth`, a held poll naming its device
//! model and firmware, M events delivered, and one mobile socket that never reads until the
//! gateway cuts it off — and each gateway's `/metrics` showing exactly those counts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::{Config, DEMO_DEVICE, DEMO_DEVICE_KEY, DEMO_PUBLISHER_KEY, DEMO_SECRET, Stack};
use test_support::graphql_ws::Client;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{free_addr, requests, scrape};

/// Events published on `announcements`, delivered to one web and one mobile socket.
const M: usize = 5;

fn token(user: &str) -> String {
    bff_web::auth::hs256_token(DEMO_SECRET, user, Duration::from_secs(600))
}

struct Gateways {
    stack: Stack,
    web: SocketAddr,
    mobile: SocketAddr,
    device: SocketAddr,
}

async fn start() -> Gateways {
    let mut config = Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    let (web, mobile, device) = (free_addr(), free_addr(), free_addr());
    config.web.metrics.listen = web.to_string();
    config.web.metrics.known_clients = vec!["web-app".to_owned()];
    config.mobile.metrics.listen = mobile.to_string();
    config.mobile.metrics.known_clients = vec!["ios-app".to_owned()];
    config.device.metrics.listen = device.to_string();
    config.device.metrics.known_clients = vec!["tv-x1".to_owned()];
    // A small send queue and write deadline, so that the slow consumer is cut off soon.
    config.mobile.websocket.send_queue_messages = 8;
    config.mobile.websocket.write_timeout_ms = 1_000;
    // No rates for the demo device: nothing new may answer its held poll early.
    config
        .device
        .devices
        .get_mut(DEMO_DEVICE)
        .expect("the demo device")
        .rates
        .clear();
    Gateways {
        stack: Stack::start(config).await.expect("stack starts"),
        web,
        mobile,
        device,
    }
}

/// `name{labels}` of a series of `gateway`.
fn series(name: &str, gateway: &str, labels: &str) -> String {
    if labels.is_empty() {
        format!(r#"{name}{{gateway="{gateway}"}}"#)
    } else {
        format!(r#"{name}{{gateway="{gateway}",{labels}}}"#)
    }
}

/// The sum of every sample of `name` for `gateway`.
fn total(m: &std::collections::BTreeMap<String, f64>, name: &str, gateway: &str) -> f64 {
    let prefix = format!(r#"{name}{{gateway="{gateway}""#);
    m.iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Polls `addr`'s metrics until `done` accepts them (20 s at most: the test fails).
async fn until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&std::collections::BTreeMap<String, f64>) -> bool,
) -> std::collections::BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(addr).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: {m:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A mobile socket with a tiny receive buffer that signs in, subscribes to `topic`, and then
/// never reads again. Its upgrade names `slow-app/1.0` (not a known client), its `auth` none.
async fn slow_mobile(
    addr: SocketAddr,
    user: &str,
    topic: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        mobile_proto::SUBPROTOCOL_JSON.parse().expect("header"),
    );
    headers.insert("X-Client-App", "slow-app/1.0".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("upgrade");
    let mut step = async |msg: Value, answer: &str| {
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .expect("send");
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("an answer in time")
                .expect("open")
                .expect("a message");
            if let Message::Text(t) = next {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["t"] == answer {
                    return;
                }
                assert_eq!(v["t"], "ping", "{v}");
            }
        }
    };
    step(json!({"t": "auth", "token": token(user)}), "welcome").await;
    step(json!({"t": "sub", "topic": topic}), "subbed").await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gateway_shows_exactly_its_workload() {
    let gw = start().await;
    let stack = &gw.stack;
    let http = reqwest::Client::new();

    // bff-web: 3 requests on /v1 and 2 on /v2 from a known application.
    for (version, n) in [("v1", 3), ("v2", 2)] {
        for _ in 0..n {
            let answer = http
                .post(format!("{}/{version}/graphql", stack.url("bff-web")))
                .header("X-Client-App", "web-app/1.0")
                .json(&json!({"query": "{ __typename }"}))
                .send()
                .await
                .expect("graphql");
            assert_eq!(answer.status(), 200);
        }
    }
    // A graphql-ws socket naming its client in `connection_init` (browsers cannot set headers).
    let url = format!("ws://{}/v1/graphql", stack.addr("bff-web"));
    let mut web = Client::connect_with_payload(&url, json!({"client": "web-app/2.0"})).await;
    web.subscribe(
        "1",
        "subscription ($name: String!) { channel(name: $name) { epoch offset data } }",
        json!({"name": "announcements"}),
    )
    .await;
    // A mobile socket naming its client in `auth`.
    let mobile_url = format!("ws://{}/v1/ws", stack.addr("bff-mobile"));
    let mut mobile =
        test_support::mobile::Client::connect(&mobile_url, &[mobile_proto::SUBPROTOCOL_JSON])
            .await
            .skipping_pings();
    mobile
        .sign_in_as(token("alice"), "alice", Some("ios-app/4.2.0"))
        .await;
    mobile.subbed("announcements", None).await;
    let announcements = r#"pattern="announcements""#;
    until(gw.web, "the web subscription", |m| {
        m[&series("switchyard_hub_subscriptions", "bff-web", announcements)] == 1.0
    })
    .await;

    // M events through the stack's publish API.
    let publish = format!(
        "http://{}/v1/publish",
        stack.publish_addr().expect("publish")
    );
    for i in 0..M {
        let answer = http
            .post(&publish)
            .bearer_auth(DEMO_PUBLISHER_KEY)
            .json(&json!({"channel": "announcements", "data": {"n": i}}))
            .send()
            .await
            .expect("publish");
        assert_eq!(answer.status(), 200);
    }
    for i in 0..M {
        let next = web.recv().await;
        assert_eq!(next["payload"]["data"]["channel"]["data"]["n"], i, "{next}");
        assert_eq!(mobile.event().await.data["n"], i);
    }

    // bff-device: a poll held for the demo device, naming its model and firmware.
    let poll_url = format!(
        "{}/v1/devices/{DEMO_DEVICE}/events?wait=30",
        stack.url("bff-device")
    );
    // The first poll answers at once (the configuration); its cursor makes the second one wait.
    let first: Value = http
        .get(format!(
            "{}/v1/devices/{DEMO_DEVICE}/events",
            stack.url("bff-device")
        ))
        .header("X-Device-Key", DEMO_DEVICE_KEY)
        .header("X-Device-Model", "tv-x1")
        .header("X-Device-Firmware", "3.1")
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("JSON");
    let cursor = first["n"].as_str().expect("a cursor").to_owned();
    let held = tokio::spawn({
        let http = http.clone();
        async move {
            http.get(format!("{poll_url}&cursor={cursor}"))
                .header("X-Device-Key", DEMO_DEVICE_KEY)
                .header("X-Device-Model", "tv-x1")
                .header("X-Device-Firmware", "3.1")
                .send()
                .await
        }
    });
    let held_series = series(
        "switchyard_held_polls",
        "bff-device",
        r#"version="v1",client="tv-x1""#,
    );
    let d = until(gw.device, "the held poll", |m| m[&held_series] == 1.0).await;
    assert_eq!(d[&requests("bff-device", "v1", "tv-x1")], 2.0);
    assert_eq!(total(&d, "switchyard_held_polls", "bff-device"), 1.0);
    held.abort();
    until(gw.device, "the poll no longer held", |m| {
        m[&held_series] == 0.0
    })
    .await;

    // One mobile socket that never reads, on a stream channel of its own, cut off by the
    // gateway once its queue and socket buffers are full.
    let mut slow = slow_mobile(stack.addr("bff-mobile"), "bob", "conversions.bob").await;
    let bob = demo_api::UserId::parse("bob").expect("user");
    let topic = operations::channels::conversions_topic(&bob);
    let pad = "x".repeat(16 * 1024);
    let mut published = 0;
    let cut = loop {
        for _ in 0..20 {
            let payload = json!({"pad": pad, "n": published}).to_string();
            stack
                .bus()
                .publish(&topic, Bytes::from(payload))
                .await
                .expect("publish");
            published += 1;
        }
        let m = scrape(gw.mobile).await;
        if total(&m, "switchyard_slow_consumer_cutoffs_total", "bff-mobile") >= 1.0 {
            break m;
        }
        assert!(published < 4_000, "never cut off: {m:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // It reads now, and finds the close code (behind what was in flight).
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected the close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(mobile_proto::close::SLOW_CONSUMER));
    drop(cut);

    // bff-mobile, once the slow socket is gone.
    let other_live = series(
        "switchyard_connections",
        "bff-mobile",
        r#"version="v1",client="other""#,
    );
    let m = until(gw.mobile, "the slow socket closed", |m| {
        m[&other_live] == 0.0
    })
    .await;
    assert_eq!(
        total(&m, "switchyard_slow_consumer_cutoffs_total", "bff-mobile"),
        1.0
    );
    let at = |name: &str, labels: &str| m[&series(name, "bff-mobile", labels)];
    assert_eq!(
        at("switchyard_connections", r#"version="v1",client="ios-app""#),
        1.0
    );
    assert_eq!(
        at("switchyard_connections", r#"version="v1",client="none""#),
        0.0,
        "the socket moved to the client its auth named"
    );
    assert_eq!(
        at(
            "switchyard_connections_opened_total",
            r#"version="v1",client="ios-app""#
        ),
        1.0
    );
    assert_eq!(
        at(
            "switchyard_connections_opened_total",
            r#"version="v1",client="other""#
        ),
        1.0,
        "the slow socket's auth named no client: its upgrade's header counts"
    );
    assert_eq!(m[&requests("bff-mobile", "v1", "none")], 1.0);
    assert_eq!(m[&requests("bff-mobile", "v1", "other")], 1.0);
    assert_eq!(
        at("switchyard_hub_deliveries_total", announcements),
        M as f64
    );
    assert_eq!(
        total(&m, "switchyard_socket_queued_messages", "bff-mobile"),
        0.0,
        "the live socket has read everything"
    );
    assert!(
        at("switchyard_bus_publish_duration_seconds_count", "") >= (M + published) as f64,
        "{m:#?}"
    );
    assert_eq!(at("switchyard_bus_publish_errors_total", ""), 0.0);

    // bff-web.
    let w = scrape(gw.web).await;
    let at = |name: &str, labels: &str| w[&series(name, "bff-web", labels)];
    assert_eq!(w[&requests("bff-web", "v1", "web-app")], 3.0);
    assert_eq!(w[&requests("bff-web", "v2", "web-app")], 2.0);
    assert_eq!(
        w[&requests("bff-web", "v1", "none")],
        1.0,
        "the socket's upgrade"
    );
    assert_eq!(
        at("switchyard_connections", r#"version="v1",client="web-app""#),
        1.0
    );
    assert_eq!(
        at("switchyard_connections", r#"version="v1",client="none""#),
        0.0
    );
    assert_eq!(
        at(
            "switchyard_connections_opened_total",
            r#"version="v1",client="web-app""#
        ),
        1.0
    );
    assert_eq!(
        at("switchyard_hub_deliveries_total", announcements),
        M as f64
    );
    assert_eq!(
        total(&w, "switchyard_slow_consumer_cutoffs_total", "bff-web"),
        0.0
    );
    // The launcher's publish API, counted on bff-web's metrics.
    assert_eq!(
        w[r#"switchyard_publish_calls_total{gateway="switchyard",publisher="demo",outcome="ok"}"#],
        M as f64
    );
    web.close().await;
    stack_stop(gw.stack).await;
}

async fn stack_stop(stack: Stack) {
    stack.stop().await.ok();
}
