//! The socket tests' adapter to the shared fixtures: what needs the gateway's bus (publishing a
//! conversion as the conversions service does). The graphql-transport-ws client, raw or not, is
//! test-support's ([`test_support::graphql_ws`]).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use switchyard_core::bus::Bus;

/// Publishes a `conversion.completed` event of `user` with conversion id `id` on `bus`.
pub async fn publish_conversion(bus: &Arc<dyn Bus>, user: &str, id: &str) {
    let event = json!({"type": "conversion.completed", "conversion": {
        "id": id, "user": user, "from": "EUR", "to": "USD", "amount": "10",
        "rate": "1.100000", "converted": "11.00", "at": "2026-11-27T00:00:00Z"}});
    let topic = operations::channels::conversions_topic(&user.parse().expect("a user id"));
    bus.publish(&topic, Bytes::from(event.to_string()))
        .await
        .expect("publish");
}
