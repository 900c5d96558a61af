//! Reading the channels of a group (see `groups.rs`): history reads that walk a channel's
//! messages, and live feeds from the stream's republished copies of them.

use futures::StreamExt;

use super::Inner;
use super::groups::{Channel, EPOCH, OFFSET, event_of, position_of};
use super::streams::trace_of;
use crate::bus::live::{self, LiveFeed, LiveItem};
use crate::bus::{BusError, Group, Read};
use crate::event::{Event, Position, Topic};
use async_nats::jetstream::message::StreamMessage;
use std::sync::Arc;
use tokio::sync::Notify;

impl Inner {
    /// Reads a channel's history after `after`: from its head, the oldest retained message, and
    /// a walk over its messages — forwards from the oldest, or backwards from the newest along
    /// each message's link to the previous one, whichever is shorter.
    pub(super) async fn group_read(
        &self,
        topic: &Topic,
        group: &Group,
        after: Position,
        max: usize,
    ) -> Result<Read, BusError> {
        let (ch, head, last) = self.group_head(topic, group).await?;
        let first = match head.offset {
            0 => None,
            _ => self.next_message(&ch, 0).await?,
        };
        let oldest = match first.as_ref().and_then(position_of) {
            Some((_, offset, _)) => offset.max(1),
            None => head.offset + 1,
        };
        if let Some(resume) = live::uncovered(after, head.epoch, oldest, head.offset) {
            return Ok(Read::Gap { resume });
        }
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        let end = head.offset.min(after.offset.saturating_add(max));
        if end <= after.offset {
            return Ok(Read::Events {
                events: Vec::new(),
                next: after,
            });
        }
        let forwards = (after.offset + 1 - oldest) + (end - after.offset);
        let backwards = head.offset - after.offset;
        let walked = if forwards <= backwards {
            self.walk_forwards(&ch, first, after.offset + 1, end).await
        } else {
            self.walk_backwards(&ch, last, after.offset + 1, end).await
        };
        let events = match walked? {
            Some(msgs) => msgs
                .into_iter()
                .filter_map(|m| event_of(topic, m))
                .filter(|e| e.epoch == head.epoch)
                .collect::<Vec<_>>(),
            None => Vec::new(),
        };
        let want = usize::try_from(end - after.offset).unwrap_or(usize::MAX);
        if events.len() != want {
            // Trimmed or expired during the walk: the next read answers with the gap.
            let (_, now, _) = self.group_head(topic, group).await?;
            let first = self.next_message(&ch, 0).await?;
            let oldest = first
                .as_ref()
                .and_then(position_of)
                .map_or(now.offset + 1, |(_, o, _)| o.max(1));
            if let Some(resume) = live::uncovered(after, now.epoch, oldest, now.offset) {
                return Ok(Read::Gap { resume });
            }
            return Err(BusError::Unavailable(format!(
                "nats: {topic}'s history moved during a read"
            )));
        }
        let next = events.last().map_or(after, Event::position);
        Ok(Read::Events { events, next })
    }

    /// The messages of offsets `from..=to`, walking forwards from `first` (the channel's
    /// oldest); `None` when one is missing.
    async fn walk_forwards(
        &self,
        ch: &Channel,
        first: Option<StreamMessage>,
        from: u64,
        to: u64,
    ) -> Result<Option<Vec<StreamMessage>>, BusError> {
        let mut out = Vec::new();
        let mut msg = first;
        while let Some(m) = msg {
            let Some((_, offset, _)) = position_of(&m) else {
                return Ok(None);
            };
            let seq = m.sequence;
            if offset >= from {
                if offset != from + out.len() as u64 {
                    return Ok(None);
                }
                out.push(m);
            }
            if offset >= to {
                return Ok(Some(out));
            }
            msg = self.next_message(ch, seq).await?;
        }
        Ok(None)
    }

    /// The messages of offsets `from..=to`, walking backwards from `last` (the channel's
    /// newest) along each message's link to its previous one; `None` when one is missing.
    async fn walk_backwards(
        &self,
        ch: &Channel,
        last: Option<StreamMessage>,
        from: u64,
        to: u64,
    ) -> Result<Option<Vec<StreamMessage>>, BusError> {
        let mut out = Vec::new();
        let mut msg = last;
        while let Some(m) = msg {
            let Some((_, offset, prev)) = position_of(&m) else {
                return Ok(None);
            };
            if m.subject.as_str() != ch.subject {
                return Ok(None);
            }
            if offset <= to {
                out.push(m);
            }
            if offset <= from {
                out.reverse();
                return Ok((offset == from).then_some(out));
            }
            msg = match prev {
                0 => None,
                prev => self.message(ch, prev).await?,
            };
        }
        Ok(None)
    }

