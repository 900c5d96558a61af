//! bff-device: the gateway for devices that are never updated (TVs, set-top boxes, kiosks).
//!
//! Devices poll over plain HTTP (`docs/protocol/device-v1.md`): a long-poll with an opaque
//! cursor brings their commands, configuration changes, the rates they are configured for and
//! the events of the catalog channels they follow;
//! they post command results and telemetry, which are published on the bus for backends.
//! `/v1` is frozen (golden files in `tests/golden/v1` check every answer); `/v2` sits beside it.
//!
//! Modules: [`registry`] devices and credentials; [`cursor`] the opaque cursor; `wake` one
//! shared wake per topic for held polls; `poll` the long-poll itself, `follow` its catalog
//! channels; `wire` the v1/v2
//! encodings and the one error mapping; `api` the device endpoints; `admin` the admin API;
//! `quote` the composed quote as compact JSON. This crate owns its wire format; the core does not.

mod admin;
mod api;
pub mod cursor;
mod follow;
mod poll;
mod quote;
pub mod registry;
mod wake;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use serde::{Deserialize, Serialize};
use switchyard_core::bus::Broker;
use switchyard_core::bus::{BusConfig, BusKind};
use switchyard_core::hub::HubConfig;
use switchyard_core::ratelimit::RateLimitConfig;
use switchyard_core::sources::SourceConfig;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::ratelimit;
use switchyard_server::runtime::Runtime;
use switchyard_server::server::CancellationToken;
use tower_http::compression::CompressionLayer;

pub use admin::AdminConfig;
pub use api::ApiConfig;
pub use registry::DeviceConfig;

/// Prefix of the environment variables that override the configuration.
pub const ENV_PREFIX: &str = "SWITCHYARD_DEVICE";

/// bff-device's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener and request limits.
    pub server: ServerConfig,
    /// Log output.
    pub log: LogConfig,
    /// The event bus.
    pub bus: BusConfig,
    /// The topic hub.
    pub hub: HubConfig,
    /// Backends by name: `exchange`, `limits` and `conversions`, the ones the operations call;
    /// any other name is a config error. A table changes the keys it names, the rest keep their
    /// defaults.
    #[serde(deserialize_with = "operations::known_backends")]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Upstream sources by name (`[sources.NAME]`, docs/sources.md): services that push events
    /// onto catalog channels. None by default; the launcher and the shipped configurations add
    /// the demo exchange (`operations::sources::exchange_source`), which feeds `rates.{pair}`.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Deadlines of the composed operations.
    pub operations: operations::Config,
    /// Limits of the device API.
    pub api: ApiConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Devices known from the start, by id (more can be issued through the admin API).
    pub devices: BTreeMap<String, DeviceConfig>,
    /// Request rate limits per IP and per device (socket and subscription limits do not apply).
    pub rate_limits: RateLimitConfig,
    /// The channel catalog: the channels clients may subscribe to and publishers publish on
    /// (the demo catalog, `operations::channels::demo`, by default).
    pub channels: switchyard_core::channels::ChannelsConfig,
    /// The publish API for backends, on a listener of its own (none by default).
    pub publish: switchyard_server::publish::PublishConfig,
    /// `/metrics` on an internal listener of its own (none by default) and the client
    /// applications named in its usage labels (docs/operations.md).
    pub metrics: switchyard_server::metrics::MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on(SocketAddr::from(([127, 0, 0, 1], 8082))),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            hub: HubConfig::default(),
            backends: operations::default_backends(),
            sources: BTreeMap::new(),
            operations: operations::Config::default(),
            api: ApiConfig::default(),
            admin: AdminConfig::default(),
            devices: BTreeMap::new(),
            rate_limits: RateLimitConfig::default(),
            channels: operations::channels::demo(),
            publish: switchyard_server::publish::PublishConfig::default(),
            metrics: switchyard_server::metrics::MetricsConfig::default(),
        }
    }
}

switchyard_server::gateway_config!(
    Config,
    "bff-device",
    "Switchyard gateway for devices (long-poll)",
    ENV_PREFIX
);

