//! W3C trace context end to end (docs/operations.md, "Tracing"): a `traceparent` a client sends
//! to bff-web (over HTTP, and in a socket's `connection_init`), bff-mobile (HTTP, and the upgrade
//! of its socket, whose calls run in that trace) or bff-device arrives at the backends the
//! request calls — real scripted backends on loopback — with the same trace id and a parent id of
//! the gateway's; a bad one is ignored and a new trace started, never an error; and a
//! `traceparent` given to the publish API is in the event on the bus (a bad one: the event
//! carries the trace started for the call).

mod common;

use mobile_proto::{ClientMsg, Encoding, ServerMsg};
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, BusConfig};
use switchyard_core::event::Topic;
use switchyard_core::trace::TraceContext;
use switchyard_core::upstream::BackendConfig;
use test_support::{QuoteBackends, Scripted};

/// A client's trace: sampled, as a browser SDK sends it.
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn trace_id(traceparent: &str) -> &str {
    &traceparent[3..35]
}

fn parent_id(traceparent: &str) -> &str {
    &traceparent[36..52]
}

/// Another trace id than [`CLIENT`]'s, in the same shape.
fn client_trace(n: u8) -> String {
    format!(
        "00-{:032x}-00f067aa0ba902b7-01",
        0x4bf9_0000 + u128::from(n)
    )
}

/// The `traceparent` of the last call `backend` got: present and valid, its trace id.
#[track_caller]
fn last_call(backend: &Scripted) -> String {
    let all = backend.traceparents();
    let last = all.last().expect("the backend was called").clone();
    let last = last.expect("the call carried a traceparent");
    assert!(
        TraceContext::parse(last.as_bytes()).is_some(),
        "a valid traceparent: {last}"
    );
    last
}

/// Checks that `backend`'s last call is in the trace of `sent`, with a span of the gateway's
/// as its parent (not the client's own span).
#[track_caller]
fn in_trace(backend: &Scripted, sent: &str) {
    let got = last_call(backend);
    assert_eq!(trace_id(&got), trace_id(sent), "same trace: {got}");
    assert_ne!(
        parent_id(&got),
        parent_id(sent),
        "a parent of the gateway's: {got}"
    );
}

/// The gateways' backend configurations, pointing at the scripted backends.
fn backends(quote: &QuoteBackends) -> std::collections::BTreeMap<String, BackendConfig> {
    quote.configs(BackendConfig::new)
}