    /// A live feed of a channel: a plain subscription to the stream's republished copies (only
    /// stored messages are republished, so a publish that lost its compare-and-set or was a
    /// duplicate never reaches a feed), made before the head is read, so nothing published
    /// after the head is missed.
    pub(super) async fn group_open(
        &self,
        topic: &Topic,
        group: &Group,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError> {
        let gen_rx = self.generation.subscribe();
        let ch = self.channel(topic, group).await?;
        let (client, _) = self.connected().await?;
        let sub = self
            .deadline("subscribe", client.subscribe(ch.live.clone()))
            .await?;
        // Registered before anything can be dropped for it: the subscription's flush comes
        // after, and the client only drops once the buffer is full.
        let slow = SlowGuard::register(&self.slow, &sub);
        self.deadline("subscribe", client.flush()).await?;
        let (_, head, _) = self.group_head(topic, group).await?;
        let cursor = after.unwrap_or(Position {
            epoch: head.epoch,
            offset: head.offset,
        });
        let (topic, received) = (topic.clone(), self.received.clone());
        let state = (sub, gen_rx, slow);
        let feed = futures::stream::unfold(state, move |(mut sub, mut gen_rx, slow)| {
            let topic = topic.clone();
            let received = received.clone();
            async move {
                loop {
                    let msg = tokio::select! {
                        msg = sub.next() => msg?,
                        // The connection dropped or came back: the feed may have missed some.
                        _ = gen_rx.changed() => return None,
                        // The client dropped a message of this subscription (its buffer was
                        // full): history has it.
                        () = slow.notified() => {
                            return Some((LiveItem::Resync, (sub, gen_rx, slow)));
                        }
                    };
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let value = |name: &str| -> Option<u64> {
                        msg.headers.as_ref()?.get(name)?.as_str().parse().ok()
                    };
                    let item = match (value(EPOCH), value(OFFSET)) {
                        // An epoch marker: no event (a new epoch shows with its first event).
                        (Some(_), Some(0)) => continue,
                        (Some(epoch), Some(offset)) => LiveItem::Event(Event {
                            topic: topic.clone(),
                            epoch,
                            offset,
                            trace: trace_of(msg.headers.as_ref()),
                            payload: msg.payload.clone(),
                        }),
                        _ => LiveItem::Resync,
                    };
                    return Some((item, (sub, gen_rx, slow)));
                }
            }
        });
        Ok((Box::pin(feed), cursor))
    }
}

/// A group feed's registration for the client's slow-consumer events (`Inner::slow`), removed
/// when the feed is dropped.
struct SlowGuard {
    feeds: super::SlowFeeds,
    sid: Option<u64>,
    notify: Arc<Notify>,
}

impl SlowGuard {
    fn register(feeds: &super::SlowFeeds, sub: &async_nats::Subscriber) -> Self {
        let notify = Arc::new(Notify::new());
        let sid = sid_of(sub);
        match sid {
            Some(sid) => {
                super::lock(feeds).insert(sid, notify.clone());
            }
            None => tracing::warn!(
                "nats bus: no subscription id in the client's subscriber; a message it drops \
                 is repaired only by the channel's next one"
            ),
        }
        Self {
            feeds: feeds.clone(),
            sid,
            notify,
        }
    }

    /// Resolves when the client dropped a message of this feed's subscription.
    async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for SlowGuard {
    fn drop(&mut self) {
        if let Some(sid) = self.sid {
            super::lock(&self.feeds).remove(&sid);
        }
    }
}

/// The client's id of a subscription, the one its slow-consumer events name. async-nats keeps
/// it private; its `Debug` shows it (`Subscriber { sid: 7, .. }`), which the tests rely on
/// (`shared/tests/channel_groups.rs`, a subscription whose buffer overflows).
fn sid_of(sub: &async_nats::Subscriber) -> Option<u64> {
    let debug = format!("{sub:?}");
    let rest = debug.split_once("sid: ")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
