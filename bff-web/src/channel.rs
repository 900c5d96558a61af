//! The `channel` subscription, the same in every version: any channel of the catalog
//! (`[channels]`, [`switchyard_core::channels`]) with no code per channel.
//!
//! The name is checked and resolved in the runtime's catalog (invalid or unknown:
//! `CHANNEL_NOT_FOUND`), the caller judged by the entry's subscribe rule (refused: `FORBIDDEN`),
//! then the channel's bus topic (`ch:` + name) is read through the hub, live or after a position.
//! Each event is `{ epoch offset data }`: the position as decimal strings (epochs exceed 2^53)
//! and the published JSON as is. On a stream channel a gap (history no longer covers the
//! position, or the subscriber fell behind what history keeps) ends the subscription with
//! `HISTORY_GAP` and `extensions.resume`, the position to continue from; a state channel just
//! delivers its newest value.
//!
//! Whether an execution of `channel` may be shared across principals is decided from the same
//! catalog entry in [`crate::ws`] (`sharing`): only when the entry's rule is public.

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, InputObject, Result, SimpleObject};
use futures::stream::{self, Stream, StreamExt};
use switchyard_core::bus::StartAt;
use switchyard_core::channels::{Catalog, ChannelError};
use switchyard_core::event::{Position, TopicClass};
use switchyard_core::hub::Item;

use crate::auth::{Principal, subscriber_of};
use crate::hub_streams;

/// A position in a channel, as a client sends it back: the `epoch` and `offset` of the last
/// event it received, as decimal strings.
#[derive(InputObject, Clone, Debug)]
pub(crate) struct ChannelPosition {
    /// The history generation, as a decimal string (a u64: may exceed 2^53).
    epoch: String,
    /// The offset of the last event received, as a decimal string (a u64).
    offset: String,
}

impl ChannelPosition {
    fn parse(&self) -> Result<Position> {
        let number = |field: &str, value: &str| {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad_position(field));
            }
            value.parse::<u64>().map_err(|_| bad_position(field))
        };
        Ok(Position {
            epoch: number("epoch", &self.epoch)?,
            offset: number("offset", &self.offset)?,
        })
    }
}

fn bad_position(field: &str) -> async_graphql::Error {
    let message = format!("`after.{field}` must be a decimal u64 string, as the events carry it");
    async_graphql::Error::new(message).extend_with(|_, ext| {
        ext.set("code", "BAD_USER_INPUT");
        ext.set("reason", "bad_position");
    })
}

/// One event of a channel.
#[derive(SimpleObject, Debug)]
pub(crate) struct ChannelEvent {
    /// The channel's history generation, as a decimal string (a u64: may exceed 2^53).
    epoch: String,
    /// The event's offset in that generation, as a decimal string (a u64). Pass `{epoch offset}`
    /// as `after` to continue after this event.
    offset: String,
    /// The published JSON value, as it was published.
    data: serde_json::Value,
}

/// The `channel` subscription: the events of channel `name` (live, or after `after`), as the
/// caller may see them.
pub(crate) async fn channel(
    ctx: &Context<'_>,
    name: &str,
    after: Option<ChannelPosition>,
) -> Result<impl Stream<Item = Result<ChannelEvent>> + use<>> {
    let catalog = ctx.data::<Arc<Catalog>>()?;
    let resolved = catalog.resolve(name).map_err(not_found)?;
    let who = subscriber_of(ctx.data_opt::<Principal>());
    if !resolved.may_subscribe(&who) {
        return Err(async_graphql::Error::new(format!(
            "you may not subscribe to channel `{}`",
            resolved.name()
        ))
        .extend_with(|_, ext| ext.set("code", "FORBIDDEN")));
    }
    let start = match after {
        Some(p) => StartAt::After(p.parse()?),
        None => StartAt::Live,
    };
    let class = resolved.entry().class();
    let items = hub_streams::channel(ctx, &resolved.topic(), start).await?;
    Ok(stream::unfold(
        (items, false),
        move |(mut items, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match items.next().await? {
                    Item::Event(e) => {
                        let event = decode(&e.payload).map(|data| ChannelEvent {
                            epoch: e.epoch.to_string(),
                            offset: e.offset.to_string(),
                            data,
                        });
                        return Some((event, (items, false)));
                    }
                    // A state channel has no backlog to lose: the next value replaces it.
                    Item::Gap { .. } if class == TopicClass::State => {}
                    Item::Gap { resume, .. } => {
                        return Some((Err(history_gap(resume)), (items, true)));
                    }
                }
            }
        },
    ))
}

fn decode(payload: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(payload).map_err(|e| {
        tracing::warn!(error = %e, "a channel event is not JSON");
        async_graphql::Error::new(format!("an event of this channel is not JSON: {e}"))
            .extend_with(|_, ext| ext.set("code", "UNDECODABLE_EVENT"))
    })
}

fn not_found(e: ChannelError) -> async_graphql::Error {
    let reason = match &e {
        ChannelError::InvalidName(_) => "invalid_name",
        ChannelError::NotInCatalog(_) => "not_in_catalog",
    };
    async_graphql::Error::new(e.to_string()).extend_with(move |_, ext| {
        ext.set("code", "CHANNEL_NOT_FOUND");
        ext.set("reason", reason);
    })
}

/// The error ending a stream channel's subscription at a gap: `extensions.resume` is where to
/// continue from (`after`), the events before it being lost.
fn history_gap(resume: Position) -> async_graphql::Error {
    async_graphql::Error::new(
        "events of this channel were lost (history no longer covers the position); \
         refetch, then subscribe again with `after` set to extensions.resume",
    )
    .extend_with(move |_, ext| {
        ext.set("code", "HISTORY_GAP");
        let (epoch, offset) = (resume.epoch.to_string(), resume.offset.to_string());
        ext.set(
            "resume",
            async_graphql::value!({"epoch": epoch, "offset": offset}),
        );
    })
}
