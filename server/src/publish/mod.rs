//! The publish API: how a backend in any language puts an event on a catalog channel — an HTTP
//! POST with a key, on an internal listener of its own (never the clients' port).
//!
//! - `POST /v1/publish` `{"channel": "...", "data": <any JSON>}` → 200
//!   `{"channel", "epoch", "offset"}` (decimal strings), sent only once the bus has the event.
//! - `POST /v1/publish/batch` `{"events": [{"channel", "data"}, ...]}` → 200 `{"results": [...]}`:
//!   every item is checked before any is published (a bad one refuses the batch, naming its
//!   index); then they are published in order, and a bus failure midway answers 503 with the
//!   results that landed and the index that failed.
//! - `Authorization: Bearer <key>`: the key's SHA-256 against `[publish].keys` ([`keys`]), which
//!   names the publisher; the channel's catalog entry must list it in `publishers`.
//! - Errors in the shared JSON shape ([`wire`] maps every one): 400 `bad_request` /
//!   `not_in_catalog`, 401 `unauthorized`, 403 `forbidden`, 413 `payload_too_large`, 503
//!   `bus_unavailable`, 404 `not_found`, 405 `method_not_allowed`.
//!
//! `data` goes on the bus as its compact JSON text, the payload every gateway hands its clients.
//! This module decides nothing about channels (the catalog does) and numbers nothing (the bus
//! does). It is served by every gateway's runtime on `publish.listen` when set
//! ([`crate::runtime::Runtime::serve`]) and by the launcher for its whole stack. Its calls are
//! counted by publisher × outcome ([`PublishStats`], exported by the gateway's `/metrics`).

mod config;
mod handlers;
mod keys;
mod stats;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::post;
use switchyard_core::bus::Bus;
use switchyard_core::channels::Catalog;
use tokio::net::TcpListener;

pub use config::{PublishConfig, PublisherKey};
pub use stats::{OUTCOMES, PublishStats, UNKNOWN_PUBLISHER};

use crate::config::ServerConfig;
use crate::server::CancellationToken;

/// What the publish API serves from: the catalog, the bus, the keys and the limits.
#[derive(Clone)]
pub struct PublishApi {
    catalog: Arc<Catalog>,
    bus: Arc<dyn Bus>,
    keys: keys::Keys,
    max_batch: usize,
    max_body_bytes: usize,
    stats: PublishStats,
}

impl PublishApi {
    /// The publish API of `config` on `catalog`'s channels, publishing on `bus`.
    pub fn new(config: &PublishConfig, catalog: Arc<Catalog>, bus: Arc<dyn Bus>) -> Self {
        Self {
            catalog,
            bus,
            keys: keys::Keys::new(config),
            max_batch: config.max_batch,
            max_body_bytes: config.max_body_bytes,
            stats: PublishStats::new(config.keys.iter().map(|k| k.publisher.as_str())),
        }
    }

    /// Its calls by publisher × outcome (shared by its clones), for `/metrics`.
    pub fn stats(&self) -> &PublishStats {
        &self.stats
    }

    /// The routes, with the body limit, each request in its trace (the publisher's `traceparent`,
    /// kept in the events it publishes) with its log line, and JSON answers for unknown paths
    /// (404) and methods (405).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/publish", post(handlers::publish))
            .route("/v1/publish/batch", post(handlers::batch))
            .method_not_allowed_fallback(|| async {
                wire::Refusal::method_not_allowed().into_response()
            })
            .fallback(|| async { wire::Refusal::not_found().into_response() })
            .with_state(self.clone())
            .layer(DefaultBodyLimit::max(self.max_body_bytes))
            .layer(axum::middleware::from_fn(crate::lifecycle::requests))
    }

    /// Serves the API on `listener` until `shutdown` is cancelled, then drains within
    /// `server.drain_timeout_ms`, under `server`'s connection bounds (its body limit is not
    /// used: `max_body_bytes` is).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        server: &ServerConfig,
    ) -> std::io::Result<()> {
        crate::server::serve_with(listener, self.router(), shutdown, server).await
    }
}

/// Binds `config.listen`, logging the bound address as `publish_addr`; `None` when it is empty.
/// A failure names the key (`publish.listen`).
pub async fn bind(config: &PublishConfig) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.listen_addr() else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("publish.listen: cannot listen on {addr}: {e}"))?;
    tracing::info!(publish_addr = %listener.local_addr()?, "publish API listening");
    Ok(Some(listener))
}
