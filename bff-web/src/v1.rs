//! The v1 GraphQL schema — a published contract (`schema/v1.graphql`): additive changes only;
//! the contract test fails on anything else. Money is a decimal string in v1.
//!
//! Resolvers are thin: validation and composition live in the `operations` crate, events come
//! from the process's topic hub (never from a backend connection per client), and errors are
//! mapped in [`crate::errors`].

use async_graphql::{Context, Object, Result, Schema, SimpleObject, Subscription};
use demo_api::{Conversion, ConversionEvent, Limit, Rate};
use futures::{Stream, StreamExt};
use operations::{Caller, Operations, QuoteRequest};

use crate::GraphqlConfig;
use crate::errors::{no_limit_error, op_error, upstream_error};
use crate::live;

/// The v1 schema type.
pub(crate) type V1Schema = Schema<Query, Mutation, SubscriptionRoot>;

/// Root subscription fields whose events are the same for everybody; every other field
/// (`conversions`) is user-scoped and never shared across principals.
pub(crate) const PUBLIC: &[&str] = &["rates"];
/// Root subscription fields that are state topics (latest value only).
pub(crate) const STATE: &[&str] = &["rates"];

/// Builds the v1 schema with the configured limits; `data` adds the context every resolver
/// reads (operations, hub).
pub(crate) fn schema(config: &GraphqlConfig, data: crate::ContextData) -> V1Schema {
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

/// The SDL of the v1 schema.
pub(crate) fn sdl() -> String {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .finish()
        .sdl()
}

/// Queries.
pub(crate) struct Query;

#[Object]
impl Query {
    /// What converting `amount` of `from` into `to` gives now, and what is left of the user's
    /// daily limit. Money is a decimal string. The limit is only shown to `user` signed in
    /// (bearer token); for anyone else it is null with an error (`UNAUTHENTICATED` or
    /// `FORBIDDEN`).
    async fn quote(
        &self,
        ctx: &Context<'_>,
        user: String,
        from: String,
        to: String,
        amount: String,
    ) -> Result<QuoteV1> {
        let ops = ctx.data::<Operations>()?;
        let req =
            QuoteRequest::parse(&user, &from, &to, &amount).map_err(|e| op_error(e.into()))?;
        let caller = match ctx.data_opt::<crate::auth::Principal>() {
            Some(p) => Caller::User(&p.user),
            None => Caller::Anonymous,
        };
        ops.quote(&req, caller).await.map(QuoteV1).map_err(op_error)
    }

    /// The signed-in user's dashboard in one request: their limit, the rates of `pairs` (as
    /// `EUR/USD`, at most 20), and their recent conversions. Backend calls run concurrently; a
    /// part whose backend fails is null with an error naming the backend.
    async fn dashboard(&self, ctx: &Context<'_>, pairs: Vec<String>) -> Result<DashboardV1> {
        let user = crate::signed_in(ctx)?;
        let ops = ctx.data::<Operations>()?;
        let pairs = operations::parse_pairs(&pairs).map_err(|e| op_error(e.into()))?;
        let dashboard = ops.dashboard(&user, &pairs).await.map_err(op_error)?;
        Ok(DashboardV1 {
            user: user.to_string(),
            dashboard,
        })
    }
}

/// Mutations.
pub(crate) struct Mutation;

#[Object]
impl Mutation {
    /// Converts `amount` of `from` into `to` for the signed-in user, within their daily limit.
    /// The completed conversion is also delivered to the user's `conversions` subscriptions.
    async fn convert(
        &self,
        ctx: &Context<'_>,
        from: String,
        to: String,
        amount: String,
    ) -> Result<ConversionV1> {
        let user = crate::signed_in(ctx)?;
        let ops = ctx.data::<Operations>()?;
        let req = QuoteRequest::parse(user.as_str(), &from, &to, &amount)
            .map_err(|e| op_error(e.into()))?;
        ops.convert(&user, req.pair, req.amount)
            .await
            .map(ConversionV1::new)
            .map_err(op_error)
    }
}

/// Subscriptions.
pub(crate) struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Live rates of `pairs` (as `EUR/USD`, at most 20): the current rate of each at once, then
    /// every change. Slow clients get the newest rate, never a backlog.
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

    /// The signed-in user's completed conversions, as they happen. Needs a token in
    /// `connection_init`; another user's conversions are never delivered.
    async fn conversions(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<ConversionV1>> + use<>> {
        let user = crate::signed_in(ctx)?;
        let events = live::conversions(ctx, &user).await?;
        Ok(events.map(|item| {
            let payload = item?;
            serde_json::from_slice::<ConversionEvent>(&payload)
                .map(|e| ConversionV1::new(e.conversion))
                .map_err(|e| async_graphql::Error::new(format!("undecodable event: {e}")))
        }))
    }
}

/// A quote.
pub(crate) struct QuoteV1(operations::Quote);

#[Object(name = "Quote")]
impl QuoteV1 {
    /// The pair, as `EUR/USD`.
    async fn pair(&self) -> String {
        self.0.pair.to_string()
    }

    /// The currency converted from.
    async fn from(&self) -> &str {
        self.0.pair.base.as_str()
    }

    /// The currency converted to.
    async fn to(&self) -> &str {
        self.0.pair.quote.as_str()
    }

    /// The amount of `from`, as a decimal string.
    async fn amount(&self) -> String {
        self.0.amount.to_string()
    }

    /// The current rate, as a decimal string.
    async fn rate(&self) -> String {
        self.0.rate.to_string()
    }

    /// `amount × rate`, rounded half away from zero to 2 places, as a decimal string.
    async fn converted(&self) -> String {
        self.0.converted.to_string()
    }

    /// What is left of the user's daily limit, as a decimal string; null with an error naming
    /// the backend when the limits service did not answer, and null with an `UNAUTHENTICATED`
    /// or `FORBIDDEN` error unless the caller is signed in as the quoted user.
    async fn remaining_limit(&self) -> Result<Option<String>> {
        match &self.0.remaining_limit {
            Ok(r) => Ok(Some(r.to_string())),
            Err(e) => Err(no_limit_error(e)),
        }
    }

    /// Whether converting the amount now stays within the limit; null when unknown.
    async fn within_limit(&self) -> Option<bool> {
        self.0.within_limit()
    }
}

/// A rate (the same in v2).
#[derive(SimpleObject)]
#[graphql(name = "Rate")]
pub(crate) struct RateV1 {
    /// The pair, as `EUR/USD`.
    pair: String,
    /// Price of one unit of the pair's first currency in the second, as a decimal string.
    rate: String,
    /// The exchange's tick number for this rate (grows with every tick).
    seq: i64,
}

impl From<Rate> for RateV1 {
    fn from(r: Rate) -> Self {
        Self {
            pair: r.pair.to_string(),
            rate: r.rate.to_string(),
            seq: i64::try_from(r.seq).unwrap_or(i64::MAX),
        }
    }
}

/// A daily conversion limit (the same in v2).
#[derive(SimpleObject)]
#[graphql(name = "Limit")]
pub(crate) struct LimitV1 {
    /// The daily limit, as a decimal string.
    daily_limit: String,
    /// Used today (UTC day), as a decimal string.
    used: String,
    /// What is left today, as a decimal string.
    remaining: String,
}

impl From<&Limit> for LimitV1 {
    fn from(l: &Limit) -> Self {
        Self {
            daily_limit: l.daily_limit.to_string(),
            used: l.used.to_string(),
            remaining: l.remaining.to_string(),
        }
    }
}

/// A completed conversion.
#[derive(SimpleObject)]
#[graphql(name = "Conversion")]
pub(crate) struct ConversionV1 {
    /// Unique id.
    id: String,
    /// The currency converted from.
    from: String,
    /// The currency converted to.
    to: String,
    /// The amount of `from`, as a decimal string.
    amount: String,
    /// The rate used, as a decimal string.
    rate: String,
    /// The amount of `to` received, as a decimal string.
    converted: String,
    /// When, as RFC 3339 UTC.
    at: String,
}

impl ConversionV1 {
    fn new(c: Conversion) -> Self {
        Self {
            id: c.id,
            from: c.from.to_string(),
            to: c.to.to_string(),
            amount: c.amount.to_string(),
            rate: c.rate.to_string(),
            converted: c.converted.to_string(),
            at: c.at,
        }
    }
}

/// A user's dashboard.
pub(crate) struct DashboardV1 {
    user: String,
    dashboard: operations::Dashboard,
}

#[Object(name = "Dashboard")]
impl DashboardV1 {
    /// The signed-in user.
    async fn user(&self) -> &str {
        &self.user
    }

    /// Their daily limit; null with an error naming the backend when limits did not answer.
    async fn limit(&self) -> Result<Option<LimitV1>> {
        dashboard_limit(&self.dashboard)
    }

    /// The rates asked for, in the order asked; an entry is null with an error naming the
    /// backend when its rate could not be fetched.
    async fn rates(&self) -> Vec<Result<Option<RateV1>>> {
        dashboard_rates(&self.dashboard)
    }

    /// Their most recent conversions, most recent first; null with an error naming the backend
    /// when conversions did not answer.
    async fn recent(&self) -> Result<Option<Vec<ConversionV1>>> {
        match &self.dashboard.recent {
            Ok(list) => Ok(Some(list.iter().cloned().map(ConversionV1::new).collect())),
            Err(e) => Err(upstream_error(e)),
        }
    }
}

/// A dashboard's limit part (the same in v1 and v2).
pub(crate) fn dashboard_limit(d: &operations::Dashboard) -> Result<Option<LimitV1>> {
    match &d.limit {
        Ok(l) => Ok(Some(l.into())),
        Err(e) => Err(upstream_error(e)),
    }
}

/// A dashboard's rates part (the same in v1 and v2).
pub(crate) fn dashboard_rates(d: &operations::Dashboard) -> Vec<Result<Option<RateV1>>> {
    d.rates
        .iter()
        .map(|(_, r)| match r {
            Ok(rate) => Ok(Some(RateV1::from(rate.clone()))),
            Err(e) => Err(upstream_error(e)),
        })
        .collect()
}
