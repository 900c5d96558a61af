//! Prometheus metrics: the `[metrics]` section, the gateway's counters, and `/metrics` on an
//! internal listener of its own (never the clients' port).
//!
//! The exporter is [`prometheus_client`], the official OpenMetrics client for Rust: it keeps no
//! global registry (each gateway's runtime owns one, so several gateways in one process, as in
//! the launcher, never mix their series) and its text encoder is the reference one. Nothing here
//! takes a lock or allocates on a request, a delivery or a backend call: requests, sockets and
//! held polls are counted in fixed tables of atomics indexed by (API version, client) built at
//! start ([`usage`]), cut-offs, conflations and resets in plain atomics, socket queue depths in
//! one atomic per socket summed at scrape time ([`depth`]); everything else — backend calls,
//! circuit states, sources, the hub, the broker ([`switchyard_core::bus::BusMetrics`]), the
//! publish APIs and the gauges a gateway registers — is read from the atomics the code already
//! keeps, at scrape time, by one collector ([`collect`]). The demo services have a smaller
//! exporter of their own ([`service`]).
//!
//! Labels and their bounds (docs/operations.md lists every series):
//! - `gateway`: the binary's name (`bff-web`, `bff-mobile`, `bff-device`; `switchyard` for the
//!   launcher's own publish API);
//! - `version`: `v1`, `v2` (the first path segment), or `other`;
//! - `client`: `name/version` of the client application, bounded by `[metrics].known_clients`:
//!   the exact `name/version` when it is listed, else `name` when it is listed, else `other`;
//!   `none` when the client names itself nowhere. Read from the `X-Client-App` header, else a
//!   device's `X-Device-Model` / `X-Device-Firmware` headers; on sockets, the `client` of the
//!   graphql-ws `connection_init` payload or of the mobile `auth` message replaces it;
//! - `backend`, `source`, `publisher`: configured names (`unknown` for a publish call whose key
//!   names no publisher); `outcome`, `reason`, `state`, `pattern`: fixed lists.

mod collect;
mod depth;
pub mod service;
mod usage;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use switchyard_core::bus::BusMetrics;
use switchyard_core::hub::Hub;
use switchyard_core::sources::Source;
use switchyard_core::upstream::Upstreams;
use tokio::net::TcpListener;

pub use depth::QueueDepth;
pub use usage::{ConnectionGuard, PollGuard, Usage};

use crate::config::ServerConfig;
use crate::publish::PublishStats;
use crate::server::CancellationToken;

/// The header naming the client application: `X-Client-App: name/version`.
pub const CLIENT_APP_HEADER: &str = "x-client-app";

/// The headers a device names its model and firmware with (its `client` label is
/// `model/firmware` when it sends no `X-Client-App`).
pub const DEVICE_MODEL_HEADER: &str = "x-device-model";
/// See [`DEVICE_MODEL_HEADER`].
pub const DEVICE_FIRMWARE_HEADER: &str = "x-device-firmware";

/// The API versions requests are counted under (the last is any other path).
const VERSIONS: [&str; 3] = ["v1", "v2", "other"];

/// Why a slow consumer was cut off (the `reason` label).
pub const CUT_OFF_REASONS: [&str; 2] = ["queue_full", "write_timeout"];

/// Longest client list accepted (each entry multiplies the request series).
const MAX_KNOWN_CLIENTS: usize = 64;

/// The `[metrics]` section: where `/metrics` is served, and the clients named in its labels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the metrics listener (`127.0.0.1:9464`; port 0 picks a free port, logged as
    /// `metrics_addr`). Empty (the default): no metrics listener.
    pub listen: String,
    /// Client applications given a `client` label of their own, as `name` (every version of it)
    /// or `name/version` (that version alone); any other `X-Client-App` is counted as `other`.
    /// At most 64 entries of at most 64 characters of `A-Z a-z 0-9 - _ . /`.
    pub known_clients: Vec<String>,
}

