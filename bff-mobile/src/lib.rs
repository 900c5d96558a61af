//! bff-mobile: the gateway for mobile apps.
//!
//! Its transport is one WebSocket at `/v1/ws` speaking `switchyard-mobile.v1`
//! (`docs/protocol/mobile-v1.md`, the `mobile-proto` crate): subscriptions with resume, calls of
//! the composed operations, heartbeats and drain ([`ws`]). Beside it, `GET /v1/quote` serves the
//! composed quote as JSON over HTTP ([`quote`]), and `/v1/files/…` streams large files to and
//! from the `statements` backend for signed-in users ([`files`], docs/files.md). This crate owns the wire formats; the mapping
//! of core errors to protocol errors is in [`calls`], token checking in [`auth`].

pub mod auth;
mod calls;
mod files;
mod quote;
mod shapes;
mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use serde::{Deserialize, Serialize};
use switchyard_core::bus::Broker;
use switchyard_core::bus::BusConfig;
use switchyard_core::hub::HubConfig;
use switchyard_core::ratelimit::RateLimitConfig;
use switchyard_core::sources::SourceConfig;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::ratelimit::{self, UserOf};
use switchyard_server::runtime::Runtime;
use switchyard_server::server::CancellationToken;

pub use auth::AuthConfig;

/// Prefix of the environment variables that override the configuration.
pub const ENV_PREFIX: &str = "SWITCHYARD_MOBILE";

/// bff-mobile's configuration.
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
    /// Backends by name: `exchange`, `limits` and `conversions`, the ones the operations call,
    /// and `statements`, the file routes'; any other name is a config error. A table changes
    /// the keys it names, the rest keep their defaults.
    #[serde(deserialize_with = "operations::known_backends_with_files")]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Upstream sources by name (`[sources.NAME]`, docs/sources.md): services that push events
    /// onto catalog channels. None by default; the launcher and the shipped configurations add
    /// the demo exchange (`operations::sources::exchange_source`), which feeds `rates.{pair}`.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Deadlines of the composed operations.
    pub operations: operations::Config,
    /// JWT verification for the socket's `auth` message.
    pub auth: AuthConfig,
    /// Limits and timers of the `/v1/ws` socket.
    pub websocket: WebSocketConfig,
    /// Request, socket message and subscription rate limits per IP and per user.
    pub rate_limits: RateLimitConfig,
    /// The channel catalog: the channels clients may subscribe to and publishers publish on
    /// (the demo catalog, `operations::channels::demo`, by default).
    pub channels: switchyard_core::channels::ChannelsConfig,
    /// The publish API for backends, on a listener of its own (none by default).
    pub publish: switchyard_server::publish::PublishConfig,
    /// `/metrics` on an internal listener of its own (none by default) and the client
    /// applications named in its usage labels (docs/operations.md).
    pub metrics: switchyard_server::metrics::MetricsConfig,
    /// The streamed file routes `/v1/files/…` (docs/files.md): upload size, timeouts.
    pub files: switchyard_server::streaming::FilesConfig,
}

/// Limits and timers of the `/v1/ws` socket (announced to clients in `welcome` where the
/// protocol says so).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Largest client message, in bytes; a larger one closes the socket with 1009. Named
    /// `max_frame_bytes` before (still read, with a warning: [`RENAMED_KEYS`]).
    pub max_message_bytes: u32,
    /// Most subscriptions one socket may hold at once.
    pub max_subscriptions: u32,
    /// Most calls one socket may have in flight at once.
    pub max_calls: u32,
    /// Messages queued for one socket before a stream event cuts it off with 4503 (state
    /// updates are conflated instead).
    pub send_queue_messages: usize,
    /// How long a socket may stay open without `auth` (then closed with 4408).
    pub auth_timeout_ms: u64,
    /// Heartbeat interval: the server pings this often and closes a socket it heard nothing
    /// from for twice as long (4408).
    pub heartbeat_ms: u32,
    /// Longest the send queue may make no progress towards a client that does not read (its
    /// TCP window stays shut); then it is cut off with 4503, the close frame lingering until it
    /// reads.
    pub write_timeout_ms: u64,
    /// Origins (`https://app.example.com`) of browser pages allowed to open a socket. Native
    /// apps send no `Origin` and are not affected; a page of any other origin is refused with
    /// 403 before the upgrade (a browser would otherwise let any site open sockets here).
    pub allowed_origins: Vec<String>,
    /// Sockets one user may have open at once (counted from `auth`, on this instance); the
    /// next one is closed with 4429 at its `auth`. 0 = no cap.
    pub max_sockets_per_user: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 16 * 1024,
            max_subscriptions: 32,
            max_calls: 16,
            send_queue_messages: 256,
            auth_timeout_ms: 10_000,
            heartbeat_ms: 20_000,
            write_timeout_ms: 10_000,
            allowed_origins: Vec::new(),
            max_sockets_per_user: 32,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on(SocketAddr::from(([127, 0, 0, 1], 8081))),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            hub: HubConfig::default(),
            backends: operations::default_backends_with_files(),
            sources: BTreeMap::new(),
            operations: operations::Config::default(),
            auth: AuthConfig::default(),
            websocket: WebSocketConfig::default(),
            rate_limits: RateLimitConfig::default(),
            channels: operations::channels::demo(),
            publish: switchyard_server::publish::PublishConfig::default(),
            metrics: switchyard_server::metrics::MetricsConfig::default(),
            files: switchyard_server::streaming::FilesConfig::default(),
        }
    }
}

