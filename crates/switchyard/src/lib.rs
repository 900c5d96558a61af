//! The launcher's library: start the whole demo stack — the four demo services and the three
//! gateways — in one process on one in-memory bus, and stop it.
//!
//! The stack's configuration holds each component's own configuration. The launcher wires them:
//! every gateway's (and conversions') `limits`, `exchange` and `conversions` backends, bff-web's
//! and bff-mobile's `statements` (their file routes), and the
//! `exchange` tick source, are pointed at the services it started (so port 0 works everywhere),
//! and all components share one broker (one bus; the gateways' leases). The stack's own
//! `sources` are added to every gateway's.
//! Each component's own `bus`, `log`, `channels` and `publish` sections are not used here; the
//! stack's are: one publish API for the whole stack (`publish`, on 127.0.0.1:8090 with the demo
//! publisher's key), on its bus and catalog.
//! Tests use [`Stack`] directly; the `switchyard` binary wraps it with signals and printing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchyard_core::bus::BusConfig;
use switchyard_core::bus::{Broker, Bus, Retention};
use switchyard_core::channels::{Catalog, ChannelsConfig};
use switchyard_core::keyhash;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::publish::{PublishApi, PublishConfig, PublisherKey};
use switchyard_server::server::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Prefix of the environment variables that override the launcher's configuration.
pub const ENV_PREFIX: &str = "SWITCHYARD";

/// Configuration keys renamed in the stack's sections (bff-mobile's, under `mobile`); the old
/// names are still read, with a warning.
pub const RENAMED_KEYS: &[switchyard_server::config::RenamedKey] =
    &[switchyard_server::config::RenamedKey {
        old: "mobile.websocket.max_frame_bytes",
        new: "mobile.websocket.max_message_bytes",
    }];

/// The HS256 secret the one-process demo stack signs and checks tokens with (`switchyard token`).
/// A demo convenience only: production gateways get their keys from their own configuration.
pub const DEMO_SECRET: &str = "switchyard-demo-secret-change-me";

/// The demo device of the one-process stack (`demo-tv`, configured for EUR/USD) and its key.
/// A demo convenience only, like [`DEMO_SECRET`].
pub const DEMO_DEVICE: &str = "demo-tv";

/// The credential of [`DEMO_DEVICE`] (sent as `X-Device-Key`).
pub const DEMO_DEVICE_KEY: &str = "demo-tv-key-change-me";

/// The bearer token of bff-device's admin API in the one-process stack.
pub const DEMO_ADMIN_TOKEN: &str = "switchyard-demo-admin-token-change-me";

/// Where `switchyard up` serves each gateway's and demo service's `/metrics` (internal ports,
/// not the clients'; 9464 is the port conventionally used by Prometheus exporters of
/// OpenTelemetry SDKs, clear of Prometheus itself on 9090).
pub const DEFAULT_METRICS_LISTEN: [(&str, &str); 7] = [
    ("bff-web", "127.0.0.1:9464"),
    ("bff-mobile", "127.0.0.1:9465"),
    ("bff-device", "127.0.0.1:9466"),
    ("limits", "127.0.0.1:9467"),
    ("exchange", "127.0.0.1:9468"),
    ("conversions", "127.0.0.1:9469"),
    ("statements", "127.0.0.1:9470"),
];

/// The `gateway` label of the stack's own publish API's calls, exported on bff-web's
/// `/metrics` (`switchyard_publish_calls_total{gateway="switchyard"}`).
pub const LAUNCHER: &str = "switchyard";

/// The publisher the one-process stack's publish API knows ([`DEMO_PUBLISHER_KEY`] is its key).
pub const DEMO_PUBLISHER: &str = "demo";

/// The API key of [`DEMO_PUBLISHER`] (sent as `Authorization: Bearer`); the configuration
/// holds only its SHA-256. A demo convenience only, like [`DEMO_SECRET`].
pub const DEMO_PUBLISHER_KEY: &str = "switchyard-demo-publisher-key-change-me";