impl MetricsConfig {
    /// The address to listen on; `None` when empty. A malformed address is an error naming the
    /// key.
    pub fn listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            anyhow::anyhow!(
                "metrics.listen: `{}` is not an address such as 127.0.0.1:9464 (empty: no metrics)",
                self.listen
            )
        })
    }

    /// Checks the client list; the error names the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.known_clients.len() <= MAX_KNOWN_CLIENTS,
            "metrics.known_clients: at most {MAX_KNOWN_CLIENTS} entries"
        );
        for (i, c) in self.known_clients.iter().enumerate() {
            let ok = (1..=64).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
                && !matches!(c.as_str(), "other" | "none");
            anyhow::ensure!(
                ok,
                "metrics.known_clients[{i}]: `{c}` must be 1 to 64 of A-Z a-z 0-9 - _ . / \
                 (and not `other` or `none`)"
            );
        }
        self.listen_addr().map(|_| ())
    }
}

/// A gauge a gateway registers: read at scrape time.
#[derive(Debug)]
struct ExtraGauge {
    name: &'static str,
    help: &'static str,
    value: Arc<AtomicUsize>,
}

/// A counter shared with a hot path that has no [`Metrics`] at hand (a socket's send queue):
/// one relaxed increment.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gateway's metrics: counted by its layers, read at scrape time. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
    registry: Arc<Registry>,
}

