//! `Idempotency-Key` on the publish API, on every bus (memory, and the real Redis and NATS of this
//! machine, each on a fresh prefix): a retried publish lands once and is answered with the first
//! publish's position; another key, another publisher or another channel publishes again; a
//! batch retried with its key lands each event once; a bad key is 400 and publishes nothing.

// The fixture is shared with `publish.rs`, which uses the helpers this file does not.
#[allow(dead_code)]
#[path = "publish/gateway.rs"]
mod gateway;

use serde_json::{Value, json};

use gateway::{Gateway, KEY_OPS, KEY_ORDERS};

/// The `[bus]` section of `kind` on a fresh prefix.
fn bus(kind: &str) -> String {
    let prefix = test_support::unique_name("pubonce").replace('_', "-");
    let prefix: String = prefix.chars().take(64).collect();
    match kind {
        "memory" => String::new(),
        kind => format!("[bus]\nkind = \"{kind}\"\nprefix = \"{prefix}\"\n"),
    }
}

async fn publish(
    gw: &Gateway,
    key: &str,
    idempotency: Option<&str>,
    path: &str,
    body: &Value,
) -> test_support::http::Answer {
    let mut request = gw
        .client
        .post(gw.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = idempotency {
        request = request.header("idempotency-key", k);
    }
    test_support::http::answer(request.send().await.expect("the publish API answers")).await
}

async fn retried_publishes_land_once(kind: &str) {
    let gw = Gateway::start(&bus(kind)).await;
    let one = json!({"channel": "announcements", "data": {"n": 1}});
    let first = publish(&gw, KEY_ORDERS, Some("order-7"), "/v1/publish", &one).await;
    assert_eq!(first.status, 200, "{kind}: {}", first.body);
    let first = first.json();
    assert_eq!(first["duplicate"], false, "{kind}: {first}");
    // The retry (even with another body: the key decides) publishes nothing and names the first.
    for body in [
        &one,
        &json!({"channel": "announcements", "data": {"n": 99}}),
    ] {
        let again = publish(&gw, KEY_ORDERS, Some("order-7"), "/v1/publish", body).await;
        assert_eq!(again.status, 200, "{kind}: {}", again.body);
        let again = again.json();
        assert_eq!(again["duplicate"], true, "{kind}: {again}");
        assert_eq!(
            (&again["epoch"], &again["offset"]),
            (&first["epoch"], &first["offset"]),
            "{kind}"
        );
    }
    assert_eq!(gw.head("announcements").await, 1, "{kind}: one event");
    // Another key, another publisher with the same key, the same key on another channel: new.
    let other_key = publish(&gw, KEY_ORDERS, Some("order-8"), "/v1/publish", &one).await;
    assert_eq!(
        other_key.json()["duplicate"],
        false,
        "{kind}: {}",
        other_key.body
    );
    let other_publisher = publish(&gw, KEY_OPS, Some("order-7"), "/v1/publish", &one).await;
    assert_eq!(
        other_publisher.json()["duplicate"],
        false,
        "{kind}: {}",
        other_publisher.body
    );
    let other_channel = json!({"channel": "orders.bob", "data": 1});
    let a = publish(
        &gw,
        KEY_ORDERS,
        Some("order-7"),
        "/v1/publish",
        &other_channel,
    )
    .await;
    assert_eq!(a.json()["duplicate"], false, "{kind}: {}", a.body);
    assert_eq!(gw.head("announcements").await, 3, "{kind}");
    assert_eq!(gw.head("orders.bob").await, 1, "{kind}");
    // Without a key nothing is remembered: two publishes, two events, no `duplicate` key.
    let plain = publish(&gw, KEY_ORDERS, None, "/v1/publish", &one)
        .await
        .json();
    assert!(plain.get("duplicate").is_none(), "{kind}: {plain}");
    publish(&gw, KEY_ORDERS, None, "/v1/publish", &one).await;
    assert_eq!(gw.head("announcements").await, 5, "{kind}");

    // A batch retried with its key lands each of its events once, at the same positions.
    let batch = json!({"events": [
        {"channel": "announcements", "data": "a"},
        {"channel": "announcements", "data": "b"},
    ]});
    let first = publish(
        &gw,
        KEY_ORDERS,
        Some("batch-1"),
        "/v1/publish/batch",
        &batch,
    )
    .await;
    assert_eq!(first.status, 200, "{kind}: {}", first.body);
    let again = publish(
        &gw,
        KEY_ORDERS,
        Some("batch-1"),
        "/v1/publish/batch",
        &batch,
    )
    .await;
    assert_eq!(again.status, 200, "{kind}: {}", again.body);
    let (first, again) = (first.json(), again.json());
    for i in 0..2 {
        assert_eq!(first["results"][i]["duplicate"], false, "{kind}: {first}");
        assert_eq!(again["results"][i]["duplicate"], true, "{kind}: {again}");
        assert_eq!(
            first["results"][i]["offset"], again["results"][i]["offset"],
            "{kind}"
        );
    }
    assert_eq!(gw.head("announcements").await, 7, "{kind}");

    // A bad key is refused before anything is published.
    for bad in ["has space", "é", &"k".repeat(129)] {
        let a = gw
            .client
            .post(gw.url("/v1/publish"))
            .bearer_auth(KEY_ORDERS)
            .header("idempotency-key", bad.as_bytes())
            .body(one.to_string())
            .send()
            .await
            .expect("answers");
        let a = test_support::http::answer(a).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "bad_request"),
            "{kind} {bad:?}: {}",
            a.body
        );
    }
    assert_eq!(gw.head("announcements").await, 7, "{kind}");
    gw.stop().await;
}

#[tokio::test]
async fn memory() {
    retried_publishes_land_once("memory").await;
}

#[tokio::test]
async fn redis() {
    retried_publishes_land_once("redis").await;
}

#[tokio::test]
async fn nats() {
    retried_publishes_land_once("nats").await;
}
