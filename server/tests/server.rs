//! Server plumbing: the bounded graceful drain, body limits, health and readiness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use switchyard_server::config::ServerConfig;
use switchyard_server::server::{self, CancellationToken, Readiness};
use tokio::sync::Notify;

async fn start(
    app: Router,
    drain: Duration,
) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        server::serve(listener, app, s, drain).await.expect("serve");
    });
    (url, stop, task)
}

/// A slow route and a hanging one; each tells `arrived` when a request reaches its handler, so
/// a test stops the server only once its request is in flight (not after a guessed sleep, which a
/// loaded machine outlasts: the request then meets a closed listener).
fn slow_app(arrived: Arc<Notify>) -> Router {
    let slow = arrived.clone();
    Router::new()
        .route(
            "/slow",
            get(move || async move {
                slow.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
        .route(
            "/hang",
            get(move || async move {
                arrived.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        )
}

/// Waits until a request has reached a handler of [`slow_app`].
async fn in_flight(arrived: &Notify) {
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the request reaches its handler within 10 s");
}

#[tokio::test]
async fn in_flight_requests_finish_during_the_drain() {
    let arrived = Arc::new(Notify::new());
    let (url, stop, task) = start(slow_app(arrived.clone()), Duration::from_secs(5)).await;
    let req = tokio::spawn(async move { reqwest::get(format!("{url}/slow")).await });
    in_flight(&arrived).await;
    stop.cancel();
    let resp = req
        .await
        .expect("task")
        .expect("the in-flight request is answered");
    assert_eq!(resp.text().await.expect("body"), "done");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops after the drain")
        .expect("server task");
}

#[tokio::test]
async fn the_drain_is_bounded() {
    let arrived = Arc::new(Notify::new());
    let (url, stop, task) = start(slow_app(arrived.clone()), Duration::from_millis(200)).await;
    let _req = tokio::spawn(async move { reqwest::get(format!("{url}/hang")).await });
    in_flight(&arrived).await;
    let started = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops")
        .expect("server task");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(180), "{took:?}");
    assert!(took < Duration::from_millis(1_000), "{took:?}");
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let config = ServerConfig {
        body_limit_bytes: 1_024,
        ..ServerConfig::default()
    };
    let app = server::with_common_layers(
        Router::new().route(
            "/echo",
            post(|body: String| async move { body.len().to_string() }),
        ),
        &config,
    );
    let (url, _stop, _task) = start(app, Duration::from_secs(1)).await;
    let client = reqwest::Client::new();
    let ok = client
        .post(format!("{url}/echo"))
        .body("x".repeat(1_000))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    let big = client
        .post(format!("{url}/echo"))
        .body("x".repeat(2_000))
        .send()
        .await
        .expect("send");
    assert_eq!(big.status(), 413);
}

#[tokio::test]
async fn readyz_reports_each_check() {
    let up = std::sync::Arc::new(
        switchyard_core::upstream::Upstreams::new(&std::collections::BTreeMap::from([(
            "gone".to_owned(),
            switchyard_core::upstream::BackendConfig::new("http://127.0.0.1:9"),
        )]))
        .expect("registry"),
    );
    let bus = switchyard_core::bus::Broker::connect(&Default::default()).bus();
    let app = server::health_routes(Readiness::new(Some(up), Some(bus)));
    let (url, _stop, _task) = start(app, Duration::from_secs(1)).await;
    let r = reqwest::get(format!("{url}/readyz")).await.expect("readyz");
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["bus"], "ok");
    assert!(
        body["checks"]["gone"]
            .as_str()
            .expect("text")
            .contains("gone"),
        "{body}"
    );
    let r = reqwest::get(format!("{url}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
}
