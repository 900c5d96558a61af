//! The demo domain's composed operations, shared by every gateway.
//!
//! An operation turns a validated client request into a composition plan over the backends
//! (`exchange`, `limits`, `conversions`), runs it, and returns typed Rust results — including, for
//! optional parts, the error that took a value's place. Gateways map these results and
//! [`OpError`]s to their own wire formats; nothing here knows GraphQL, frames or HTTP status
//! codes. The one exception is the conversion of an [`OpError`] into the server crate's shared
//! HTTP error contract (`switchyard_server::errors`), which bff-mobile's and bff-device's JSON
//! quote share; the contract decides the statuses.
//!
//! [`files`] names the statements backend's paths behind the gateways' streamed file routes.
//! [`channels`] is the demo's channel catalog (`rates.{pair}`, `conversions.{user}`,
//! `announcements`), the default `[channels]` of every gateway, and names the demo's bus topics;
//! [`sources`] holds the domain's event sources: the exchange's tick WebSocket as a `json-ws`
//! source, feeding the bus as the `rates.{pair}` channels' topics (`ch:rates.EUR-USD`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use demo_api::{
    Conversion, ConversionList, ConversionRequest, Decimal, Invalid, Limit, Pair, Rate, UserId,
};
use serde::{Deserialize, Serialize};
use switchyard_core::compose::{Need, Plan};
use switchyard_core::upstream::BackendConfig;
use switchyard_core::upstream::{UpstreamError, Upstreams};
use switchyard_server::errors::{JsonError, upstream_error};
use tokio::time::Instant;

pub mod channels;
pub mod files;
pub mod sources;

/// Backend names the operations call; a gateway's registry must configure them.
pub mod backend {
    /// Rates (REST) and ticks (WebSocket).
    pub const EXCHANGE: &str = "exchange";
    /// Per-user daily limits.
    pub const LIMITS: &str = "limits";
    /// Conversions (and their events).
    pub const CONVERSIONS: &str = "conversions";
    /// Statements and receipts: the large files of the file routes ([`crate::files`]).
    pub const STATEMENTS: &str = "statements";
}

/// Every backend name the operations call, in the order [`default_backends`] lists them.
pub const BACKENDS: &[&str] = &[backend::CONVERSIONS, backend::EXCHANGE, backend::LIMITS];

/// [`BACKENDS`] and the file routes' `statements`: the backends of bff-web and bff-mobile.
pub const BACKENDS_WITH_FILES: &[&str] = &[
    backend::CONVERSIONS,
    backend::EXCHANGE,
    backend::LIMITS,
    backend::STATEMENTS,
];

/// [`known_backends`] for a gateway with the file routes: `statements` is known too.
pub fn known_backends_with_files<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, BackendConfig>, D::Error> {
    switchyard_server::config::only_known(deserializer, "backend", BACKENDS_WITH_FILES)
}

/// [`default_backends`] and `statements` on its default port (9104).
pub fn default_backends_with_files() -> BTreeMap<String, BackendConfig> {
    let mut backends = default_backends();
    backends.insert(
        backend::STATEMENTS.to_owned(),
        BackendConfig::new("http://127.0.0.1:9104"),
    );
    backends
}

/// Reads a gateway's `[backends]` (`#[serde(deserialize_with = "operations::known_backends")]`):
/// a name the operations do not call (`[backends.limts]`) is an error at its key.
pub fn known_backends<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, BackendConfig>, D::Error> {
    switchyard_server::config::only_known(deserializer, "backend", BACKENDS)
}

/// The default backend registry: the demo services on their default ports.
pub fn default_backends() -> BTreeMap<String, BackendConfig> {
    [
        (backend::LIMITS, 9101),
        (backend::EXCHANGE, 9102),
        (backend::CONVERSIONS, 9103),
    ]
    .into_iter()
    .map(|(name, port)| {
        (
            name.to_owned(),
            BackendConfig::new(format!("http://127.0.0.1:{port}")),
        )
    })
    .collect()
}

/// Operation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Deadline for one whole operation, all its backend calls included.
    pub deadline_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { deadline_ms: 1_500 }
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    /// The client's input is invalid (downstream's fault).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A required backend call failed (upstream's fault); the error names the backend.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl From<OpError> for JsonError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(i) => JsonError::bad_request(i.code, i.message),
            OpError::Upstream(u) => upstream_error(&u),
        }
    }
}

/// A quote request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteRequest {
    /// Who asks.
    pub user: UserId,
    /// What to convert into what.
    pub pair: Pair,
    /// How much of the pair's base currency.
    pub amount: Decimal,
}

