//! The one gateway runtime: what every gateway builds around its own routes, written once.
//!
//! From a gateway's configuration ([`GatewayConfig`]: the sections every gateway has) and its
//! process's [`Broker`] (its bus, leases and their shared connections), [`Runtime::new`] builds the backend registry, the hub with its feeds — each behind the
//! cluster-wide lease, so that among the instances on one broker only one watches a topic
//! upstream — and the rate limiter. [`Runtime::router`] puts `/healthz` and `/readyz` beside the
//! gateway's routes and wraps them in the per-request rate limits and the common layers;
//! [`Runtime::serve`] serves them with the bounded drain, waiting for the upgraded sockets the
//! gateway tracked in [`Runtime::sockets`], and the publish API (`crate::publish`) on its own
//! listener when `[publish].listen` is set, and `/metrics` (`crate::metrics`) on its own when
//! `[metrics].listen` is set.
//!
//! What feeds the hub is configuration: each `[sources.NAME]` is started as a
//! [`Source`](switchyard_core::sources::Source) feeding the catalog channels its `channels`
//! template names, behind the lease. Routes, wire formats and each gateway's own sections stay in
//! the gateway; so does its config struct, which implements [`GatewayConfig`] with
//! [`gateway_config!`](crate::gateway_config).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use switchyard_core::bus::{Broker, Bus};
use switchyard_core::channels::{Catalog, ChannelsConfig};
use switchyard_core::hub::{Hub, HubConfig};
use switchyard_core::leased::LeasedFeeder;
use switchyard_core::ratelimit::{RateLimitConfig, RateLimiter};
use switchyard_core::sources::{Source, SourceConfig};
use switchyard_core::upstream::{BackendConfig, Upstreams};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower_http::cors::CorsLayer;

use crate::cli::{ServerBinary, WithBus};
use crate::config::ServerConfig;
use crate::metrics::{Metrics, MetricsConfig};
use crate::publish::{PublishApi, PublishConfig};
use crate::ratelimit::{Refuse, UserOf};
use crate::server::{self, CancellationToken, Readiness};

/// The sections every gateway's configuration has, besides `[server]`, `[log]` and `[bus]`.
pub trait GatewayConfig: ServerBinary + WithBus {
    /// `[hub]`.
    fn hub(&self) -> &HubConfig;
    /// `[backends.NAME]`.
    fn backends(&self) -> &BTreeMap<String, BackendConfig>;
    /// `[sources.NAME]`: upstream services feeding catalog channels.
    fn sources(&self) -> &BTreeMap<String, SourceConfig>;
    /// `[rate_limits]`.
    fn rate_limits(&self) -> &RateLimitConfig;
    /// `[channels]`: the channel catalog (checked when the configuration was read).
    fn channels(&self) -> &ChannelsConfig;
    /// `[publish]`: the publish API for backends, on a listener of its own when `listen` is set.
    fn publish(&self) -> &PublishConfig;
    /// `[metrics]`: `/metrics` on a listener of its own when `listen` is set, and the clients
    /// named in the usage labels.
    fn metrics(&self) -> &MetricsConfig;
}

/// What a gateway runs on: its backends, hub, limiter, and what serving it needs.
pub struct Runtime {
    /// The backend registry, built from `[backends]`.
    pub upstreams: Arc<Upstreams>,
    /// The hub over the bus, with the gateway's feeds; catalog channels take their class from
    /// the catalog.
    pub hub: Hub,
    /// The channel catalog of `[channels]`: which channels exist and who may use them.
    pub catalog: Arc<Catalog>,
    /// The sources of `[sources]`, by name (their counters: [`Source::stats`]).
    pub sources: BTreeMap<String, Source>,
    /// The bus of the broker the gateway was handed.
    pub bus: Arc<dyn Bus>,
    /// The rate limiter of `[rate_limits]`, named after the gateway.
    pub limiter: Arc<RateLimiter>,
    /// The upgraded sockets the gateway spawns: waited for after the HTTP drain.
    pub sockets: TaskTracker,
    /// Cancelled when the gateway is asked to stop.
    pub shutdown: CancellationToken,
    /// The gateway's metrics, served on `[metrics].listen`; a gateway adds its own gauges
    /// ([`Metrics::gauge`]).
    pub metrics: Metrics,
    server: ServerConfig,
    publish: PublishConfig,
    metrics_config: MetricsConfig,
    publish_api: PublishApi,
}

