//! The exchange service: current exchange rates over REST, and a WebSocket ticker with its own
//! protocol ([`demo_api::ticks`]) that streams every tick of the pairs a connection watches.
//!
//! Rates come from a deterministic seeded random walk (the `market` module): a ticker task steps
//! it every `tick_interval_ms`, keeps the newest snapshot for REST and broadcasts it on a bounded
//! channel to the WebSocket connections. Rates are a state stream: a connection that falls behind
//! skips to the newest tick rather than receiving a backlog.
//!
//! `GET /v1/stats` counts open connections and watchers per pair exactly, so tests can prove how
//! many upstream watches a gateway holds. This service stores no history and authenticates no one.

mod market;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use demo_api::{Currency, ExchangeStats, Pair, Rate};
use serde::{Deserialize, Serialize};
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::errors::JsonError;
use switchyard_server::metrics::service::{ServiceMetrics, ServiceMetricsConfig};
use switchyard_server::server::{CancellationToken, Readiness};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use self::market::{Market, PAIR_SLOTS, Snapshot};
use crate::http;

/// Ticks buffered per connection before a slow one skips to the newest.
const TICK_BUFFER: usize = 16;

/// Configuration of the exchange service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP listener (default `127.0.0.1:9102`) and request limits.
    pub server: ServerConfig,
    /// Log output (used by the binary; an embedding process sets up its own logs).
    pub log: LogConfig,
    /// Time between two ticks of the market, in milliseconds (at least 1).
    pub tick_interval_ms: u64,
    /// Seed of the random walk: the same seed gives the same rates at the same tick number.
    pub seed: u64,
    /// Most pairs one WebSocket connection may watch at once; more get `too_many_pairs`.
    pub max_pairs_per_connection: usize,
    /// Largest WebSocket message accepted from a client, in bytes; a larger one closes the
    /// connection with code 1009.
    pub max_message_bytes: usize,
    /// `/metrics` on an internal listener of its own (none by default).
    pub metrics: ServiceMetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::backend(SocketAddr::from(([127, 0, 0, 1], 9102))),
            log: LogConfig::default(),
            tick_interval_ms: 1_000,
            seed: 42,
            max_pairs_per_connection: 32,
            max_message_bytes: 4_096,
            metrics: ServiceMetricsConfig::default(),
        }
    }
}

switchyard_server::server_binary!(
    Config,
    "exchange",
    "Currency rates over REST and its own WebSocket tick protocol (demo backend)",
    "SWITCHYARD_EXCHANGE"
);

/// Serves the exchange service on `listener` until `shutdown` is cancelled, then drains.
///
/// The ticker stops with `shutdown` (or when this future is dropped), and every WebSocket
/// connection answers the cancellation with a Close frame (1001). The HTTP server does not track
/// upgraded connections, so this waits for them itself, up to the drain timeout, before
/// returning.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let _stop_on_drop = stop.clone().drop_guard();
    let (app, sockets, metrics) = build(&config, stop.clone())?;
    let drain = config.server.drain_timeout();
    let served = http::serve(
        listener,
        app,
        metrics,
        &config.metrics,
        shutdown,
        &config.server,
    )
    .await;
    // The server may also have ended on its own: make sure the sockets are told.
    stop.cancel();
    sockets.close();
    if tokio::time::timeout(drain, sockets.wait()).await.is_err() {
        tracing::warn!(
            open = sockets.len(),
            "exchange: drain timeout passed with WebSocket connections still closing"
        );
    }
    served?;
    Ok(())
}

