//! The device API tests' adapter to the shared fixtures: a gateway on a loopback port over a
//! memory bus with two configured devices, and what needs the gateway's own types (its bus, its
//! counters). The HTTP client is test-support's ([`test_support::device`]), reached through the
//! gateway ([`Gateway`] dereferences to it).

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use bff_device::{App, Config, DeviceConfig};
use serde_json::json;
use switchyard_core::bus::Broker;
use switchyard_core::bus::Bus;
use switchyard_core::event::{Event, Topic};
use switchyard_server::server::CancellationToken;
use test_support::TestServer;
pub use test_support::device::{DeviceApi, channel_data, channel_items, kinds, of_kind};
pub use test_support::http::{Answer, answer};

/// tv-1's key (rates EUR/USD and USD/JPY).
pub const TV1_KEY: &str = "tv-1-key-0123456789";
/// tv-2's key (no rates).
pub const TV2_KEY: &str = "tv-2-key-0123456789";
/// The admin token.
pub const ADMIN: &str = "admin-token-0123456789";

/// A generous bound that only stops a broken test from hanging.
pub const HANG: Duration = Duration::from_secs(20);

/// The test configuration: two devices, the admin API on, no upstream source (rates are
/// published on the bus by the tests).
pub fn config() -> Config {
    let mut c = Config::default();
    c.sources.clear();
    c.admin.token = ADMIN.to_owned();
    c.devices.insert(
        "tv-1".to_owned(),
        DeviceConfig {
            key: TV1_KEY.to_owned(),
            rates: vec!["EUR/USD".to_owned(), "USD/JPY".to_owned()],
            settings: [("volume".to_owned(), json!(7))].into_iter().collect(),
            channels: Vec::new(),
        },
    );
    c.devices.insert(
        "tv-2".to_owned(),
        DeviceConfig {
            key: TV2_KEY.to_owned(),
            ..DeviceConfig::default()
        },
    );
    c
}

/// A running gateway, and the API client to it (`gw.poll(..)`, `gw.http`, …).
pub struct Gateway {
    pub server: TestServer,
    pub bus: Arc<dyn Bus>,
    pub shutdown: CancellationToken,
    pub app: Arc<App>,
    pub api: DeviceApi,
}

impl std::ops::Deref for Gateway {
    type Target = DeviceApi;

    fn deref(&self) -> &DeviceApi {
        &self.api
    }
}

/// Starts a gateway with `config` over a memory bus keeping `history` events per topic.
pub async fn start(config: Config, history: usize) -> Gateway {
    start_on(config, &Broker::memory(history)).await
}

/// Starts a gateway with `config` on `broker`.
pub async fn start_on(config: Config, broker: &Broker) -> Gateway {
    let bus = broker.bus();
    let shutdown = CancellationToken::new();
    let app = bff_device::app(&config, broker, shutdown.clone()).expect("app builds");
    let server = test_support::serve(app.router.clone()).await;
    let api = DeviceApi::new(server.url(), ADMIN, HANG);
    Gateway {
        server,
        bus,
        shutdown,
        app: Arc::new(app),
        api,
    }
}

impl Gateway {
    /// Publishes a command for `device` on the bus, as a backend does.
    pub async fn command(&self, device: &str, id: &str, op: &str) -> Event {
        let topic = Topic::new(&format!("devices.{device}.commands")).unwrap();
        let payload = json!({"id": id, "op": op, "args": {"n": 1}}).to_string();
        self.bus.publish(&topic, payload.into()).await.unwrap()
    }

    /// Publishes a rate tick.
    pub async fn rate(&self, pair: &str, rate: &str, seq: u64) -> Event {
        let topic = operations::sources::rates_topic(&pair.parse().expect("a pair"));
        let payload = json!({"pair": pair, "rate": rate, "seq": seq}).to_string();
        self.bus.publish(&topic, payload.into()).await.unwrap()
    }

    /// Waits until `n` polls are holding (their reads were empty and their wakes are open).
    pub async fn holding(&self, n: usize) {
        let app = self.app.clone();
        assert!(
            test_support::eventually(HANG, || {
                let app = app.clone();
                async move { app.holding_polls() == n }
            })
            .await,
            "{n} polls holding"
        );
    }
}

/// A catalog: the public stream `announcements`, each device's own stream
/// `devices.{device}.firmware`, the public state channel `status`, and a user's `orders.{user}`.
pub fn catalog() -> switchyard_core::channels::ChannelsConfig {
    serde_json::from_value(json!({"catalog": [
        {"pattern": "announcements", "subscribe": {"rule": "public"}},
        {"pattern": "devices.{device}.firmware", "subscribe": {"rule": "device"}},
        {"pattern": "status", "class": "state", "subscribe": {"rule": "public"}},
        {"pattern": "orders.{user}", "subscribe": {"rule": "user"}},
    ]}))
    .expect("a valid catalog")
}

impl Gateway {
    /// Publishes `data` on catalog channel `channel` (bus topic `ch:<channel>`), as the publish
    /// API does: its compact JSON.
    pub async fn publish_channel(&self, channel: &str, data: serde_json::Value) -> Event {
        let topic = Topic::new(&format!("ch:{channel}")).unwrap();
        self.bus
            .publish(&topic, data.to_string().into())
            .await
            .unwrap()
    }
}
