//! The socket tests' adapter to the shared fixtures: a gateway on a loopback port over a memory
//! bus, its tokens and what it publishes. The protocol client is test-support's
//! ([`test_support::mobile`]); what stays here needs the gateway's own types.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;

use bff_mobile::Config;
use bytes::Bytes;
use mobile_proto::Encoding;
use switchyard_core::bus::Broker;
use switchyard_core::bus::Bus;
use switchyard_core::event::Event;
use switchyard_server::server::CancellationToken;
use test_support::TestServer;

/// The HS256 secret of the test gateway.
pub const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

pub use test_support::mobile::{Client, End, WAIT};

/// A running gateway.
pub struct Gateway {
    pub server: TestServer,
    pub bus: Arc<dyn Bus>,
    pub shutdown: CancellationToken,
    pub app_topics: Box<dyn Fn() -> usize + Send + Sync>,
}

/// The test configuration: HS256 auth, no upstream source (rates are published on the bus by
/// the tests), backends nowhere unless a test sets them.
pub fn config() -> Config {
    let mut c = Config::default();
    c.auth.hs256_secret = SECRET.to_owned();
    c.sources.clear();
    c
}

/// Starts a gateway with `config` over a memory bus keeping `history` events per topic.
pub async fn start(config: Config, history: usize) -> Gateway {
    let broker = Broker::memory(history);
    let bus = broker.bus();
    let shutdown = CancellationToken::new();
    let app = bff_mobile::app(&config, &broker, shutdown.clone()).expect("app builds");
    let server = test_support::serve(app.router.clone()).await;
    let app = Arc::new(app);
    Gateway {
        server,
        bus,
        shutdown,
        app_topics: Box::new(move || app.active_topics()),
    }
}

impl Gateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.server.addr)
    }

    /// Opens a socket with `enc` and signs in as `user` (answered by `welcome`).
    pub async fn signed_in(&self, enc: Encoding, user: &str) -> Client {
        Client::signed_in(&self.ws_url(), enc, token(user), user).await
    }

    /// Publishes a conversion event for `user` with conversion id `id`.
    pub async fn publish_conversion(&self, user: &str, id: &str) -> Event {
        let topic = operations::channels::conversions_topic(&user.parse().expect("a user id"));
        let payload = serde_json::json!({
            "type": "conversion.completed",
            "conversion": {
                "id": id, "user": user, "from": "EUR", "to": "USD", "amount": "10.00",
                "rate": "1.0842", "converted": "10.84", "at": "2026-01-01T00:00:00Z"
            }
        });
        self.bus
            .publish(&topic, Bytes::from(payload.to_string()))
            .await
            .expect("publish")
    }

    /// Publishes a rate tick of `pair` with tick number `seq`.
    pub async fn publish_rate(&self, pair: &str, seq: u64) -> Event {
        let topic = operations::sources::rates_topic(&pair.parse().expect("a pair"));
        let payload = serde_json::json!({"pair": pair, "rate": format!("1.{seq:04}"), "seq": seq});
        self.bus
            .publish(&topic, Bytes::from(payload.to_string()))
            .await
            .expect("publish")
    }
}

/// An HS256 token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(user, SECRET, 3600)
}

/// An HS256 token signed with `secret`, expiring `ttl_s` seconds from now (negative: expired).
pub fn token_with(user: &str, secret: &str, ttl_s: i64) -> String {
    test_support::hostile::hs256_token(secret, user, ttl_s)
}
