//! The v1 GraphQL schema — a published contract (`schema/v1.graphql`): additive changes only;
//! the contract test fails on anything else. Money is a decimal string in v1.
//!
//! Resolvers are thin: what every version does is in [`crate::graphql`]; validation and
//! composition live in the `operations` crate, events come from the process's topic hub (never
//! from a backend connection per client), and errors are mapped in [`crate::errors`].

use async_graphql::{Context, Object, Result, SimpleObject, Subscription};
use demo_api::Conversion;
use futures::Stream;
use operations::Caller;

use crate::GraphqlConfig;
use crate::channel::{ChannelEvent, ChannelPosition};
use crate::errors::no_limit_error;
use crate::graphql::{self, Dashboard, Rate};

/// The v1 schema type.
pub(crate) type V1Schema = async_graphql::Schema<Query, Mutation, SubscriptionRoot>;

// Root subscription fields that are public, and that are state topics: the same in every version.
pub(crate) use graphql::{PUBLIC, STATE};

/// Builds the v1 schema with the configured limits; `data` adds the context every resolver
/// reads (operations, hub).
pub(crate) fn schema(config: &GraphqlConfig, data: crate::ContextData) -> V1Schema {
    graphql::build(Query, Mutation, SubscriptionRoot, config, data)
}

/// The SDL of the v1 schema.
pub(crate) fn sdl() -> String {
    graphql::sdl(Query, Mutation, SubscriptionRoot)
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
        let caller = match ctx.data_opt::<crate::auth::Principal>() {
            Some(p) => Caller::User(&p.user),
            None => Caller::Anonymous,
        };
        graphql::quote(ctx, &user, caller, &from, &to, &amount)
            .await
            .map(QuoteV1)
    }

    /// The signed-in user's dashboard in one request: their limit, the rates of `pairs` (as
    /// `EUR/USD`, at most 20), and their recent conversions. Backend calls run concurrently; a
    /// part whose backend fails is null with an error naming the backend.
    async fn dashboard(
        &self,
        ctx: &Context<'_>,
        pairs: Vec<String>,
    ) -> Result<Dashboard<ConversionV1>> {
        graphql::dashboard(ctx, &pairs).await
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
        graphql::convert(ctx, &from, &to, &amount)
            .await
            .map(Into::into)
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
    ) -> Result<impl Stream<Item = Rate> + use<>> {
        graphql::rates(ctx, &pairs).await
    }

    /// The signed-in user's completed conversions, as they happen. Needs a token in
    /// `connection_init`; another user's conversions are never delivered.
    async fn conversions(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<ConversionV1>> + use<>> {
        graphql::conversions(ctx).await
    }

    /// The events of catalog channel `name` (as `announcements`, `orders.alice`): live, or every
    /// event after `after` (the `epoch` and `offset` of the last event received), then live.
    /// A stream channel delivers every event in order; a state channel its newest value. An
    /// invalid name or one the catalog lacks is refused with `CHANNEL_NOT_FOUND`, a channel the
    /// caller may not read with `FORBIDDEN`; a gap in a stream channel (history no longer covers
    /// the position) ends the subscription with `HISTORY_GAP` and `extensions.resume`, the
    /// position to continue from.
    async fn channel(
        &self,
        ctx: &Context<'_>,
        name: String,
        after: Option<ChannelPosition>,
    ) -> Result<impl Stream<Item = Result<ChannelEvent>> + use<>> {
        crate::channel::channel(ctx, &name, after).await
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

impl From<Conversion> for ConversionV1 {
    fn from(c: Conversion) -> Self {
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
