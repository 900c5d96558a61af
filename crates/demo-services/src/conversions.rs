//! The conversions service: "HTTP request → validate → call backends → broadcast".
//!
//! `POST /v1/conversions` validates the request, reads the rate from the exchange service, consumes
//! the amount from the user's limit at the limits service (both through the core's upstream
//! client, under one deadline), records the conversion and publishes a [`ConversionEvent`] on
//! the bus topic `ch:conversions.{user}` (the catalog channel `conversions.{user}`) before
//! answering 201. A refused limit is a 422
//! `limit_exceeded` and publishes nothing. `GET /v1/conversions?user=U&limit=N` lists a user's
//! recent conversions, most recent first.
//!
//! Once the limit call is made, the rest (consume, record, publish) runs to completion in its own
//! task even if the client goes away, so a consumed limit always has its conversion and its
//! event. Before that, a client that goes away cancels the work.
//!
//! The recent list is in memory and bounded: `recent_per_user` conversions per user and
//! [`MAX_USERS`] users (the user seen first is forgotten first). It is a convenience for demos,
//! not a ledger; the events on the bus are the record. This service authenticates no one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use demo_api::{
    CONVERSION_COMPLETED, ConsumeRequest, Conversion, ConversionEvent, ConversionList,
    ConversionRequest, Currency, Decimal, Limit, Pair, Rate, UserId, conversions_topic,
    parse_amount, round_money,
};
use serde::{Deserialize, Deserializer, Serialize};
use switchyard_core::bus::Bus;
use switchyard_core::bus::BusConfig;
use switchyard_core::event::Topic;
use switchyard_core::upstream::BackendConfig;
use switchyard_core::upstream::{UpstreamError, UpstreamErrorKind, Upstreams};
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::errors::{JsonError, upstream_error};
use switchyard_server::metrics::service::{ServiceMetrics, ServiceMetricsConfig};
use switchyard_server::server::{CancellationToken, Readiness};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::http;
use crate::splitmix::SplitMix64;

/// The name of the limits backend in `backends`.
pub const LIMITS: &str = "limits";

/// The name of the exchange backend in `backends`.
pub const EXCHANGE: &str = "exchange";

/// Most users whose recent conversions are kept; the user first seen is forgotten first.
pub const MAX_USERS: usize = 100_000;

/// Most conversions one `GET /v1/conversions` returns.
pub const MAX_LIST: usize = 100;

/// Conversions `GET /v1/conversions` returns without `limit`.
pub const DEFAULT_LIST: usize = 10;

/// Configuration of the conversions service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP listener (default `127.0.0.1:9103`) and request limits.
    pub server: ServerConfig,
    /// Log output (used by the binary; an embedding process sets up its own logs).
    pub log: LogConfig,
    /// The bus the standalone binary builds; an embedding process passes its own bus to [`run`].
    pub bus: BusConfig,
    /// The backends called: `limits` (default `http://127.0.0.1:9101`) and `exchange` (default
    /// `http://127.0.0.1:9102`), no others: another name is a config error. Keys given here
    /// change the default of the same name; every other key stays.
    #[serde(deserialize_with = "backends_over_defaults")]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Time allowed for both backend calls of one conversion together, in milliseconds.
    pub deadline_ms: u64,
    /// Recent conversions kept per user for `GET /v1/conversions` (at least 1).
    pub recent_per_user: usize,
    /// `/metrics` on an internal listener of its own (none by default).
    pub metrics: ServiceMetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::backend(SocketAddr::from(([127, 0, 0, 1], 9103))),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            backends: default_backends(),
            deadline_ms: 2_000,
            recent_per_user: 100,
            metrics: ServiceMetricsConfig::default(),
        }
    }
}

switchyard_server::server_binary!(
    Config,
    "conversions",
    "Converts amounts and publishes conversion events (demo backend)",
    "SWITCHYARD_CONVERSIONS"
);

impl switchyard_server::cli::WithBus for Config {
    fn bus(&self) -> &BusConfig {
        &self.bus
    }
}

fn default_backends() -> BTreeMap<String, BackendConfig> {
    BTreeMap::from([
        (
            LIMITS.to_owned(),
            BackendConfig::new("http://127.0.0.1:9101"),
        ),
        (
            EXCHANGE.to_owned(),
            BackendConfig::new("http://127.0.0.1:9102"),
        ),
    ])
}

fn backends_over_defaults<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, BackendConfig>, D::Error> {
    let given: BTreeMap<String, BackendConfig> =
        switchyard_server::config::only_known(d, "backend", &[EXCHANGE, LIMITS])?;
    let mut backends = default_backends();
    backends.extend(given);
    Ok(backends)
}

