//! The whole stack through the launcher: health of every component, the quote through each
//! gateway against the services' own answers, and a backend going down mid-flight.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::{COMPONENTS, Config, Stack};

/// A stack whose exchange rate does not move during a test (one tick an hour).
async fn stack() -> Stack {
    common::launcher::stack(3_600_000).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

/// A demo token for `user` (the quote's limit is only given to its own user).
fn bearer(user: &str) -> String {
    format!("Bearer {}", common::launcher::token(user))
}

/// GETs `url` as `user` (`Authorization: Bearer`).
async fn get_json_as(user: &str, url: &str) -> (u16, Value) {
    let r = client()
        .get(url)
        .header("authorization", bearer(user))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

/// POSTs a GraphQL query to bff-web's /v1, signed in as alice.
async fn graphql(stack: &Stack, query: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{}/v1/graphql", stack.url("bff-web")))
        .header("authorization", bearer("alice"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

const QUOTE: &str = r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "250.50") { pair rate converted remainingLimit withinLimit } }"#;

#[tokio::test]
async fn every_component_answers_healthz_and_gateways_are_ready() {
    let stack = stack().await;
    for c in COMPONENTS {
        let (status, body) = get_json(&format!("{}/healthz", stack.url(c))).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(body["status"], "ok", "{c}");
    }
    for g in ["bff-web", "bff-mobile", "bff-device"] {
        let (status, body) = get_json(&format!("{}/readyz", stack.url(g))).await;
        assert_eq!(status, 200, "{g}: {body}");
        assert_eq!(body["checks"]["exchange"], "ok");
        assert_eq!(body["checks"]["bus"], "ok");
    }
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn quote_through_each_gateway_equals_the_services_direct_answers() {
    let stack = stack().await;
    let (_, rate) = get_json(&format!("{}/v1/rates/EUR/USD", stack.url("exchange"))).await;
    let (_, limit) = get_json(&format!("{}/v1/limits/alice", stack.url("limits"))).await;
    let rate_d: demo_api::Decimal = rate["rate"]
        .as_str()
        .expect("rate")
        .parse()
        .expect("decimal");
    let amount: demo_api::Decimal = "250.50".parse().expect("decimal");
    let converted = demo_api::round_money(amount * rate_d).to_string();
    let remaining = limit["remaining"].as_str().expect("remaining").to_owned();

    let (status, body) = graphql(&stack, QUOTE).await;
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let q = &body["data"]["quote"];
    assert_eq!(q["pair"], "EUR/USD");
    assert_eq!(q["rate"], rate["rate"]);
    assert_eq!(q["converted"], converted.as_str());
    assert_eq!(q["remainingLimit"], remaining.as_str());
    assert_eq!(q["withinLimit"], true);

    for g in ["bff-mobile", "bff-device"] {
        let (status, q) = get_json_as(
            "alice",
            &format!(
                "{}/v1/quote?user=alice&from=EUR&to=USD&amount=250.50",
                stack.url(g)
            ),
        )
        .await;
        assert_eq!(status, 200, "{g}: {q}");
        let text = q.to_string();
        assert!(
            text.contains(rate["rate"].as_str().expect("rate")),
            "{g}: {q}"
        );
        assert!(text.contains(&format!("\"{converted}\"")), "{g}: {q}");
        if g == "bff-mobile" {
            assert_eq!(q["remaining_limit"], remaining.as_str(), "{q}");
        } else {
            // A device is not a user: it never sees a user's limit.
            assert_eq!(q["l"], Value::Null, "{q}");
            assert_eq!(q["e"], json!([{"b": "limits", "k": "not_a_user"}]), "{q}");
        }
    }

    // Anonymous callers get the rate, never the limit.
    let r = client()
        .post(format!("{}/v1/graphql", stack.url("bff-web")))
        .json(&json!({ "query": QUOTE }))
        .send()
        .await
        .expect("request");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["data"]["quote"]["rate"], rate["rate"], "{body}");
    assert_eq!(
        body["data"]["quote"]["remainingLimit"],
        Value::Null,
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    let (status, q) = get_json(&format!(
        "{}/v1/quote?user=alice&from=EUR&to=USD&amount=250.50",
        stack.url("bff-mobile")
    ))
    .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["remaining_limit"], Value::Null, "{q}");
    assert_eq!(q["errors"][0]["code"], "unauthenticated", "{q}");
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn invalid_input_is_a_clear_error_through_every_gateway() {
    let stack = stack().await;
    let (status, body) = graphql(
        &stack,
        r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "-3") { rate } }"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "invalid_amount",
        "{body}"
    );
    for g in ["bff-mobile", "bff-device"] {
        let (status, body) = get_json(&format!(
            "{}/v1/quote?user=alice&from=EUR&to=XXX&amount=1",
            stack.url(g)
        ))
        .await;
        assert_eq!(status, 400, "{g}");
        assert_eq!(body["error"]["code"], "invalid_currency", "{g}: {body}");
        let (status, body) = get_json(&format!("{}/v1/quote?user=alice", stack.url(g))).await;
        assert_eq!(status, 400, "{g}");
        assert_eq!(body["error"]["code"], "invalid_request", "{g}: {body}");
    }
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn with_exchange_stopped_the_quote_names_exchange_within_its_deadline() {
    let stack = stack().await;
    stack.stop_component("exchange");
    // Wait until the exchange listener is really closed.
    let exchange = stack.url("exchange");
    assert!(
        test_support::eventually(Duration::from_secs(5), || {
            let url = format!("{exchange}/healthz");
            async move { client().get(url).send().await.is_err() }
        })
        .await
    );
    let deadline = Duration::from_millis(1_500); // operations::Config::default()

    let started = Instant::now();
    let (status, body) = graphql(&stack, QUOTE).await;
    assert!(started.elapsed() < deadline + Duration::from_millis(500));
    assert_eq!(status, 200);
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["backend"], "exchange",
        "{body}"
    );
    assert_eq!(body["errors"][0]["path"], json!(["quote"]), "{body}");

    for g in ["bff-mobile", "bff-device"] {
        let started = Instant::now();
        let (status, body) = get_json(&format!(
            "{}/v1/quote?user=alice&from=EUR&to=USD&amount=1",
            stack.url(g)
        ))
        .await;
        assert!(
            started.elapsed() < deadline + Duration::from_millis(500),
            "{g}"
        );
        assert_eq!(status, 502, "{g}: {body}");
        assert_eq!(body["error"]["backend"], "exchange", "{g}: {body}");
    }

    // The gateways keep serving other requests.
    for g in ["bff-web", "bff-mobile", "bff-device"] {
        let (status, body) = get_json(&format!("{}/readyz", stack.url(g))).await;
        assert_eq!(status, 503, "{g} is not ready without exchange: {body}");
        assert_ne!(body["checks"]["exchange"], "ok");
        assert_eq!(body["checks"]["limits"], "ok");
        let (status, _) = get_json(&format!("{}/healthz", stack.url(g))).await;
        assert_eq!(status, 200);
    }
    let (status, body) = graphql(&stack, "{ __typename }").await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query"))
    );
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_failed_optional_part_is_data_beside_the_rest() {
    let stack = stack().await;
    stack.stop_component("limits");
    let limits = stack.url("limits");
    assert!(
        test_support::eventually(Duration::from_secs(5), || {
            let url = format!("{limits}/healthz");
            async move { client().get(url).send().await.is_err() }
        })
        .await
    );
    let (status, body) = graphql(&stack, QUOTE).await;
    assert_eq!(status, 200);
    let q = &body["data"]["quote"];
    assert_eq!(q["pair"], "EUR/USD", "{body}");
    assert!(q["rate"].is_string(), "{body}");
    assert_eq!(q["remainingLimit"], Value::Null);
    let err = &body["errors"][0];
    assert_eq!(err["path"], json!(["quote", "remainingLimit"]), "{body}");
    assert_eq!(err["extensions"]["backend"], "limits", "{body}");

    let quote = |g| {
        format!(
            "{}/v1/quote?user=alice&from=EUR&to=USD&amount=1",
            stack.url(g)
        )
    };
    let (status, body) = get_json_as("alice", &quote("bff-mobile")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["remaining_limit"], Value::Null);
    assert_eq!(body["errors"][0]["backend"], "limits", "{body}");
    // A device never sees a limit; with limits down its quote is unchanged.
    let (status, body) = get_json(&quote("bff-device")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["l"], Value::Null);
    assert_eq!(body["e"][0]["b"], "limits", "{body}");
    assert_eq!(body["e"][0]["k"], "not_a_user", "{body}");
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_demo_device_polls_rates_fed_from_the_exchange_and_gets_commands() {
    let mut config = Config::ephemeral();
    // Ticks often enough that the exchange's source feeds a rate quickly.
    config.exchange.tick_interval_ms = 50;
    let stack = Stack::start(config).await.expect("stack starts");
    let events = format!(
        "{}/v1/devices/{}/events",
        stack.url("bff-device"),
        switchyard::DEMO_DEVICE
    );
    let poll = |cursor: Option<String>| {
        let events = events.clone();
        async move {
            let mut req = client()
                .get(&events)
                .header("x-device-key", switchyard::DEMO_DEVICE_KEY)
                .query(&[("wait", "5")]);
            if let Some(c) = cursor {
                req = req.query(&[("cursor", c)]);
            }
            let r = req.send().await.expect("poll");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("JSON body")
        }
    };
    // The first poll starts the one hub subscription for EUR/USD, which starts the source.
    let mut cursor = None;
    let mut rate = None;
    let end = Instant::now() + Duration::from_secs(20);
    while rate.is_none() && Instant::now() < end {
        let v = poll(cursor.clone()).await;
        cursor = v["n"].as_str().map(str::to_owned);
        rate = v["e"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["t"] == "r").cloned());
    }
    let rate = rate.expect("a rate reached the device through the exchange's source");
    assert_eq!(rate["p"], "EUR/USD");
    // A command through the admin API reaches the device through the poll.
    let sent = client()
        .post(format!(
            "{}/admin/devices/{}/commands",
            stack.url("bff-device"),
            switchyard::DEMO_DEVICE
        ))
        .bearer_auth(switchyard::DEMO_ADMIN_TOKEN)
        .json(&json!({"op": "reboot"}))
        .send()
        .await
        .expect("command");
    assert_eq!(sent.status(), 202);
    let mut got = false;
    while !got && Instant::now() < end {
        let v = poll(cursor.clone()).await;
        cursor = v["n"].as_str().map(str::to_owned);
        got = v["e"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["t"] == "c" && e["o"] == "reboot"));
    }
    assert!(got, "the command reached the device");
    stack.stop().await.expect("clean stop");
}