impl QuoteRequest {
    /// Validates raw client input.
    pub fn parse(user: &str, from: &str, to: &str, amount: &str) -> Result<Self, Invalid> {
        Ok(Self {
            user: UserId::parse(user)?,
            pair: Pair::new(
                demo_api::Currency::parse(from)?,
                demo_api::Currency::parse(to)?,
            )?,
            amount: demo_api::parse_amount(amount)?,
        })
    }
}

/// Who asks for a quote, as the gateway authenticated it. A caller only ever sees its own
/// account's data: the quote's limit is given to [`Caller::User`] of the quoted user only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// No credentials.
    Anonymous,
    /// A signed-in user (from a verified token).
    User(&'a UserId),
    /// A device: it is not a user and sees no user's account data.
    Device,
}

/// Why a caller may not see the quoted user's limit. The limits backend is not called then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Withheld {
    /// No token: nobody's limit is shown to an anonymous caller.
    #[error("the limit is only shown to its own user: sign in (send a bearer token)")]
    Unauthenticated,
    /// The caller is signed in as another user.
    #[error("the limit is only shown to its own user: this is not your account")]
    NotYourAccount,
    /// The caller is a device, not a user.
    #[error("the limit is only shown to its own user: a device sees no user's limit")]
    NotAUser,
}

impl Withheld {
    /// A short stable code for clients: `unauthenticated`, `not_your_account`, `not_a_user`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::NotYourAccount => "not_your_account",
            Self::NotAUser => "not_a_user",
        }
    }

    /// Whether `caller` may see `user`'s account data; why not otherwise.
    pub fn check(caller: Caller<'_>, user: &UserId) -> Result<(), Self> {
        match caller {
            Caller::User(u) if u == user => Ok(()),
            Caller::User(_) => Err(Self::NotYourAccount),
            Caller::Anonymous => Err(Self::Unauthenticated),
            Caller::Device => Err(Self::NotAUser),
        }
    }
}

/// Why a quote carries no remaining limit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoLimit {
    /// The caller may not see it; limits was not called.
    #[error(transparent)]
    Withheld(#[from] Withheld),
    /// The limits backend failed; the error names it.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl NoLimit {
    /// The backend whose answer is missing: `limits`, withheld or failed.
    pub fn backend(&self) -> &str {
        match self {
            Self::Withheld(_) => backend::LIMITS,
            Self::Upstream(u) => &u.backend,
        }
    }

    /// A short stable code: why it was withheld, or how the backend failed (`timeout`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Withheld(w) => w.code(),
            Self::Upstream(u) => u.kind.code(),
        }
    }
}

/// A quote: what converting `amount` would give now, and how much of the user's limit is left.
#[derive(Debug, Clone)]
pub struct Quote {
    /// The pair.
    pub pair: Pair,
    /// The amount of the base currency.
    pub amount: Decimal,
    /// The current rate.
    pub rate: Decimal,
    /// The exchange tick the rate comes from.
    pub rate_seq: u64,
    /// `amount × rate`, rounded as the conversions service rounds.
    pub converted: Decimal,
    /// What is left of the user's daily limit — or why it is not given: withheld from a caller
    /// who may not see it (limits was not called), or the limits backend failed (it is optional).
    pub remaining_limit: Result<Decimal, NoLimit>,
}

impl Quote {
    /// Whether converting the amount now would stay within the limit (unknown if limits failed).
    pub fn within_limit(&self) -> Option<bool> {
        self.remaining_limit
            .as_ref()
            .ok()
            .map(|r| self.amount <= *r)
    }
}

/// The operations, over one backend registry.
#[derive(Debug, Clone)]
pub struct Operations {
    upstreams: Arc<Upstreams>,
    deadline: Duration,
}

impl Operations {
    /// Operations over `upstreams`.
    pub fn new(upstreams: Arc<Upstreams>, config: &Config) -> Self {
        Self {
            upstreams,
            deadline: Duration::from_millis(config.deadline_ms),
        }
    }

    /// The registry the operations call.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// A quote for `caller`: the rate from exchange (required) and, only when `caller` is the
    /// quoted user ([`Withheld::check`]), the remaining limit from limits (optional), fetched
    /// concurrently under the operation's deadline. For any other caller the limit is
    /// [`NoLimit::Withheld`] and limits is not called at all.
    pub async fn quote(&self, req: &QuoteRequest, caller: Caller<'_>) -> Result<Quote, OpError> {
        let mut plan = Plan::new(&self.upstreams);
        let rate = plan.get::<Rate>(
            backend::EXCHANGE,
            format!("/v1/rates/{}/{}", req.pair.base, req.pair.quote),
            Need::Required,
        );
        let limit = Withheld::check(caller, &req.user).map(|()| {
            plan.get::<Limit>(
                backend::LIMITS,
                format!("/v1/limits/{}", req.user),
                Need::Optional,
            )
        });
        let out = plan.run(Instant::now() + self.deadline).await?;
        let rate = out.get(rate).map_err(Clone::clone)?;
        let remaining_limit = match limit {
            Ok(part) => out
                .get(part)
                .map(|l| l.remaining)
                .map_err(|e| NoLimit::Upstream(e.clone())),
            Err(withheld) => Err(NoLimit::Withheld(withheld)),
        };
        Ok(Quote {
            pair: req.pair,
            amount: req.amount,
            rate: rate.rate,
            rate_seq: rate.seq,
            converted: demo_api::round_money(req.amount * rate.rate),
            remaining_limit,
        })
    }
}

