//! bff-device: the gateway for devices that are never updated (TVs, set-top boxes, kiosks).
//!
//! Its own transport — HTTP long-poll with cursors — is specified in
//! `docs/protocol/device-v1.md` once it ships. This first cut serves the composed quote as JSON
//! over HTTP at `GET /v1/quote`, so the request path is proven end to end. This crate owns its
//! wire format; the mapping of core errors to it is in [`quote`].

mod quote;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use switchyard_core::bus::Bus;
use switchyard_core::config::{BackendConfig, BusConfig, HubConfig, LogConfig, ServerConfig};
use switchyard_core::server::{self, CancellationToken, Readiness};
use switchyard_core::upstream::Upstreams;

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
    /// Backends by name; the operations call `exchange`, `limits` and `conversions`.
    pub backends: BTreeMap<String, BackendConfig>,
    /// Deadlines of the composed operations.
    pub operations: operations::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on(SocketAddr::from(([127, 0, 0, 1], 8082))),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            hub: HubConfig::default(),
            backends: operations::default_backends(),
            operations: operations::Config::default(),
        }
    }
}

impl switchyard_core::cli::ServerBinary for Config {
    const NAME: &'static str = "bff-device";
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    fn server(&self) -> &ServerConfig {
        &self.server
    }
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// Builds the gateway's router.
pub fn app(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Router> {
    let upstreams = Arc::new(Upstreams::new(&config.backends)?);
    let ops = operations::Operations::new(upstreams.clone(), &config.operations);
    let router = Router::new()
        .nest("/v1", quote::routes(ops))
        .merge(server::health_routes(Readiness::new(
            Some(upstreams),
            Some(bus),
        )));
    Ok(server::with_common_layers(router, &config.server))
}

/// Runs the gateway on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    bus: Arc<dyn Bus>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = app(&config, bus)?;
    server::serve(listener, app, shutdown, config.server.drain_timeout()).await?;
    Ok(())
}