/// The whole stack's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Log output for the whole process.
    pub log: LogConfig,
    /// The one bus every component shares (in-memory for the one-process stack).
    pub bus: BusConfig,
    /// The one channel catalog every gateway of the stack serves (the demo catalog,
    /// `operations::channels::demo`, by default; the gateways' own `channels`
    /// sections are not used here).
    pub channels: ChannelsConfig,
    /// The one publish API of the stack, on its bus and catalog (the gateways' own `publish`
    /// sections are not used here); `listen` empty serves none.
    pub publish: PublishConfig,
    /// Upstream sources of the whole stack (docs/sources.md), added to every gateway's own
    /// `sources`: whichever gateway has subscribers of a channel feeds it, behind the stack's one
    /// lease. None by default (each gateway's own default, the exchange, stays).
    pub sources: std::collections::BTreeMap<String, switchyard_core::sources::SourceConfig>,
    /// The limits service.
    pub limits: demo_services::limits::Config,
    /// The exchange service.
    pub exchange: demo_services::exchange::Config,
    /// The conversions service.
    pub conversions: demo_services::conversions::Config,
    /// The statements service (large files, behind the gateways' `/v1/files/…`).
    pub statements: demo_services::statements::Config,
    /// The browser gateway.
    pub web: bff_web::Config,
    /// The mobile gateway.
    pub mobile: bff_mobile::Config,
    /// The device gateway.
    pub device: bff_device::Config,
}

impl Default for Config {
    fn default() -> Self {
        let mut web = bff_web::Config::default();
        web.auth.hs256_secret = DEMO_SECRET.to_owned();
        // The demo page at `/`, and each demo service's web component at `/ui/{service}/…`.
        web.ui.demo_page = true;
        web.ui.services = ["exchange", "limits", "conversions"]
            .map(str::to_owned)
            .to_vec();
        let mut mobile = bff_mobile::Config::default();
        mobile.auth.hs256_secret = DEMO_SECRET.to_owned();
        let mut device = bff_device::Config::default();
        device.admin.token = DEMO_ADMIN_TOKEN.to_owned();
        // Each gateway's `/metrics` on an internal port of its own (docs/operations.md).
        web.metrics.listen = DEFAULT_METRICS_LISTEN[0].1.to_owned();
        mobile.metrics.listen = DEFAULT_METRICS_LISTEN[1].1.to_owned();
        device.metrics.listen = DEFAULT_METRICS_LISTEN[2].1.to_owned();
        let mut limits = demo_services::limits::Config::default();
        limits.metrics.listen = DEFAULT_METRICS_LISTEN[3].1.to_owned();
        let mut exchange = demo_services::exchange::Config::default();
        exchange.metrics.listen = DEFAULT_METRICS_LISTEN[4].1.to_owned();
        let mut conversions = demo_services::conversions::Config::default();
        conversions.metrics.listen = DEFAULT_METRICS_LISTEN[5].1.to_owned();
        let mut statements = demo_services::statements::Config::default();
        statements.metrics.listen = DEFAULT_METRICS_LISTEN[6].1.to_owned();
        device.devices.insert(
            DEMO_DEVICE.to_owned(),
            bff_device::DeviceConfig {
                key: DEMO_DEVICE_KEY.to_owned(),
                rates: vec!["EUR/USD".to_owned()],
                settings: [("greeting".to_owned(), "hello".into())]
                    .into_iter()
                    .collect(),
                channels: Vec::new(),
            },
        );
        Self {
            log: LogConfig::default(),
            bus: BusConfig::default(),
            channels: operations::channels::demo(),
            sources: std::collections::BTreeMap::new(),
            publish: PublishConfig {
                listen: "127.0.0.1:8090".to_owned(),
                keys: vec![PublisherKey {
                    publisher: DEMO_PUBLISHER.to_owned(),
                    sha256: keyhash::to_hex(&keyhash::sha256(DEMO_PUBLISHER_KEY.as_bytes())),
                }],
                ..PublishConfig::default()
            },
            limits,
            exchange,
            conversions,
            statements,
            web,
            mobile,
            device,
        }
    }
}

