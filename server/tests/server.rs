//! Server plumbing: the bounded graceful drain, body limits, health and readiness.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use switchyard_server::config::ServerConfig;
use switchyard_server::server::{self, CancellationToken, Readiness};

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

fn slow_app() -> Router {
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        )
}

#[tokio::test]
async fn in_flight_requests_finish_during_the_drain() {
    let (url, stop, task) = start(slow_app(), Duration::from_secs(5)).await;
    let req = tokio::spawn(async move { reqwest::get(format!("{url}/slow")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
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
    let (url, stop, task) = start(slow_app(), Duration::from_millis(200)).await;
    let _req = tokio::spawn(async move { reqwest::get(format!("{url}/hang")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
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
