//! The v2 GraphQL schema, beside v1 — a published contract (`schema/v2.graphql`).
//!
//! What breaks from v1, deliberately: money is a structured `Money { amount currency }` instead of
//! a decimal string (`Quote.amount`, `Quote.converted`, `Quote.remainingLimit`,
//! `Conversion.amount`, `Conversion.converted`), and `quote` is for the signed-in user (v1's
//! `user` argument let anyone quote against anyone's limit). Rates and limits keep their v1
//! shapes. Old v1 bundles keep working on /v1; new ones use /v2.

use async_graphql::{Context, Object, Result, Schema, SimpleObject, Subscription};
use demo_api::{Conversion, ConversionEvent, Currency, Decimal, Rate};
use futures::{Stream, StreamExt};
use operations::{Caller, Operations, QuoteRequest};

use crate::GraphqlConfig;
use crate::errors::{no_limit_error, op_error, upstream_error};
use crate::live;
use crate::v1::{LimitV1, RateV1};

/// The v2 schema type.
pub(crate) type V2Schema = Schema<Query, Mutation, SubscriptionRoot>;

/// Root subscription fields whose events are the same for everybody; every other field
/// (`conversions`) is user-scoped and never shared across principals.
pub(crate) const PUBLIC: &[&str] = &["rates"];
/// Root subscription fields that are state topics (latest value only).
pub(crate) const STATE: &[&str] = &["rates"];

/// Builds the v2 schema with the configured limits.
pub(crate) fn schema(config: &GraphqlConfig, data: crate::ContextData) -> V2Schema {
    let mut builder = Schema::build(Query, Mutation, SubscriptionRoot)
        .data(data.ops)
        .data(data.hub)
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity)
        .extension(crate::limits::DocumentLimits {
            max_aliases: config.max_aliases,
            max_selections: config.max_selections,
        });
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL of the v2 schema.
pub(crate) fn sdl() -> String {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .finish()
        .sdl()
}

/// An amount of money.
#[derive(SimpleObject, Clone)]
pub(crate) struct Money {
    /// The amount, as an exact decimal string (never a float).
    amount: String,
    /// The ISO 4217 currency code.
    currency: String,
}

impl Money {
    fn new(amount: Decimal, currency: Currency) -> Self {
        Self {
            amount: amount.to_string(),
            currency: currency.to_string(),
        }
    }
}

/// Queries.
pub(crate) struct Query;

#[Object]
impl Query {
    /// What converting `amount` of `from` into `to` gives the signed-in user now, and what is
    /// left of their daily limit.
    async fn quote(
        &self,
        ctx: &Context<'_>,
        from: String,
        to: String,
        amount: String,
    ) -> Result<QuoteV2> {
        let user = crate::signed_in(ctx)?;
        let ops = ctx.data::<Operations>()?;
        let req = QuoteRequest::parse(user.as_str(), &from, &to, &amount)
            .map_err(|e| op_error(e.into()))?;
        ops.quote(&req, Caller::User(&user))
            .await
            .map(QuoteV2)
            .map_err(op_error)
    }

    /// The signed-in user's dashboard, as in v1 with structured money.
    async fn dashboard(&self, ctx: &Context<'_>, pairs: Vec<String>) -> Result<DashboardV2> {
        let user = crate::signed_in(ctx)?;
        let ops = ctx.data::<Operations>()?;
        let pairs = operations::parse_pairs(&pairs).map_err(|e| op_error(e.into()))?;
        ops.dashboard(&user, &pairs)
            .await
            .map(|d| DashboardV2 {
                user: user.to_string(),
                dashboard: d,
            })
            .map_err(op_error)
    }
}

/// Mutations.
pub(crate) struct Mutation;

#[Object]
impl Mutation {
    /// Converts `amount` of `from` into `to` for the signed-in user, within their daily limit.
    async fn convert(
        &self,
        ctx: &Context<'_>,
        from: String,
        to: String,
        amount: String,
    ) -> Result<ConversionV2> {
        let user = crate::signed_in(ctx)?;
        let ops = ctx.data::<Operations>()?;
        let req = QuoteRequest::parse(user.as_str(), &from, &to, &amount)
            .map_err(|e| op_error(e.into()))?;
        ops.convert(&user, req.pair, req.amount)
            .await
            .map(ConversionV2)
            .map_err(op_error)
    }
}

