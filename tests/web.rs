//! bff-web end to end through the launcher: composed queries for a signed-in user, the convert
//! mutation delivering the conversion event to that user's subscription (and to nobody else's),
//! and rates subscriptions sharing ONE upstream subscription at the exchange service.

mod common;

use std::time::Duration;

use common::launcher::{exchange_stats, stack, token, ws_url};
use serde_json::{Value, json};
use switchyard::Stack;
use test_support::graphql_ws::Client;

async fn graphql(stack: &Stack, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/graphql", stack.url("bff-web")))
        .json(&json!({ "query": query }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

#[tokio::test]
async fn dashboard_composes_limit_rates_and_recent_conversions_for_the_signed_in_user() {
    let stack = stack(3_600_000).await;
    let alice = token("alice");
    let (status, body) = graphql(
        &stack,
        Some(&alice),
        r#"mutation { convert(from: "EUR", to: "USD", amount: "40.00") { id converted } }"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["convert"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let (status, body) = graphql(
        &stack,
        Some(&alice),
        r#"{ dashboard(pairs: ["EUR/USD", "GBP/USD"]) { user limit { used remaining } rates { pair rate } recent { id } } }"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let d = &body["data"]["dashboard"];
    assert_eq!(d["user"], "alice");
    assert_eq!(d["limit"]["used"], "40.00");
    assert_eq!(d["rates"][0]["pair"], "EUR/USD");
    assert_eq!(d["rates"][1]["pair"], "GBP/USD");
    let direct: Value = reqwest::get(format!("{}/v1/rates/GBP/USD", stack.url("exchange")))
        .await
        .expect("rate")
        .json()
        .await
        .expect("JSON");
    assert_eq!(d["rates"][1]["rate"], direct["rate"]);
    assert_eq!(d["recent"][0]["id"], id.as_str());

    // Without a token: refused, never another user's data.
    let (_, body) = graphql(&stack, None, r#"{ dashboard(pairs: []) { user } }"#).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    // A bad token is a 401.
    let (status, _) = graphql(&stack, Some("not-a-token"), "{ __typename }").await;
    assert_eq!(status, 401);
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_dashboard_part_whose_backend_fails_is_null_beside_the_rest() {
    let stack = stack(3_600_000).await;
    stack.stop_component("conversions");
    let (_, body) = graphql(
        &stack,
        Some(&token("alice")),
        r#"{ dashboard(pairs: ["EUR/USD"]) { limit { remaining } rates { rate } recent { id } } }"#,
    )
    .await;
    let d = &body["data"]["dashboard"];
    assert!(d["limit"]["remaining"].is_string(), "{body}");
    assert!(d["rates"][0]["rate"].is_string(), "{body}");
    assert_eq!(d["recent"], Value::Null);
    let err = &body["errors"][0];
    assert_eq!(err["path"], json!(["dashboard", "recent"]));
    assert_eq!(err["extensions"]["backend"], "conversions");
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn convert_reaches_the_users_subscription_and_nobody_elses() {
    let stack = stack(3_600_000).await;
    let (alice_t, bob_t) = (token("alice"), token("bob"));
    let mut alice = Client::connect(&ws_url(&stack), Some(&alice_t)).await;
    let mut bob = Client::connect(&ws_url(&stack), Some(&bob_t)).await;
    let sub = "subscription { conversions { id from to amount converted } }";
    alice.subscribe("mine", sub, json!({})).await;
    bob.subscribe("mine", sub, json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The mutation goes over HTTP, like a browser would send it.
    let (_, body) = graphql(
        &stack,
        Some(&alice_t),
        r#"mutation { convert(from: "EUR", to: "GBP", amount: "12.50") { id converted } }"#,
    )
    .await;
    let converted = &body["data"]["convert"];
    let event = alice.recv().await;
    assert_eq!(event["id"], "mine");
    assert_eq!(event["type"], "next");
    let got = &event["payload"]["data"]["conversions"];
    assert_eq!(got["id"], converted["id"], "{event}");
    assert_eq!(got["converted"], converted["converted"]);
    assert_eq!(got["amount"], "12.50");
    assert!(
        bob.recv_within(Duration::from_millis(500)).await.is_none(),
        "bob must not receive alice's conversion"
    );

    // A refused conversion (over the limit) publishes nothing.
    let (_, body) = graphql(
        &stack,
        Some(&alice_t),
        r#"mutation { convert(from: "EUR", to: "GBP", amount: "999999.00") { id } }"#,
    )
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "limit_exceeded",
        "{body}"
    );
    assert!(
        alice
            .recv_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn many_rate_subscribers_share_one_upstream_subscription_released_by_the_last() {
    let stack = stack(20).await;
    let query = r#"subscription ($p: [String!]!) { rates(pairs: $p) { pair rate seq } }"#;
    let mut clients = Vec::new();
    for i in 0..30 {
        let mut c = Client::connect(&ws_url(&stack), None).await;
        c.subscribe(&format!("r{i}"), query, json!({"p": ["EUR/USD"]}))
            .await;
        clients.push(c);
    }
    for c in &mut clients {
        let tick = c.recv().await;
        assert_eq!(
            tick["payload"]["data"]["rates"]["pair"], "EUR/USD",
            "{tick}"
        );
    }
    let stats = exchange_stats(&stack).await;
    assert_eq!(stats["watchers"], json!({"EUR/USD": 1}), "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");

    for c in clients {
        c.close().await;
    }
    let released = test_support::eventually(Duration::from_secs(5), || async {
        exchange_stats(&stack).await["watchers"] == json!({})
    })
    .await;
    assert!(released, "{}", exchange_stats(&stack).await);
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn v1_and_v2_are_served_side_by_side() {
    let stack = stack(3_600_000).await;
    let alice = token("alice");
    let post = |version: &'static str, query: &'static str| {
        let url = format!("{}/{version}/graphql", stack.url("bff-web"));
        let alice = alice.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(alice)
                .json(&json!({ "query": query }))
                .send()
                .await
                .expect("request")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let v1 = post(
        "v1",
        r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "10") { converted remainingLimit } }"#,
    )
    .await;
    let v2 = post(
        "v2",
        r#"{ quote(from: "EUR", to: "USD", amount: "10") { converted { amount currency } remainingLimit { amount currency } } }"#,
    )
    .await;
    let (q1, q2) = (&v1["data"]["quote"], &v2["data"]["quote"]);
    assert!(q1["converted"].is_string(), "{v1}");
    assert_eq!(q2["converted"]["amount"], q1["converted"], "{v2}");
    assert_eq!(q2["converted"]["currency"], "USD");
    assert_eq!(q2["remainingLimit"]["amount"], q1["remainingLimit"]);
    // A v1 query shape is invalid on v2 (money is structured there), and the other way round.
    let wrong = post(
        "v2",
        r#"{ quote(from: "EUR", to: "USD", amount: "10") { converted } }"#,
    )
    .await;
    assert!(wrong["errors"].is_array(), "{wrong}");

    // Subscriptions work on /v2 too, with v2 shapes.
    let url = format!("ws://{}/v2/graphql", stack.addr("bff-web"));
    let mut ws = Client::connect(&url, Some(&alice)).await;
    ws.subscribe(
        "c",
        "subscription { conversions { id converted { amount currency } } }",
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let converted = post(
        "v2",
        r#"mutation { convert(from: "GBP", to: "JPY", amount: "3") { id converted { amount currency } } }"#,
    )
    .await;
    let event = ws.recv().await;
    assert_eq!(
        event["payload"]["data"]["conversions"]["converted"],
        converted["data"]["convert"]["converted"],
        "{event}"
    );
    assert_eq!(
        event["payload"]["data"]["conversions"]["converted"]["currency"],
        "JPY"
    );
    stack.stop().await.expect("clean stop");
}
