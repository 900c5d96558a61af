//! The whole stack through the launcher, for the end-to-end tests: a stack on loopback with the
//! exchange ticking at the test's pace, demo tokens, and what the exchange reports of its
//! upstream watchers.

use std::time::Duration;

use serde_json::Value;
use switchyard::{Config, DEMO_SECRET, Stack};

/// A stack whose exchange ticks every `tick_interval_ms` (an hour: a rate that does not move
/// during the test).
pub async fn stack(tick_interval_ms: u64) -> Stack {
    let mut config = Config::ephemeral();
    config.exchange.tick_interval_ms = tick_interval_ms;
    Stack::start(config).await.expect("stack starts")
}

/// A demo token for `user`, valid for ten minutes.
pub fn token(user: &str) -> String {
    bff_web::auth::hs256_token(DEMO_SECRET, user, Duration::from_secs(600))
}

/// bff-web's graphql-transport-ws endpoint.
pub fn ws_url(stack: &Stack) -> String {
    format!("ws://{}/v1/graphql", stack.addr("bff-web"))
}

/// The exchange's `/v1/stats` (its upstream connections and watchers).
pub async fn exchange_stats(stack: &Stack) -> Value {
    reqwest::get(format!("{}/v1/stats", stack.url("exchange")))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON")
}
