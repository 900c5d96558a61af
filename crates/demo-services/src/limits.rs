//! The limits service: each user's daily conversion limit and how much of it is used today.
//!
//! `GET /v1/limits/{user}` reads a user's [`Limit`]; `POST /v1/limits/{user}/consume` checks and
//! consumes an amount under one lock, so two concurrent consumes can never both pass a limit that
//! only one of them fits. A refused consume (422 `limit_exceeded`) changes nothing. The day is the
//! UTC day: usage from an earlier day counts as zero.
//!
//! State is in memory and lost on restart. At most [`MAX_USERS`] users with usage are tracked;
//! a consume for a new user beyond that is refused with 503 `capacity` (reads never add a user).
//! This service does not know currencies: amounts are counted as given.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use demo_api::{ConsumeRequest, Decimal, Limit, UserId, parse_amount};
use serde::{Deserialize, Serialize};
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::errors::JsonError;
use switchyard_server::metrics::service::{ServiceMetrics, ServiceMetricsConfig};
use switchyard_server::server::{CancellationToken, Readiness};
use time::Date;
use tokio::net::TcpListener;

use crate::http;

/// Most users whose usage is tracked at once. Usage of an earlier day is forgotten first; when
/// every tracked user has used some of today's limit, consumes for new users get 503 `capacity`.
pub const MAX_USERS: usize = 100_000;

/// Configuration of the limits service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP listener (default `127.0.0.1:9101`) and request limits.
    pub server: ServerConfig,
    /// Log output (used by the binary; an embedding process sets up its own logs).
    pub log: LogConfig,
    /// Daily limit of every user without an override, as a decimal string (`"10000.00"`).
    pub default_daily_limit: Decimal,
    /// Per-user daily limits that replace the default, by user id (`alice = "500.00"`).
    pub users: BTreeMap<String, Decimal>,
    /// `/metrics` on an internal listener of its own (none by default).
    pub metrics: ServiceMetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::backend(SocketAddr::from(([127, 0, 0, 1], 9101))),
            log: LogConfig::default(),
            default_daily_limit: Decimal::new(1_000_000, 2),
            users: BTreeMap::new(),
            metrics: ServiceMetricsConfig::default(),
        }
    }
}

switchyard_server::server_binary!(
    Config,
    "limits",
    "Per-user daily conversion limits (demo backend)",
    "SWITCHYARD_LIMITS"
);

/// Serves the limits service on `listener` until `shutdown` is cancelled, then drains.
///
/// Fails at once on an invalid configuration (a bad user id or a negative limit).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (app, metrics) = build(&config)?;
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
const ROUTES: [&str; 3] = [
    "/v1/limits/{user}",
    "/v1/limits/{user}/consume",
    "/ui/{file}",
];

/// The full application: API routes, health routes and the common layers.
pub fn router(config: &Config) -> anyhow::Result<Router> {
    Ok(build(config)?.0)
}

fn build(config: &Config) -> anyhow::Result<(Router, ServiceMetrics)> {
    let metrics = ServiceMetrics::new("limits", &ROUTES);
    let service = Arc::new(Limits::new(config, MAX_USERS)?);
    let api = Router::new()
        .route("/v1/limits/{user}", get(get_limit))
        .route("/v1/limits/{user}/consume", post(consume))
        .with_state(service);
    let api = api.merge(crate::ui::routes(crate::ui::LIMITS));
    let app = http::finish(api, Readiness::new(None, None), &config.server, &metrics);
    Ok((app, metrics))
}

async fn get_limit(
    State(limits): State<Arc<Limits>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<Limit>, JsonError> {
    let user = user_id(user)?;
    Ok(Json(limits.read(user, today())))
}

async fn consume(
    State(limits): State<Arc<Limits>>,
    user: Result<Path<String>, PathRejection>,
    body: Result<Json<ConsumeRequest>, JsonRejection>,
) -> Result<Json<Limit>, JsonError> {
    let user = user_id(user)?;
    let Json(request) = body.map_err(http::bad_input)?;
    let amount = parse_amount(&request.amount).map_err(http::invalid)?;
    match limits.consume(user, amount, today()) {
        Ok(limit) => Ok(Json(limit)),
        Err(refusal) => Err(refusal.into()),
    }
}

fn user_id(path: Result<Path<String>, PathRejection>) -> Result<UserId, JsonError> {
    let Path(user) = path.map_err(http::bad_input)?;
    UserId::parse(&user).map_err(http::invalid)
}

fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

/// Why a consume was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// The amount does not fit in what is left today.
    Exceeded { amount: Decimal, limit: Limit },
    /// Too many users are tracked to add another.
    Capacity,
}

impl From<Refusal> for JsonError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Exceeded { amount, limit } => JsonError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit_exceeded",
                format!(
                    "amount {amount} exceeds the {} left of today's limit of {} for {}",
                    limit.remaining, limit.daily_limit, limit.user
                ),
            ),
            Refusal::Capacity => {
                tracing::warn!(max_users = MAX_USERS, "limits: user table full; refusing");
                JsonError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "capacity",
                    "too many users are tracked today; try again tomorrow",
                )
            }
        }
    }
}

