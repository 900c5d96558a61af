//! The v1 GraphQL schema — a published contract (`schema/v1.graphql`): additive changes only.

use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Result, Schema};
use operations::{Operations, Quote, QuoteRequest};

use crate::GraphqlConfig;
use crate::errors::{op_error, upstream_error};

/// The v1 schema type.
pub(crate) type V1Schema = Schema<Query, EmptyMutation, EmptySubscription>;

/// Builds the v1 schema over the operations, with the configured limits.
pub(crate) fn schema(ops: Operations, config: &GraphqlConfig) -> V1Schema {
    let mut builder = Schema::build(Query, EmptyMutation, EmptySubscription)
        .data(ops)
        .limit_depth(config.max_depth)
        .limit_complexity(config.max_complexity);
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL of the v1 schema.
pub(crate) fn sdl() -> String {
    Schema::build(Query, EmptyMutation, EmptySubscription)
        .finish()
        .sdl()
}

/// Queries.
pub(crate) struct Query;

#[Object]
impl Query {
    /// What converting `amount` of `from` into `to` gives now, and what is left of the user's
    /// daily limit. Money is a decimal string.
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
        ops.quote(&req).await.map(QuoteV1).map_err(op_error)
    }
}

/// A quote.
pub(crate) struct QuoteV1(Quote);

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
    /// the backend when the limits service did not answer.
    async fn remaining_limit(&self) -> Result<Option<String>> {
        match &self.0.remaining_limit {
            Ok(r) => Ok(Some(r.to_string())),
            Err(e) => Err(upstream_error(e)),
        }
    }

    /// Whether converting the amount now stays within the limit; null when unknown.
    async fn within_limit(&self) -> Option<bool> {
        self.0.within_limit()
    }
}
