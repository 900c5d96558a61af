//! Server plumbing shared by every gateway and demo service: serving with a bounded graceful
//! drain, OS shutdown signals, `/healthz` and `/readyz`, and request body limits. The JSON error
//! body is [`crate::errors`].
//!
//! Shutdown is a parameter: servers take a [`CancellationToken`] and stop accepting when it is
//! cancelled, then give in-flight requests up to the drain timeout. Long-lived handlers (sockets,
//! long polls) watch the same token to answer and close on their own before the drain ends. A
//! connection upgraded to a WebSocket is no longer tracked by the server, so whoever spawns socket
//! handlers must also wait for them (with the same bounded drain).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
pub use tokio_util::sync::CancellationToken;

use switchyard_core::bus::Bus;
use switchyard_core::upstream::Upstreams;

use crate::config::ServerConfig;

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains for at most `drain`,
/// with the default connection bounds of [`ServerConfig`] (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let config = ServerConfig {
        drain_timeout_ms: u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
        ..ServerConfig::default()
    };
    serve_with(listener, app, shutdown, &config).await
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains for at most
/// `config.drain_timeout_ms`, bounding what a client can hold: the time to send a request head
/// and body, and connections per client address and in all (`crate::serving` has the details).
///
/// Returns once every connection has finished, or when the drain timeout passes (remaining
/// connections are then closed).
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    config: &ServerConfig,
) -> std::io::Result<()> {
    crate::serving::serve(listener, app, shutdown, config).await
}

/// Serves `app` like [`serve_with`], then waits for the upgraded sockets tracked by `sockets`,
/// which the server stops tracking at the upgrade: the gateways' one way to serve. HTTP
/// connections and sockets share ONE drain budget (`config.drain_timeout_ms`), counted from the
/// moment `shutdown` is cancelled — not from when serving started, which would leave a gateway
/// that has been up longer than the drain timeout no time at all for its sockets.
pub async fn serve_with_sockets(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    config: &ServerConfig,
    sockets: tokio_util::task::TaskTracker,
) -> std::io::Result<()> {
    let drain = config.drain_timeout();
    let cancelled_at = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::Instant::now()
        })
    };
    let served = serve_with(listener, app, shutdown.clone(), config).await;
    sockets.close();
    let started = if shutdown.is_cancelled() {
        cancelled_at
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now())
    } else {
        // Serving failed on its own: nothing asked for a drain, give the sockets the whole one.
        cancelled_at.abort();
        tokio::time::Instant::now()
    };
    served?;
    let left = drain.saturating_sub(started.elapsed());
    if tokio::time::timeout(left.max(Duration::from_millis(100)), sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with sockets still open");
    }
    Ok(())
}

/// Resolves when the process receives SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
            () = term => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}

/// A token cancelled when the process is asked to stop.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        t.cancel();
    });
    token
}

/// Adds the layers every server has: the body limit, and each request in its trace with its
/// log line (`crate::lifecycle::requests`).
pub fn with_common_layers(app: Router, config: &ServerConfig) -> Router {
    app.layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(axum::middleware::from_fn(crate::lifecycle::requests))
}

/// What `/readyz` checks: the backends a gateway calls and its bus.
#[derive(Clone, Default)]
pub struct Readiness {
    upstreams: Option<Arc<Upstreams>>,
    bus: Option<Arc<dyn Bus>>,
}

impl Readiness {
    /// Checks these backends and this bus.
    pub fn new(upstreams: Option<Arc<Upstreams>>, bus: Option<Arc<dyn Bus>>) -> Self {
        Self { upstreams, bus }
    }

    /// Runs every check concurrently; returns each check's name and outcome.
    pub async fn check(&self) -> Vec<(String, Result<(), String>)> {
        let backends = async {
            match &self.upstreams {
                Some(u) => u
                    .probe_all()
                    .await
                    .into_iter()
                    .map(|(name, r)| (name, r.map_err(|e| e.to_string())))
                    .collect(),
                None => Vec::new(),
            }
        };
        let bus = async {
            match &self.bus {
                Some(b) => Some(("bus".to_owned(), b.check().await.map_err(|e| e.to_string()))),
                None => None,
            }
        };
        let (mut out, bus) = tokio::join!(backends, bus);
        out.extend(bus);
        out
    }
}

/// `/healthz` (the process is up) and `/readyz` (its backends and bus answer).
pub fn health_routes(readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let checks = readiness.check().await;
                    let ready = checks.iter().all(|(_, r)| r.is_ok());
                    let detail: serde_json::Map<String, serde_json::Value> = checks
                        .into_iter()
                        .map(|(name, r)| {
                            let v = match r {
                                Ok(()) => json!("ok"),
                                Err(e) => json!(e),
                            };
                            (name, v)
                        })
                        .collect();
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        axum::Json(json!({"ready": ready, "checks": detail})),
                    )
                }
            }),
        )
}
