//! What the GraphQL schema versions share: the one schema builder, the types that are the same
//! in every version (`Rate`, `Limit`, and `Dashboard` but for the type of its conversions), and
//! the resolver bodies behind the fields every version has.
//!
//! Each version ([`crate::v1`], [`crate::v2`]) keeps its own root types and its own `Quote` and
//! `Conversion`, because their fields, arguments and descriptions are its published contract
//! (`schema/vN.graphql`): a version's resolver declares the field, checks what that version asks
//! of the caller, and wraps the result in its own output type. The resolvers here do the rest:
//! read the context, validate through the `operations` crate, map errors through
//! [`crate::errors`], and turn hub payloads into values.

use std::marker::PhantomData;

use async_graphql::{
    Context, Object, ObjectType, OutputType, Result, Schema, SimpleObject, SubscriptionType,
};
use demo_api::{Conversion, ConversionEvent};
use futures::{Stream, StreamExt};
use operations::{Caller, Operations, Quote, QuoteRequest};

use crate::GraphqlConfig;
use crate::errors::{op_error, upstream_error};
use crate::hub_streams;

/// Root subscription fields whose events are the same for everybody, in every version; every
/// other field (`conversions`) is user-scoped and never shared across principals.
pub(crate) const PUBLIC: &[&str] = &["rates"];
/// Root subscription fields that are state topics (latest value only), in every version.
pub(crate) const STATE: &[&str] = &["rates"];

/// Builds a version's schema with the configured limits; `data` adds the context every resolver
/// reads (operations, hub).
pub(crate) fn build<Q, M, S>(
    query: Q,
    mutation: M,
    subscription: S,
    config: &GraphqlConfig,
    data: crate::ContextData,
) -> Schema<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let mut builder = Schema::build(query, mutation, subscription)
        .data(data.ops)
        .data(data.hub)
        .data(data.catalog)
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

/// The SDL of a version's schema, as served.
pub(crate) fn sdl<Q, M, S>(query: Q, mutation: M, subscription: S) -> String
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    Schema::build(query, mutation, subscription).finish().sdl()
}

/// A quote of `amount` of `from` into `to` for `user`, the limit shown as `caller` may see it.
pub(crate) async fn quote(
    ctx: &Context<'_>,
    user: &str,
    caller: Caller<'_>,
    from: &str,
    to: &str,
    amount: &str,
) -> Result<Quote> {
    let ops = ctx.data::<Operations>()?;
    let req = QuoteRequest::parse(user, from, to, amount).map_err(|e| op_error(e.into()))?;
    ops.quote(&req, caller).await.map_err(op_error)
}

/// The signed-in user's dashboard with the rates of `pairs`.
pub(crate) async fn dashboard<C>(ctx: &Context<'_>, pairs: &[String]) -> Result<Dashboard<C>> {
    let user = crate::signed_in(ctx)?;
    let ops = ctx.data::<Operations>()?;
    let pairs = operations::parse_pairs(pairs).map_err(|e| op_error(e.into()))?;
    let dashboard = ops.dashboard(&user, &pairs).await.map_err(op_error)?;
    Ok(Dashboard {
        user: user.to_string(),
        dashboard,
        conversion: PhantomData,
    })
}

/// Converts `amount` of `from` into `to` for the signed-in user.
pub(crate) async fn convert(
    ctx: &Context<'_>,
    from: &str,
    to: &str,
    amount: &str,
) -> Result<Conversion> {
    let user = crate::signed_in(ctx)?;
    let ops = ctx.data::<Operations>()?;
    let req =
        QuoteRequest::parse(user.as_str(), from, to, amount).map_err(|e| op_error(e.into()))?;
    ops.convert(&user, req.pair, req.amount)
        .await
        .map_err(op_error)
}

/// The `rates` subscription: the current rate of each of `pairs`, then every change; a payload
/// that does not decode is skipped.
pub(crate) async fn rates(
    ctx: &Context<'_>,
    pairs: &[String],
) -> Result<impl Stream<Item = Rate> + use<>> {
    let pairs = operations::parse_pairs(pairs).map_err(|e| op_error(e.into()))?;
    let events = hub_streams::rates(ctx, &pairs).await?;
    Ok(events.filter_map(|payload| async move {
        serde_json::from_slice::<demo_api::Rate>(&payload)
            .ok()
            .map(Rate::from)
    }))
}

/// The `conversions` subscription: the signed-in user's completed conversions, each in the
/// version's type `C`; a payload that does not decode is an error item.
pub(crate) async fn conversions<C: From<Conversion>>(
    ctx: &Context<'_>,
) -> Result<impl Stream<Item = Result<C>> + use<C>> {
    let user = crate::signed_in(ctx)?;
    let events = hub_streams::conversions(ctx, &user).await?;
    Ok(events.map(|item| {
        let payload = item?;
        serde_json::from_slice::<ConversionEvent>(&payload)
            .map(|e| C::from(e.conversion))
            .map_err(|e| async_graphql::Error::new(format!("undecodable event: {e}")))
    }))
}

/// A rate (the same in v2).
#[derive(SimpleObject)]
#[graphql(name = "Rate")]
pub(crate) struct Rate {
    /// The pair, as `EUR/USD`.
    pair: String,
    /// Price of one unit of the pair's first currency in the second, as a decimal string.
    rate: String,
    /// The exchange's tick number for this rate (grows with every tick).
    seq: i64,
}

impl From<demo_api::Rate> for Rate {
    fn from(r: demo_api::Rate) -> Self {
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
pub(crate) struct Limit {
    /// The daily limit, as a decimal string.
    daily_limit: String,
    /// Used today (UTC day), as a decimal string.
    used: String,
    /// What is left today, as a decimal string.
    remaining: String,
}

impl From<&demo_api::Limit> for Limit {
    fn from(l: &demo_api::Limit) -> Self {
        Self {
            daily_limit: l.daily_limit.to_string(),
            used: l.used.to_string(),
            remaining: l.remaining.to_string(),
        }
    }
}

/// A user's dashboard, its conversions in the version's type `C` (the rest is the same in every
/// version).
pub(crate) struct Dashboard<C> {
    user: String,
    dashboard: operations::Dashboard,
    conversion: PhantomData<fn() -> C>,
}

#[Object(name = "Dashboard")]
impl<C> Dashboard<C>
where
    C: OutputType + From<Conversion>,
{
    /// The signed-in user.
    async fn user(&self) -> &str {
        &self.user
    }

    /// Their daily limit; null with an error naming the backend when limits did not answer.
    async fn limit(&self) -> Result<Option<Limit>> {
        match &self.dashboard.limit {
            Ok(l) => Ok(Some(l.into())),
            Err(e) => Err(upstream_error(e)),
        }
    }

    /// The rates asked for, in the order asked; an entry is null with an error naming the
    /// backend when its rate could not be fetched.
    async fn rates(&self) -> Vec<Result<Option<Rate>>> {
        self.dashboard
            .rates
            .iter()
            .map(|(_, r)| match r {
                Ok(rate) => Ok(Some(Rate::from(rate.clone()))),
                Err(e) => Err(upstream_error(e)),
            })
            .collect()
    }

    /// Their most recent conversions, most recent first; null with an error naming the backend
    /// when conversions did not answer.
    async fn recent(&self) -> Result<Option<Vec<C>>> {
        match &self.dashboard.recent {
            Ok(list) => Ok(Some(list.iter().cloned().map(C::from).collect())),
            Err(e) => Err(upstream_error(e)),
        }
    }
}