/// The full application: API routes, health routes and the common layers.
///
/// Starts the ticker on the current tokio runtime; it and every WebSocket connection stop when
/// `shutdown` is cancelled.
pub fn router(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Router> {
    Ok(build(config, shutdown)?.0)
}

/// The routes counted in its metrics.
const ROUTES: [&str; 4] = [
    "/v1/rates/{from}/{to}",
    "/v1/ticks",
    "/v1/stats",
    "/ui/{file}",
];

fn metrics() -> ServiceMetrics {
    ServiceMetrics::new("exchange", &ROUTES)
}

/// The application, and the tracker of its WebSocket connections.
fn build(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(Router, TaskTracker, ServiceMetrics)> {
    anyhow::ensure!(
        config.tick_interval_ms >= 1,
        "tick_interval_ms must be at least 1"
    );
    anyhow::ensure!(
        config.max_pairs_per_connection >= 1,
        "max_pairs_per_connection must be at least 1"
    );
    anyhow::ensure!(
        config.max_message_bytes >= 64,
        "max_message_bytes must be at least 64"
    );
    let market = Market::new(config.seed);
    let (sender, _) = broadcast::channel(TICK_BUFFER);
    let sockets = TaskTracker::new();
    let exchange = Arc::new(Exchange {
        current: Mutex::new(Arc::new(market.snapshot())),
        ticks: sender,
        stats: Stats::default(),
        max_pairs: config.max_pairs_per_connection,
        max_message_bytes: config.max_message_bytes,
        shutdown: shutdown.clone(),
        sockets: sockets.clone(),
    });
    tokio::spawn(tick(
        market,
        exchange.clone(),
        Duration::from_millis(config.tick_interval_ms),
        shutdown,
    ));
    let api = Router::new()
        .route("/v1/rates/{from}/{to}", get(get_rate))
        .route("/v1/ticks", get(ticks))
        .route("/v1/stats", get(stats))
        .with_state(exchange);
    let api = api.merge(crate::ui::routes(crate::ui::EXCHANGE));
    let metrics = metrics();
    let app = http::finish(api, Readiness::new(None, None), &config.server, &metrics);
    Ok((app, sockets, metrics))
}

/// What the handlers share.
#[derive(Debug)]
struct Exchange {
    /// The newest snapshot, for REST and for a new watch.
    current: Mutex<Arc<Snapshot>>,
    /// Every new snapshot, to the WebSocket connections.
    ticks: broadcast::Sender<Arc<Snapshot>>,
    stats: Stats,
    max_pairs: usize,
    max_message_bytes: usize,
    shutdown: CancellationToken,
    /// Every WebSocket connection's task, so `run` can wait for them to close.
    sockets: TaskTracker,
}

impl Exchange {
    fn current(&self) -> Arc<Snapshot> {
        lock(&self.current).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The only critical section swaps an Arc; a panic cannot tear it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connection and watcher counts. Each is changed by the one connection it concerns, before that
/// connection answers, so a client that has its answer sees the stats include it.
#[derive(Debug)]
struct Stats {
    connections: AtomicU64,
    connections_total: AtomicU64,
    watchers: [AtomicU64; PAIR_SLOTS],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            watchers: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    fn watch(&self, pair: Pair) {
        self.watchers[market::pair_index(pair)].fetch_add(1, Ordering::SeqCst);
    }

    fn unwatch(&self, pair: Pair) {
        self.watchers[market::pair_index(pair)].fetch_sub(1, Ordering::SeqCst);
    }

    fn report(&self) -> ExchangeStats {
        let watchers = market::all_pairs()
            .filter_map(|p| {
                let n = self.watchers[market::pair_index(p)].load(Ordering::SeqCst);
                (n > 0).then(|| (p.to_string(), n))
            })
            .collect();
        ExchangeStats {
            connections: self.connections.load(Ordering::SeqCst),
            watchers,
            connections_total: self.connections_total.load(Ordering::SeqCst),
        }
    }
}

/// Steps the market every `interval` until `shutdown`; the first step comes one interval after
/// start, so `seq` 0 is served until then.
async fn tick(
    mut market: Market,
    exchange: Arc<Exchange>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        market.step();
        let snapshot = Arc::new(market.snapshot());
        *lock(&exchange.current) = snapshot.clone();
        // No receivers (no connection) is not an error: the snapshot is kept for REST.
        let _ = exchange.ticks.send(snapshot);
    }
}

async fn get_rate(
    State(exchange): State<Arc<Exchange>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Rate>, JsonError> {
    let Path((from, to)) = path.map_err(http::bad_input)?;
    let base = Currency::parse(&from).map_err(http::invalid)?;
    let quote = Currency::parse(&to).map_err(http::invalid)?;
    let pair = Pair::new(base, quote).map_err(http::invalid)?;
    let snapshot = exchange.current();
    Ok(Json(Rate {
        pair,
        rate: snapshot.rate(pair),
        seq: snapshot.seq,
    }))
}

async fn stats(State(exchange): State<Arc<Exchange>>) -> Json<ExchangeStats> {
    Json(exchange.stats.report())
}

async fn ticks(
    State(exchange): State<Arc<Exchange>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(r) => return http::bad_input(r).into_response(),
    };
    let cap = ws::read_cap(exchange.max_message_bytes);
    upgrade
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| {
            let sockets = exchange.sockets.clone();
            sockets.track_future(ws::serve(socket, exchange))
        })
}