impl Runtime {
    /// Builds the runtime of gateway `C` from its configuration and its process's broker (the
    /// bus, the sources' leases and the rate limiter all live on it). A source that cannot start
    /// (a bad key, a `channels` template that names no catalog channel) is an error naming its
    /// key.
    pub fn new<C: GatewayConfig>(
        config: &C,
        broker: &Broker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let upstreams = Arc::new(Upstreams::new(config.backends())?);
        let bus = broker.bus();
        let catalog = Arc::new(Catalog::new(config.channels())?);
        let mut hub = Hub::new(bus.clone(), config.hub().clone()).with_catalog(catalog.clone());
        let mut sources = BTreeMap::new();
        let leases_held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        if !config.sources().is_empty() {
            // The one place a gateway's lease is taken: from its broker, on the bus's connections.
            let lease = broker.lease();
            let holder = LeasedFeeder::unique_holder(C::NAME);
            for (name, source_config) in config.sources() {
                let source = Source::start(name, source_config, catalog.clone(), bus.clone())
                    .map_err(|e| anyhow::anyhow!(e))?;
                check_covered(name, source_config, &catalog)?;
                let leased = LeasedFeeder::new(
                    Arc::new(source.clone()),
                    lease.clone(),
                    name,
                    &holder,
                    source.lease_ttl(),
                )
                .counting_held(leases_held.clone());
                hub = hub.with_feeder(&source.topic_prefix(), Arc::new(leased));
                sources.insert(name.clone(), source);
            }
        }
        let limiter = RateLimiter::new(C::NAME, config.rate_limits(), broker);
        config.metrics().validate()?;
        let publish_api = PublishApi::new(config.publish(), catalog.clone(), bus.clone());
        let metrics = Metrics::with(
            C::NAME,
            config.metrics(),
            crate::metrics::Sources {
                upstreams: Some(upstreams.clone()),
                sources: sources.clone(),
                publish: Some(publish_api.stats().clone()),
                hub: Some(hub.clone()),
                bus: Some(broker.metrics()),
            },
        );
        metrics.gauge(
            "switchyard_leases_held",
            "Cluster-wide source leases this instance holds now (it feeds those topics upstream)",
            leases_held,
        );
        Ok(Self {
            metrics,
            metrics_config: config.metrics().clone(),
            publish_api,
            upstreams,
            hub,
            catalog,
            sources,
            bus,
            limiter,
            sockets: TaskTracker::new(),
            shutdown,
            server: config.server().clone(),
            publish: config.publish().clone(),
        })
    }

    /// The gateway's `routes` with `/healthz` and `/readyz` (its backends and bus) beside them,
    /// limited per IP for every request and per user for those `user_of` names (a refusal is
    /// `refuse`'s answer and never reaches the routes), then CORS when given, then the common
    /// layers (tracing, body limit).
    pub fn router(
        &self,
        routes: Router,
        user_of: Option<UserOf>,
        refuse: Refuse,
        cors: Option<CorsLayer>,
    ) -> Router {
        let readiness = Readiness::new(Some(self.upstreams.clone()), Some(self.bus.clone()));
        // Requests are counted only when someone can read the count (`[metrics] listen`).
        let routes = if self.metrics_config.listen.is_empty() {
            routes
        } else {
            routes.layer(axum::middleware::from_fn_with_state(
                self.metrics.clone(),
                crate::metrics::count,
            ))
        };
        let routes = routes.merge(server::health_routes(readiness));
        let mut router = crate::ratelimit::layer(routes, self.limiter.clone(), user_of, refuse);
        if let Some(cors) = cors {
            router = router.layer(cors);
        }
        server::with_common_layers(router, &self.server)
    }

    /// Serves `router` on `listener` until shutdown, then drains HTTP connections and the
    /// upgraded sockets in [`Self::sockets`] within one drain timeout; with `publish.listen`
    /// set, serves the publish API there too ([`Self::bind_publish`], then
    /// [`Self::serve_with_publish`]).
    pub async fn serve(&self, listener: TcpListener, router: Router) -> anyhow::Result<()> {
        let publish = self.bind_publish().await?;
        self.serve_with_publish(listener, router, publish).await
    }

    /// Binds the publish API's listener of `publish.listen` (logged as `publish_addr`), or
    /// `None` when it is empty. A failure names the key: the gateway does not start.
    pub async fn bind_publish(&self) -> anyhow::Result<Option<TcpListener>> {
        crate::publish::bind(&self.publish).await
    }

    /// The publish API on this gateway's catalog and bus, with its `[publish]` keys and limits
    /// (one for the runtime: its calls are counted in [`Self::metrics`]).
    pub fn publish_api(&self) -> PublishApi {
        self.publish_api.clone()
    }

