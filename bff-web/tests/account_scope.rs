//! A caller only ever sees its own account's data (security fix, issue 9 item 1): v1's
//! `quote(user:)` gives the remaining limit only to `user` signed in. Anonymous callers and other
//! users get the rate and the converted amount, `remainingLimit` and `withinLimit` null with an
//! `UNAUTHENTICATED` / `FORBIDDEN` error — and the limits backend is not called for them. Against
//! the real gateway with scripted backends that count their calls, over HTTP and the socket.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_core::bus::Broker;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::server::CancellationToken;
use test_support::graphql_ws::Client;
use test_support::{QuoteBackends, TestServer};

const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

fn token(user: &str) -> String {
    bff_web::auth::hs256_token(SECRET, user, Duration::from_secs(600))
}

struct Fixture {
    gateway: TestServer,
    backends: QuoteBackends,
}

async fn fixture() -> Fixture {
    let backends = QuoteBackends::start().await;
    let mut config = bff_web::Config::default();
    config.auth.hs256_secret = SECRET.to_owned();
    config.sources.clear();
    config.backends = backends.configs(BackendConfig::new);
    let app = bff_web::app(&config, &Broker::memory(10), CancellationToken::new()).expect("app");
    Fixture {
        gateway: test_support::serve(app.router).await,
        backends,
    }
}

const QUOTE_BOB: &str = r#"{ quote(user: "bob", from: "EUR", to: "USD", amount: "100") { pair rate converted remainingLimit withinLimit } }"#;

async fn post(f: &Fixture, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/graphql", f.gateway.url()))
        .json(&json!({ "query": query }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request");
    (r.status().as_u16(), r.json().await.expect("JSON"))
}

/// The rate part is there, the limit part is null with one error of `code` and `reason`.
#[track_caller]
fn withheld(body: &Value, code: &str, reason: &str) {
    let q = &body["data"]["quote"];
    assert_eq!(q["rate"], "1.5", "{body}");
    assert_eq!(q["converted"], "150.0", "{body}");
    assert_eq!(q["remainingLimit"], Value::Null, "{body}");
    assert_eq!(q["withinLimit"], Value::Null, "{body}");
    let error = test_support::withheld_error(body);
    assert_eq!(error["path"], json!(["quote", "remainingLimit"]), "{body}");
    assert_eq!(error["extensions"]["code"], code, "{body}");
    assert_eq!(error["extensions"]["reason"], reason, "{body}");
}

#[tokio::test]
async fn an_anonymous_caller_never_sees_a_users_limit_and_limits_is_not_called() {
    let f = fixture().await;
    let (status, body) = post(&f, None, QUOTE_BOB).await;
    assert_eq!(status, 200);
    withheld(&body, "UNAUTHENTICATED", "unauthenticated");
    assert_eq!(
        f.backends.limits.received(),
        0,
        "no backend call for someone else's account"
    );
}

#[tokio::test]
async fn another_user_never_sees_the_limit_and_limits_is_not_called() {
    let f = fixture().await;
    let (status, body) = post(&f, Some(&token("alice")), QUOTE_BOB).await;
    assert_eq!(status, 200);
    withheld(&body, "FORBIDDEN", "not_your_account");
    assert_eq!(f.backends.limits.received(), 0);
}

#[tokio::test]
async fn the_user_sees_their_own_limit() {
    let f = fixture().await;
    let (status, body) = post(&f, Some(&token("bob")), QUOTE_BOB).await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let q = &body["data"]["quote"];
    assert_eq!(q["remainingLimit"], "990", "{body}");
    assert_eq!(q["withinLimit"], true, "{body}");
    assert_eq!(f.backends.limits.gets(), 1);
}

#[tokio::test]
async fn over_the_socket_the_connection_init_token_decides_too() {
    let f = fixture().await;
    let url = format!("ws://{}/v1/graphql", f.gateway.addr);
    for (token, expected) in [
        (None, Some(("UNAUTHENTICATED", "unauthenticated"))),
        (
            Some(token("alice")),
            Some(("FORBIDDEN", "not_your_account")),
        ),
        (Some(token("bob")), None),
    ] {
        let before = f.backends.limits.received();
        let mut ws = Client::connect(&url, token.as_deref()).await;
        ws.subscribe("q", QUOTE_BOB, json!({})).await;
        let next = ws.recv().await;
        assert_eq!(next["type"], "next", "{next}");
        let payload = &next["payload"];
        match expected {
            Some((code, reason)) => {
                withheld(payload, code, reason);
                assert_eq!(f.backends.limits.received(), before, "{payload}");
            }
            None => {
                assert_eq!(
                    payload["data"]["quote"]["remainingLimit"], "990",
                    "{payload}"
                );
                assert_eq!(f.backends.limits.received(), before + 1);
            }
        }
        ws.close().await;
    }
}

#[tokio::test]
async fn v2_quotes_for_the_signed_in_user_only() {
    let f = fixture().await;
    let query = r#"{ quote(from: "EUR", to: "USD", amount: "100") { remainingLimit { amount } } }"#;
    let r = reqwest::Client::new()
        .post(format!("{}/v2/graphql", f.gateway.url()))
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("request");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    assert_eq!(f.backends.limits.received(), 0);
    let r = reqwest::Client::new()
        .post(format!("{}/v2/graphql", f.gateway.url()))
        .bearer_auth(token("bob"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("request");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(
        body["data"]["quote"]["remainingLimit"]["amount"], "990",
        "{body}"
    );
}