/// Serves the conversions service on `listener` until `shutdown` is cancelled, then drains.
///
/// `bus` is where conversion events are published: the gateways' bus when embedded, a bus built
/// from `config.bus` by the standalone binary. Fails at once on an invalid configuration.
pub async fn run(
    config: Config,
    bus: Arc<dyn Bus>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (app, metrics) = build(&config, bus)?;
    http::serve(
        listener,
        app,
        metrics,
        &config.metrics,
        shutdown,
        &config.server,
    )
    .await
}

/// The routes counted in its metrics.
const ROUTES: [&str; 2] = ["/v1/conversions", "/ui/{file}"];

/// The full application: API routes, health routes (checking both backends and the bus) and the
/// common layers.
pub fn router(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<Router> {
    Ok(build(config, bus)?.0)
}

fn build(config: &Config, bus: Arc<dyn Bus>) -> anyhow::Result<(Router, ServiceMetrics)> {
    let metrics = ServiceMetrics::new("conversions", &ROUTES);
    for name in [LIMITS, EXCHANGE] {
        anyhow::ensure!(
            config.backends.contains_key(name),
            "backends.{name} must be configured"
        );
    }
    anyhow::ensure!(config.deadline_ms >= 1, "deadline_ms must be at least 1");
    anyhow::ensure!(
        config.recent_per_user >= 1,
        "recent_per_user must be at least 1"
    );
    let upstreams = Arc::new(Upstreams::new(&config.backends)?);
    let service = Arc::new(Conversions {
        upstreams: upstreams.clone(),
        bus: bus.clone(),
        deadline: Duration::from_millis(config.deadline_ms),
        recent: Recent::new(config.recent_per_user, MAX_USERS),
        ids: Ids::new(),
    });
    let api = Router::new()
        .route("/v1/conversions", post(create).get(list))
        .with_state(service);
    let api = api.merge(crate::ui::routes(crate::ui::CONVERSIONS));
    let app = http::finish(
        api,
        Readiness::new(Some(upstreams), Some(bus)),
        &config.server,
        &metrics,
    );
    Ok((app, metrics))
}

/// What the handlers share.
struct Conversions {
    upstreams: Arc<Upstreams>,
    bus: Arc<dyn Bus>,
    deadline: Duration,
    recent: Recent,
    ids: Ids,
}

/// A validated conversion request.
#[derive(Debug, Clone)]
struct Order {
    user: UserId,
    pair: Pair,
    amount: Decimal,
}

impl Order {
    fn validate(r: &ConversionRequest) -> Result<Self, demo_api::Invalid> {
        let user = UserId::parse(&r.user)?;
        let from = Currency::parse(&r.from)?;
        let to = Currency::parse(&r.to)?;
        let pair = Pair::new(from, to)?;
        let amount = parse_amount(&r.amount)?;
        Ok(Self { user, pair, amount })
    }
}

async fn create(
    State(service): State<Arc<Conversions>>,
    body: Result<Json<ConversionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Conversion>), JsonError> {
    let Json(request) = body.map_err(http::bad_input)?;
    let order = Order::validate(&request).map_err(http::invalid)?;
    let deadline = Instant::now() + service.deadline;
    let path = format!("/v1/rates/{}/{}", order.pair.base, order.pair.quote);
    let rate: Rate = service
        .upstreams
        .get_json(EXCHANGE, path, deadline)
        .await
        .map_err(|e| upstream_error(&e))?;
    if rate.pair != order.pair || rate.rate <= Decimal::ZERO {
        tracing::warn!(asked = %order.pair, got = %rate.pair, rate = %rate.rate, "conversions: exchange answered a wrong rate");
        return Err(JsonError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "backend `exchange` answered an unusable rate",
        )
        .with_backend(EXCHANGE));
    }
    // From here on the work has effects elsewhere: finish it even if the client goes away.
    let committing = tokio::spawn(async move { service.commit(order, rate.rate, deadline).await });
    match committing.await {
        Ok(Ok(conversion)) => Ok((StatusCode::CREATED, Json(conversion))),
        Ok(Err(e)) => Err(e),
        Err(e) => {
            tracing::error!(error = %e, "conversions: commit task failed");
            Err(JsonError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the conversion failed unexpectedly",
            ))
        }
    }
}

