//! With `[log.otlp]` left at its defaults nothing is exported and no exporter exists: a
//! receiver on the OTLP/HTTP default address (127.0.0.1:4318, where an exporter built with the
//! library's defaults would post) gets nothing, though requests ran — in a trace, with their
//! backend calls carrying `traceparent` all the same. Its own test binary: the subscriber is
//! global (`otlp.rs` is the case with export on).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use switchyard_core::upstream::{BackendConfig, Call, Upstreams};
use switchyard_server::config::{LogConfig, ServerConfig};
use test_support::Scripted;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_by_default() {
    let posts = Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:4318")
        .await
        .expect("the OTLP/HTTP default port 127.0.0.1:4318 is free for this test");
    let _collector = test_support::serve_on(
        listener,
        Router::new().fallback(post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "" }
        })),
    );
    let telemetry =
        switchyard_server::telemetry::init(&LogConfig::default(), "otlp-off").expect("init");
    assert!(!switchyard_server::telemetry::exporting());

    let backend = Scripted::new();
    let backend_server = backend.serve().await;
    let backends: BTreeMap<String, BackendConfig> =
        [("b".to_owned(), BackendConfig::new(backend_server.url()))].into();
    let upstreams = Arc::new(Upstreams::new(&backends).expect("upstreams"));
    let app = Router::new().route(
        "/v1/x",
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
    for traceparent in [Some(CLIENT), None] {
        let mut request = test_support::http::client().get(format!("{}/v1/x", server.url()));
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        assert_eq!(request.send().await.expect("answer").status().as_u16(), 200);
    }
    let sent = backend.traceparents();
    let first = sent[0]
        .as_deref()
        .expect("a traceparent with export off too");
    assert_eq!(&first[3..35], &CLIENT[3..35]);
    let second = sent[1].as_deref().expect("a new trace without one");
    assert_ne!(&second[3..35], &CLIENT[3..35]);

    // An exporter would flush here; there is none.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .expect("stopped");
    assert_eq!(posts.load(Ordering::SeqCst), 0, "nothing was exported");
}
