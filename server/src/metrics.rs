//! Prometheus metrics: the `[metrics]` section, the gateway's counters, and `/metrics` on an
//! internal listener of its own (never the clients' port).
//!
//! The exporter is [`prometheus_client`], the official OpenMetrics client for Rust: it keeps no
//! global registry (each gateway's runtime owns one, so several gateways in one process, as in
//! the launcher, never mix their series) and its text encoder is the reference one. Nothing here
//! takes a lock or allocates on a request or a backend call: requests are counted in a fixed table
//! of atomics indexed by (API version, client) built at start, and everything else — backend
//! calls ([`switchyard_core::upstream::CallStats`]), circuit states, sources
//! ([`switchyard_core::sources::Source::stats`]) and the gauges a gateway registers — is read
//! from the atomics the code already keeps, at scrape time, by one [`Collector`].
//!
//! Labels and their bounds (docs/operations.md lists every series):
//! - `gateway`: the binary's name (`bff-web`, `bff-mobile`, `bff-device`);
//! - `version`: `v1`, `v2` (the first path segment), or `other`;
//! - `client`: from the `X-Client-App: name/version` header, bounded by `[metrics].known_clients`:
//!   the exact `name/version` when it is listed, else `name` when it is listed, else `other`;
//!   `none` without the header;
//! - `backend`, `source`, `publisher`: configured names (`unknown` for a publish call whose key
//!   names no publisher); `outcome`: a fixed list.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use switchyard_core::hub::Hub;
use switchyard_core::sources::Source;
use switchyard_core::upstream::{CircuitState, LATENCY_BUCKETS, OUTCOMES, Upstreams};
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::publish::PublishStats;
use crate::server::CancellationToken;

/// The header naming the client application: `X-Client-App: name/version`.
pub const CLIENT_APP_HEADER: &str = "x-client-app";

