//! The demo services' metrics: requests by route × status and their latency by route, served
//! as `/metrics` on an internal listener of the service's own (`[metrics] listen`, like the
//! gateways'). Routes are the service's route patterns (`/v1/limits/{user}`, never a path with a
//! user in it), given when it starts, plus `other` (unknown paths); statuses a fixed list of
//! codes plus `other` — so the number of series is fixed at start. A request pays a clock read
//! and three relaxed increments in tables built at start; `/healthz` and `/readyz` are not
//! counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use switchyard_core::latency::Latency;
use tokio::net::TcpListener;

use super::collect::{counter, histogram};
use crate::config::ServerConfig;
use crate::server::CancellationToken;

/// The status codes given a `status` label of their own; any other is `other`.
pub const STATUSES: [&str; 19] = [
    "200", "201", "202", "204", "304", "400", "401", "403", "404", "405", "409", "413", "422",
    "429", "500", "502", "503", "504", "other",
];

/// A demo service's `[metrics]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceMetricsConfig {
    /// Address of the metrics listener (`127.0.0.1:9467`; port 0 picks a free port, logged as
    /// `metrics_addr`). Empty (the default): no metrics listener.
    pub listen: String,
}

impl ServiceMetricsConfig {
    /// Binds `listen` (logged as `metrics_addr`); `None` when empty. A failure names the key.
    pub async fn bind(&self) -> anyhow::Result<Option<TcpListener>> {
        super::bind(&super::MetricsConfig {
            listen: self.listen.clone(),
            known_clients: Vec::new(),
        })
        .await
    }
}

/// A service's request counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    inner: Arc<Inner>,
    registry: Arc<Registry>,
}

#[derive(Debug)]
struct Inner {
    service: &'static str,
    /// The route patterns, then `other`.
    routes: Vec<&'static str>,
    /// Requests at `route * STATUSES.len() + status`.
    requests: Box<[AtomicU64]>,
    /// Latency by route.
    latency: Box<[Latency]>,
}

impl ServiceMetrics {
    /// The metrics of service `service` (its `service` label), whose routes are `routes`.
    pub fn new(service: &'static str, routes: &[&'static str]) -> Self {
        let mut all = routes.to_vec();
        all.push("other");
        let inner = Arc::new(Inner {
            service,
            requests: (0..all.len() * STATUSES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: all.iter().map(|_| Latency::default()).collect(),
            routes: all,
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(inner.clone())));
        Self {
            inner,
            registry: Arc::new(registry),
        }
    }

    /// `router` with every request counted (add it before the health routes).
    pub fn layer(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), measure))
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// Serves `GET /metrics` on `listener` until `shutdown`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        server: &ServerConfig,
    ) -> std::io::Result<()> {
        let router = Router::new()
            .route("/metrics", get(serve_metrics))
            .with_state(self.clone());
        crate::server::serve_with(listener, router, shutdown, server).await
    }
}

async fn serve_metrics(State(metrics): State<ServiceMetrics>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, super::OPENMETRICS)],
        metrics.render(),
    )
        .into_response()
}

async fn measure(State(m): State<ServiceMetrics>, request: Request, next: Next) -> Response {
    let other = m.inner.routes.len() - 1;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| {
            m.inner.routes[..other]
                .iter()
                .position(|r| *r == p.as_str())
        })
        .unwrap_or(other);
    let start = Instant::now();
    let response = next.run(request).await;
    let code = response.status();
    let status = STATUSES
        .iter()
        .position(|s| *s == code.as_str())
        .unwrap_or(STATUSES.len() - 1);
    if let Some(n) = m.inner.requests.get(route * STATUSES.len() + status) {
        n.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(h) = m.inner.latency.get(route) {
        h.record(start.elapsed());
    }
    response
}

#[derive(Debug)]
struct Scrape(Arc<Inner>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for (r, route) in inner.routes.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = inner.requests[r * STATUSES.len() + s].load(Ordering::Relaxed);
                // Only statuses seen, so that the text stays short; routes × statuses is bounded.
                if n > 0 {
                    requests.push((
                        vec![
                            ("service", inner.service),
                            ("route", *route),
                            ("status", *status),
                        ],
                        n,
                    ));
                }
            }
            latency.push((
                vec![("service", inner.service), ("route", *route)],
                inner.latency[r].snapshot(),
            ));
        }
        counter(
            &mut encoder,
            "switchyard_service_requests",
            "Requests to a demo service, by route pattern and status",
            &requests,
        )?;
        histogram(
            &mut encoder,
            "switchyard_service_request_duration_seconds",
            "Duration of a demo service's requests, by route pattern",
            &latency,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_counted_by_route_pattern_and_status() {
        use tower::ServiceExt;
        let m = ServiceMetrics::new("demo", &["/v1/things/{id}"]);
        let app = m.layer(Router::new().route(
            "/v1/things/{id}",
            get(
                |axum::extract::Path(id): axum::extract::Path<u32>| async move {
                    if id == 0 {
                        axum::http::StatusCode::NOT_FOUND
                    } else {
                        axum::http::StatusCode::OK
                    }
                },
            ),
        ));
        for uri in ["/v1/things/1", "/v1/things/2", "/v1/things/0", "/nowhere"] {
            let req = axum::http::Request::get(uri)
                .body(axum::body::Body::empty())
                .expect("request");
            app.clone().oneshot(req).await.expect("answer");
        }
        let text = m.render();
        for line in [
            r#"switchyard_service_requests_total{service="demo",route="/v1/things/{id}",status="200"} 2"#,
            r#"switchyard_service_requests_total{service="demo",route="/v1/things/{id}",status="404"} 1"#,
            r#"switchyard_service_request_duration_seconds_count{service="demo",route="/v1/things/{id}"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
