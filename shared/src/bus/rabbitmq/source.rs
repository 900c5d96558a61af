//! What the RabbitMQ bus gives the shared subscription driver (`live.rs`): history reads — a
//! short-lived stream consumer from the position asked for, up to the head in the state
//! store — and live feeds, a stream consumer from the cursor's next offset for as long as the
//! subscription lasts.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use rabbitmq_stream_protocol::commands::subscribe::OffsetSpecification;
use rabbitmq_stream_protocol::message::Message;

use super::connection::ConnError;
use super::{Inner, unavailable, wire};
use crate::bus::live::{self, LiveFeed, LiveItem};
use crate::bus::{BusError, Read};
use crate::event::{Event, Position, Topic};

/// Chunks a consumer may have in flight.
const CREDIT: u16 = 4;

/// The event stored as `message` at stream offset `stream_offset`.
fn event(topic: &Topic, epoch: u64, stream_offset: u64, message: &Message) -> Event {
    let data = message.data().unwrap_or_default();
    let (payload, trace) = match wire::decode(data) {
        Some(body) => (body.payload, body.trace),
        None => (bytes::Bytes::copy_from_slice(data), None),
    };
    Event {
        topic: topic.clone(),
        epoch,
        offset: stream_offset + 1,
        payload,
        trace,
    }
}

impl Inner {
    /// The events with offsets `after + 1 ..= end` of epoch `epoch`, or the gap when the stream
    /// no longer holds the first of them.
    async fn fetch(
        &self,
        topic: &Topic,
        epoch: u64,
        after: u64,
        end: u64,
    ) -> Result<Read, BusError> {
        let conn = self.ensure(topic).await?;
        let stream = self.stream_name(topic);
        let mut consumer = match conn
            .subscribe(&stream, OffsetSpecification::Offset(after), CREDIT)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.forget(topic, &e);
                return Err(unavailable(e));
            }
        };
        let mut events = Vec::new();
        let collect = async {
            while let Some(chunk) = consumer.next().await {
                for (offset, message) in (chunk.first..).zip(&chunk.messages) {
                    // A chunk starts where it starts: skip what precedes the position.
                    if offset < after {
                        continue;
                    }
                    if events.is_empty() && offset > after {
                        // Trimmed by the byte cap: the stream starts after the position.
                        return Some(offset);
                    }
                    if offset >= end {
                        return None;
                    }
                    events.push(event(topic, epoch, offset, message));
                    if offset + 1 >= end {
                        return None;
                    }
                }
            }
            Some(u64::MAX)
        };
        match tokio::time::timeout(self.op_timeout, collect).await {
            Ok(None) => {
                let next = events.last().map_or(
                    Position {
                        epoch,
                        offset: after,
                    },
                    Event::position,
                );
                Ok(Read::Events { events, next })
            }
            Ok(Some(u64::MAX)) => Err(unavailable(ConnError::Closed(
                "subscription ended during a read".into(),
            ))),
            Ok(Some(first)) => Ok(Read::Gap {
                resume: Position {
                    epoch,
                    offset: first,
                },
            }),
            Err(_) => Err(BusError::Unavailable("rabbitmq: read timed out".into())),
        }
    }
}

#[async_trait::async_trait]
impl live::Source for Inner {
    fn metrics(&self) -> &crate::bus::BusMetrics {
        &self.metrics
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        let (epoch, head) = self.state.meta(topic).await?;
        let history = u64::try_from(self.retention.history_of(topic)).unwrap_or(u64::MAX);
        let oldest = head.saturating_sub(history) + 1;
        if let Some(resume) = live::uncovered(after, epoch, oldest, head) {
            return Ok(Read::Gap { resume });
        }
        if after.offset >= head || max == 0 {
            return Ok(Read::Events {
                events: Vec::new(),
                next: after,
            });
        }
        let end = head.min(
            after
                .offset
                .saturating_add(u64::try_from(max).unwrap_or(u64::MAX)),
        );
        // `end` is an event offset: the stream offsets wanted are `after.offset .. end`.
        self.fetch(topic, epoch, after.offset, end).await
    }

    async fn open(
        &self,
        topic: &Topic,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError> {
        let conn = self.ensure(topic).await?;
        let (epoch, head) = self.state.meta(topic).await?;
        let cursor = after.unwrap_or(Position {
            epoch,
            offset: head,
        });
        // The stream offset of the cursor's next event is the cursor's offset.
        let start = if cursor.epoch == epoch {
            cursor.offset
        } else {
            head
        };
        let consumer = match conn
            .subscribe(
                &self.stream_name(topic),
                OffsetSpecification::Offset(start),
                CREDIT,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.forget(topic, &e);
                return Err(unavailable(e));
            }
        };
        let (topic, received, state) = (topic.clone(), self.received.clone(), self.state.clone());
        let feed = futures::stream::unfold((consumer, head), move |(mut consumer, mut known)| {
            let (topic, received, state) = (topic.clone(), received.clone(), state.clone());
            async move {
                let chunk = consumer.next().await?;
                let items: Vec<LiveItem> = (chunk.first..)
                    .zip(&chunk.messages)
                    .filter(|(offset, _)| *offset >= start)
                    .map(|(offset, m)| LiveItem::Event(event(&topic, epoch, offset, m)))
                    .collect();
                received.fetch_add(items.len() as u64, Ordering::Relaxed);
                // An event is delivered only once the head covers it, so that a reader woken by
                // it finds it in history: its publisher raises the head right after reading it
                // back, but may not have yet (or may have died). The events exist, so raising
                // the head to them is right; another epoch means the stream was re-created.
                let last = chunk.first + chunk.messages.len() as u64;
                if last > known {
                    match state.advance(&topic, last).await {
                        Ok(now) if now == epoch => known = last,
                        _ => return None,
                    }
                }
                Some((futures::stream::iter(items), (consumer, known)))
            }
        })
        .flatten();
        Ok((Box::pin(feed), cursor))
    }
}