struct Inner {
    gateway: &'static str,
    /// Label values of the `client` label: the known clients, then `other`, then `none`.
    clients: Vec<String>,
    /// Requests by version × client, at `version * clients.len() + client`.
    requests: Box<[AtomicU64]>,
    /// Upgraded sockets open now, by version × client (same index).
    connections: Box<[AtomicI64]>,
    /// Upgraded sockets opened, by version × client (same index).
    connections_opened: Box<[AtomicU64]>,
    /// Long-polls held now, by version × client (same index).
    held_polls: Box<[AtomicI64]>,
    /// Slow consumers cut off, by [`CUT_OFF_REASONS`].
    cut_offs: [AtomicU64; CUT_OFF_REASONS.len()],
    /// Queued updates replaced by a newer one before they were sent.
    conflations: Counter,
    /// Reset answers (history lost under a client's cursor; bff-device).
    resets: AtomicU64,
    /// Gap items in poll answers (history lost under a followed channel's position).
    poll_gaps: AtomicU64,
    /// The sockets' send queues.
    socket_queues: depth::Depths,
    upstreams: Option<Arc<Upstreams>>,
    sources: BTreeMap<String, Source>,
    publish: Option<PublishStats>,
    /// Other publish APIs counted here, by the `gateway` label they are exported under.
    other_publish: Mutex<Vec<(&'static str, PublishStats)>>,
    hub: Option<Hub>,
    bus: Option<Arc<BusMetrics>>,
    gauges: Mutex<Vec<ExtraGauge>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("gateway", &self.gateway)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

fn table<T: Default>(n: usize) -> Box<[T]> {
    (0..n).map(|_| T::default()).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a gateway's metrics read at scrape time, besides what it counts itself.
#[derive(Default)]
pub struct Sources {
    /// The backend registry (calls, retries, latency, circuits).
    pub upstreams: Option<Arc<Upstreams>>,
    /// The configured sources, by name.
    pub sources: BTreeMap<String, Source>,
    /// The gateway's publish API.
    pub publish: Option<PublishStats>,
    /// The hub (subscriptions, deliveries, gaps, catch-ups, queue depths).
    pub hub: Option<Hub>,
    /// The broker (publish latency, connections lost, live-feed repairs).
    pub bus: Option<Arc<BusMetrics>>,
}

impl Metrics {
    /// The metrics of gateway `gateway` over its backends, sources, publish API and hub.
    pub fn new(
        gateway: &'static str,
        config: &MetricsConfig,
        upstreams: Arc<Upstreams>,
        sources: BTreeMap<String, Source>,
        publish: Option<PublishStats>,
        hub: Option<Hub>,
    ) -> Self {
        Self::with(
            gateway,
            config,
            Sources {
                upstreams: Some(upstreams),
                sources,
                publish,
                hub,
                bus: None,
            },
        )
    }

    /// [`Self::new`] with everything it reads named in `read`.
    pub fn with(gateway: &'static str, config: &MetricsConfig, read: Sources) -> Self {
        let mut clients: Vec<String> = config.known_clients.clone();
        clients.sort();
        clients.dedup();
        clients.push("other".to_owned());
        clients.push("none".to_owned());
        let n = VERSIONS.len() * clients.len();
        let inner = Arc::new(Inner {
            gateway,
            clients,
            requests: table(n),
            connections: table(n),
            connections_opened: table(n),
            held_polls: table(n),
            cut_offs: Default::default(),
            conflations: Counter::default(),
            resets: AtomicU64::new(0),
            poll_gaps: AtomicU64::new(0),
            socket_queues: depth::Depths::default(),
            upstreams: read.upstreams,
            sources: read.sources,
            publish: read.publish,
            other_publish: Mutex::new(Vec::new()),
            hub: read.hub,
            bus: read.bus,
            gauges: Mutex::new(Vec::new()),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collect::Scrape(inner.clone())));
        Self {
            inner,
            registry: Arc::new(registry),
        }
    }

    /// The gateway's name (its `gateway` label).
    pub fn gateway(&self) -> &'static str {
        self.inner.gateway
    }

    /// Exports `value` as the gauge `name` (labelled with the gateway), read at every scrape.
    /// For counts the gateway already keeps.
    pub fn gauge(&self, name: &'static str, help: &'static str, value: Arc<AtomicUsize>) {
        lock(&self.inner.gauges).push(ExtraGauge { name, help, value });
    }

    /// Exports the calls of another publish API (the launcher's, for the whole stack) in
    /// `switchyard_publish_calls_total`, under `gateway="{gateway}"`.
    pub fn add_publish_api(&self, gateway: &'static str, stats: PublishStats) {
        lock(&self.inner.other_publish).push((gateway, stats));
    }

    /// Counts one request to `path` from the client that `client_app` (the `X-Client-App`
    /// header) names, and returns its (version, client) as a [`Usage`].
    pub fn count_request(&self, path: &str, client_app: Option<&[u8]>) -> Usage {
        let client = self.client_index(client_app);
        self.count(version_index(path), client)
    }

    fn count(&self, version: usize, client: usize) -> Usage {
        let usage = Usage::new(self.clone(), version, client);
        if let Some(counter) = self.inner.requests.get(usage.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        usage
    }

    /// The (version, client) of a request under API version `version` (`v1`) with `headers`,
    /// without counting it (for a held poll: [`Usage::held_poll`]).
    pub fn usage(&self, version: &str, headers: &HeaderMap) -> Usage {
        let v = VERSIONS
            .iter()
            .position(|x| *x == version)
            .unwrap_or(VERSIONS.len() - 1);
        Usage::new(self.clone(), v, self.client_of(headers))
    }

    /// The `client` label index of a request's headers: `X-Client-App`, else a device's
    /// `X-Device-Model` (with `X-Device-Firmware`), else `none`.
    fn client_of(&self, headers: &HeaderMap) -> usize {
        if let Some(app) = headers.get(CLIENT_APP_HEADER) {
            return self.client_index(Some(app.as_bytes()));
        }
        match headers.get(DEVICE_MODEL_HEADER) {
            Some(model) => {
                let firmware = headers.get(DEVICE_FIRMWARE_HEADER).map(|f| f.as_bytes());
                self.named_index(model.as_bytes(), firmware)
            }
            None => self.client_index(None),
        }
    }

    /// The index of the `client` label value for a `name/version` value (no allocation).
    fn client_index(&self, client_app: Option<&[u8]>) -> usize {
        let none = self.inner.clients.len() - 1;
        let Some(value) = client_app else {
            return none;
        };
        let value = value.trim_ascii();
        match value.iter().position(|b| *b == b'/') {
            Some(slash) => self.named_index(&value[..slash], Some(&value[slash + 1..])),
            None => self.named_index(value, None),
        }
    }

    /// The index of the `client` label for application (or model) `name` at `version`: the
    /// exact `name/version` when known, else `name`, else `other`.
    fn named_index(&self, name: &[u8], version: Option<&[u8]>) -> usize {
        let clients = &self.inner.clients;
        let other = clients.len() - 2;
        let (Ok(name), Ok(version)) = (
            std::str::from_utf8(name.trim_ascii()),
            version
                .map(|v| std::str::from_utf8(v.trim_ascii()))
                .transpose(),
        ) else {
            return other;
        };
        let known = &clients[..other];
        let exact = version.and_then(|version| {
            known.iter().position(|c| {
                c.len() == name.len() + 1 + version.len()
                    && c.starts_with(name)
                    && c.as_bytes()[name.len()] == b'/'
                    && c.ends_with(version)
            })
        });
        exact
            .or_else(|| known.iter().position(|c| c == name))
            .unwrap_or(other)
    }

    /// Counts a slow consumer cut off: its queue was full (`queue_full`), or a write waited too
    /// long for it to read (`write_timeout`).
    pub fn cut_off(&self, queue_full: bool) {
        let i = usize::from(!queue_full);
        self.inner.cut_offs[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counter of conflations (a queued update replaced by a newer one), for a socket's
    /// queue.
    pub fn conflations(&self) -> Counter {
        self.inner.conflations.clone()
    }

    /// Counts a reset answer (history lost under a client's cursor).
    pub fn reset(&self) {
        self.inner.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` gap items in a poll answer.
    pub fn poll_gaps(&self, n: u64) {
        if n > 0 {
            self.inner.poll_gaps.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A socket's send queue depth, summed into `switchyard_socket_queued_messages` at scrape
    /// time while the handle lives (the socket sets it; one registration per socket).
    pub fn socket_queue(&self) -> QueueDepth {
        self.inner.socket_queues.register()
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// The router serving `GET /metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(serve_metrics))
            .with_state(self.clone())
    }

    /// Serves `/metrics` on `listener` until `shutdown`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        server: &ServerConfig,
    ) -> std::io::Result<()> {
        crate::server::serve_with(listener, self.router(), shutdown, server).await
    }
}

/// The index of the `version` label for a request path.
fn version_index(path: &str) -> usize {
    match path.split('/').nth(1) {
        Some("v1") => 0,
        Some("v2") => 1,
        _ => 2,
    }
}

/// The content type of `/metrics`.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn serve_metrics(State(metrics): State<Metrics>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, OPENMETRICS)],
        metrics.render(),
    )
        .into_response()
}

/// The middleware counting requests (see [`Metrics::count_request`]; the client from
/// `X-Client-App`, else a device's model and firmware headers); `/healthz` and `/readyz` are
/// not counted. An upgrade request gets its [`Usage`] in its extensions.
pub async fn count(State(metrics): State<Metrics>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path != "/healthz" && path != "/readyz" {
        let client = metrics.client_of(request.headers());
        let usage = metrics.count(version_index(path), client);
        if request.headers().contains_key(axum::http::header::UPGRADE) {
            request.extensions_mut().insert(usage);
        }
    }
    next.run(request).await
}

/// Binds `config.listen`, logging the bound address as `metrics_addr`; `None` when empty.
pub async fn bind(config: &MetricsConfig) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.listen_addr()? else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {addr}: {e}"))?;
    tracing::info!(metrics_addr = %listener.local_addr()?, "metrics listening");
    Ok(Some(listener))
}

#[cfg(test)]
mod tests;
