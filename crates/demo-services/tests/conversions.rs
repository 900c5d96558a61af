//! The conversions service with the real limits and exchange services and an in-memory bus:
//! exact conversions, one event per conversion, none for a refusal, and upstream failures.

use std::sync::Arc;
use std::time::Duration;

use demo_api::{
    CONVERSION_COMPLETED, Conversion, ConversionEvent, ConversionList, Decimal, Limit, Rate,
    UserId, conversions_topic, round_money,
};
use demo_services::{conversions, exchange, limits};
use futures::StreamExt;
use serde_json::json;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, Delivery, Read, StartAt};
use switchyard_core::event::{Position, Topic};
use switchyard_core::upstream::{BackendConfig, RetryConfig};
use test_support::http::{client, json};
use test_support::instance::Instance;

/// The three services and the bus the conversions service publishes on.
struct Demo {
    limits: Option<Instance<anyhow::Error>>,
    exchange: Option<Instance<anyhow::Error>>,
    conversions: Instance<anyhow::Error>,
    bus: Arc<MemoryBus>,
}

fn d(s: &str) -> Decimal {
    s.parse().expect("a decimal")
}

fn backend(url: String) -> BackendConfig {
    BackendConfig {
        retry: RetryConfig {
            max_attempts: 2,
            initial_backoff_ms: 5,
            max_backoff_ms: 10,
        },
        ..BackendConfig::new(url)
    }
}

async fn demo() -> Demo {
    let limits_config = limits::Config {
        default_daily_limit: d("1000.00"),
        users: [("poor".to_owned(), d("10.00"))].into(),
        ..limits::Config::default()
    };
    let limits = Instance::start("limits", move |l, s| limits::run(limits_config, l, s)).await;
    let exchange_config = exchange::Config {
        // No tick during a test: the rate read before a conversion is the one it uses.
        tick_interval_ms: 3_600_000,
        ..exchange::Config::default()
    };
    let exchange =
        Instance::start("exchange", move |l, s| exchange::run(exchange_config, l, s)).await;
    let bus = Arc::new(MemoryBus::new(100));
    let config = conversions::Config {
        backends: [
            ("limits".to_owned(), backend(limits.url(""))),
            ("exchange".to_owned(), backend(exchange.url(""))),
        ]
        .into(),
        deadline_ms: 2_000,
        ..conversions::Config::default()
    };
    let shared: Arc<dyn Bus> = bus.clone();
    let conversions = Instance::start("conversions", move |l, s| {
        conversions::run(config, shared, l, s)
    })
    .await;
    Demo {
        limits: Some(limits),
        exchange: Some(exchange),
        conversions,
        bus,
    }
}

impl Demo {
    async fn convert(
        &self,
        user: &str,
        from: &str,
        to: &str,
        amount: &str,
    ) -> (u16, serde_json::Value) {
        let body = json!({"user": user, "from": from, "to": to, "amount": amount});
        self.post(body.to_string()).await
    }

