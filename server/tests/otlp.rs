//! Spans exported over OTLP/HTTP when `[log.otlp] endpoint` is set (docs/operations.md,
//! "Tracing"): a real OTLP/HTTP receiver (an axum server taking `POST /v1/traces`, decoding the
//! protobuf with `opentelemetry-proto`) gets the request span of a server in the client's trace,
//! the span of the backend call it made, and the service name; the backend got the call's span
//! id as its parent; and a hub delivering an event published in that trace records a `deliver`
//! span in it. The subscriber is global, so this file is its own test binary (the case
//! with export off is `otlp_off.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, StartAt};
use switchyard_core::event::Topic;
use switchyard_core::hub::{Hub, HubConfig, Item};
use switchyard_core::trace::TraceContext;
use switchyard_core::upstream::{BackendConfig, Call, Upstreams};
use switchyard_server::config::{LogConfig, ServerConfig};
use test_support::Scripted;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A receiver of OTLP/HTTP exports, keeping each request decoded.
async fn collector() -> (
    test_support::TestServer,
    Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf");
                kept.lock().expect("lock").push(request);
                ""
            }
        }),
    );
    (test_support::serve(router).await, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_in_the_clients_trace() {
    let (collector, received) = collector().await;
    let mut config = LogConfig::default();
    config.otlp.endpoint = collector.url();
    let telemetry = switchyard_server::telemetry::init(&config, "otlp-test").expect("init");
    assert!(switchyard_server::telemetry::exporting());

    // A server whose route calls a backend, wrapped in the common layers.
    let backend = Scripted::new();
    let backend_server = backend.serve().await;
    let backends: BTreeMap<String, BackendConfig> =
        [("b".to_owned(), BackendConfig::new(backend_server.url()))].into();
    let upstreams = Arc::new(Upstreams::new(&backends).expect("upstreams"));
    let app = Router::new().route(
        "/v1/things/{id}",
        get(move || {
            let upstreams = upstreams.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                upstreams
                    .execute(&Call::get("b", "/y"), deadline)
                    .await
                    .map(|_| "ok")
                    .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)
            }
        }),
    );
    let server = test_support::serve(switchyard_server::server::with_common_layers(
        app,
        &ServerConfig::default(),
    ))
    .await;
    let response = test_support::http::client()
        .get(format!("{}/v1/things/7", server.url()))
        .header("traceparent", CLIENT)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);

    // An event published in the client's (sampled) trace, delivered by a hub: a `deliver` span
    // in that trace.
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(16));
    let hub = Hub::new(bus.clone(), HubConfig::default());
    let topic = Topic::new("orders").expect("topic");
    let mut subscriber = hub
        .subscribe(&topic, StartAt::Live)
        .await
        .expect("subscribe");
    let trace = TraceContext::parse(CLIENT.as_bytes()).expect("valid");
    bus.publish_traced(&topic, Bytes::from_static(b"{}"), Some(trace))
        .await
        .expect("publish");
    let item = tokio::time::timeout(Duration::from_secs(5), subscriber.next())
        .await
        .expect("delivered in time");
    assert!(matches!(item, Some(Item::Event(_))), "{item:?}");

    // Dropping the guard flushes the batch (blocking: off the runtime's threads).
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .expect("flushed");
    let received = received.lock().expect("lock").clone();
    assert!(!received.is_empty(), "the collector got an export");
    let mut spans: Vec<Span> = Vec::new();
    for request in &received {
        for resource in &request.resource_spans {
            let attributes = &resource.resource.as_ref().expect("resource").attributes;
            let name = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(name, Some(AnyValue::StringValue("otlp-test".to_owned())));
            for scope in &resource.scope_spans {
                spans.extend(scope.spans.iter().cloned());
            }
        }
    }
    let names: Vec<_> = spans.iter().map(|s| s.name.clone()).collect();
    let request = spans
        .iter()
        .find(|s| s.name == "GET /v1/things/{id}")
        .unwrap_or_else(|| panic!("the request span, among {names:?}"));
    assert_eq!(hex(&request.trace_id), &CLIENT[3..35], "the client's trace");
    assert_eq!(
        hex(&request.parent_span_id),
        &CLIENT[36..52],
        "the client's span"
    );
    let call = spans
        .iter()
        .find(|s| s.name == "backend call")
        .unwrap_or_else(|| panic!("the backend call's span, among {names:?}"));
    assert_eq!(call.trace_id, request.trace_id);
    assert_eq!(
        call.parent_span_id, request.span_id,
        "a child of the request"
    );
    let sent = backend.traceparents();
    let sent = sent[0].as_deref().expect("the backend got a traceparent");
    assert_eq!(&sent[3..35], &CLIENT[3..35]);
    assert_eq!(
        &sent[36..52],
        hex(&call.span_id),
        "the call's span is its parent"
    );
    let deliver = spans
        .iter()
        .find(|s| s.name == "deliver")
        .unwrap_or_else(|| panic!("the delivery's span, among {names:?}"));
    assert_eq!(
        hex(&deliver.trace_id),
        &CLIENT[3..35],
        "in the write's trace"
    );
    assert_eq!(
        hex(&deliver.parent_span_id),
        &CLIENT[36..52],
        "a child of the write"
    );
}