impl Conversions {
    /// Consumes the limit, then records and publishes the conversion.
    async fn commit(
        &self,
        order: Order,
        rate: Decimal,
        deadline: Instant,
    ) -> Result<Conversion, JsonError> {
        let path = format!("/v1/limits/{}/consume", order.user);
        let consume = ConsumeRequest {
            amount: order.amount.to_string(),
        };
        let _: Limit = self
            .upstreams
            .post_json(LIMITS, path, &consume, deadline)
            .await
            .map_err(limit_error)?;
        // amount ≤ 1e9 and rates are far below 1e18, so the product always fits; the check keeps
        // a broken backend from panicking this service.
        let converted = order
            .amount
            .checked_mul(rate)
            .map(round_money)
            .ok_or_else(|| {
                tracing::error!(amount = %order.amount, %rate, "conversions: product overflows");
                JsonError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the converted amount is out of range",
                )
            })?;
        let conversion = Conversion {
            id: self.ids.next(),
            user: order.user,
            from: order.pair.base,
            to: order.pair.quote,
            amount: order.amount,
            rate,
            converted,
            at: now_rfc3339(),
        };
        self.recent.record(&conversion);
        self.publish(&conversion).await;
        Ok(conversion)
    }

    /// Publishes the conversion's event. A failure is logged, not answered: the limit is already
    /// consumed and the conversion done, so an error answer would invite a second conversion.
    async fn publish(&self, conversion: &Conversion) {
        let name = conversions_topic(&conversion.user);
        let topic = match Topic::new(&name) {
            Ok(t) => t,
            Err(e) => {
                // A valid user id always makes a valid topic name.
                tracing::error!(error = %e, "conversions: cannot name the event topic");
                return;
            }
        };
        let event = ConversionEvent {
            kind: CONVERSION_COMPLETED.to_owned(),
            conversion: conversion.clone(),
        };
        let payload = match serde_json::to_vec(&event) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::error!(error = %e, "conversions: cannot encode the event");
                return;
            }
        };
        if let Err(e) = self.bus.publish(&topic, payload).await {
            tracing::error!(
                error = %e,
                topic = %topic,
                id = %conversion.id,
                "conversions: event NOT published; subscribers will not see this conversion"
            );
        }
    }
}

/// The limits service's answer to a consume: a refusal is the client's 422, anything else is an
/// upstream failure.
fn limit_error(e: UpstreamError) -> JsonError {
    if let UpstreamErrorKind::Status {
        status: 422,
        code: Some(code),
        message,
    } = &e.kind
        && code == "limit_exceeded"
    {
        return JsonError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
            message
                .clone()
                .unwrap_or_else(|| "daily limit exceeded".to_owned()),
        );
    }
    upstream_error(&e)
}

/// Now, as RFC 3339 UTC with milliseconds: `2025-03-01T12:34:56.789Z`.
fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let now = time::OffsetDateTime::now_utc();
    // Formatting a UTC date-time with this description cannot fail for years 0 to 9999.
    now.format(&format)
        .unwrap_or_else(|_| format!("{}", now.unix_timestamp()))
}

/// Query of `GET /v1/conversions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    user: String,
    limit: Option<usize>,
}

async fn list(
    State(service): State<Arc<Conversions>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ConversionList>, JsonError> {
    let Query(query) = query.map_err(http::bad_input)?;
    let user = UserId::parse(&query.user).map_err(http::invalid)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(JsonError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIST}"),
        ));
    }
    Ok(Json(ConversionList {
        conversions: service.recent.list(&user, limit),
    }))
}

/// Conversion ids: `cv-{n}-{16 hex digits}`, a per-process counter and bits drawn from a
/// generator seeded at random per process, so ids of two processes do not collide in practice.
struct Ids {
    counter: AtomicU64,
    seed: u64,
}

impl Ids {
    fn new() -> Self {
        Self {
            counter: AtomicU64::new(0),
            seed: RandomState::new().hash_one(std::process::id()),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let bits = SplitMix64::new(self.seed ^ n.rotate_left(32)).next_u64();
        format!("cv-{n}-{bits:016x}")
    }
}

/// Recent conversions per user, most recent first, bounded in both directions.
struct Recent {
    per_user: usize,
    max_users: usize,
    inner: Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    users: HashMap<UserId, VecDeque<Conversion>>,
    /// Users in the order first seen, to forget the oldest when full.
    order: VecDeque<UserId>,
}

impl Recent {
    fn new(per_user: usize, max_users: usize) -> Self {
        Self {
            per_user,
            max_users: max_users.max(1),
            inner: Mutex::new(RecentInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecentInner> {
        // Critical sections only push and pop; a panic cannot tear the state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, conversion: &Conversion) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !inner.users.contains_key(&conversion.user) {
            while inner.users.len() >= self.max_users {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.users.remove(&old);
                    }
                    None => break,
                }
            }
            inner.order.push_back(conversion.user.clone());
        }
        let list = inner.users.entry(conversion.user.clone()).or_default();
        list.push_front(conversion.clone());
        list.truncate(self.per_user);
    }

    fn list(&self, user: &UserId, limit: usize) -> Vec<Conversion> {
        self.lock()
            .users
            .get(user)
            .map(|l| l.iter().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
