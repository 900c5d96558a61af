//! bff-web: the gateway for browsers.
//!
//! GraphQL at `/v1/graphql` (and `/v2/graphql` beside it): queries and mutations over HTTP (POST,
//! and GET for queries; GraphiQL for a browser), and everything — subscriptions included — over one
//! WebSocket on the same path with the `graphql-transport-ws` subprotocol. async-graphql is the
//! engine; this crate owns the wire format: the schemas (`schema/*.graphql` are the shipped
//! contracts), the HTTP conventions ([`http`]), the WebSocket protocol ([`ws`]), shared
//! subscription executions ([`fanout`]), auth ([`auth`]) and the one mapping of core errors to
//! GraphQL errors ([`errors`]). For browsers it also serves its client module at `/v1/client.js`
//! and, when `[ui]` says so, the demo page and the demo services' web components ([`ui`]).
//! Beside GraphQL, `/v1/files/…` streams large files to and from the `statements` backend for
//! signed-in users ([`files`], docs/files.md).

pub mod auth;
mod channel;
pub mod contract;
mod errors;
mod fanout;
mod files;
mod graphql;
mod http;
mod hub_streams;
mod limits;
mod ratelimits;
mod request;
mod ui;
mod v1;
mod v2;
mod ws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, Method, header};
use serde::{Deserialize, Serialize};
use switchyard_core::bus::Broker;
use switchyard_core::bus::BusConfig;
use switchyard_core::hub::{Hub, HubConfig};
use switchyard_core::ratelimit::{RateLimitConfig, RateLimiter};
use switchyard_core::sources::SourceConfig;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::ratelimit::UserOf;
use switchyard_server::runtime::Runtime;
use switchyard_server::server::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::AuthConfig;
pub use ui::UiConfig;

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
    /// GraphQL limits and tooling.
    pub graphql: GraphqlConfig,
    /// JWT bearer authentication (HTTP `Authorization` header, `connection_init` payload).
    pub auth: AuthConfig,
    /// Which other sites' pages may call the API (CORS) or open a socket (Origin check).
    pub cors: CorsConfig,
    /// WebSocket limits.
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
    /// The demo page and the demo services' web components (none by default).
    pub ui: UiConfig,
    /// The streamed file routes `/v1/files/…` (docs/files.md): upload size, timeouts.
    pub files: switchyard_server::streaming::FilesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::on(SocketAddr::from(([127, 0, 0, 1], 8080))),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            hub: HubConfig::default(),
            backends: operations::default_backends_with_files(),
            sources: BTreeMap::new(),
            operations: operations::Config::default(),
            graphql: GraphqlConfig::default(),
            auth: AuthConfig::default(),
            cors: CorsConfig::default(),
            websocket: WebSocketConfig::default(),
            rate_limits: RateLimitConfig::default(),
            channels: operations::channels::demo(),
            publish: switchyard_server::publish::PublishConfig::default(),
            metrics: switchyard_server::metrics::MetricsConfig::default(),
            ui: UiConfig::default(),
            files: switchyard_server::streaming::FilesConfig::default(),
        }
    }
}

switchyard_server::gateway_config!(
    Config,
    "bff-web",
    "Switchyard gateway for browsers (GraphQL)",
    ENV_PREFIX
);

/// GraphQL limits and tooling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphqlConfig {
    /// Deepest selection nesting accepted.
    pub max_depth: usize,
    /// Highest query complexity accepted (each field counts 1).
    pub max_complexity: usize,
    /// Most aliases one operation may use.
    pub max_aliases: usize,
    /// Most selections (fields, fragment spreads, inline fragments) one operation may have once
    /// its fragment spreads are expanded. Checked before the engine parses the document, in time
    /// bounded by the document's size, so a small document whose fragments spread each other
    /// exponentially is refused before any work is done.
    pub max_selections: usize,
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
            max_aliases: 30,
            max_selections: 1_000,
            introspection: true,
            graphiql: true,
        }
    }
}

/// Cross-origin access.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API and open sockets.
    /// A page of any other site gets no CORS headers and its socket is refused with 403;
    /// clients that send no `Origin` (apps, servers) are not affected.
    pub allowed_origins: Vec<String>,
    /// Host names (with the port when it is not the scheme's default: `app.example.com`,
    /// `app.example.com:8443`) browsers reach this gateway as. A page served from one of them
    /// may open a socket without being on `allowed_origins`. Empty: only `localhost` and IP
    /// addresses count as the gateway's own, so a DNS-rebinding page (a foreign name
    /// re-pointed at the gateway, whose `Host` and `Origin` agree) is refused.
    pub allowed_hosts: Vec<String>,
}

