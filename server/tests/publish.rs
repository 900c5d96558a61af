//! The publish API over real HTTP on loopback, served by a gateway's runtime (a test gateway
//! made with `gateway_config!`): every answer, the event on the bus at the answered position,
//! batches all or nothing, and 503 from a bus whose broker is not there.

#[path = "publish/gateway.rs"]
mod gateway;

use axum::Router;
use serde_json::{Value, json};
use switchyard_server::server::CancellationToken;

use gateway::{Gateway, KEY_OPS, KEY_ORDERS};

#[tokio::test]
async fn a_publish_is_answered_with_the_position_the_bus_gave_it() {
    let gw = Gateway::start("").await;
    let data =
        json!({"id": 7, "total": "12.50", "big": 123456789012345678901234567890u128.to_string()});
    let a = gw
        .post(
            "/v1/publish",
            KEY_ORDERS,
            &json!({"channel": "orders.bob", "data": data}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["channel"], "orders.bob");
    let (epoch, offset) = position(&v);
    assert_eq!(offset, 1);
    // A second one follows it, in the same epoch.
    let raw = "{ \"n\" : [1, 2.50, 123456789012345678901234567890] }";
    let a = gw
        .post_raw(
            "/v1/publish",
            Some(KEY_ORDERS),
            format!("{{\"channel\": \"orders.bob\", \"data\": {raw}}}"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(position(&a.json()), (epoch, 2));
    let events = gw.read("orders.bob", epoch, 0).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        serde_json::from_slice::<Value>(&events[0].payload).expect("JSON payload"),
        data
    );
    // Stored as the compact text sent: every digit kept.
    assert_eq!(
        &events[1].payload[..],
        br#"{"n":[1,2.50,123456789012345678901234567890]}"#
    );
    assert_eq!((events[1].epoch, events[1].offset), (epoch, 2));
    gw.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_code_and_publishes_nothing() {
    let gw = Gateway::start("").await;
    let ok = |channel: &str| json!({"channel": channel, "data": {"x": 1}});
    for (what, key, body, status, code) in [
        (
            "no key",
            None,
            ok("orders.bob").to_string(),
            401,
            "unauthorized",
        ),
        (
            "unknown key",
            Some("not-a-key-of-anyone"),
            ok("orders.bob").to_string(),
            401,
            "unauthorized",
        ),
        (
            "a forbidden channel",
            Some(KEY_OPS),
            ok("orders.bob").to_string(),
            403,
            "forbidden",
        ),
        (
            "no publishers",
            Some(KEY_ORDERS),
            ok("audit").to_string(),
            403,
            "forbidden",
        ),
        (
            "malformed JSON",
            Some(KEY_ORDERS),
            "{\"channel\": ".to_owned(),
            400,
            "bad_request",
        ),
        (
            "trailing text",
            Some(KEY_ORDERS),
            format!("{} x", ok("orders.bob")),
            400,
            "bad_request",
        ),
        (
            "no data",
            Some(KEY_ORDERS),
            json!({"channel": "orders.bob"}).to_string(),
            400,
            "bad_request",
        ),
        (
            "no channel",
            Some(KEY_ORDERS),
            json!({"data": 1}).to_string(),
            400,
            "bad_request",
        ),
        (
            "an unknown field",
            Some(KEY_ORDERS),
            json!({"channel": "orders.bob", "data": 1, "ttl": 5}).to_string(),
            400,
            "bad_request",
        ),
        (
            "a wildcard",
            Some(KEY_ORDERS),
            ok("orders.*").to_string(),
            400,
            "bad_request",
        ),
        (
            "a bad name",
            Some(KEY_ORDERS),
            ok("orders..bob").to_string(),
            400,
            "bad_request",
        ),
        (
            "a bus topic",
            Some(KEY_ORDERS),
            ok("ch:orders.bob").to_string(),
            400,
            "bad_request",
        ),
        (
            "not in the catalog",
            Some(KEY_ORDERS),
            ok("invoices.bob").to_string(),
            400,
            "not_in_catalog",
        ),
        (
            "not in the catalog either",
            Some(KEY_ORDERS),
            ok("orders.bob.extra").to_string(),
            400,
            "not_in_catalog",
        ),
        (
            "data over the channel's max",
            Some(KEY_ORDERS),
            json!({"channel": "orders.bob", "data": "x".repeat(63)}).to_string(),
            413,
            "payload_too_large",
        ),
        (
            "a body over max_body_bytes",
            Some(KEY_ORDERS),
            json!({"channel": "announcements", "data": "x".repeat(5000)}).to_string(),
            413,
            "payload_too_large",
        ),
    ] {
        let a = gw.post_raw("/v1/publish", key, body).await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert_eq!(a.code(), code, "{what}: {}", a.body);
        assert!(
            a.json()["error"]["message"].is_string(),
            "{what}: {}",
            a.body
        );
        if status == 401 {
            assert_eq!(a.headers["www-authenticate"], "Bearer", "{what}");
        }
    }
    let a = test_support::http::answer(
        gw.client
            .post(gw.url("/v1/publish"))
            .bearer_auth(KEY_ORDERS)
            .header("idempotency-key", "two words")
            .body(ok("orders.bob").to_string())
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "bad_request"),
        "{}",
        a.body
    );
    // The 64-byte limit counts the compact text: 62 x's and two quotes is exactly it.
    let a = gw
        .post(
            "/v1/publish",
            KEY_ORDERS,
            &json!({"channel": "orders.bob", "data": "x".repeat(62)}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    for channel in ["orders.bob", "announcements", "audit"] {
        let head = gw.head(channel).await;
        let want = u64::from(channel == "orders.bob");
        assert_eq!(head, want, "{channel}: only the good publish landed");
    }
    gw.stop().await;
}

#[tokio::test]
async fn other_paths_and_methods_get_json_errors() {
    let gw = Gateway::start("").await;
    let a = gw
        .post_raw("/v1/publishes", Some(KEY_ORDERS), "{}".into())
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (404, "not_found"),
        "{}",
        a.body
    );
    let a = gw.post_raw("/", None, String::new()).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (404, "not_found"),
        "{}",
        a.body
    );
    let a = test_support::http::answer(
        gw.client
            .get(gw.url("/v1/publish"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (405, "method_not_allowed"),
        "{}",
        a.body
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_batch_is_checked_whole_then_published_in_order() {
    let gw = Gateway::start("").await;
    let item = |channel: &str, n: u64| json!({"channel": channel, "data": {"n": n}});
    // A bad item anywhere refuses the whole batch, naming it; nothing lands.
    for (events, status, code, index) in [
        (
            vec![item("announcements", 1), item("orders.*", 2)],
            400,
            "bad_request",
            1,
        ),
        (
            vec![item("announcements", 1), item("invoices", 2)],
            400,
            "not_in_catalog",
            1,
        ),
        (
            vec![
                item("announcements", 1),
                item("announcements", 2),
                item("audit", 3),
            ],
            403,
            "forbidden",
            2,
        ),
        (
            vec![
                item("orders.bob", 1),
                json!({"channel": "orders.bob", "data": "y".repeat(80)}),
            ],
            413,
            "payload_too_large",
            1,
        ),
        (
            vec![
                item("announcements", 1),
                json!({"channel": "announcements"}),
            ],
            400,
            "bad_request",
            1,
        ),
    ] {
        let a = gw
            .post("/v1/publish/batch", KEY_ORDERS, &json!({"events": events}))
            .await;
        assert_eq!((a.status, a.code().as_str()), (status, code), "{}", a.body);
        let v = a.json();
        assert_eq!(v["error"]["index"], index, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains(&format!("events[{index}]")),
            "{v}"
        );
        assert!(v.get("results").is_none(), "{v}");
    }
    let four: Vec<Value> = (1..=4).map(|n| item("announcements", n)).collect();
    let a = gw
        .post("/v1/publish/batch", KEY_ORDERS, &json!({"events": four}))
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (413, "payload_too_large"),
        "over max_batch: {}",
        a.body
    );
    let a = gw
        .post("/v1/publish/batch", KEY_ORDERS, &json!({"events": []}))
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "bad_request"),
        "{}",
        a.body
    );
    let a = gw
        .post_raw(
            "/v1/publish/batch",
            None,
            json!({"events": [item("announcements", 1)]}).to_string(),
        )
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    for channel in ["announcements", "orders.bob"] {
        assert_eq!(
            gw.head(channel).await,
            0,
            "{channel}: nothing published by a refused batch"
        );
    }

    // A good batch: published in order, each answered with its position.
    let events = vec![
        item("announcements", 1),
        item("orders.bob", 2),
        item("announcements", 3),
    ];
    let a = gw
        .post("/v1/publish/batch", KEY_ORDERS, &json!({"events": events}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let results = a.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 3);
    let channels: Vec<&str> = results
        .iter()
        .map(|r| r["channel"].as_str().expect("channel"))
        .collect();
    assert_eq!(channels, ["announcements", "orders.bob", "announcements"]);
    let offsets: Vec<u64> = results.iter().map(|r| position(r).1).collect();
    assert_eq!(offsets, [1, 1, 2]);
    let (epoch, _) = position(&results[0]);
    let on_bus = gw.read("announcements", epoch, 0).await;
    let ns: Vec<Value> = on_bus
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).expect("JSON"))
        .collect();
    assert_eq!(ns, [json!({"n": 1}), json!({"n": 3})]);
    gw.stop().await;
}

#[tokio::test]
async fn a_bus_that_is_not_there_is_503_bus_unavailable_with_nothing_answered_as_landed() {
    // Redis on a closed port: every publish fails, after the bus's operation timeout at most.
    let gw = Gateway::start(
        "[bus]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nconnect_timeout_ms = 300\noperation_timeout_ms = 300\n",
    )
    .await;
    let a = gw
        .post(
            "/v1/publish",
            KEY_ORDERS,
            &json!({"channel": "announcements", "data": 1}),
        )
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "bus_unavailable"),
        "{}",
        a.body
    );
    let events = json!({"events": [
        {"channel": "announcements", "data": 1},
        {"channel": "announcements", "data": 2},
    ]});
    let a = gw.post("/v1/publish/batch", KEY_ORDERS, &events).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "bus_unavailable"),
        "{}",
        a.body
    );
    let v = a.json();
    assert_eq!(v["error"]["index"], 0, "{v}");
    assert_eq!(v["results"], json!([]), "{v}");
    // The refusals come before the bus: still 401 and 400 without it.
    let a = gw.post_raw("/v1/publish", None, "{}".into()).await;
    assert_eq!(a.status, 401);
    let a = gw
        .post_raw("/v1/publish", Some(KEY_ORDERS), "{".into())
        .await;
    assert_eq!(a.status, 400);
    gw.stop().await;
}

