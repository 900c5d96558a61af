//! bff-web: the gateway for browsers.
//!
//! GraphQL over HTTP at `/v1/graphql` (POST, and GET for queries; GraphiQL for a browser), built
//! on async-graphql as the engine, with the composed operations of the `operations` crate as
//! resolvers. This crate owns the GraphQL wire format: the schema, the HTTP conventions and the
//! mapping of core errors to GraphQL errors (all in [`errors`]).

mod errors;
mod http;
mod v1;

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
pub const ENV_PREFIX: &str = "SWITCHYARD_WEB";

/// bff-web's configuration.
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
    /// GraphQL limits and tooling.
    pub graphql: GraphqlConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on(SocketAddr::from(([127, 0, 0, 1], 8080))),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            hub: HubConfig::default(),
            backends: operations::default_backends(),
            operations: operations::Config::default(),
            graphql: GraphqlConfig::default(),
        }
    }
}

/// GraphQL limits and tooling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlConfig {
    /// Deepest selection nesting accepted.
    pub max_depth: usize,
    /// Highest query complexity accepted (each field counts 1).
    pub max_complexity: usize,
    /// Whether the schema can be introspected (turn off in production).
    pub introspection: bool,
    /// Whether a browser GETting the endpoint gets GraphiQL.
    pub graphiql: bool,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_complexity: 500,
            introspection: true,
            graphiql: true,
        }
    }
}

impl switchyard_core::cli::ServerBinary for Config {
    const NAME: &'static str = "bff-web";
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
    let v1 = v1::schema(ops, &config.graphql);
    let router = Router::new()
        .nest(
            "/v1",
            http::routes(v1, "/v1/graphql", config.graphql.graphiql),
        )
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

/// The SDL of the served v1 schema (what `schema/v1.graphql` must match).
pub fn v1_sdl() -> String {
    v1::sdl()
}