impl Config {
    /// Every listener on 127.0.0.1 port 0 — for tests and benchmarks.
    pub fn ephemeral() -> Self {
        let mut c = Self::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        c.limits.server.listen = any;
        c.exchange.server.listen = any;
        c.conversions.server.listen = any;
        c.statements.server.listen = any;
        c.web.server.listen = any;
        c.mobile.server.listen = any;
        c.device.server.listen = any;
        c.publish.listen = any.to_string();
        // No metrics listeners: their fixed ports would collide between stacks.
        c.web.metrics.listen.clear();
        c.mobile.metrics.listen.clear();
        c.device.metrics.listen.clear();
        c.limits.metrics.listen.clear();
        c.exchange.metrics.listen.clear();
        c.conversions.metrics.listen.clear();
        c.statements.metrics.listen.clear();
        c
    }

    /// Each gateway's and demo service's `/metrics` URL, for those whose `[metrics].listen` is set; `None` for a
    /// port chosen at start (port 0: the gateway logs it as `metrics_addr`).
    pub fn metrics_urls(&self) -> Vec<(&'static str, Option<String>)> {
        [
            ("bff-web", &self.web.metrics.listen),
            ("bff-mobile", &self.mobile.metrics.listen),
            ("bff-device", &self.device.metrics.listen),
            ("limits", &self.limits.metrics.listen),
            ("exchange", &self.exchange.metrics.listen),
            ("conversions", &self.conversions.metrics.listen),
            ("statements", &self.statements.metrics.listen),
        ]
        .into_iter()
        .filter(|(_, listen)| !listen.is_empty())
        .map(|(name, listen)| {
            let url = listen
                .parse::<SocketAddr>()
                .ok()
                .filter(|addr| addr.port() != 0)
                .map(|addr| format!("http://{addr}/metrics"));
            (name, url)
        })
        .collect()
    }

    /// Checks what the launcher needs beyond what loading checks: it starts bff-web and
    /// bff-mobile to verify tokens (`switchyard token` signs them), so each must have a key to
    /// verify with. A key emptied by the configuration is an error naming it, never a gateway
    /// that quietly refuses every token. [`Stack::start`] calls it.
    pub fn check(&self) -> anyhow::Result<()> {
        for (section, auth) in [("web", &self.web.auth), ("mobile", &self.mobile.auth)] {
            let no_key = auth.hs256_secret.is_empty()
                && auth.rs256_public_key_pem.trim().is_empty()
                && auth.jwks_url.is_empty();
            if no_key {
                anyhow::bail!(
                    "{section}.auth.hs256_secret is empty and {section}.auth has no other key: \
                     the launcher's gateways verify tokens; leave it unset for the demo secret \
                     or set {ENV_PREFIX}__{}__AUTH__HS256_SECRET",
                    section.to_ascii_uppercase()
                );
            }
        }
        Ok(())
    }

    /// The secret `switchyard token` signs with: bff-web's `auth.hs256_secret`. Empty is an error
    /// naming the key (a token signed with an empty key is no token).
    pub fn token_secret(&self) -> anyhow::Result<&str> {
        if self.web.auth.hs256_secret.is_empty() {
            anyhow::bail!(
                "web.auth.hs256_secret is empty: there is no secret to sign a token with; leave \
                 it unset for the demo secret or set {ENV_PREFIX}__WEB__AUTH__HS256_SECRET"
            );
        }
        Ok(&self.web.auth.hs256_secret)
    }
}

/// The components of the stack, in start order.
pub const COMPONENTS: [&str; 7] = [
    "limits",
    "exchange",
    "conversions",
    "statements",
    "bff-web",
    "bff-mobile",
    "bff-device",
];