/// A built gateway: its router, and counters for operators and tests.
pub struct App {
    /// The router to serve.
    pub router: Router,
    runtime: Runtime,
    held: Arc<AtomicUsize>,
    holding: Arc<AtomicUsize>,
    api: Arc<api::Api>,
}

impl App {
    /// Polls being held right now (from the moment they take their slot to their answer).
    pub fn held_polls(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Polls waiting for a wake right now: their wakes are open and their last read found
    /// nothing, so anything published from now on reaches them only through a wake.
    pub fn holding_polls(&self) -> usize {
        self.holding.load(Ordering::Acquire)
    }

    /// Device topics with an open wake (one bus subscription each, shared by its waiters).
    pub fn active_wakes(&self) -> usize {
        self.api.poller.active_wakes()
    }

    /// Bus subscriptions opened for wakes since the gateway started (a wake stays open
    /// a few seconds after its last poll, so a device polling again reuses it).
    pub fn wakes_opened(&self) -> u64 {
        self.api.poller.wakes_opened()
    }
}

/// Builds the gateway. Held polls answer (empty, same cursor) when `shutdown` is cancelled.
pub fn app(config: &Config, broker: &Broker, shutdown: CancellationToken) -> anyhow::Result<App> {
    anyhow::ensure!(
        config.api.max_rates_per_device <= cursor::MAX_RATES,
        "api.max_rates_per_device: at most {}",
        cursor::MAX_RATES
    );
    anyhow::ensure!(
        config.api.max_channels_per_device <= cursor::MAX_CHANNELS,
        "api.max_channels_per_device: at most {}",
        cursor::MAX_CHANNELS
    );
    let runtime = Runtime::new(config, broker, shutdown)?;
    let bus = broker.bus();
    let ops = operations::Operations::new(runtime.upstreams.clone(), &config.operations);
    let registry = Arc::new(registry::Registry::new(
        registry::Limits {
            max_devices: config.api.max_devices,
            max_rates: config.api.max_rates_per_device,
            max_channels: config.api.max_channels_per_device,
        },
        runtime.catalog.clone(),
        switchyard_core::records::on(broker, "devices"),
        broker.kind() != BusKind::Memory,
    ));
    for (id, d) in &config.devices {
        registry
            .register(id, d)
            .map_err(|e| anyhow::anyhow!("devices.{id}: {e}"))?;
    }
    let held = Arc::new(AtomicUsize::new(0));
    let holding = Arc::new(AtomicUsize::new(0));
    let api = Arc::new(api::Api {
        registry: registry.clone(),
        poller: poll::Poller {
            bus: bus.clone(),
            wakes: wake::Wakes::new(bus.clone()),
            rates: wake::RateWatch::new(runtime.hub.clone(), runtime.shutdown.clone()),
            limits: poll::PollLimits {
                max_events: config.api.max_events_per_answer.max(1),
            },
            shutdown: runtime.shutdown.clone(),
            holding: holding.clone(),
        },
        bus: bus.clone(),
        config: config.api.clone(),
        held: held.clone(),
        limiter: runtime.limiter.clone(),
        metrics: runtime.metrics.clone(),
    });
    let versions = Router::new()
        .nest(
            "/v1",
            api::routes(api.clone(), wire::Version::V1).merge(quote::routes(ops)),
        )
        .nest("/v2", api::routes(api.clone(), wire::Version::V2))
        // Only for devices that ask (Accept-Encoding: gzip), and only bodies worth it.
        .layer(CompressionLayer::new().gzip(true));
    let mut routes = versions;
    if let Some(admin) = admin::routes(&config.admin, registry, bus)? {
        routes = routes.merge(admin);
    }
    // Per IP, before anything else; per device once authenticated (`api::authenticate`).
    let router = runtime.router(routes, None, ratelimit::json_refusal, None);
    Ok(App {
        router,
        runtime,
        held,
        holding,
        api,
    })
}

/// Runs the gateway on `listener` until `shutdown` is cancelled; held polls answer at once and
/// every request in flight is waited for, within the drain timeout.
pub async fn run(
    config: Config,
    broker: Broker,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = app(&config, &broker, shutdown)?;
    app.runtime.serve(listener, app.router).await
}