/// The API versions requests are counted under (the last is any other path).
const VERSIONS: [&str; 3] = ["v1", "v2", "other"];

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
    upstreams: Arc<Upstreams>,
    sources: BTreeMap<String, Source>,
    publish: Option<PublishStats>,
    hub: Option<Hub>,
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
        let mut clients: Vec<String> = config.known_clients.clone();
        clients.sort();
        clients.dedup();
        clients.push("other".to_owned());
        clients.push("none".to_owned());
        let requests = (0..VERSIONS.len() * clients.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        let connections = (0..VERSIONS.len() * clients.len())
            .map(|_| AtomicI64::new(0))
            .collect();
        let connections_opened = (0..VERSIONS.len() * clients.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        let inner = Arc::new(Inner {
            gateway,
            clients,
            requests,
            connections,
            connections_opened,
            upstreams,
            sources,
            publish,
            hub,
            gauges: Mutex::new(Vec::new()),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(inner.clone())));
        Self {
            inner,
            registry: Arc::new(registry),
        }
    }

    /// Exports `value` as the gauge `name` (labelled with the gateway), read at every scrape.
    /// For counts the gateway already keeps (held polls, open sockets).
    pub fn gauge(&self, name: &'static str, help: &'static str, value: Arc<AtomicUsize>) {
        let mut gauges = self
            .inner
            .gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gauges.push(ExtraGauge { name, help, value });
    }

    /// Counts one request to `path` from the client that `client_app` (the `X-Client-App`
    /// header) names, and returns its (version, client) as a [`Usage`].
    pub fn count_request(&self, path: &str, client_app: Option<&[u8]>) -> Usage {
        let version = match path.split('/').nth(1) {
            Some("v1") => 0,
            Some("v2") => 1,
            _ => 2,
        };
        let client = self.client_index(client_app);
        let index = version * self.inner.clients.len() + client;
        if let Some(counter) = self.inner.requests.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Usage {
            metrics: self.clone(),
            index,
        }
    }

    /// The index of the `client` label value for an `X-Client-App` header (no allocation).
    fn client_index(&self, client_app: Option<&[u8]>) -> usize {
        let clients = &self.inner.clients;
        let (other, none) = (clients.len() - 2, clients.len() - 1);
        let Some(value) = client_app else {
            return none;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return other;
        };
        let value = value.trim();
        let name = value.split('/').next().unwrap_or(value);
        let known = &clients[..other];
        known
            .iter()
            .position(|c| c == value)
            .or_else(|| known.iter().position(|c| c == name))
            .unwrap_or(other)
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

async fn serve_metrics(State(metrics): State<Metrics>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// The (API version, client) of a request. The counting middleware puts it in the extensions of
/// socket upgrade requests (those with an `Upgrade` header; others pay no allocation): a socket
/// gateway holds [`Usage::connection`]'s guard for the life of the upgraded socket.
#[derive(Clone, Debug)]
pub struct Usage {
    metrics: Metrics,
    index: usize,
}

impl Usage {
    /// Counts an upgraded socket as opened and open until the guard is dropped.
    pub fn connection(&self) -> ConnectionGuard {
        if let Some(live) = self.metrics.inner.connections.get(self.index) {
            live.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(opened) = self.metrics.inner.connections_opened.get(self.index) {
            opened.fetch_add(1, Ordering::Relaxed);
        }
        ConnectionGuard {
            usage: self.clone(),
        }
    }
}

/// An open socket, counted in `switchyard_connections` until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    usage: Usage,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(live) = self.usage.metrics.inner.connections.get(self.usage.index) {
            live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The middleware counting requests (see [`Metrics::count_request`]); `/healthz` and `/readyz`
/// are not counted. An upgrade request gets its [`Usage`] in its extensions.
pub async fn count(State(metrics): State<Metrics>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path != "/healthz" && path != "/readyz" {
        let app = request
            .headers()
            .get(CLIENT_APP_HEADER)
            .map(axum::http::HeaderValue::as_bytes);
        let usage = metrics.count_request(path, app);
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

/// Everything read at scrape time.
#[derive(Debug)]
struct Scrape(Arc<Inner>);

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let gw = inner.gateway;
        // Requests by version × client (zero series too: a query sees every known client).
        let mut series = Vec::new();
        for (v, version) in VERSIONS.iter().enumerate() {
            for (c, client) in inner.clients.iter().enumerate() {
                let n = inner.requests[v * inner.clients.len() + c].load(Ordering::Relaxed);
                series.push((
                    vec![("gateway", gw), ("version", *version), ("client", client)],
                    n,
                ));
            }
        }
        let mut live = Vec::new();
        let mut opened = Vec::new();
        for (v, version) in VERSIONS.iter().enumerate() {
            for (c, client) in inner.clients.iter().enumerate() {
                let i = v * inner.clients.len() + c;
                let labels = vec![("gateway", gw), ("version", *version), ("client", client)];
                live.push((labels.clone(), inner.connections[i].load(Ordering::Relaxed)));
                opened.push((labels, inner.connections_opened[i].load(Ordering::Relaxed)));
            }
        }
        gauge(
            &mut encoder,
            "switchyard_connections",
            "Upgraded sockets open now, by gateway, API version and client application",
            &live,
        )?;
        counter(
            &mut encoder,
            "switchyard_connections_opened",
            "Upgraded sockets opened, by gateway, API version and client application",
            &opened,
        )?;
        counter(
            &mut encoder,
            "switchyard_requests",
            "HTTP requests (socket upgrades included) by gateway, API version and client application",
            &series,
        )?;

        // Backend calls.
        let mut names: Vec<&Arc<str>> = inner.upstreams.names().collect();
        names.sort();
        let mut calls = Vec::new();
        let mut retries = Vec::new();
        let mut circuit = Vec::new();
        let mut snapshots = Vec::new();
        for name in &names {
            let Some(backend) = inner.upstreams.backend(name) else {
                continue;
            };
            let s = backend.stats().snapshot();
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                calls.push((
                    vec![
                        ("gateway", gw),
                        ("backend", &***name),
                        ("outcome", *outcome),
                    ],
                    s.outcomes[o],
                ));
            }
            retries.push((vec![("gateway", gw), ("backend", &***name)], s.retries));
            let state = backend.breaker().state();
            for (label, st) in [
                ("closed", CircuitState::Closed),
                ("open", CircuitState::Open),
                ("half_open", CircuitState::HalfOpen),
            ] {
                circuit.push((
                    vec![("gateway", gw), ("backend", &***name), ("state", label)],
                    i64::from(state == st),
                ));
            }
            snapshots.push((name, s));
        }
        counter(
            &mut encoder,
            "switchyard_backend_calls",
            "Backend calls (all attempts of one call) by backend and outcome",
            &calls,
        )?;
        counter(
            &mut encoder,
            "switchyard_backend_retries",
            "Backend call attempts made again after a retryable failure",
            &retries,
        )?;
        gauge(
            &mut encoder,
            "switchyard_backend_circuit_state",
            "1 for the backend's circuit breaker's current state, 0 for the others",
            &circuit,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "switchyard_backend_call_duration_seconds",
                "Duration of backend calls (all attempts), by backend",
                None,
                MetricType::Histogram,
            )?;
            for (name, s) in &snapshots {
                let labels = [("gateway", gw), ("backend", &****name)];
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(s.cumulative_buckets)
                    .collect();
                let count = s.cumulative_buckets[LATENCY_BUCKETS.len()];
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        s.latency_sum_seconds,
                        count,
                        &buckets,
                        None,
                    )?;
            }
        }

        // Sources.
        let stats: Vec<(&str, switchyard_core::sources::SourceStats)> = inner
            .sources
            .iter()
            .map(|(name, source)| (name.as_str(), source.stats()))
            .collect();
        let by_source = |f: fn(&switchyard_core::sources::SourceStats) -> u64| {
            stats
                .iter()
                .map(|(name, s)| (vec![("gateway", gw), ("source", *name)], f(s)))
                .collect::<Vec<_>>()
        };
        for (name, help, f) in [
            (
                "switchyard_source_connects",
                "Upstream connections a source opened",
                (|s| s.connects_total) as fn(&switchyard_core::sources::SourceStats) -> u64,
            ),
            (
                "switchyard_source_events",
                "Events a source published on the bus",
                |s| s.events_total,
            ),
            (
                "switchyard_source_unparsable",
                "Upstream messages a source could not read",
                |s| s.unparsable_total,
            ),
            (
                "switchyard_source_unmatched",
                "Upstream messages no rule of the source matched",
                |s| s.unmatched_total,
            ),
            (
                "switchyard_source_refused",
                "Upstream messages a rule matched that could not be made an event",
                |s| s.refused_total,
            ),
            (
                "switchyard_source_unwanted",
                "Events for channels not wanted here, dropped",
                |s| s.unwanted_total,
            ),
            (
                "switchyard_source_oversized",
                "Upstream messages over the size limit, or binary, dropped",
                |s| s.oversized_total,
            ),
            (
                "switchyard_source_upstream_errors",
                "Requests the upstream refused or did not acknowledge",
                |s| s.upstream_errors_total,
            ),
        ] {
            counter(&mut encoder, name, help, &by_source(f))?;
        }
        let connected: Vec<_> = stats
            .iter()
            .map(|(name, s)| {
                (
                    vec![("gateway", gw), ("source", *name)],
                    i64::from(s.connected),
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "switchyard_source_connected",
            "1 while the source's upstream connection is open",
            &connected,
        )?;
        let wanted: Vec<_> = stats
            .iter()
            .map(|(name, s)| {
                (
                    vec![("gateway", gw), ("source", *name)],
                    i64::try_from(s.wanted_channels).unwrap_or(i64::MAX),
                )
            })
            .collect();
        gauge(
            &mut encoder,
            "switchyard_source_wanted_channels",
            "Channels the source is asked to feed now",
            &wanted,
        )?;

        // The hub, by channel pattern.
        if let Some(hub) = &inner.hub {
            let stats = hub.stats();
            let by_pattern = |f: fn(&switchyard_core::hub::PatternSnapshot) -> u64| {
                stats
                    .iter()
                    .map(|s| (vec![("gateway", gw), ("pattern", s.pattern.as_str())], f(s)))
                    .collect::<Vec<_>>()
            };
            let live: Vec<_> = by_pattern(|s| s.live)
                .into_iter()
                .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
                .collect();
            gauge(
                &mut encoder,
                "switchyard_hub_subscriptions",
                "Hub subscriptions open now, by channel pattern (`other`: topics outside the catalog)",
                &live,
            )?;
            for (name, help, f) in [
                (
                    "switchyard_hub_subscriptions_opened",
                    "Hub subscriptions opened, by channel pattern",
                    (|s| s.opened) as fn(&switchyard_core::hub::PatternSnapshot) -> u64,
                ),
                (
                    "switchyard_hub_deliveries",
                    "Events the hub handed to its subscribers (a subscription shared by several clients counts once)",
                    |s| s.deliveries,
                ),
                (
                    "switchyard_hub_gaps",
                    "Gaps the hub handed to subscribers: history no longer covered where they were",
                    |s| s.gaps,
                ),
                (
                    "switchyard_hub_catch_ups",
                    "Subscribers whose queue filled, unhooked from the live fan-out and caught up from history",
                    |s| s.catch_ups,
                ),
            ] {
                counter(&mut encoder, name, help, &by_pattern(f))?;
            }
        }

        // The publish API.
        if let Some(publish) = &inner.publish {
            let snapshot = publish.snapshot();
            let series: Vec<_> = snapshot
                .iter()
                .map(|(publisher, outcome, n)| {
                    (
                        vec![
                            ("gateway", gw),
                            ("publisher", &**publisher),
                            ("outcome", *outcome),
                        ],
                        *n,
                    )
                })
                .collect();
            counter(
                &mut encoder,
                "switchyard_publish_calls",
                "Publish API calls (a batch is one) by publisher and outcome",
                &series,
            )?;
        }

        // The gateway's own gauges.
        let gauges = inner
            .gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for g in gauges.iter() {
            let value = i64::try_from(g.value.load(Ordering::Acquire)).unwrap_or(i64::MAX);
            gauge(
                &mut encoder,
                g.name,
                g.help,
                &[(vec![("gateway", gw)], value)],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(clients: &[&str]) -> Metrics {
        let config = MetricsConfig {
            listen: String::new(),
            known_clients: clients.iter().map(|c| (*c).to_owned()).collect(),
        };
        let upstreams = Arc::new(Upstreams::new(&BTreeMap::new()).expect("no backends"));
        Metrics::new("bff-test", &config, upstreams, BTreeMap::new(), None, None)
    }

    #[test]
    fn clients_are_bounded_to_the_known_ones() {
        let m = metrics(&["tv-app", "ios/2.0"]);
        m.count_request("/v1/poll", Some(b"tv-app/1.2.3"));
        m.count_request("/v1/poll", Some(b"tv-app"));
        m.count_request("/v2/x", Some(b"ios/2.0"));
        m.count_request("/v2/x", Some(b"ios/1.0"));
        m.count_request("/v2/x", Some(b"\xff\xfe"));
        m.count_request("/v1/x", None);
        m.count_request("/graphql", None);
        let text = m.render();
        for line in [
            r#"switchyard_requests_total{gateway="bff-test",version="v1",client="tv-app"} 2"#,
            r#"switchyard_requests_total{gateway="bff-test",version="v2",client="ios/2.0"} 1"#,
            r#"switchyard_requests_total{gateway="bff-test",version="v2",client="other"} 2"#,
            r#"switchyard_requests_total{gateway="bff-test",version="v1",client="none"} 1"#,
            r#"switchyard_requests_total{gateway="bff-test",version="other",client="none"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn bad_client_names_are_refused() {
        let mut c = MetricsConfig {
            known_clients: vec!["ok-name/1.0".to_owned()],
            ..MetricsConfig::default()
        };
        assert!(c.validate().is_ok());
        c.known_clients = vec!["bad name".to_owned()];
        assert!(c.validate().is_err());
        c.known_clients = vec!["other".to_owned()];
        assert!(c.validate().is_err());
        c.known_clients.clear();
        c.listen = "nowhere".to_owned();
        assert!(c.validate().is_err());
    }
}
