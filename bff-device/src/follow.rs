//! The catalog channels a device follows, in its polls: what is new on each after the cursor.
//!
//! A **stream** channel gives every event after the cursor's position, oldest first, read from
//! the bus's history like the device's commands; each answer takes at most a share of
//! `api.max_events_per_answer` per stream channel (the rest comes in the next answer, at once),
//! so a busy channel never starves the others. History that no longer covers the position (it
//! was trimmed, or the epoch changed) is a gap: an explicit gap item for that channel, then what
//! history still has, never a silent loss. A channel with no position yet (the first poll, a
//! channel newly followed) starts at the oldest event retained, with no gap.
//!
//! A **state** channel gives only its newest value, when it is not the one the cursor says was
//! delivered: conflated, never a backlog.
//!
//! An event whose payload is not JSON is skipped with a warning (its publisher is broken; the
//! publish API only ever writes JSON). Which channels a device may follow was decided when it
//! was registered ([`crate::registry`]); encoding is [`crate::wire`]'s. This module reads the bus.

use serde_json::value::RawValue;
use switchyard_core::bus::{Bus, BusError, Read};
use switchyard_core::channels::ChannelName;
use switchyard_core::event::{Event, Position, TopicClass};

use crate::cursor::{ChannelKey, Cursor};
use crate::registry::{Device, DeviceChannel};

/// One item of a channel in a poll answer.
#[derive(Debug)]
pub(crate) struct ChannelItem {
    /// The channel.
    pub(crate) channel: ChannelName,
    /// The event's position; for a gap, the position delivery continues after.
    pub(crate) position: Position,
    /// The event's JSON, as published; `None` for a gap.
    pub(crate) data: Option<Box<RawValue>>,
}

/// What the channels of a device have for one poll.
#[derive(Debug, Default)]
pub(crate) struct Followed {
    /// Items, channel by channel in the device's order, each channel's oldest first.
    pub(crate) items: Vec<ChannelItem>,
    /// The channel positions for the next cursor.
    pub(crate) next: Vec<(ChannelKey, Position)>,
}

/// Everything new on `device`'s channels: stream channels after the positions in `streams`,
/// state channels unless `states` says their newest value was delivered. Events per stream
/// channel are bounded by a share of `max_events`.
pub(crate) async fn collect(
    bus: &dyn Bus,
    device: &Device,
    streams: Option<&Cursor>,
    states: Option<&Cursor>,
    max_events: usize,
) -> Result<Followed, BusError> {
    let mut out = Followed::default();
    if device.channels.is_empty() {
        return Ok(out);
    }
    let stream_count = device
        .channels
        .iter()
        .filter(|c| c.class == TopicClass::Stream)
        .count();
    let share = (max_events / stream_count.max(1)).max(1);
    for channel in &device.channels {
        match channel.class {
            TopicClass::Stream => {
                let seen = streams.and_then(|c| c.channel(&channel.key));
                stream(bus, channel, seen, share, &mut out).await?;
            }
            TopicClass::State => {
                let seen = states.and_then(|c| c.channel(&channel.key));
                state(bus, channel, seen, &mut out).await?;
            }
        }
    }
    Ok(out)
}

async fn stream(
    bus: &dyn Bus,
    channel: &DeviceChannel,
    seen: Option<Position>,
    max: usize,
    out: &mut Followed,
) -> Result<(), BusError> {
    let topic = &channel.topic;
    let after = match seen {
        Some(p) => p,
        None => Position {
            epoch: bus.head(topic).await?.epoch,
            offset: 0,
        },
    };
    let mut gap = None;
    let mut read = bus.read(topic, after, max).await?;
    if let Read::Gap { resume } = read {
        gap = Some(resume);
        read = bus.read(topic, resume, max).await?;
    }
    let (events, next) = match read {
        Read::Events { events, next } => (events, next),
        // Trimmed again between the two reads: continue from the newest event, after a gap.
        Read::Gap { .. } => {
            let head = bus.head(topic).await?;
            gap = Some(head);
            (Vec::new(), head)
        }
    };
    // A channel with no position yet has nothing to lose: no gap, it starts where history does.
    if let (Some(position), Some(_)) = (gap, seen) {
        out.items.push(ChannelItem {
            channel: channel.name.clone(),
            position,
            data: None,
        });
    }
    for e in &events {
        if let Some(item) = item(channel, e) {
            out.items.push(item);
        }
    }
    out.next.push((channel.key, next));
    Ok(())
}

async fn state(
    bus: &dyn Bus,
    channel: &DeviceChannel,
    seen: Option<Position>,
    out: &mut Followed,
) -> Result<(), BusError> {
    match bus.latest(&channel.topic).await? {
        Some(e) => {
            let position = e.position();
            out.next.push((channel.key, position));
            if seen != Some(position) {
                out.items.extend(item(channel, &e));
            }
        }
        None => {
            if let Some(p) = seen {
                out.next.push((channel.key, p));
            }
        }
    }
    Ok(())
}

/// The item of event `e` on `channel`, or `None` (logged) when its payload is not JSON.
fn item(channel: &DeviceChannel, e: &Event) -> Option<ChannelItem> {
    match serde_json::from_slice::<Box<RawValue>>(&e.payload) {
        Ok(data) => Some(ChannelItem {
            channel: channel.name.clone(),
            position: e.position(),
            data: Some(data),
        }),
        Err(_) => {
            tracing::warn!(
                topic = %channel.topic,
                offset = e.offset,
                "channel event is not JSON, skipped; fix its publisher"
            );
            None
        }
    }
}