/// The limits and today's usage of every user.
#[derive(Debug)]
struct Limits {
    default_limit: Decimal,
    overrides: HashMap<UserId, Decimal>,
    max_users: usize,
    book: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    usage: HashMap<UserId, Usage>,
    /// The day stale usage was last swept out, so a full table is swept once per day at most.
    swept: Option<Date>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    day: Date,
    used: Decimal,
}

impl Limits {
    fn new(config: &Config, max_users: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.default_daily_limit >= Decimal::ZERO,
            "default_daily_limit must not be negative, got {}",
            config.default_daily_limit
        );
        let mut overrides = HashMap::new();
        for (user, limit) in &config.users {
            let id = UserId::parse(user).map_err(|e| anyhow::anyhow!("users.{user}: {e}"))?;
            anyhow::ensure!(
                *limit >= Decimal::ZERO,
                "users.{user}: a limit must not be negative, got {limit}"
            );
            overrides.insert(id, *limit);
        }
        Ok(Self {
            default_limit: config.default_daily_limit,
            overrides,
            max_users,
            book: Mutex::new(Book::default()),
        })
    }

    fn limit_of(&self, user: &UserId) -> Decimal {
        self.overrides
            .get(user)
            .copied()
            .unwrap_or(self.default_limit)
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // Every critical section is a lookup and an addition; a panic cannot tear the state.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's limit and usage on `today`, without tracking the user.
    fn read(&self, user: UserId, today: Date) -> Limit {
        let used = match self.lock().usage.get(&user) {
            Some(u) if u.day == today => u.used,
            _ => Decimal::ZERO,
        };
        self.answer(user, used)
    }

    /// Consumes `amount` of the user's limit on `today`, or refuses and changes nothing.
    fn consume(&self, user: UserId, amount: Decimal, today: Date) -> Result<Limit, Refusal> {
        let daily_limit = self.limit_of(&user);
        let mut book = self.lock();
        if !book.usage.contains_key(&user) && book.usage.len() >= self.max_users {
            if book.swept != Some(today) {
                book.usage.retain(|_, u| u.day == today);
                book.swept = Some(today);
            }
            if book.usage.len() >= self.max_users {
                return Err(Refusal::Capacity);
            }
        }
        let used = match book.usage.get(&user) {
            Some(u) if u.day == today => u.used,
            _ => Decimal::ZERO,
        };
        // Amounts are at most 1e9 with 2 places, so the sum cannot overflow a Decimal; a failed
        // addition would still be refused rather than wrap.
        let after = used.checked_add(amount).filter(|a| *a <= daily_limit);
        let Some(after) = after else {
            drop(book);
            return Err(Refusal::Exceeded {
                amount,
                limit: self.answer(user, used),
            });
        };
        book.usage.insert(
            user.clone(),
            Usage {
                day: today,
                used: after,
            },
        );
        drop(book);
        Ok(self.answer(user, after))
    }

    fn answer(&self, user: UserId, used: Decimal) -> Limit {
        let daily_limit = self.limit_of(&user);
        Limit {
            remaining: (daily_limit - used).max(Decimal::ZERO),
            user,
            daily_limit,
            used,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two consecutive UTC days.
    const DAY1: Date = time::macros::date!(2025 - 03 - 01);
    const DAY2: Date = time::macros::date!(2025 - 03 - 02);

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn limits(max_users: usize) -> Limits {
        let config = Config {
            default_daily_limit: d("100.00"),
            ..Config::default()
        };
        Limits::new(&config, max_users).unwrap()
    }

    #[test]
    fn usage_resets_when_the_utc_day_changes() {
        let l = limits(10);
        l.consume(user("a"), d("100.00"), DAY1).unwrap();
        assert!(l.consume(user("a"), d("0.01"), DAY1).is_err());
        assert_eq!(l.read(user("a"), DAY2).used, Decimal::ZERO);
        let after = l.consume(user("a"), d("30.00"), DAY2).unwrap();
        assert_eq!(after.used, d("30.00"));
        assert_eq!(after.remaining, d("70.00"));
    }

    #[test]
    fn a_full_table_refuses_new_users_and_sweeps_earlier_days() {
        let l = limits(2);
        l.consume(user("a"), d("1"), DAY1).unwrap();
        l.consume(user("b"), d("1"), DAY1).unwrap();
        assert_eq!(l.consume(user("c"), d("1"), DAY1), Err(Refusal::Capacity));
        // Known users still work, and reads do not add users.
        l.consume(user("a"), d("1"), DAY1).unwrap();
        assert_eq!(l.read(user("z"), DAY1).used, Decimal::ZERO);
        // The next day, yesterday's usage makes room.
        l.consume(user("c"), d("1"), DAY2).unwrap();
        l.consume(user("d"), d("1"), DAY2).unwrap();
        assert_eq!(l.consume(user("e"), d("1"), DAY2), Err(Refusal::Capacity));
    }

    #[test]
    fn invalid_overrides_are_refused_at_start() {
        let mut config = Config::default();
        config.users.insert("not valid".into(), d("1"));
        assert!(Limits::new(&config, 1).is_err());
        let mut config = Config::default();
        config.users.insert("bob".into(), d("-1"));
        assert!(Limits::new(&config, 1).is_err());
    }
}