/// Most pairs one dashboard (or one rates subscription) may ask for.
pub const MAX_PAIRS: usize = 20;

/// Parses a list of pairs (`EUR/USD`), refusing duplicates and more than [`MAX_PAIRS`].
pub fn parse_pairs<S: AsRef<str>>(pairs: &[S]) -> Result<Vec<Pair>, Invalid> {
    if pairs.len() > MAX_PAIRS {
        return Err(Invalid {
            code: "too_many_pairs",
            message: format!("at most {MAX_PAIRS} pairs"),
        });
    }
    let mut out: Vec<Pair> = Vec::with_capacity(pairs.len());
    for p in pairs {
        let pair: Pair = p.as_ref().parse()?;
        if !out.contains(&pair) {
            out.push(pair);
        }
    }
    Ok(out)
}

/// A user's dashboard: their limit, the rates of some pairs, their recent conversions. Every part
/// is optional: a backend that fails leaves its part as an error beside the others.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The user's limit.
    pub limit: Result<Limit, UpstreamError>,
    /// Each asked pair's rate, in the order asked.
    pub rates: Vec<(Pair, Result<Rate, UpstreamError>)>,
    /// Recent conversions, most recent first.
    pub recent: Result<Vec<Conversion>, UpstreamError>,
}

/// Recent conversions a dashboard shows.
pub const DASHBOARD_RECENT: usize = 10;

impl Operations {
    /// The dashboard of `user`: one composition, every backend call concurrent.
    pub async fn dashboard(&self, user: &UserId, pairs: &[Pair]) -> Result<Dashboard, OpError> {
        let mut plan = Plan::new(&self.upstreams);
        let limit = plan.get::<Limit>(
            backend::LIMITS,
            format!("/v1/limits/{user}"),
            Need::Optional,
        );
        let rates: Vec<_> = pairs
            .iter()
            .map(|p| {
                let part = plan.get::<Rate>(
                    backend::EXCHANGE,
                    format!("/v1/rates/{}/{}", p.base, p.quote),
                    Need::Optional,
                );
                (*p, part)
            })
            .collect();
        let recent = plan.get::<ConversionList>(
            backend::CONVERSIONS,
            format!("/v1/conversions?user={user}&limit={DASHBOARD_RECENT}"),
            Need::Optional,
        );
        let out = plan.run(Instant::now() + self.deadline).await?;
        Ok(Dashboard {
            limit: out.get(limit).cloned().map_err(Clone::clone),
            rates: rates
                .into_iter()
                .map(|(p, part)| (p, out.get(part).cloned().map_err(Clone::clone)))
                .collect(),
            recent: out
                .get(recent)
                .map(|l| l.conversions.clone())
                .map_err(Clone::clone),
        })
    }

    /// Converts `amount` of `pair.base` into `pair.quote` for `user` (a POST: never retried).
    /// The conversions service checks and consumes the limit and publishes the event.
    pub async fn convert(
        &self,
        user: &UserId,
        pair: Pair,
        amount: Decimal,
    ) -> Result<Conversion, OpError> {
        let body = ConversionRequest {
            user: user.to_string(),
            from: pair.base.to_string(),
            to: pair.quote.to_string(),
            amount: amount.to_string(),
        };
        let conversion = self
            .upstreams
            .post_json(
                backend::CONVERSIONS,
                "/v1/conversions",
                &body,
                Instant::now() + self.deadline,
            )
            .await?;
        Ok(conversion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_user_sees_their_own_account() {
        let (bob, alice) = (
            UserId::parse("bob").expect("id"),
            UserId::parse("alice").expect("id"),
        );
        assert_eq!(Withheld::check(Caller::User(&bob), &bob), Ok(()));
        assert_eq!(
            Withheld::check(Caller::User(&alice), &bob),
            Err(Withheld::NotYourAccount)
        );
        assert_eq!(
            Withheld::check(Caller::Anonymous, &bob),
            Err(Withheld::Unauthenticated)
        );
        assert_eq!(
            Withheld::check(Caller::Device, &bob),
            Err(Withheld::NotAUser)
        );
        assert_eq!(Withheld::NotYourAccount.code(), "not_your_account");
    }
}