/// WebSocket limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// How long a socket may stay open without `connection_init` (then closed with 4408).
    pub init_timeout_ms: u64,
    /// Operations (subscriptions included) active at once on one socket.
    pub max_operations: usize,
    /// Largest message accepted; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// Results a subscriber may fall behind its subscription before it is cut off with 1013
    /// (stream subscriptions) or skipped to the newest (state subscriptions).
    pub send_queue_messages: usize,
    /// Longest a write may wait for a client that does not read (its TCP window stays shut);
    /// then the client is cut off with 1013, the close frame lingering until it reads.
    pub write_timeout_ms: u64,
    /// Sockets one signed-in user may have open at once, /v1 and /v2 together (counted from
    /// `connection_init`, on this instance); the next one is closed with 4429 at its
    /// `connection_init`. 0 = no cap.
    pub max_sockets_per_user: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            init_timeout_ms: 3_000,
            max_operations: 64,
            max_message_bytes: 64 * 1024,
            send_queue_messages: 128,
            write_timeout_ms: 10_000,
            max_sockets_per_user: 32,
        }
    }
}

/// What every resolver reads from the schema's context.
#[derive(Clone)]
pub(crate) struct ContextData {
    pub(crate) ops: operations::Operations,
    pub(crate) hub: Hub,
    pub(crate) catalog: Arc<switchyard_core::channels::Catalog>,
}

/// The signed-in user, or an `UNAUTHENTICATED` error.
pub(crate) fn signed_in(
    ctx: &async_graphql::Context<'_>,
) -> async_graphql::Result<demo_api::UserId> {
    use async_graphql::ErrorExtensions;
    ctx.data_opt::<auth::Principal>()
        .map(|p| p.user.clone())
        .ok_or_else(|| {
            async_graphql::Error::new("sign in first: send a bearer token")
                .extend_with(|_, ext| ext.set("code", "UNAUTHENTICATED"))
        })
}

/// A running gateway's router and the sockets it owns.
pub struct App {
    /// The router to serve.
    pub router: Router,
    runtime: Runtime,
    v1_fanout: Arc<fanout::Fanout<v1::Query, v1::Mutation, v1::SubscriptionRoot>>,
}

impl App {
    /// Topics with local subscribers right now (each has one source subscription).
    pub fn active_topics(&self) -> usize {
        self.runtime.hub.active_topics()
    }

    /// Subscription executions running now on /v1 (identical subscriptions share one).
    pub fn v1_executions(&self) -> usize {
        self.v1_fanout.running()
    }

    /// The gateway's metrics (served on `[metrics].listen`): the launcher adds its own publish
    /// API's calls to them.
    pub fn metrics(&self) -> &switchyard_server::metrics::Metrics {
        &self.runtime.metrics
    }

    /// A handle on what the gateway holds now, readable while it serves.
    pub fn stats(&self) -> Stats {
        Stats {
            sockets: self.runtime.sockets.clone(),
            v1_fanout: self.v1_fanout.clone(),
        }
    }

    /// Serves the gateway on `listener` until its shutdown token is cancelled (as [`run`]).
    pub async fn serve(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        self.runtime.serve(listener, self.router).await
    }
}

/// What a running gateway holds now (for tests and diagnostics; [`App::stats`]).
#[derive(Clone)]
pub struct Stats {
    sockets: TaskTracker,
    v1_fanout: Arc<fanout::Fanout<v1::Query, v1::Mutation, v1::SubscriptionRoot>>,
}

impl Stats {
    /// WebSockets open now, /v1 and /v2 together.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Subscriptions active now on /v1, over every socket: each `subscribe` of a subscription
    /// counts until it completes, whether or not it shares an execution.
    pub fn v1_subscriptions(&self) -> usize {
        self.v1_fanout.subscribers()
    }
}

/// Builds the gateway. `shutdown` also closes every socket (1001) when cancelled.
pub fn app(config: &Config, broker: &Broker, shutdown: CancellationToken) -> anyhow::Result<App> {
    let runtime = Runtime::new(config, broker, shutdown)?;
    let ops = operations::Operations::new(runtime.upstreams.clone(), &config.operations);
    let verifier = Arc::new(auth::Authenticator::new(&config.auth)?);
    let origins = Origins::new(&config.cors)?;
    let shared = EndpointParts {
        config,
        verifier,
        origins: origins.clone(),
        sockets: runtime.sockets.clone(),
        shutdown: runtime.shutdown.clone(),
        user_sockets: switchyard_core::slots::Slots::new(config.websocket.max_sockets_per_user, 0),
        limiter: runtime.limiter.clone(),
        catalog: runtime.catalog.clone(),
        metrics: runtime.metrics.clone(),
    };
    let data = || ContextData {
        ops: ops.clone(),
        hub: runtime.hub.clone(),
        catalog: runtime.catalog.clone(),
    };
    let v1 = v1::schema(&config.graphql, data());
    let (v1_routes, v1_fanout) = shared.endpoint(v1, "/v1/graphql", v1::PUBLIC, v1::STATE);
    let v2 = v2::schema(&config.graphql, data());
    let (v2_routes, _) = shared.endpoint(v2, "/v2/graphql", v2::PUBLIC, v2::STATE);
    let pass = switchyard_server::streaming::Passthrough::new(
        runtime.upstreams.clone(),
        operations::backend::STATEMENTS,
        &config.files,
    )?;
    let v1_routes = v1_routes.merge(files::routes(pass, shared.verifier.clone()));
    let routes = Router::new()
        .nest("/v1", v1_routes)
        .nest("/v2", v2_routes)
        .merge(ui::routes(&config.ui, &config.backends)?);
    // Per IP for every request, and per user for a request with a valid token.
    let user_of: UserOf = {
        let verifier = shared.verifier.clone();
        Arc::new(move |parts| {
            verifier
                .cached_user_of_headers(&parts.headers)
                .map(|user| user.to_string())
        })
    };
    let router = runtime.router(
        routes,
        Some(user_of),
        ratelimits::refuse,
        origins.cors_layer(),
    );
    Ok(App {
        router,
        runtime,
        v1_fanout,
    })
}

