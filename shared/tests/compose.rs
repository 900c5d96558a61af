//! Composition against real loopback backends: concurrency, partial results, required failures,
//! cancellation and dedup of identical GETs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use switchyard_core::compose::{Need, Plan};
use switchyard_core::upstream::{BackendConfig, RetryConfig};
use switchyard_core::upstream::{UpstreamErrorKind, Upstreams};
use test_support::{Scripted, TestServer, eventually};
use tokio::time::Instant;

#[derive(Debug, Deserialize, PartialEq)]
struct Ok_ {
    ok: bool,
}

fn registry(backends: &[(&str, &TestServer)]) -> Upstreams {
    let configs: BTreeMap<String, BackendConfig> = backends
        .iter()
        .map(|(name, server)| {
            let mut c = BackendConfig::new(server.url());
            c.retry = RetryConfig {
                max_attempts: 1,
                ..RetryConfig::default()
            };
            (name.to_string(), c)
        })
        .collect();
    Upstreams::new(&configs).expect("valid registry")
}

#[tokio::test]
async fn all_parts_succeed_and_run_concurrently() {
    let (a, b) = (Scripted::new(), Scripted::new());
    a.reply(Duration::from_millis(300), 200, r#"{"ok":true}"#);
    b.reply(Duration::from_millis(300), 200, r#"{"ok":false}"#);
    let (sa, sb) = (a.serve().await, b.serve().await);
    let up = registry(&[("a", &sa), ("b", &sb)]);

    let mut plan = Plan::new(&up);
    let pa = plan.get::<Ok_>("a", "/x", Need::Required);
    let pb = plan.get::<Ok_>("b", "/y", Need::Optional);
    let started = Instant::now();
    let out = plan
        .run(Instant::now() + Duration::from_secs(5))
        .await
        .expect("composed");
    let took = started.elapsed();

    assert_eq!(out.get(pa).expect("a"), &Ok_ { ok: true });
    assert_eq!(out.get(pb).expect("b"), &Ok_ { ok: false });
    assert_eq!(out.errors().count(), 0);
    // Sequential calls would take 600 ms; concurrent ones take a little over 300.
    assert!(took < Duration::from_millis(550), "took {took:?}");
}

#[tokio::test]
async fn optional_part_timing_out_gives_a_partial_result_within_the_deadline() {
    let (fast, slow) = (Scripted::new(), Scripted::new());
    slow.reply(Duration::from_secs(10), 200, r#"{"ok":true}"#);
    let (sf, ss) = (fast.serve().await, slow.serve().await);
    let up = registry(&[("fast", &sf), ("slow", &ss)]);

    let mut plan = Plan::new(&up);
    let pf = plan.get::<Ok_>("fast", "/", Need::Required);
    let ps = plan.get::<Ok_>("slow", "/", Need::Optional);
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let out = plan
        .run(Instant::now() + deadline)
        .await
        .expect("partial result");
    let took = started.elapsed();

    assert_eq!(out.get(pf).expect("fast part intact"), &Ok_ { ok: true });
    let err = out.get(ps).expect_err("slow part failed");
    assert_eq!(&*err.backend, "slow");
    assert_eq!(err.kind, UpstreamErrorKind::Timeout);
    assert!(took >= deadline, "returned before the deadline: {took:?}");
    assert!(
        took < deadline + Duration::from_millis(200),
        "took {took:?}"
    );
}

#[tokio::test]
async fn required_part_failing_fails_the_whole_naming_the_backend() {
    let (good, bad) = (Scripted::new(), Scripted::new());
    bad.reply(
        Duration::ZERO,
        503,
        r#"{"error":{"code":"down","message":"maintenance"}}"#,
    );
    good.reply(Duration::from_secs(10), 200, r#"{"ok":true}"#);
    let (sg, sb) = (good.serve().await, bad.serve().await);
    let up = registry(&[("good", &sg), ("bad", &sb)]);

    let mut plan = Plan::new(&up);
    plan.get::<Ok_>("good", "/", Need::Optional);
    plan.get::<Ok_>("bad", "/", Need::Required);
    let started = Instant::now();
    let err = match plan.run(Instant::now() + Duration::from_secs(5)).await {
        Ok(_) => panic!("a failed required part must fail the composition"),
        Err(e) => e,
    };
    assert_eq!(&*err.backend, "bad");
    assert_eq!(
        err.kind,
        UpstreamErrorKind::Status {
            status: 503,
            code: Some("down".into()),
            message: Some("maintenance".into())
        }
    );
    assert!(err.to_string().contains("bad"), "{err}");
    // It fails as soon as the required part fails, not when the slow optional one ends.
    assert!(started.elapsed() < Duration::from_secs(2));
    // ...and the slow call still outstanding is abandoned.
    assert!(eventually(Duration::from_secs(2), || async { good.abandoned() == 1 }).await);
}

#[tokio::test]
async fn undecodable_answer_is_a_decode_error_of_that_part() {
    let (a, b) = (Scripted::new(), Scripted::new());
    b.reply(Duration::ZERO, 200, r#"{"unexpected":1}"#);
    let (sa, sb) = (a.serve().await, b.serve().await);
    let up = registry(&[("a", &sa), ("b", &sb)]);
    let mut plan = Plan::new(&up);
    let pa = plan.get::<Ok_>("a", "/", Need::Required);
    let pb = plan.get::<Ok_>("b", "/", Need::Optional);
    let out = plan
        .run(Instant::now() + Duration::from_secs(5))
        .await
        .expect("partial");
    assert!(out.get(pa).is_ok());
    assert!(matches!(
        out.get(pb).expect_err("decode").kind,
        UpstreamErrorKind::Decode(_)
    ));
}

#[tokio::test]
async fn caller_going_away_cancels_the_outstanding_calls() {
    let slow = Scripted::new();
    slow.reply(Duration::from_secs(30), 200, r#"{"ok":true}"#);
    let server = slow.serve().await;
    let up = std::sync::Arc::new(registry(&[("slow", &server)]));

    let task = tokio::spawn({
        let up = up.clone();
        async move {
            let mut plan = Plan::new(&up);
            plan.get::<Ok_>("slow", "/a", Need::Required);
            plan.get::<Ok_>("slow", "/b", Need::Optional);
            let _ = plan.run(Instant::now() + Duration::from_secs(60)).await;
        }
    });
    assert!(eventually(Duration::from_secs(5), || async { slow.received() == 2 }).await);
    task.abort();
    assert!(
        eventually(Duration::from_secs(5), || async { slow.abandoned() == 2 }).await,
        "the backend saw {} of 2 calls abandoned",
        slow.abandoned()
    );
    assert_eq!(slow.completed(), 0);
}

#[tokio::test]
async fn identical_in_flight_gets_are_made_once() {
    let backend = Scripted::new();
    backend.reply(Duration::from_millis(50), 200, r#"{"ok":true}"#);
    let server = backend.serve().await;
    let up = registry(&[("b", &server)]);

    let mut plan = Plan::new(&up);
    let p1 = plan.get::<Ok_>("b", "/same", Need::Required);
    let p2 = plan.get::<Ok_>("b", "/same", Need::Optional);
    let p3 = plan.get::<serde_json::Value>("b", "/same", Need::Optional);
    let p4 = plan.get::<Ok_>("b", "/other", Need::Optional);
    assert_eq!(plan.call_count(), 2);
    let out = plan
        .run(Instant::now() + Duration::from_secs(5))
        .await
        .expect("composed");
    assert!(out.get(p1).is_ok() && out.get(p2).is_ok() && out.get(p4).is_ok());
    assert_eq!(out.get(p3).expect("raw")["ok"], true);
    assert_eq!(
        backend.received(),
        2,
        "one call for /same and one for /other"
    );
}
