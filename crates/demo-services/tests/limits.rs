//! The limits service over real HTTP: enforcement, overrides, exact decimals, validation.

use std::collections::BTreeMap;

use demo_api::{Decimal, Limit};
use demo_services::limits::{self, Config};
use serde_json::json;
use test_support::http::{client, json};
use test_support::instance::Instance;

fn d(s: &str) -> Decimal {
    s.parse().expect("a decimal")
}

async fn limits_with(users: &[(&str, &str)]) -> Instance<anyhow::Error> {
    let config = Config {
        default_daily_limit: d("100.00"),
        users: users
            .iter()
            .map(|(u, l)| (u.to_string(), d(l)))
            .collect::<BTreeMap<_, _>>(),
        ..Config::default()
    };
    Instance::start("limits", move |listener, stop| {
        limits::run(config, listener, stop)
    })
    .await
}

async fn consume(
    svc: &Instance<anyhow::Error>,
    user: &str,
    amount: &str,
) -> (u16, serde_json::Value) {
    let response = client()
        .post(svc.url(&format!("/v1/limits/{user}/consume")))
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .expect("consume answers");
    json(response).await
}

async fn read(svc: &Instance<anyhow::Error>, user: &str) -> Limit {
    let response = client()
        .get(svc.url(&format!("/v1/limits/{user}")))
        .send()
        .await
        .expect("read answers");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a Limit")
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn consuming_up_to_the_limit_works_and_one_cent_more_is_refused() {
    let svc = limits_with(&[]).await;
    let fresh = read(&svc, "alice").await;
    assert_eq!(fresh.daily_limit, d("100.00"));
    assert_eq!(fresh.used, Decimal::ZERO);
    assert_eq!(fresh.remaining, d("100.00"));

    let (status, body) = consume(&svc, "alice", "60.00").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["used"], "60.00");
    assert_eq!(body["remaining"], "40.00");

    let (status, body) = consume(&svc, "alice", "40.00").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["used"], "100.00");
    assert_eq!(body["remaining"], "0.00");

    let (status, body) = consume(&svc, "alice", "0.01").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "limit_exceeded");
    assert!(body["error"]["message"].as_str().is_some());
    assert_eq!(
        read(&svc, "alice").await.used,
        d("100.00"),
        "a refusal consumes nothing"
    );
    assert_eq!(
        read(&svc, "bob").await.used,
        Decimal::ZERO,
        "users are separate"
    );
}

#[tokio::test]
async fn a_refused_consume_leaves_room_for_a_smaller_one() {
    let svc = limits_with(&[]).await;
    assert_eq!(consume(&svc, "carol", "99.99").await.0, 200);
    let (status, body) = consume(&svc, "carol", "0.02").await;
    assert_eq!((status, code(&body)), (422, "limit_exceeded"));
    let (status, body) = consume(&svc, "carol", "0.01").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining"], "0.00");
}

#[tokio::test]
async fn per_user_overrides_replace_the_default() {
    let svc = limits_with(&[("vip", "1000000.00"), ("tiny", "5.00")]).await;
    assert_eq!(read(&svc, "vip").await.daily_limit, d("1000000.00"));
    assert_eq!(read(&svc, "tiny").await.daily_limit, d("5.00"));
    assert_eq!(read(&svc, "someone").await.daily_limit, d("100.00"));

    let (status, body) = consume(&svc, "tiny", "5.01").await;
    assert_eq!((status, code(&body)), (422, "limit_exceeded"));
    assert_eq!(consume(&svc, "tiny", "5.00").await.0, 200);
    let (status, body) = consume(&svc, "vip", "500000.00").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining"], "500000.00");
}

#[tokio::test]
async fn decimal_arithmetic_is_exact() {
    let svc = limits_with(&[]).await;
    assert_eq!(consume(&svc, "dave", "0.10").await.0, 200);
    let (status, body) = consume(&svc, "dave", "0.20").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["used"], "0.30");
    assert_eq!(body["remaining"], "99.70");
    let limit = read(&svc, "dave").await;
    assert_eq!(limit.used, d("0.30"));
    assert_eq!(limit.used + limit.remaining, limit.daily_limit);
    // Ninety-seven ten-cent consumes and one of thirty cents make exactly ten.
    for _ in 0..97 {
        assert_eq!(consume(&svc, "erin", "0.10").await.0, 200);
    }
    let (_, body) = consume(&svc, "erin", "0.30").await;
    assert_eq!(body["used"], "10.00");
}

#[tokio::test]
async fn concurrent_consumes_never_pass_the_limit_together() {
    let svc = limits_with(&[]).await;
    let attempts = (0..25).map(|_| consume(&svc, "frank", "10.00"));
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results
        .iter()
        .filter(|(s, b)| *s == 422 && code(b) == "limit_exceeded")
        .count();
    assert_eq!((ok, refused), (10, 15));
    assert_eq!(read(&svc, "frank").await.used, d("100.00"));
}

#[tokio::test]
async fn invalid_users_and_amounts_are_400_with_their_codes() {
    let svc = limits_with(&[]).await;
    let response = client()
        .get(svc.url("/v1/limits/bad%20user"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert_eq!((status, code(&body)), (400, "invalid_user"));
    let (status, body) = consume(&svc, &"x".repeat(65), "1.00").await;
    assert_eq!((status, code(&body)), (400, "invalid_user"));
    for bad in ["", "0", "-1", "1.234", "1e3", "abc", "1,5", "1000000000.01"] {
        let (status, body) = consume(&svc, "gina", bad).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_amount"),
            "amount {bad:?}"
        );
    }
    assert_eq!(read(&svc, "gina").await.used, Decimal::ZERO);
}

#[tokio::test]
async fn malformed_requests_get_a_json_400() {
    let svc = limits_with(&[]).await;
    let url = svc.url("/v1/limits/hank/consume");
    let bodies = [
        "{not json",
        r#"{"amount": "1.00", "extra": 1}"#,
        r#"{"amount": 1}"#,
        "{}",
    ];
    for body in bodies {
        let response = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, json) = json(response).await;
        assert_eq!(
            (status, code(&json)),
            (400, "invalid_request"),
            "body {body}"
        );
    }
    let response = client()
        .post(&url)
        .body(r#"{"amount":"1.00"}"#)
        .send()
        .await
        .unwrap();
    let (status, json) = json(response).await;
    assert_eq!((status, code(&json)), (415, "unsupported_media_type"));
    assert_eq!(read(&svc, "hank").await.used, Decimal::ZERO);
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let svc = limits_with(&[]).await;
    for path in ["/healthz", "/readyz"] {
        let response = client().get(svc.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let (status, body) = json(client().get(svc.url("/v2/nothing")).send().await.unwrap()).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = json(
        client()
            .delete(svc.url("/v1/limits/ivan"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
}

#[tokio::test]
async fn stops_when_cancelled() {
    let svc = limits_with(&[]).await;
    let addr = svc.addr;
    svc.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
