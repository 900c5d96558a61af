//! `GET /v1/quote` over HTTP gives a user's limit only to that user, signed in with
//! `Authorization: Bearer` (security fix, issue 9 item 1). Anonymous callers and other users get
//! the rate and the converted amount, `remaining_limit`/`within_limit` null and an `errors` entry
//! saying why — and the limits backend is not called for them; a bad token is a 401. Against the
//! real gateway with scripted backends that count their calls.

mod common;

use serde_json::Value;
use switchyard_core::upstream::BackendConfig;
use test_support::QuoteBackends;

struct Fixture {
    gateway: common::Gateway,
    backends: QuoteBackends,
}

async fn fixture() -> Fixture {
    let backends = QuoteBackends::start().await;
    let mut config = common::config();
    config.backends = backends.configs(BackendConfig::new);
    Fixture {
        gateway: common::start(config, 16).await,
        backends,
    }
}

async fn quote(f: &Fixture, authorization: Option<String>) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().get(format!(
        "{}/v1/quote?user=bob&from=EUR&to=USD&amount=100",
        f.gateway.server.url()
    ));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let r = req.send().await.expect("request");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (
        r.status().as_u16(),
        challenge,
        r.json().await.expect("JSON"),
    )
}

#[track_caller]
fn withheld(body: &Value, code: &str) {
    assert_eq!(body["rate"], "1.5", "{body}");
    assert_eq!(body["converted"], "150.0", "{body}");
    assert_eq!(body["remaining_limit"], Value::Null, "{body}");
    assert_eq!(body["within_limit"], Value::Null, "{body}");
    let error = test_support::withheld_error(body);
    assert_eq!(error["backend"], "limits", "{body}");
    assert_eq!(error["code"], code, "{body}");
}

#[tokio::test]
async fn anonymous_and_other_users_get_no_limit_and_limits_is_not_called() {
    let f = fixture().await;
    let (status, _, body) = quote(&f, None).await;
    assert_eq!(status, 200);
    withheld(&body, "unauthenticated");
    let (status, _, body) = quote(&f, Some(format!("Bearer {}", common::token("alice")))).await;
    assert_eq!(status, 200);
    withheld(&body, "not_your_account");
    assert_eq!(
        f.backends.limits.received(),
        0,
        "no backend call for someone else's account"
    );
}

#[tokio::test]
async fn the_user_gets_their_own_limit() {
    let f = fixture().await;
    let (status, _, body) = quote(&f, Some(format!("Bearer {}", common::token("bob")))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining_limit"], "990", "{body}");
    assert_eq!(body["within_limit"], true, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(f.backends.limits.gets(), 1);
}

#[tokio::test]
async fn a_bad_token_is_a_401_never_a_downgrade_to_anonymous() {
    let f = fixture().await;
    let wrong = common::token_with("bob", "another-secret-that-is-32-bytes-long", 600);
    for (authorization, code) in [
        (format!("Bearer {wrong}"), "invalid_token"),
        ("Bearer not-a-jwt".to_owned(), "invalid_token"),
        ("Basic Ym9iOmJvYg==".to_owned(), "invalid_token"),
        (
            format!(
                "Bearer {}",
                common::token_with("bob", common::SECRET, -3600)
            ),
            "expired_token",
        ),
    ] {
        let (status, challenge, body) = quote(&f, Some(authorization.clone())).await;
        assert_eq!(status, 401, "{authorization}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        assert_eq!(body["error"]["code"], code, "{authorization}: {body}");
    }
    assert_eq!(f.backends.limits.received(), 0);
}
