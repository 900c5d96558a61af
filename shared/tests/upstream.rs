//! Upstream calls against real loopback backends: retries for idempotent calls only, the circuit
//! breaker, deadlines and typed errors that name the backend.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_core::upstream::{BackendConfig, CircuitConfig, RetryConfig};
use switchyard_core::upstream::{Call, CircuitState, UpstreamErrorKind, Upstreams};
use test_support::{Scripted, TestServer};
use tokio::time::Instant;

fn registry(url: String, retry: RetryConfig, circuit: CircuitConfig) -> Upstreams {
    let mut c = BackendConfig::new(url);
    c.retry = retry;
    c.circuit = circuit;
    c.request_timeout_ms = 500;
    Upstreams::new(&BTreeMap::from([("svc".to_owned(), c)])).expect("valid registry")
}

fn retry(attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts: attempts,
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
    }
}

fn no_breaker() -> CircuitConfig {
    CircuitConfig {
        failure_threshold: 1_000,
        open_ms: 1_000,
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test]
async fn idempotent_get_is_retried_on_503() {
    let b = Scripted::new();
    b.reply(Duration::ZERO, 503, "{}");
    let s = b.serve().await;
    let up = registry(s.url(), retry(3), no_breaker());
    let err = up
        .execute(&Call::get("svc", "/x"), soon())
        .await
        .expect_err("503");
    assert_eq!(b.gets(), 3, "three attempts in all");
    assert!(matches!(
        err.kind,
        UpstreamErrorKind::Status { status: 503, .. }
    ));
}

#[tokio::test]
async fn post_is_never_retried() {
    let b = Scripted::new();
    b.reply(Duration::ZERO, 503, "{}");
    let s = b.serve().await;
    let up = registry(s.url(), retry(5), no_breaker());
    let call = Call::post_json("svc", "/x", &serde_json::json!({"a": 1}));
    up.execute(&call, soon()).await.expect_err("503");
    assert_eq!(b.posts(), 1);
}

#[tokio::test]
async fn post_timeout_is_not_retried_either() {
    let b = Scripted::new();
    b.reply(Duration::from_secs(5), 200, "{}");
    let s = b.serve().await;
    let up = registry(s.url(), retry(5), no_breaker());
    let call = Call::post_json("svc", "/x", &serde_json::json!({}));
    let err = up.execute(&call, soon()).await.expect_err("timeout");
    assert_eq!(err.kind, UpstreamErrorKind::Timeout);
    assert_eq!(b.posts(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_carry_the_backend_code() {
    let b = Scripted::new();
    b.reply(
        Duration::ZERO,
        422,
        r#"{"error":{"code":"limit_exceeded","message":"over"}}"#,
    );
    let s = b.serve().await;
    let up = registry(s.url(), retry(3), no_breaker());
    let err = up
        .execute(&Call::get("svc", "/x"), soon())
        .await
        .expect_err("422");
    assert_eq!(b.gets(), 1);
    assert_eq!(&*err.backend, "svc");
    assert_eq!(
        err.kind,
        UpstreamErrorKind::Status {
            status: 422,
            code: Some("limit_exceeded".into()),
            message: Some("over".into())
        }
    );
}

#[tokio::test]
async fn connect_failure_is_typed_and_names_the_backend() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let up = registry(format!("http://127.0.0.1:{port}"), retry(2), no_breaker());
    let err = up
        .execute(&Call::get("svc", "/"), soon())
        .await
        .expect_err("refused");
    assert!(matches!(err.kind, UpstreamErrorKind::Connect(_)), "{err}");
    assert!(err.to_string().contains("`svc`"), "{err}");
}

#[tokio::test]
async fn deadline_bounds_the_call_including_retries() {
    let b = Scripted::new();
    b.reply(Duration::from_secs(5), 200, "{}");
    let s = b.serve().await;
    let up = registry(s.url(), retry(10), no_breaker());
    let started = Instant::now();
    let err = up
        .execute(
            &Call::get("svc", "/"),
            Instant::now() + Duration::from_millis(200),
        )
        .await
        .expect_err("timeout");
    assert_eq!(err.kind, UpstreamErrorKind::Timeout);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unknown_backend_is_an_error() {
    let up = Upstreams::new(&BTreeMap::new()).expect("empty registry");
    let err = up
        .execute(&Call::get("nope", "/"), soon())
        .await
        .expect_err("unknown");
    assert_eq!(err.kind, UpstreamErrorKind::UnknownBackend);
    assert_eq!(&*err.backend, "nope");
}

#[tokio::test]
async fn circuit_opens_fails_fast_and_recovers_through_half_open() {
    let b = Scripted::new();
    b.reply(Duration::ZERO, 500, "{}");
    let s: TestServer = b.serve().await;
    let up = registry(
        s.url(),
        retry(1),
        CircuitConfig {
            failure_threshold: 3,
            open_ms: 300,
        },
    );
    for _ in 0..3 {
        up.execute(&Call::get("svc", "/"), soon())
            .await
            .expect_err("500");
    }
    assert_eq!(b.received(), 3);
    let breaker = up.backend("svc").expect("configured").breaker();
    assert_eq!(breaker.state(), CircuitState::Open);

    // Open: fails fast without calling the backend.
    let started = Instant::now();
    let err = up
        .execute(&Call::get("svc", "/"), soon())
        .await
        .expect_err("open");
    assert_eq!(err.kind, UpstreamErrorKind::CircuitOpen);
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(b.received(), 3);

    // After the cool-down one probe goes through; it fails, so the circuit opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    up.execute(&Call::get("svc", "/"), soon())
        .await
        .expect_err("probe fails");
    assert_eq!(b.received(), 4);
    assert_eq!(breaker.state(), CircuitState::Open);

    // The backend recovers; the next probe succeeds and closes the circuit.
    b.reply(Duration::ZERO, 200, r#"{"ok":true}"#);
    tokio::time::sleep(Duration::from_millis(350)).await;
    up.execute(&Call::get("svc", "/"), soon())
        .await
        .expect("probe succeeds");
    assert_eq!(breaker.state(), CircuitState::Closed);
    up.execute(&Call::get("svc", "/"), soon())
        .await
        .expect("closed again");
    assert_eq!(b.received(), 6);
}

#[tokio::test]
async fn client_errors_do_not_open_the_circuit() {
    let b = Scripted::new();
    b.reply(Duration::ZERO, 404, "{}");
    let s = b.serve().await;
    let up = registry(
        s.url(),
        retry(1),
        CircuitConfig {
            failure_threshold: 2,
            open_ms: 10_000,
        },
    );
    for _ in 0..5 {
        up.execute(&Call::get("svc", "/"), soon())
            .await
            .expect_err("404");
    }
    assert_eq!(b.received(), 5);
    assert_eq!(
        up.backend("svc").expect("svc").breaker().state(),
        CircuitState::Closed
    );
}