    /// [`Self::serve`] with the publish API's listener already bound (or none): both stop
    /// accepting when the gateway is asked to stop, and drain within the same timeout. The
    /// metrics listener of `[metrics].listen` is bound here (a failure names the key) and served
    /// beside them.
    pub async fn serve_with_publish(
        &self,
        listener: TcpListener,
        router: Router,
        publish: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let metrics = crate::metrics::bind(&self.metrics_config).await?;
        let main = server::serve_with_sockets(
            listener,
            router,
            self.shutdown.clone(),
            &self.server,
            self.sockets.clone(),
        );
        let publish = async {
            match publish {
                Some(listener) => {
                    self.publish_api()
                        .serve(listener, self.shutdown.clone(), &self.server)
                        .await
                }
                None => Ok(()),
            }
        };
        let metrics = async {
            match metrics {
                Some(listener) => {
                    self.metrics
                        .serve(listener, self.shutdown.clone(), &self.server)
                        .await
                }
                None => Ok(()),
            }
        };
        let (main, publish, metrics) = tokio::join!(main, publish, metrics);
        main?;
        publish.map_err(|e| anyhow::anyhow!("the publish API: {e}"))?;
        metrics.map_err(|e| anyhow::anyhow!("the metrics listener: {e}"))?;
        Ok(())
    }
}

/// A source's `channels` must name channels of the catalog: rendered with a sample value for
/// each placeholder, the name must resolve (else the source could never feed anything, which
/// is a configuration error, not a silent no-op).
fn check_covered(name: &str, config: &SourceConfig, catalog: &Catalog) -> anyhow::Result<()> {
    let template = switchyard_core::sources::template::Template::parse(&config.channels)
        .map_err(|e| anyhow::anyhow!("sources.{name}.channels: {e}"))?;
    let sample: switchyard_core::sources::Vars = template
        .vars()
        .map(|v| (v.to_owned(), "x".to_owned()))
        .collect();
    let rendered = template.render(&sample).unwrap_or_default();
    catalog.resolve(&rendered).map(|_| ()).map_err(|e| {
        anyhow::anyhow!(
            "sources.{name}.channels: `{}` names no channel of the catalog ([channels]): \
             `{rendered}`: {e}",
            config.channels
        )
    })
}

/// Implements [`ServerBinary`], [`WithBus`] and [`GatewayConfig`] for a gateway's config struct,
/// whose shared sections are the fields `server`, `log`, `bus`, `hub`, `backends`, `sources`,
/// `rate_limits`, `channels`, `publish` and `metrics`:
///
/// ```text
/// switchyard_server::gateway_config!(Config, "bff-web", "Switchyard gateway for browsers", ENV_PREFIX);
/// ```
#[macro_export]
macro_rules! gateway_config {
    ($config:ty, $name:expr, $about:expr, $env_prefix:expr $(, renamed = $renamed:expr)?) => {
        $crate::server_binary!($config, $name, $about, $env_prefix $(, renamed = $renamed)?);
        impl $crate::cli::WithBus for $config {
            fn bus(&self) -> &$crate::__core::bus::BusConfig {
                &self.bus
            }
            fn channel_catalog(&self) -> Option<&$crate::__core::channels::ChannelsConfig> {
                Some(&self.channels)
            }
        }
        impl $crate::runtime::GatewayConfig for $config {
            fn hub(&self) -> &$crate::__core::hub::HubConfig {
                &self.hub
            }
            fn backends(
                &self,
            ) -> &::std::collections::BTreeMap<String, $crate::__core::upstream::BackendConfig>
            {
                &self.backends
            }
            fn sources(
                &self,
            ) -> &::std::collections::BTreeMap<String, $crate::__core::sources::SourceConfig> {
                &self.sources
            }
            fn rate_limits(&self) -> &$crate::__core::ratelimit::RateLimitConfig {
                &self.rate_limits
            }
            fn channels(&self) -> &$crate::__core::channels::ChannelsConfig {
                &self.channels
            }
            fn publish(&self) -> &$crate::publish::PublishConfig {
                &self.publish
            }
            fn metrics(&self) -> &$crate::metrics::MetricsConfig {
                &self.metrics
            }
        }
    };
}

/// Implements [`ServerBinary`] for a config struct with the fields `server` and `log`.
#[macro_export]
macro_rules! server_binary {
    ($config:ty, $name:expr, $about:expr, $env_prefix:expr $(, renamed = $renamed:expr)?) => {
        impl $crate::cli::ServerBinary for $config {
            const NAME: &'static str = $name;
            const ABOUT: &'static str = $about;
            const ENV_PREFIX: &'static str = $env_prefix;
            $(const RENAMED_KEYS: &'static [$crate::config::RenamedKey] = $renamed;)?
            fn server(&self) -> &$crate::config::ServerConfig {
                &self.server
            }
            fn log(&self) -> &$crate::config::LogConfig {
                &self.log
            }
        }
    };
}