/// Configuration keys this gateway has renamed; the old names are still read, with a warning.
pub const RENAMED_KEYS: &[switchyard_server::config::RenamedKey] =
    &[switchyard_server::config::RenamedKey {
        old: "websocket.max_frame_bytes",
        new: "websocket.max_message_bytes",
    }];

switchyard_server::gateway_config!(
    Config,
    "bff-mobile",
    "Switchyard gateway for mobile apps (WebSocket)",
    ENV_PREFIX,
    renamed = RENAMED_KEYS
);

/// A built gateway: its router and the sockets it owns.
pub struct App {
    /// The router to serve.
    pub router: Router,
    runtime: Runtime,
}

impl App {
    /// Topics with local subscribers right now (each has one source subscription).
    pub fn active_topics(&self) -> usize {
        self.runtime.hub.active_topics()
    }

    /// Sockets open right now.
    pub fn open_sockets(&self) -> usize {
        self.runtime.sockets.len()
    }
}

/// Builds the gateway. `shutdown` also drains every socket (`bye`, then 1001) when cancelled.
pub fn app(config: &Config, broker: &Broker, shutdown: CancellationToken) -> anyhow::Result<App> {
    let runtime = Runtime::new(config, broker, shutdown)?;
    let ops = operations::Operations::new(runtime.upstreams.clone(), &config.operations);
    let verifier = auth::Authenticator::new(&config.auth)?;
    let gateway = ws::Gateway::new(ws::GatewayParts {
        hub: runtime.hub.clone(),
        catalog: runtime.catalog.clone(),
        ops: ops.clone(),
        verifier: verifier.clone(),
        origins: switchyard_core::origin::OriginPolicy::new(
            &config.websocket.allowed_origins,
            None,
        )
        .map_err(|e| anyhow::anyhow!("websocket.allowed_origins: {e}"))?,
        config: config.websocket.clone(),
        operation_deadline: std::time::Duration::from_millis(config.operations.deadline_ms),
        drain: config.server.drain_timeout(),
        sockets: runtime.sockets.clone(),
        shutdown: runtime.shutdown.clone(),
        limiter: runtime.limiter.clone(),
        metrics: runtime.metrics.clone(),
    });
    let pass = switchyard_server::streaming::Passthrough::new(
        runtime.upstreams.clone(),
        operations::backend::STATEMENTS,
        &config.files,
    )?;
    let routes = Router::new().nest(
        "/v1",
        quote::routes(ops, verifier.clone())
            .merge(files::routes(pass, verifier.clone()))
            .merge(ws::routes(gateway)),
    );
    // Per IP for every request, and per user for one with a valid token.
    let user_of: UserOf = Arc::new(move |parts| {
        // Cached keys only: the limiter never makes a request wait on a JWKS fetch.
        verifier
            .user_of_headers(&parts.headers)
            .ok()
            .flatten()
            .map(|u| u.to_string())
    });
    let router = runtime.router(routes, Some(user_of), ratelimit::json_refusal, None);
    Ok(App { router, runtime })
}

/// Runs the gateway on `listener` until `shutdown` is cancelled; open sockets get `bye`, then
/// are closed (1001) and waited for, all within the drain timeout.
pub async fn run(
    config: Config,
    broker: Broker,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = app(&config, &broker, shutdown)?;
    app.runtime.serve(listener, app.router).await
}