#[tokio::test]
async fn a_publish_listener_that_cannot_bind_stops_the_start_naming_the_key() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let runtime = gateway::runtime(
        &gateway::config("", &addr.to_string()),
        CancellationToken::new(),
    );
    let main = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = runtime
        .serve(main, Router::new())
        .await
        .expect_err("the address is taken")
        .to_string();
    assert!(err.contains("publish.listen"), "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn without_publish_listen_a_gateway_serves_no_publish_api() {
    let runtime = gateway::runtime(&gateway::config("", ""), CancellationToken::new());
    assert!(
        runtime
            .bind_publish()
            .await
            .expect("nothing to bind")
            .is_none()
    );
}

fn position(v: &Value) -> (u64, u64) {
    let epoch = v["epoch"]
        .as_str()
        .expect("epoch is a string")
        .parse()
        .expect("u64");
    let offset = v["offset"]
        .as_str()
        .expect("offset is a string")
        .parse()
        .expect("u64");
    (epoch, offset)
}

#[tokio::test]
async fn every_call_is_counted_by_publisher_and_outcome() {
    let gw = Gateway::start("").await;
    for _ in 0..2 {
        let a = gw
            .post(
                "/v1/publish",
                KEY_ORDERS,
                &json!({"channel": "orders.bob", "data": 1}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = gw
        .post(
            "/v1/publish",
            KEY_OPS,
            &json!({"channel": "orders.bob", "data": 1}),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = gw
        .post(
            "/v1/publish/batch",
            KEY_OPS,
            &json!({"events": [{"channel": "announcements", "data": 1}]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = gw
        .post(
            "/v1/publish",
            "not-a-key-of-anyone",
            &json!({"channel": "announcements", "data": 1}),
        )
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    let text = gw.metrics.render();
    let count = |publisher: &str, outcome: &str| {
        let series = format!(
            r#"switchyard_publish_calls_total{{gateway="test-gateway",publisher="{publisher}",outcome="{outcome}"}} "#
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"));
        line[series.len()..].parse::<u64>().expect("a count")
    };
    assert_eq!(count("orders", "ok"), 2);
    assert_eq!(count("ops", "forbidden"), 1);
    assert_eq!(count("ops", "ok"), 1);
    assert_eq!(count("unknown", "unauthorized"), 1);
    assert_eq!(count("orders", "forbidden"), 0);
    gw.stop().await;
}
