//! A gateway for the publish API's tests: the one runtime of every gateway, built from a
//! configuration made with `gateway_config!`, serving no routes of its own and the publish API
//! on port 0 of loopback, with a catalog and two publishers' keys.

#![allow(unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use switchyard_core::bus::{Broker, Bus, BusConfig, Read};
use switchyard_core::channels::ChannelsConfig;
use switchyard_core::event::{Event, Position, Topic};
use switchyard_core::hub::HubConfig;
use switchyard_core::keyhash;
use switchyard_core::ratelimit::RateLimitConfig;
use switchyard_core::sources::SourceConfig;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::config::{LogConfig, ServerConfig, Source};
use switchyard_server::publish::PublishConfig;
use switchyard_server::runtime::Runtime;
use switchyard_server::server::CancellationToken;
use test_support::http::{Answer, answer};

/// The key of publisher `orders` (may publish on `orders.{user}` and `announcements`).
pub const KEY_ORDERS: &str = "orders-key-0123456789abcdef";
/// The key of publisher `ops` (may publish on `announcements` only).
pub const KEY_OPS: &str = "ops-key-0123456789abcdef";

/// A gateway's configuration, as every gateway composes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TestGateway {
    server: ServerConfig,
    log: LogConfig,
    bus: BusConfig,
    hub: HubConfig,
    backends: BTreeMap<String, BackendConfig>,
    sources: BTreeMap<String, SourceConfig>,
    rate_limits: RateLimitConfig,
    channels: ChannelsConfig,
    publish: PublishConfig,
    metrics: switchyard_server::metrics::MetricsConfig,
}

switchyard_server::gateway_config!(
    TestGateway,
    "test-gateway",
    "A gateway with no routes of its own",
    "TEST_GATEWAY"
);

/// The configuration: `bus` (a `[bus]` section or nothing), the publish API on `listen` (empty:
/// none) with at most 4096-byte bodies and 3-event batches, and the catalog: `orders.{user}`
/// (publisher `orders`, 64-byte payloads), `announcements` (`orders`, `ops`), `audit` (nobody).
pub fn config(bus: &str, listen: &str) -> TestGateway {
    let hash = |key: &str| keyhash::to_hex(&keyhash::sha256(key.as_bytes()));
    let text = format!(
        r#"{bus}
[publish]
listen = "{listen}"
max_body_bytes = 4096
max_batch = 3
keys = [
  {{ publisher = "orders", sha256 = "{orders}" }},
  {{ publisher = "ops", sha256 = "{ops}" }},
]

[[channels.catalog]]
pattern = "orders.{{user}}"
subscribe = {{ rule = "user" }}
publishers = ["orders"]
max_payload_bytes = 64

[[channels.catalog]]
pattern = "announcements"
subscribe = {{ rule = "public" }}
publishers = ["orders", "ops"]

[[channels.catalog]]
pattern = "audit"
subscribe = {{ rule = "public" }}
"#,
        orders = hash(KEY_ORDERS),
        ops = hash(KEY_OPS),
    );
    Source::new(Some(("test-gateway.toml".into(), text)), vec![])
        .load("TEST_GATEWAY")
        .expect("the test configuration loads")
}

/// The runtime of `config`, on its own broker.
pub fn runtime(config: &TestGateway, shutdown: CancellationToken) -> Runtime {
    let broker = Broker::connect(&config.bus);
    Runtime::new(config, &broker, shutdown).expect("the runtime builds")
}

/// A running test gateway and a client of its publish API.
pub struct Gateway {
    /// A loopback HTTP client.
    pub client: reqwest::Client,
    /// The gateway's metrics (its publish API's calls among them).
    pub metrics: switchyard_server::metrics::Metrics,
    addr: std::net::SocketAddr,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    /// Starts a gateway with `bus` (a `[bus]` section or nothing) and the publish API on port 0.
    pub async fn start(bus: &str) -> Self {
        let shutdown = CancellationToken::new();
        let runtime = runtime(&config(bus, "127.0.0.1:0"), shutdown.clone());
        let main = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let publish = runtime
            .bind_publish()
            .await
            .expect("binds")
            .expect("publish.listen is set");
        let addr = publish.local_addr().expect("addr");
        let bus = runtime.bus.clone();
        let metrics = runtime.metrics.clone();
        let task = tokio::spawn(async move {
            runtime
                .serve_with_publish(main, Router::new(), Some(publish))
                .await
        });
        Self {
            client: test_support::http::client(),
            metrics,
            addr,
            bus,
            shutdown,
            task,
        }
    }

    /// `http://{publish addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON to `path` with the bearer `key`.
    pub async fn post(&self, path: &str, key: &str, body: &serde_json::Value) -> Answer {
        self.post_raw(path, Some(key), body.to_string()).await
    }

    /// POSTs the text `body` to `path`, with the bearer `key` when given.
    pub async fn post_raw(&self, path: &str, key: Option<&str>, body: String) -> Answer {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        answer(request.send().await.expect("the publish API answers")).await
    }

    /// The events on `channel`'s topic after offset `after` of `epoch`.
    pub async fn read(&self, channel: &str, epoch: u64, after: u64) -> Vec<Event> {
        let position = Position {
            epoch,
            offset: after,
        };
        match self.bus.read(&topic(channel), position, 100).await {
            Ok(Read::Events { events, .. }) => events,
            other => panic!("read {channel}: {other:?}"),
        }
    }

    /// The offset of `channel`'s latest event (0: none).
    pub async fn head(&self, channel: &str) -> u64 {
        self.bus.head(&topic(channel)).await.expect("head").offset
    }

    /// Asks the gateway to stop and waits for its drain (a few seconds at most).
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(15), self.task)
            .await
            .expect("the gateway drains in time")
            .expect("no panic")
            .expect("served without an error");
    }
}

/// A channel's bus topic.
pub fn topic(channel: &str) -> Topic {
    Topic::new(&format!("ch:{channel}")).expect("a topic")
}