/// A running stack.
pub struct Stack {
    addrs: HashMap<&'static str, SocketAddr>,
    broker: Broker,
    bus: Arc<dyn Bus>,
    root: CancellationToken,
    tokens: HashMap<&'static str, CancellationToken>,
    web: bff_web::Config,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Stack {
    /// Checks the configuration ([`Config::check`]), binds every listener, then starts every
    /// component.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        config.check()?;
        let Config {
            log: _,
            bus: bus_config,
            channels,
            publish,
            sources,
            limits,
            exchange,
            conversions,
            statements,
            mut web,
            mut mobile,
            mut device,
        } = config;
        for gateway_sources in [&mut web.sources, &mut mobile.sources, &mut device.sources] {
            for (name, source) in &sources {
                if gateway_sources
                    .insert(name.clone(), source.clone())
                    .is_some()
                {
                    anyhow::bail!(
                        "sources.{name}: a gateway of the stack has a source of this name already"
                    );
                }
            }
        }
        // Every catalog channel keeps its own history on the stack's bus.
        let catalog = Arc::new(Catalog::new(&channels)?);
        let retention = Retention::new(bus_config.history_events, Some(catalog.clone()));
        let broker = Broker::connect_with(&bus_config, retention);
        web.channels = channels.clone();
        mobile.channels = channels.clone();
        device.channels = channels;
        // The stack serves one publish API itself; the gateways' own are not used.
        web.publish = PublishConfig::default();
        mobile.publish = PublishConfig::default();
        device.publish = PublishConfig::default();
        let bus = broker.bus();

        let mut listeners = HashMap::new();
        let mut addrs = HashMap::new();
        for (name, addr) in [
            ("limits", limits.server.listen),
            ("exchange", exchange.server.listen),
            ("conversions", conversions.server.listen),
            ("statements", statements.server.listen),
            ("bff-web", web.server.listen),
            ("bff-mobile", mobile.server.listen),
            ("bff-device", device.server.listen),
        ] {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: cannot listen on {addr}: {e}"))?;
            addrs.insert(name, listener.local_addr()?);
            listeners.insert(name, listener);
        }
        let publish_listener = switchyard_server::publish::bind(&publish).await?;
        if let Some(listener) = &publish_listener {
            addrs.insert("publish", listener.local_addr()?);
        }

        let service_url = |name: &str| format!("http://{}", addrs[name]);
        let wire = |backends: &mut std::collections::BTreeMap<String, BackendConfig>,
                    names: &[&str]| {
            for &name in names {
                backends
                    .entry(name.to_owned())
                    .or_insert_with(|| BackendConfig::new(""))
                    .base_url = service_url(name);
            }
        };
        use operations::backend::{CONVERSIONS, EXCHANGE, LIMITS, STATEMENTS};
        let mut conversions = conversions;
        wire(&mut conversions.backends, &[LIMITS, EXCHANGE]);
        for gateway in [
            &mut web.backends,
            &mut mobile.backends,
            &mut device.backends,
        ] {
            wire(gateway, &[LIMITS, EXCHANGE, CONVERSIONS]);
        }
        for gateway in [&mut web.backends, &mut mobile.backends] {
            wire(gateway, &[STATEMENTS]);
        }
        // The exchange's tick WebSocket, a json-ws source feeding the gateways' rates channels
        // when the catalog has them (a stack with a catalog of its own may not).
        let ticks = format!("ws://{}/v1/ticks", addrs["exchange"]);
        let has_rates = catalog.resolve("rates.EUR-USD").is_ok();
        for sources in [&mut web.sources, &mut mobile.sources, &mut device.sources] {
            if has_rates {
                sources
                    .entry(operations::sources::EXCHANGE_SOURCE.to_owned())
                    .or_insert_with(|| operations::sources::exchange_source(""))
                    .url = ticks.clone();
            }
        }

        let root = CancellationToken::new();
        let mut tokens = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut take = |name: &'static str| {
            let token = root.child_token();
            tokens.insert(name, token.clone());
            let listener = listeners
                .remove(name)
                .unwrap_or_else(|| unreachable!("every component's listener is bound above"));
            (listener, token)
        };
        let (l, t) = take("limits");
        tasks.spawn(async move { ("limits", demo_services::limits::run(limits, l, t).await) });
        let (l, t) = take("exchange");
        tasks.spawn(async move {
            (
                "exchange",
                demo_services::exchange::run(exchange, l, t).await,
            )
        });
        let (l, t) = take("conversions");
        let b = bus.clone();
        tasks.spawn(async move {
            (
                "conversions",
                demo_services::conversions::run(conversions, b, l, t).await,
            )
        });
        let (l, t) = take("statements");
        tasks.spawn(async move {
            (
                "statements",
                demo_services::statements::run(statements, l, t).await,
            )
        });
        // The stack's publish API, counted on bff-web's `/metrics` (gateway="switchyard").
        let publish_api = publish_listener
            .as_ref()
            .map(|_| PublishApi::new(&publish, catalog, bus.clone()));
        let (l, t) = take("bff-web");
        let web_config = web.clone();
        let web_app =
            bff_web::app(&web, &broker, t).map_err(|e| anyhow::anyhow!("bff-web: {e:#}"))?;
        if let Some(api) = &publish_api {
            web_app
                .metrics()
                .add_publish_api(LAUNCHER, api.stats().clone());
        }
        tasks.spawn(async move { ("bff-web", web_app.serve(l).await) });
        let (l, t) = take("bff-mobile");
        let b = broker.clone();
        tasks.spawn(async move { ("bff-mobile", bff_mobile::run(mobile, b, l, t).await) });
        let (l, t) = take("bff-device");
        let b = broker.clone();
        tasks.spawn(async move { ("bff-device", bff_device::run(device, b, l, t).await) });
        if let (Some(listener), Some(api)) = (publish_listener, publish_api) {
            // Its callers are the stack's backends: no cap per client address.
            let server = ServerConfig::backend(listener.local_addr()?);
            let token = root.child_token();
            tokens.insert("publish", token.clone());
            tasks.spawn(async move {
                let served = api.serve(listener, token, &server).await;
                ("publish", served.map_err(anyhow::Error::from))
            });
        }