async fn get(url: &str, traceparent: Option<&str>, token: Option<&str>) -> (u16, Value) {
    let mut request = test_support::http::client().get(url);
    if let Some(t) = traceparent {
        request = request.header("traceparent", t);
    }
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bff_device_passes_the_clients_trace_to_its_backends() {
    let quote = QuoteBackends::start().await;
    let bus = BusConfig::default();
    let mut config = common::cluster::device_config(&bus);
    config.backends = backends(&quote);
    let broker = Broker::connect(&bus);
    let gw = common::Running::start("bff-device", move |l, t| {
        bff_device::run(config, broker, l, t)
    })
    .await;
    let url = gw.url("/v1/quote?user=bob&from=EUR&to=USD&amount=100");

    let (status, body) = get(&url, Some(CLIENT), None).await;
    assert_eq!(status, 200, "{body}");
    in_trace(&quote.exchange, CLIENT);

    // A bad traceparent is ignored: the answer is the same, and the call starts a new trace.
    let bad = CLIENT.to_uppercase();
    let (status, body) = get(&url, Some(&bad), None).await;
    assert_eq!(status, 200, "{body}");
    let got = last_call(&quote.exchange);
    assert_ne!(trace_id(&got), trace_id(CLIENT), "a new trace: {got}");

    // Without one, a new trace too, a different one each time.
    get(&url, None, None).await;
    let first = last_call(&quote.exchange);
    get(&url, None, None).await;
    let second = last_call(&quote.exchange);
    assert_ne!(trace_id(&first), trace_id(&second));
    gw.stop().await;
}

#[tokio::test]
async fn bff_mobile_passes_the_clients_trace_over_http_and_on_its_socket() {
    let quote = QuoteBackends::start().await;
    let bus = BusConfig::default();
    let mut config = common::cluster::mobile_config(&bus);
    config.backends = backends(&quote);
    let broker = Broker::connect(&bus);
    let gw = common::Running::start("bff-mobile", move |l, t| {
        bff_mobile::run(config, broker, l, t)
    })
    .await;
    let token = common::cluster::token("bob");

    // HTTP, signed in: both backends are called, both in the client's trace.
    let url = gw.url("/v1/quote?user=bob&from=EUR&to=USD&amount=100");
    let (status, body) = get(&url, Some(CLIENT), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    in_trace(&quote.exchange, CLIENT);
    in_trace(&quote.limits, CLIENT);

    // The socket: the upgrade request's traceparent is the trace of every call on it.
    let sent = client_trace(1);
    let ws_url = gw.url("/v1/ws").replacen("http", "ws", 1);
    let mut client = test_support::mobile::Client::connect_with_headers(
        &ws_url,
        &[Encoding::Json.subprotocol()],
        &[("traceparent", sent.as_str())],
    )
    .await
    .skipping_pings();
    client.sign_in(token.clone(), "bob").await;
    let Value::Object(args) = json!({"from": "EUR", "to": "USD", "amount": "100"}) else {
        unreachable!("an object")
    };
    client
        .send(&ClientMsg::Call(mobile_proto::Call {
            id: 1,
            op: "quote".to_owned(),
            args,
        }))
        .await;
    match client.recv_skipping_pings().await {
        ServerMsg::Result(result) => assert_eq!(result.id, 1),
        other => panic!("expected the quote, got {other:?}"),
    }
    in_trace(&quote.exchange, &sent);
    in_trace(&quote.limits, &sent);
    gw.stop().await;
}

#[tokio::test]
async fn bff_web_passes_the_clients_trace_over_http_and_from_connection_init() {
    let quote = QuoteBackends::start().await;
    let bus = BusConfig::default();
    let mut config = common::cluster::web_config(&bus);
    config.backends = backends(&quote);
    let broker = Broker::connect(&bus);
    let gw =
        common::Running::start("bff-web", move |l, t| bff_web::run(config, broker, l, t)).await;
    let query = r#"{ quote(user: "bob", from: "EUR", to: "USD", amount: "100") { rate } }"#;

    // HTTP.
    let response = test_support::http::client()
        .post(gw.url("/v1/graphql"))
        .header("traceparent", CLIENT)
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["data"]["quote"]["rate"], "1.5", "{body}");
    in_trace(&quote.exchange, CLIENT);

    // A socket whose connection_init names the trace: its operations' calls are in it.
    let sent = client_trace(2);
    let ws_url = gw.url("/v1/graphql").replacen("http", "ws", 1);
    let mut ws =
        test_support::graphql_ws::connect_raw(&ws_url, Some("graphql-transport-ws"), None).await;
    test_support::graphql_ws::send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"traceparent": sent}}),
    )
    .await;
    assert_eq!(
        test_support::graphql_ws::recv(&mut ws).await["type"],
        "connection_ack"
    );
    test_support::graphql_ws::send(
        &mut ws,
        json!({"type": "subscribe", "id": "q", "payload": {"query": query}}),
    )
    .await;
    let next = test_support::graphql_ws::recv(&mut ws).await;
    assert_eq!(next["payload"]["data"]["quote"]["rate"], "1.5", "{next}");
    in_trace(&quote.exchange, &sent);

    // A bad one in connection_init is ignored: the socket works, in a trace of its own.
    let mut ws =
        test_support::graphql_ws::connect_raw(&ws_url, Some("graphql-transport-ws"), None).await;
    test_support::graphql_ws::send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"traceparent": "00-nonsense"}}),
    )
    .await;
    assert_eq!(
        test_support::graphql_ws::recv(&mut ws).await["type"],
        "connection_ack"
    );
    test_support::graphql_ws::send(
        &mut ws,
        json!({"type": "subscribe", "id": "q", "payload": {"query": query}}),
    )
    .await;
    let next = test_support::graphql_ws::recv(&mut ws).await;
    assert_eq!(next["payload"]["data"]["quote"]["rate"], "1.5", "{next}");
    let got = last_call(&quote.exchange);
    assert_ne!(trace_id(&got), trace_id(&sent), "{got}");
    assert_ne!(trace_id(&got), trace_id(CLIENT), "{got}");
    gw.stop().await;
}

#[tokio::test]
async fn a_published_events_trace_is_kept_on_the_bus() {
    let mut config = switchyard::Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    let stack = switchyard::Stack::start(config)
        .await
        .expect("stack starts");
    let url = format!("http://{}/v1/publish", stack.addr("publish"));
    let http = test_support::http::client();
    let publish = |traceparent: Option<&'static str>| {
        let mut request = http
            .post(&url)
            .bearer_auth(switchyard::DEMO_PUBLISHER_KEY)
            .json(&json!({"channel": "announcements", "data": {"text": "hello"}}));
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        request.send()
    };
    let topic = Topic::new("ch:announcements").expect("topic");

    let response = publish(Some(CLIENT)).await.expect("publish");
    assert_eq!(response.status().as_u16(), 200);
    let latest = stack
        .bus()
        .latest(&topic)
        .await
        .expect("latest")
        .expect("event");
    let trace = latest
        .trace
        .expect("the event carries the publisher's trace");
    assert_eq!(trace.to_string(), CLIENT);

    // A bad one is ignored: published, with a trace of its own.
    let response = publish(Some("00-bad")).await.expect("publish");
    assert_eq!(response.status().as_u16(), 200);
    let latest = stack
        .bus()
        .latest(&topic)
        .await
        .expect("latest")
        .expect("event");
    let trace = latest.trace.expect("a trace of its own");
    assert_ne!(trace.trace_id_hex().to_string(), trace_id(CLIENT));
    stack.stop().await.expect("the stack stops cleanly");
}

#[tokio::test]
async fn a_scripted_backend_keeps_what_it_was_sent() {
    // The fixture the tests above read: a request without the header is recorded as `None`.
    let backend = Scripted::new();
    let server = backend.serve().await;
    let http = test_support::http::client();
    http.get(server.url()).send().await.expect("answer");
    http.get(server.url())
        .header("traceparent", CLIENT)
        .send()
        .await
        .expect("answer");
    assert_eq!(backend.traceparents(), vec![None, Some(CLIENT.to_owned())]);
}
