//! The v2 GraphQL schema, beside v1 — a published contract (`schema/v2.graphql`).
//!
//! What breaks from v1, deliberately: money is a structured `Money { amount currency }` instead of
//! a decimal string (`Quote.amount`, `Quote.converted`, `Quote.remainingLimit`,
//! `Conversion.amount`, `Conversion.converted`), and `quote` is for the signed-in user (v1's
//! `user` argument let anyone quote against anyone's limit). Rates and limits keep their v1
//! shapes (the types are shared, [`crate::graphql`]). Old v1 bundles keep working on /v1; new
//! ones use /v2.

use async_graphql::{Context, Object, Result, SimpleObject, Subscription};
use demo_api::{Conversion, Currency, Decimal};
use futures::Stream;
use operations::Caller;

use crate::GraphqlConfig;
use crate::channel::{ChannelEvent, ChannelPosition};
use crate::errors::no_limit_error;
use crate::graphql::{self, Dashboard, Rate};

/// The v2 schema type.
pub(crate) type V2Schema = async_graphql::Schema<Query, Mutation, SubscriptionRoot>;

// Root subscription fields that are public, and that are state topics: the same in every version.
pub(crate) use graphql::{PUBLIC, STATE};

/// Builds the v2 schema with the configured limits.
pub(crate) fn schema(config: &GraphqlConfig, data: crate::ContextData) -> V2Schema {
    graphql::build(Query, Mutation, SubscriptionRoot, config, data)
}

/// The SDL of the v2 schema.
pub(crate) fn sdl() -> String {
    graphql::sdl(Query, Mutation, SubscriptionRoot)
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
        graphql::quote(ctx, user.as_str(), Caller::User(&user), &from, &to, &amount)
            .await
            .map(QuoteV2)
    }

    /// The signed-in user's dashboard, as in v1 with structured money.
    async fn dashboard(
        &self,
        ctx: &Context<'_>,
        pairs: Vec<String>,
    ) -> Result<Dashboard<ConversionV2>> {
        graphql::dashboard(ctx, &pairs).await
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
        graphql::convert(ctx, &from, &to, &amount)
            .await
            .map(ConversionV2)
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
    ) -> Result<impl Stream<Item = Rate> + use<>> {
        graphql::rates(ctx, &pairs).await
    }

    /// The signed-in user's completed conversions, as they happen.
    async fn conversions(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<ConversionV2>> + use<>> {
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

impl From<Conversion> for ConversionV2 {
    fn from(c: Conversion) -> Self {
        Self(c)
    }
}

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
