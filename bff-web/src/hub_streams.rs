//! Event streams for subscriptions, read from the process's topic hub — never from a backend
//! connection per client. The hub shares one source subscription per topic (and, for rates, one
//! upstream subscription at the exchange through the exchange's source). Catalog channels are read
//! here too ([`channel`]), their meaning given in [`crate::channel`].

use async_graphql::{Context, ErrorExtensions, Result};
use bytes::Bytes;
use demo_api::{Pair, UserId};
use futures::Stream;
use futures::stream::{self, StreamExt};
use switchyard_core::bus::StartAt;
use switchyard_core::event::Topic;
use switchyard_core::hub::{Hub, Item, Subscriber};

/// A subscriber's items (a hub `Subscriber` is a stream of them).
fn items(sub: Subscriber) -> futures::stream::BoxStream<'static, Item> {
    sub.boxed()
}

/// The error a subscription gets when the hub cannot open its topic; logged at most once every
/// 10 s, with how many failed since the last line (in a broker outage every socket's every
/// subscription fails: a line each would cost more than the failures).
fn unavailable(e: impl std::fmt::Display) -> async_graphql::Error {
    static THROTTLE: switchyard_core::logthrottle::LogThrottle =
        switchyard_core::logthrottle::LogThrottle::new(10_000);
    if let Some(more) = THROTTLE.allow() {
        tracing::warn!(error = %e, more, "event source unavailable (logged at most every 10 s; `more` failed since the last line)");
    }
    async_graphql::Error::new(format!("events are unavailable: {e}"))
        .extend_with(|_, ext| ext.set("code", "EVENTS_UNAVAILABLE"))
}

/// The payloads of the rates of `pairs`: the current value of each first, then changes.
pub(crate) async fn rates(
    ctx: &Context<'_>,
    pairs: &[Pair],
) -> Result<impl Stream<Item = Bytes> + use<>> {
    let hub = ctx.data::<Hub>()?;
    let mut subs = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let topic = operations::sources::rates_topic(pair);
        subs.push(items(
            hub.subscribe(&topic, StartAt::Live)
                .await
                .map_err(unavailable)?,
        ));
    }
    Ok(stream::select_all(subs).filter_map(|item| async move {
        match item {
            Item::Event(e) => Some(e.payload),
            // A state topic has no backlog to lose: the next value replaces the missed ones.
            Item::Gap { .. } => None,
        }
    }))
}

/// The payloads of `user`'s conversion events, live; a gap becomes an error item telling the
/// client to refetch.
pub(crate) async fn conversions(
    ctx: &Context<'_>,
    user: &UserId,
) -> Result<impl Stream<Item = Result<Bytes>> + use<>> {
    let hub = ctx.data::<Hub>()?;
    let topic = operations::channels::conversions_topic(user);
    let sub = hub
        .subscribe(&topic, StartAt::Live)
        .await
        .map_err(unavailable)?;
    Ok(items(sub).map(|item| match item {
        Item::Event(e) => Ok(e.payload),
        Item::Gap { .. } => Err(async_graphql::Error::new(
            "some conversion events were lost; refetch the dashboard",
        )
        .extend_with(|_, ext| ext.set("code", "EVENTS_LOST"))),
    }))
}

/// The items of a catalog channel's bus `topic` from `start`: events in order, and gaps (the
/// caller decides what a gap means for its channel's class).
pub(crate) async fn channel(
    ctx: &Context<'_>,
    topic: &Topic,
    start: StartAt,
) -> Result<futures::stream::BoxStream<'static, Item>> {
    let hub = ctx.data::<Hub>()?;
    let sub = hub.subscribe(topic, start).await.map_err(unavailable)?;
    Ok(items(sub))
}
