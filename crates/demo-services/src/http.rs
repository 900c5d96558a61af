//! HTTP plumbing the three services share: turning validation failures and axum's extractor
//! rejections into the JSON error body, JSON answers for unknown routes and methods, and the
//! finishing touches every router gets (health routes, common layers).
//!
//! It knows no service's routes or state; each service module owns those. Each service counts
//! its requests by route × status with their latency ([`ServiceMetrics`]) and serves them on
//! `[metrics] listen` ([`serve`]).

use std::fmt::Display;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use switchyard_server::config::ServerConfig;
use switchyard_server::errors::JsonError;
use switchyard_server::metrics::service::{ServiceMetrics, ServiceMetricsConfig};
use switchyard_server::server::{self, CancellationToken, Readiness};
use tokio::net::TcpListener;

/// A validation failure from [`demo_api`] as a 400 with its stable code.
pub(crate) fn invalid(e: demo_api::Invalid) -> JsonError {
    JsonError::bad_request(e.code, e.message)
}

/// An extractor rejection (bad JSON, unknown field, bad query string, oversized body) as a JSON
/// error: 400 `invalid_request`, keeping 422 for business refusals such as `limit_exceeded`.
pub(crate) fn bad_input(rejection: impl IntoResponse + Display) -> JsonError {
    switchyard_server::errors::rejection(rejection)
}

/// Adds `/healthz` and `/readyz`, JSON 404 and 405 answers, and the common layers to a service's
/// API routes, counted in `metrics` (health routes are not).
pub(crate) fn finish(
    api: Router,
    readiness: Readiness,
    config: &ServerConfig,
    metrics: &ServiceMetrics,
) -> Router {
    let app = metrics
        .layer(api)
        .merge(server::health_routes(readiness))
        .fallback(|| async {
            JsonError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            JsonError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method",
            )
        });
    server::with_common_layers(app, config)
}

/// Serves `app` on `listener`, and its `metrics` on `[metrics] listen` when set, until
/// `shutdown`; a metrics address that cannot be bound stops the start, naming the key.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    metrics: ServiceMetrics,
    metrics_config: &ServiceMetricsConfig,
    shutdown: CancellationToken,
    config: &ServerConfig,
) -> anyhow::Result<()> {
    let metrics_listener = metrics_config.bind().await?;
    let main = server::serve_with(listener, app, shutdown.clone(), config);
    let side = async {
        match metrics_listener {
            Some(l) => metrics.serve(l, shutdown.clone(), config).await,
            None => Ok(()),
        }
    };
    let (main, side) = tokio::join!(main, side);
    main?;
    side.map_err(|e| anyhow::anyhow!("the metrics listener: {e}"))
}