        Ok(Self {
            addrs,
            broker,
            bus,
            root,
            tokens,
            web: web_config,
            tasks,
        })
    }

    /// The address a component listens on (`limits`, `exchange`, `conversions`, `statements`, `bff-web`,
    /// `bff-mobile`, `bff-device`), or the stack's publish API (`publish`, when
    /// `publish.listen` is set).
    pub fn addr(&self, component: &str) -> SocketAddr {
        self.addrs
            .get(component)
            .copied()
            .unwrap_or_else(|| panic!("no component named {component}; see COMPONENTS"))
    }

    /// The address of the stack's publish API, when it serves one (`publish.listen` set).
    pub fn publish_addr(&self) -> Option<SocketAddr> {
        self.addrs.get("publish").copied()
    }

    /// `http://{addr}` of a component.
    pub fn url(&self, component: &str) -> String {
        format!("http://{}", self.addr(component))
    }

    /// The shared broker: every component's bus, and the gateways' leases.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The shared bus (the broker's).
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The configuration bff-web runs with here, wired to the stack's services (backends, the
    /// exchange bridge, the catalog): another instance built from it on [`Stack::broker`]
    /// serves the same API and demo page (tests run one they can stop and start again).
    pub fn web_config(&self) -> &bff_web::Config {
        &self.web
    }

    /// Stops one component (its listener closes; the rest keep running).
    pub fn stop_component(&self, component: &str) {
        if let Some(t) = self.tokens.get(component) {
            t.cancel();
        }
    }

    /// Waits until `signal` resolves or a component fails, then stops everything and waits for
    /// every component's drain. Returns the first component error, if any.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failed = tokio::select! {
            () = signal => None,
            done = self.tasks.join_next() => match done {
                Some(Ok((name, Err(e)))) => Some(anyhow::anyhow!("{name} failed: {e:#}")),
                Some(Ok((name, Ok(())))) => Some(anyhow::anyhow!("{name} stopped unexpectedly")),
                Some(Err(e)) => Some(anyhow::anyhow!("a component panicked: {e}")),
                None => None,
            },
        };
        let stopped = self.stop().await;
        match failed {
            Some(e) => Err(e),
            None => stopped,
        }
    }

    /// Stops every component and waits for their drains.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.root.cancel();
        let mut first = None;
        while let Some(done) = self.tasks.join_next().await {
            let err = match done {
                Ok((_, Ok(()))) => continue,
                Ok((name, Err(e))) => anyhow::anyhow!("{name} failed: {e:#}"),
                Err(e) => anyhow::anyhow!("a component panicked: {e}"),
            };
            tracing::error!("{err:#}");
            first.get_or_insert(err);
        }
        first.map_or(Ok(()), Err)
    }
}
