//! Property: nobody ever receives another principal's events, whatever the subscription
//! document looks like.
//!
//! Identical subscriptions share one execution (`fanout.rs`), which is only safe when the
//! execution cannot carry anything user-scoped to another principal. Each case builds a random
//! document mixing public fields (`rates`, `__typename`) and user-scoped ones (`conversions`,
//! aliased, inside fragments and inline fragments, under `@skip`/`@include`), opens one socket per
//! principal (alice, bob, carol, and an anonymous one) in a random order, sends them all the SAME
//! document, publishes one conversion for every user, and checks that every conversion id a
//! socket receives belongs to its own user — on /v1 and /v2.

mod common;

use std::time::Duration;

use common::publish_conversion;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_core::bus::Broker;
use switchyard_server::server::CancellationToken;
use test_support::graphql_ws::Client;

const SECRET: &str = "isolation-test-secret";
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// One item of a subscription's root selection.
#[derive(Debug, Clone)]
enum Item {
    Rates,
    RatesSkipped,
    Typename,
    Conversions,
    AliasedConversions,
    ConversionsIncluded,
    FragmentConversions,
    InlineConversions,
    FragmentRates,
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        Just(Item::Rates),
        Just(Item::RatesSkipped),
        Just(Item::Typename),
        Just(Item::Conversions),
        Just(Item::AliasedConversions),
        Just(Item::ConversionsIncluded),
        Just(Item::FragmentConversions),
        Just(Item::InlineConversions),
        Just(Item::FragmentRates),
    ]
}

fn document(items: &[Item]) -> String {
    let mut root = String::new();
    let mut fragments = String::new();
    for (i, item) in items.iter().enumerate() {
        let part = match item {
            Item::Rates => r#"rates(pairs: ["EUR/USD"]) { pair }"#.to_owned(),
            Item::RatesSkipped => {
                r#"rates(pairs: ["EUR/USD"]) @skip(if: true) { pair }"#.to_owned()
            }
            Item::Typename => "__typename".to_owned(),
            Item::Conversions => "conversions { id }".to_owned(),
            Item::AliasedConversions => format!("c{i}: conversions {{ id }}"),
            Item::ConversionsIncluded => "conversions @include(if: true) { id }".to_owned(),
            Item::FragmentConversions => {
                fragments.push_str(&format!(
                    " fragment F{i} on SubscriptionRoot {{ conversions {{ id }} }}"
                ));
                format!("...F{i}")
            }
            Item::InlineConversions => "... on SubscriptionRoot { conversions { id } }".to_owned(),
            Item::FragmentRates => {
                fragments.push_str(&format!(
                    r#" fragment F{i} on SubscriptionRoot {{ rates(pairs: ["EUR/USD"]) {{ pair }} }}"#
                ));
                format!("...F{i}")
            }
        };
        root.push(' ');
        root.push_str(&part);
    }
    format!("subscription {{{root} }}{fragments}")
}

/// Every string under an `id` key in a JSON value.
fn ids(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "id"
                    && let Value::String(s) = v
                {
                    out.push(s.clone());
                }
                ids(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| ids(v, out)),
        _ => {}
    }
}

async fn case(items: Vec<Item>, order: Vec<usize>, version: &str) -> Result<(), TestCaseError> {
    let mut config = bff_web::Config::default();
    config.auth.hs256_secret = SECRET.into();
    // No upstream in this test: rates simply never tick.
    config.sources.clear();
    let broker = Broker::memory(100);
    let bus = broker.bus();
    let shutdown = CancellationToken::new();
    let app = bff_web::app(&config, &broker, shutdown.clone()).expect("app");
    let server = test_support::serve(app.router.clone()).await;
    let url = format!("ws://{}/{version}/graphql", server.addr);
    let query = document(&items);

    // Principals 0..3 are the users, 3 is anonymous; they subscribe in `order`.
    let mut clients: Vec<(Option<&str>, Client)> = Vec::new();
    for &p in &order {
        let user = USERS.get(p).copied();
        let token = user.map(|u| bff_web::auth::hs256_token(SECRET, u, Duration::from_secs(600)));
        let mut client = Client::connect(&url, token.as_deref()).await;
        client.subscribe("s", &query, json!({})).await;
        clients.push((user, client));
    }
    // Let every subscription reach the hub, then publish one conversion per user.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for user in USERS {
        publish_conversion(&bus, user, &format!("{user}-conversion")).await;
    }
    for (user, client) in &mut clients {
        while let Some(message) = client.recv_within(Duration::from_millis(250)).await {
            let mut seen = Vec::new();
            // Only the result: the envelope's `id` is the operation's.
            ids(&message["payload"], &mut seen);
            for id in seen {
                let own = user.is_some_and(|u| id == format!("{u}-conversion"));
                prop_assert!(
                    own,
                    "{} received `{id}` with document `{query}` on {version}: {message}",
                    user.unwrap_or("an anonymous socket")
                );
            }
        }
    }
    shutdown.cancel();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_principal_receives_another_principals_events(
        items in prop::collection::vec(item(), 1..5),
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        v2 in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(case(items, order, if v2 { "v2" } else { "v1" }))?;
    }
}

/// The exact document of the report: rates first, conversions second, identical for alice and
/// bob — bob must not get alice's conversion, and alice must get hers.
#[tokio::test]
async fn rates_and_conversions_in_one_document_stay_per_user() {
    let mut config = bff_web::Config::default();
    config.auth.hs256_secret = SECRET.into();
    config.sources.clear();
    let broker = Broker::memory(100);
    let bus = broker.bus();
    let app = bff_web::app(&config, &broker, CancellationToken::new()).expect("app");
    let server = test_support::serve(app.router.clone()).await;
    let query = r#"subscription { rates(pairs: ["EUR/USD"]) { pair } conversions { id } }"#;
    for version in ["v1", "v2"] {
        let url = format!("ws://{}/{version}/graphql", server.addr);
        let token = |u: &str| bff_web::auth::hs256_token(SECRET, u, Duration::from_secs(600));
        let mut alice = Client::connect(&url, Some(&token("alice"))).await;
        let mut bob = Client::connect(&url, Some(&token("bob"))).await;
        alice.subscribe("1", query, json!({})).await;
        bob.subscribe("1", query, json!({})).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let id = format!("alice-{version}");
        publish_conversion(&bus, "alice", &id).await;
        let got = alice.recv().await;
        assert_eq!(got["payload"]["data"]["conversions"]["id"], id, "{got}");
        assert_eq!(bob.recv_within(Duration::from_millis(300)).await, None);
    }
}