/// What every schema version's endpoint shares.
struct EndpointParts<'a> {
    config: &'a Config,
    verifier: Arc<auth::Authenticator>,
    origins: Origins,
    sockets: TaskTracker,
    shutdown: CancellationToken,
    /// Sockets open per signed-in user, both versions together.
    user_sockets: switchyard_core::slots::Slots<String>,
    limiter: Arc<RateLimiter>,
    catalog: Arc<switchyard_core::channels::Catalog>,
    metrics: switchyard_server::metrics::Metrics,
}

impl EndpointParts<'_> {
    /// The routes of one schema version at `path`, and its shared-execution registry.
    fn endpoint<Q, M, S>(
        &self,
        schema: async_graphql::Schema<Q, M, S>,
        path: &'static str,
        public: &'static [&'static str],
        state: &'static [&'static str],
    ) -> (Router, Arc<fanout::Fanout<Q, M, S>>)
    where
        Q: async_graphql::ObjectType + 'static,
        M: async_graphql::ObjectType + 'static,
        S: async_graphql::SubscriptionType + 'static,
    {
        let ws_config = &self.config.websocket;
        let fanout = Arc::new(fanout::Fanout::new(
            schema.clone(),
            ws_config.send_queue_messages,
        ));
        let endpoint = http::Endpoint {
            path,
            graphiql: self.config.graphql.graphiql,
            verifier: self.verifier.clone(),
            socket: ws::Socket {
                fanout: fanout.clone(),
                schema,
                verifier: self.verifier.clone(),
                limits: ws::Limits {
                    init_timeout: std::time::Duration::from_millis(ws_config.init_timeout_ms),
                    max_operations: ws_config.max_operations,
                    write_timeout: std::time::Duration::from_millis(ws_config.write_timeout_ms),
                    public,
                    state,
                },
                shutdown: self.shutdown.clone(),
                user_sockets: self.user_sockets.clone(),
                limiter: self.limiter.clone(),
                catalog: self.catalog.clone(),
                metrics: self.metrics.clone(),
            },
            websocket: ws_config.clone(),
            origins: self.origins.clone(),
            sockets: self.sockets.clone(),
        };
        (http::routes(endpoint), fanout)
    }
}

/// Runs the gateway on `listener` until `shutdown` is cancelled; open sockets are told to go
/// away (1001) and waited for, all within the drain timeout.
pub async fn run(
    config: Config,
    broker: Broker,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    app(&config, &broker, shutdown)?.serve(listener).await
}

/// The SDL of the served v1 schema (what `schema/v1.graphql` must stay compatible with).
pub fn v1_sdl() -> String {
    v1::sdl()
}

/// The SDL of the served v2 schema (what `schema/v2.graphql` must stay compatible with).
pub fn v2_sdl() -> String {
    v2::sdl()
}

/// The configured origin policy, and the CORS layer fed the same allow-list.
#[derive(Debug, Clone)]
pub(crate) struct Origins(switchyard_core::origin::OriginPolicy);

impl Origins {
    fn new(config: &CorsConfig) -> anyhow::Result<Self> {
        switchyard_core::origin::OriginPolicy::new(
            &config.allowed_origins,
            Some(&config.allowed_hosts),
        )
        .map(Self)
        .map_err(|e| anyhow::anyhow!("cors.allowed_origins: {e}"))
    }

    /// Whether a request with these headers may open a socket: no `Origin` (not a browser), an
    /// allowed origin, or the page's own origin on a host the gateway is configured to be
    /// (`cors.allowed_hosts`; localhost and IP addresses when none is configured).
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        self.0.allows(headers)
    }

    fn cors_layer(&self) -> Option<tower_http::cors::CorsLayer> {
        let allowed = self.0.allowed_origins();
        if allowed.is_empty() {
            return None;
        }
        Some(
            tower_http::cors::CorsLayer::new()
                .allow_origin(allowed.to_vec())
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT]),
        )
    }
}