/// Subscriptions.
pub(crate) struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Live rates of `pairs`, as in v1.
    async fn rates(
        &self,
        ctx: &Context<'_>,
        pairs: Vec<String>,
    ) -> Result<impl Stream<Item = RateV1> + use<>> {
        let pairs = operations::parse_pairs(&pairs).map_err(|e| op_error(e.into()))?;
        let events = live::rates(ctx, &pairs).await?;
        Ok(events.filter_map(|payload| async move {
            serde_json::from_slice::<Rate>(&payload)
                .ok()
                .map(RateV1::from)
        }))
    }

    /// The signed-in user's completed conversions, as they happen.
    async fn conversions(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<ConversionV2>> + use<>> {
        let user = crate::signed_in(ctx)?;
        let events = live::conversions(ctx, &user).await?;
        Ok(events.map(|item| {
            let payload = item?;
            serde_json::from_slice::<ConversionEvent>(&payload)
                .map(|e| ConversionV2(e.conversion))
                .map_err(|e| async_graphql::Error::new(format!("undecodable event: {e}")))
        }))
    }
}

/// A quote.
pub(crate) struct QuoteV2(operations::Quote);

#[Object(name = "Quote")]
impl QuoteV2 {
    /// The pair, as `EUR/USD`.
    async fn pair(&self) -> String {
        self.0.pair.to_string()
    }

    /// The current rate, as a decimal string.
    async fn rate(&self) -> String {
        self.0.rate.to_string()
    }

    /// The amount to convert.
    async fn amount(&self) -> Money {
        Money::new(self.0.amount, self.0.pair.base)
    }

    /// What it converts to: `amount × rate`, rounded half away from zero to 2 places.
    async fn converted(&self) -> Money {
        Money::new(self.0.converted, self.0.pair.quote)
    }

    /// What is left of the daily limit (counted in units of the amount converted); null with an
    /// error naming the backend when the limits service did not answer.
    async fn remaining_limit(&self) -> Result<Option<Money>> {
        match &self.0.remaining_limit {
            Ok(r) => Ok(Some(Money::new(*r, self.0.pair.base))),
            Err(e) => Err(no_limit_error(e)),
        }
    }

    /// Whether converting the amount now stays within the limit; null when unknown.
    async fn within_limit(&self) -> Option<bool> {
        self.0.within_limit()
    }
}

/// A completed conversion.
pub(crate) struct ConversionV2(Conversion);

#[Object(name = "Conversion")]
impl ConversionV2 {
    /// Unique id.
    async fn id(&self) -> &str {
        &self.0.id
    }

    /// The rate used, as a decimal string.
    async fn rate(&self) -> String {
        self.0.rate.to_string()
    }

    /// The amount converted.
    async fn amount(&self) -> Money {
        Money::new(self.0.amount, self.0.from)
    }

    /// What it converted to.
    async fn converted(&self) -> Money {
        Money::new(self.0.converted, self.0.to)
    }

    /// When, as RFC 3339 UTC.
    async fn at(&self) -> &str {
        &self.0.at
    }
}

/// A user's dashboard.
pub(crate) struct DashboardV2 {
    user: String,
    dashboard: operations::Dashboard,
}

#[Object(name = "Dashboard")]
impl DashboardV2 {
    /// The signed-in user.
    async fn user(&self) -> &str {
        &self.user
    }

    /// Their daily limit; null with an error naming the backend when limits did not answer.
    async fn limit(&self) -> Result<Option<LimitV1>> {
        crate::v1::dashboard_limit(&self.dashboard)
    }

    /// The rates asked for, in the order asked; an entry is null with an error naming the
    /// backend when its rate could not be fetched.
    async fn rates(&self) -> Vec<Result<Option<RateV1>>> {
        crate::v1::dashboard_rates(&self.dashboard)
    }

    /// Their most recent conversions, most recent first; null with an error naming the backend
    /// when conversions did not answer.
    async fn recent(&self) -> Result<Option<Vec<ConversionV2>>> {
        match &self.dashboard.recent {
            Ok(list) => Ok(Some(list.iter().cloned().map(ConversionV2).collect())),
            Err(e) => Err(upstream_error(e)),
        }
    }
}