    async fn post(&self, body: String) -> (u16, serde_json::Value) {
        let response = client()
            .post(self.conversions.url("/v1/conversions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("conversions answers");
        json(response).await
    }

    async fn rate(&self, from: &str, to: &str) -> Rate {
        let exchange = self.exchange.as_ref().expect("exchange is running");
        client()
            .get(exchange.url(&format!("/v1/rates/{from}/{to}")))
            .send()
            .await
            .expect("exchange answers")
            .json()
            .await
            .expect("a Rate")
    }

    async fn used(&self, user: &str) -> Decimal {
        let limits = self.limits.as_ref().expect("limits is running");
        let limit: Limit = client()
            .get(limits.url(&format!("/v1/limits/{user}")))
            .send()
            .await
            .expect("limits answers")
            .json()
            .await
            .expect("a Limit");
        limit.used
    }

    async fn list(&self, query: &str) -> (u16, serde_json::Value) {
        let response = client()
            .get(self.conversions.url(&format!("/v1/conversions{query}")))
            .send()
            .await
            .expect("conversions answers");
        json(response).await
    }

    /// Every event retained on the user's topic.
    async fn events(&self, user: &str) -> Vec<ConversionEvent> {
        let start = Position {
            epoch: self.bus.epoch(),
            offset: 0,
        };
        match self
            .bus
            .read(&topic(user), start, 100)
            .await
            .expect("bus read")
        {
            Read::Events { events, .. } => events
                .iter()
                .map(|e| serde_json::from_slice(&e.payload).expect("a ConversionEvent"))
                .collect(),
            Read::Gap { .. } => panic!("no history was lost"),
        }
    }
}

fn topic(user: &str) -> Topic {
    Topic::new(&conversions_topic(&UserId::parse(user).unwrap())).unwrap()
}

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn a_conversion_is_exact_and_published_exactly_once() {
    let demo = demo().await;
    let mut live = demo
        .bus
        .subscribe(&topic("alice"), StartAt::Live)
        .await
        .unwrap();
    let rate = demo.rate("GBP", "JPY").await;

    let (status, body) = demo.convert("alice", "GBP", "JPY", "123.45").await;
    assert_eq!(status, 201, "{body}");
    let conversion: Conversion = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(conversion.user.as_str(), "alice");
    assert_eq!(
        (conversion.from.as_str(), conversion.to.as_str()),
        ("GBP", "JPY")
    );
    assert_eq!(conversion.amount, d("123.45"));
    assert_eq!(conversion.rate, rate.rate);
    assert_eq!(conversion.converted, round_money(d("123.45") * rate.rate));
    assert_eq!(conversion.converted.scale(), 2);
    assert_eq!(body["amount"], "123.45", "money is a JSON string");
    assert!(conversion.id.starts_with("cv-"), "{}", conversion.id);
    assert!(conversion.at.ends_with('Z'), "{}", conversion.at);

    let delivery = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("an event within 5 s")
        .expect("the subscription is open");
    let Delivery::Event(event) = delivery else {
        panic!("expected an event, got {delivery:?}");
    };
    assert_eq!(event.offset, 1);
    let published: ConversionEvent = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(
        published,
        ConversionEvent {
            kind: CONVERSION_COMPLETED.to_owned(),
            conversion: conversion.clone(),
        }
    );
    assert_eq!(demo.events("alice").await.len(), 1, "exactly one event");
    assert!(
        demo.events("bob").await.is_empty(),
        "only on the user's topic"
    );
    assert_eq!(demo.used("alice").await, d("123.45"));

    let (status, list) = demo.list("?user=alice").await;
    assert_eq!(status, 200);
    let list: ConversionList = serde_json::from_value(list).unwrap();
    assert_eq!(list.conversions, [conversion]);
}

#[tokio::test]
async fn over_the_limit_is_422_and_publishes_nothing() {
    let demo = demo().await;
    let (status, body) = demo.convert("poor", "EUR", "USD", "10.01").await;
    assert_eq!((status, code(&body)), (422, "limit_exceeded"), "{body}");
    assert!(demo.events("poor").await.is_empty());
    assert_eq!(demo.used("poor").await, Decimal::ZERO);
    let (_, list) = demo.list("?user=poor").await;
    assert_eq!(list["conversions"], json!([]));

    let (status, body) = demo.convert("poor", "EUR", "USD", "10.00").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = demo.convert("poor", "EUR", "USD", "0.01").await;
    assert_eq!((status, code(&body)), (422, "limit_exceeded"), "{body}");
    let events = demo.events("poor").await;
    assert_eq!(events.len(), 1, "only the accepted conversion is published");
    assert_eq!(events[0].conversion.amount, d("10.00"));
}

#[tokio::test]
async fn exchange_down_is_a_gateway_error_naming_it_and_consumes_nothing() {
    let mut demo = demo().await;
    demo.exchange.take().expect("running").stop().await;
    let (status, body) = demo.convert("carol", "EUR", "USD", "5.00").await;
    assert!(status == 502 || status == 504, "{status} {body}");
    let expected = if status == 502 {
        "upstream_error"
    } else {
        "upstream_timeout"
    };
    assert_eq!(code(&body), expected);
    assert_eq!(body["error"]["backend"], "exchange");
    assert_eq!(demo.used("carol").await, Decimal::ZERO);
    assert!(demo.events("carol").await.is_empty());

    let (status, body) = json(
        client()
            .get(demo.conversions.url("/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["limits"], "ok");
    assert_ne!(body["checks"]["exchange"], "ok");
}

#[tokio::test]
async fn limits_down_is_a_gateway_error_naming_it_and_publishes_nothing() {
    let mut demo = demo().await;
    demo.limits.take().expect("running").stop().await;
    let (status, body) = demo.convert("dave", "EUR", "USD", "5.00").await;
    assert!(status == 502 || status == 504, "{status} {body}");
    assert_eq!(body["error"]["backend"], "limits");
    assert!(demo.events("dave").await.is_empty());
    let (_, list) = demo.list("?user=dave").await;
    assert_eq!(list["conversions"], json!([]));
}

#[tokio::test]
async fn invalid_requests_are_400_with_their_codes_and_consume_nothing() {
    let demo = demo().await;
    let cases = [
        (
            json!({"user": "a b", "from": "EUR", "to": "USD", "amount": "1"}),
            "invalid_user",
        ),
        (
            json!({"user": "erin", "from": "XXX", "to": "USD", "amount": "1"}),
            "invalid_currency",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "usd", "amount": "1"}),
            "invalid_currency",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "EUR", "amount": "1"}),
            "invalid_pair",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "USD", "amount": "1.001"}),
            "invalid_amount",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "USD", "amount": "-5"}),
            "invalid_amount",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "USD", "amount": 5}),
            "invalid_request",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "USD"}),
            "invalid_request",
        ),
        (
            json!({"user": "erin", "from": "EUR", "to": "USD", "amount": "1", "memo": "x"}),
            "invalid_request",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = demo.post(body.to_string()).await;
        assert_eq!((status, code(&answer)), (400, expected), "{body}");
    }
    let (status, answer) = demo.post("{oops".to_owned()).await;
    assert_eq!((status, code(&answer)), (400, "invalid_request"));
    assert_eq!(demo.used("erin").await, Decimal::ZERO);
    assert!(demo.events("erin").await.is_empty());
}

#[tokio::test]
async fn the_list_is_most_recent_first_and_bounded() {
    let demo = demo().await;
    let mut ids = Vec::new();
    for amount in ["1.00", "2.00", "3.00"] {
        let (status, body) = demo.convert("fay", "USD", "CHF", amount).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, list) = demo.list("?user=fay&limit=2").await;
    assert_eq!(status, 200);
    let got: Vec<&str> = list["conversions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let (_, list) = demo.list("?user=fay").await;
    assert_eq!(list["conversions"].as_array().unwrap().len(), 3);
    assert_eq!(demo.events("fay").await.len(), 3);

    for (query, expected) in [
        ("?user=fay&limit=0", "invalid_limit"),
        ("?user=fay&limit=101", "invalid_limit"),
        ("?user=fay&limit=many", "invalid_request"),
        ("?user=bad%20user", "invalid_user"),
        ("", "invalid_request"),
        ("?user=fay&color=red", "invalid_request"),
    ] {
        let (status, body) = demo.list(query).await;
        assert_eq!((status, code(&body)), (400, expected), "{query}");
    }
}
