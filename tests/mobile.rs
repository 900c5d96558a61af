//! bff-mobile end to end through the launcher, driven by the Rust mobile client: subscribe, call
//! quote and convert, receive the conversion event; a user never receives another user's events;
//! rates flow from the exchange's own WebSocket through the gateway's source.

mod common;

use std::time::Duration;

use common::launcher::{stack, token};
use mobile_client::{Client, Config as ClientConfig, Encoding, Update};
use serde_json::{Value, json};
use switchyard::Stack;

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing).
const PATIENCE: Duration = Duration::from_secs(15);

async fn connect(stack: &Stack, user: &str, encoding: Encoding) -> Client {
    let url = format!("ws://{}/v1/ws", stack.addr("bff-mobile"));
    let config = ClientConfig::new(url, token(user)).with_encoding(encoding);
    tokio::time::timeout(PATIENCE, Client::connect(config))
        .await
        .expect("connect in time")
        .expect("connects")
}

async fn next(sub: &mut mobile_client::Subscription) -> Update {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("an update in time")
        .expect("subscription open")
}

async fn call(client: &Client, op: &str, args: Value) -> Value {
    tokio::time::timeout(PATIENCE, client.call(op, args))
        .await
        .expect("answer in time")
        .unwrap_or_else(|e| panic!("{op} failed: {e}"))
}

#[tokio::test]
async fn quote_and_convert_reach_the_users_subscription_and_nobody_elses() {
    let stack = stack(3_600_000).await;
    for encoding in [Encoding::Cbor, Encoding::Json] {
        let alice = connect(&stack, "alice", encoding).await;
        let bob = connect(&stack, "bob", encoding).await;
        let mut mine = alice.subscribe("conversions").await.expect("subscribed");
        let mut bobs = bob.subscribe("conversions").await.expect("subscribed");

        let quote = call(
            &alice,
            "quote",
            json!({"from": "EUR", "to": "GBP", "amount": "12.50"}),
        )
        .await;
        assert_eq!(quote["pair"], "EUR/GBP", "{quote}");
        assert!(quote["converted"].is_string(), "{quote}");

        let done = call(
            &alice,
            "convert",
            json!({"from": "EUR", "to": "GBP", "amount": "12.50"}),
        )
        .await;
        let Update::Event { data, .. } = next(&mut mine).await else {
            panic!("expected the conversion event");
        };
        assert_eq!(data["id"], done["id"], "{data} vs {done}");
        assert_eq!(data["amount"], "12.50");
        assert_eq!(data["converted"], done["converted"]);

        // Bob converts too: his own event reaches him, and it is the first one he sees.
        let his = call(
            &bob,
            "convert",
            json!({"from": "EUR", "to": "USD", "amount": "1.00"}),
        )
        .await;
        let Update::Event { data, .. } = next(&mut bobs).await else {
            panic!("expected bob's conversion event");
        };
        assert_eq!(
            data["id"], his["id"],
            "bob got someone else's event: {data}"
        );
        // And alice's next event is her own next conversion, never bob's.
        let again = call(
            &alice,
            "convert",
            json!({"from": "EUR", "to": "GBP", "amount": "2.00"}),
        )
        .await;
        let Update::Event { data, .. } = next(&mut mine).await else {
            panic!("expected alice's second conversion event");
        };
        assert_eq!(
            data["id"], again["id"],
            "alice got someone else's event: {data}"
        );

        alice.close().await;
        bob.close().await;
    }
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn rates_flow_from_the_exchange_socket_through_the_source() {
    let stack = stack(20).await;
    let client = connect(&stack, "carol", Encoding::Cbor).await;
    let mut rates = client.subscribe("rates:EUR/USD").await.expect("subscribed");
    let mut last = None;
    for _ in 0..3 {
        let Update::Event { position, data, .. } = next(&mut rates).await else {
            panic!("a state topic has no gaps");
        };
        assert_eq!(data["pair"], "EUR/USD", "{data}");
        assert!(data["rate"].is_string(), "{data}");
        if let Some(prev) = last {
            assert!(
                position > prev,
                "rates go forward: {prev:?} then {position:?}"
            );
        }
        last = Some(position);
    }
    client.close().await;
    stack.stop().await.expect("clean stop");
}
