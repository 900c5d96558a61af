//! The channels of one catalog pattern in ONE JetStream stream (see "Channels of one pattern"
//! in the bus's docs): the group's stream, a channel's head (its last message, or an epoch
//! marker), publishing with compare-and-set on the channel's subject, history reads that walk the
//! channel's messages (`group_reads.rs`), and live feeds from the stream's republished copies
//! (`group_reads.rs`).

use std::time::Instant;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use bytes::Bytes;

use super::connection::connects;
use super::naming::{encode, encode_group};
use super::streams::trace_of;
use super::{Inner, lock, unavailable};
use crate::bus::{BusError, Group, IdempotencyKey};
use crate::event::{Event, Topic};
use crate::trace::{TRACEPARENT, TraceContext};

/// The channel's epoch, on every message of the channel.
pub(super) const EPOCH: &str = "Sy-Epoch";
/// The event's offset in its channel; `0` on an epoch marker (no event).
pub(super) const OFFSET: &str = "Sy-Offset";
/// The stream sequence of the channel's previous message (absent on its first).
const PREV: &str = "Sy-Prev";

/// Most compare-and-set attempts of one publish (each a conflict with another publisher that
/// did land: the channel moved on).
const MAX_ATTEMPTS: usize = 64;

/// One channel of a group: its group's stream and its subjects.
pub(super) struct Channel {
    pub(super) stream: stream::Stream,
    /// Where its messages are stored: `P.g.G.E`.
    pub(super) subject: String,
    /// Where the stream republishes them once stored: `P.gl.G.E`.
    pub(super) live: String,
}

/// A channel's newest message as one operation needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelHead {
    pub(super) epoch: u64,
    /// The last offset (0: an epoch marker, nothing published in this epoch yet).
    pub(super) offset: u64,
    /// Its stream sequence.
    pub(super) seq: u64,
}

/// A message of a channel: its epoch, offset and previous message's sequence.
pub(super) fn position_of(msg: &StreamMessage) -> Option<(u64, u64, u64)> {
    let value = |name: &str| -> Option<u64> { msg.headers.get(name)?.as_str().parse().ok() };
    Some((value(EPOCH)?, value(OFFSET)?, value(PREV).unwrap_or(0)))
}

pub(super) fn event_of(topic: &Topic, msg: StreamMessage) -> Option<Event> {
    let (epoch, offset, _) = position_of(&msg)?;
    Some(Event {
        topic: topic.clone(),
        epoch,
        offset,
        trace: trace_of(Some(&msg.headers)),
        payload: msg.payload,
    })
}

/// A random epoch: 63 bits, never 0.
fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}

impl Inner {
    /// The group's stream (created if missing; cached per connection) and the channel's subjects.
    pub(super) async fn channel(&self, topic: &Topic, group: &Group) -> Result<Channel, BusError> {
        let (client, js) = self.connected().await?;
        let connects = connects(client);
        let token = encode_group(&group.name);
        let name = format!("{}_g_9{token}", self.prefix);
        let cached = lock(&self.groups)
            .get(&name)
            .filter(|(_, c)| *c == connects)
            .map(|(s, _)| s.clone());
        let stream = match cached {
            Some(stream) => stream,
            None => {
                let stored = format!("{}.g.{token}.>", self.prefix);
                let max_age = group.idle_expiry.unwrap_or_default();
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![stored.clone()],
                    description: Some(format!("switchyard channels {}", group.name)),
                    max_messages_per_subject: i64::try_from(group.history).unwrap_or(i64::MAX),
                    max_age,
                    discard: stream::DiscardPolicy::Old,
                    storage: stream::StorageType::File,
                    num_replicas: 1,
                    // The server requires the de-duplication window within max_age.
                    duplicate_window: match group.idle_expiry {
                        Some(age) => self.idempotency_window.min(age),
                        None => self.idempotency_window,
                    },
                    allow_direct: true,
                    republish: Some(stream::Republish {
                        source: stored,
                        destination: format!("{}.gl.{token}.>", self.prefix),
                        headers_only: false,
                    }),
                    ..Default::default()
                };
                let stream = self.stream_of(js, "group stream lookup", config).await?;
                lock(&self.groups).insert(name, (stream.clone(), connects));
                stream
            }
        };
        let channel = encode(topic);
        Ok(Channel {
            stream,
            subject: format!("{}.g.{token}.{channel}", self.prefix),
            live: format!("{}.gl.{token}.{channel}", self.prefix),
        })
    }

    /// Forgets the cached stream of `group` (after an error: it may have been deleted).
    fn forget_group(&self, group: &Group) {
        let name = format!("{}_g_9{}", self.prefix, encode_group(&group.name));
        lock(&self.groups).remove(&name);
    }

    /// A message by stream sequence (`None` when gone).
    pub(super) async fn message(
        &self,
        ch: &Channel,
        seq: u64,
    ) -> Result<Option<StreamMessage>, BusError> {
        let got = tokio::time::timeout(self.op_timeout, ch.stream.direct_get(seq)).await;
        found(got)
    }

    /// The channel's first retained message after stream sequence `after` (`None`: none).
    pub(super) async fn next_message(
        &self,
        ch: &Channel,
        after: u64,
    ) -> Result<Option<StreamMessage>, BusError> {
        let next = ch
            .stream
            .direct_get_next_for_subject(ch.subject.clone(), Some(after + 1));
        found(tokio::time::timeout(self.op_timeout, next).await)
    }

    /// The channel's last message, if any.
    async fn last(&self, ch: &Channel) -> Result<Option<(ChannelHead, StreamMessage)>, BusError> {
        let last = ch.stream.direct_get_last_for_subject(ch.subject.clone());
        let Some(msg) = found(tokio::time::timeout(self.op_timeout, last).await)? else {
            return Ok(None);
        };
        let (epoch, offset, _) = position_of(&msg)
            .ok_or_else(|| unavailable(format!("a message of {} has no position", ch.subject)))?;
        let head = ChannelHead {
            epoch,
            offset,
            seq: msg.sequence,
        };
        Ok(Some((head, msg)))
    }

    /// The channel's head; an empty channel is given an epoch first (an epoch marker, written
    /// only if the channel is still empty), so that a position handed out before anything is
    /// published stays valid once something is.
    pub(super) async fn group_head(
        &self,
        topic: &Topic,
        group: &Group,
    ) -> Result<(Channel, ChannelHead, Option<StreamMessage>), BusError> {
        let ch = match self.channel(topic, group).await {
            Ok(ch) => ch,
            Err(e) => {
                self.forget_group(group);
                return Err(e);
            }
        };
        let deadline = Instant::now() + self.op_timeout;
        loop {
            match self.last(&ch).await {
                Ok(Some((head, msg))) => return Ok((ch, head, Some(msg))),
                Ok(None) => {}
                Err(e) => {
                    self.forget_group(group);
                    return Err(e);
                }
            }
            let epoch = new_epoch();
            let marker = PublishMessage::build()
                .payload(Bytes::new())
                .header(EPOCH, epoch.to_string().as_str())
                .header(OFFSET, "0");
            if let Some(seq) = self.put_if_last(&ch, marker, 0).await?.map(|(seq, _)| seq) {
                return Ok((
                    ch,
                    ChannelHead {
                        epoch,
                        offset: 0,
                        seq,
                    },
                    None,
                ));
            }
            if Instant::now() > deadline {
                return Err(BusError::Unavailable("nats: channel head contended".into()));
            }
        }
    }

    /// Stores `message` on the channel if its last sequence is still `seq`: the new message's
    /// sequence and whether it was a duplicate (of that sequence), or `None` on a conflict.
    async fn put_if_last(
        &self,
        ch: &Channel,
        message: PublishMessage,
        seq: u64,
    ) -> Result<Option<(u64, bool)>, BusError> {
        let (_, js) = self.connected().await?;
        let message = message.expected_last_subject_sequence(seq);
        let sent = tokio::time::timeout(self.op_timeout, async {
            js.send_publish(ch.subject.clone(), message).await?.await
        })
        .await
        .map_err(|_| BusError::Unavailable("nats: publish timed out".into()))?;
        match sent {
            Ok(ack) => Ok(Some((ack.sequence, ack.duplicate))),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Publishes on a channel of `group`: reads its last message and stores the next offset
    /// with compare-and-set on the channel's subject, again on a conflict; a key is the message
    /// id (with the channel, as de-duplication is per stream). Retried once on a fresh stream
    /// handle when the first try fails (the stream may have been deleted).
    pub(super) async fn group_publish(
        &self,
        topic: &Topic,
        group: &Group,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<(Event, bool), BusError> {
        match self
            .group_publish_once(topic, group, payload.clone(), key, trace)
            .await
        {
            Ok(done) => Ok(done),
            Err(first) => {
                self.forget_group(group);
                self.connected().await.map_err(|_| first)?;
                self.group_publish_once(topic, group, payload, key, trace)
                    .await
            }
        }
    }

    async fn group_publish_once(
        &self,
        topic: &Topic,
        group: &Group,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<(Event, bool), BusError> {
        let ch = self.channel(topic, group).await?;
        let deadline = Instant::now() + self.op_timeout;
        for _ in 0..MAX_ATTEMPTS {
            let (epoch, offset, seq) = match self.last(&ch).await? {
                Some((head, _)) => (head.epoch, head.offset + 1, head.seq),
                None => (new_epoch(), 1, 0),
            };
            let mut message = PublishMessage::build()
                .payload(payload.clone())
                .header(EPOCH, epoch.to_string().as_str())
                .header(OFFSET, offset.to_string().as_str());
            if seq > 0 {
                message = message.header(PREV, seq.to_string().as_str());
            }
            if let Some(key) = key {
                message = message.message_id(format!("{}#{}", encode(topic), key.as_str()));
            }
            if let Some(trace) = &trace {
                message = message.header(TRACEPARENT, trace.to_string().as_str());
            }
            match self.put_if_last(&ch, message, seq).await? {
                Some((original, true)) => {
                    // A repeat of a key: the first publish's position, from its message.
                    let msg = self.message(&ch, original).await?.ok_or_else(|| {
                        BusError::Unavailable(format!(
                            "nats: a duplicate of an event of {topic} no longer retained \
                             (its position is unknown)"
                        ))
                    })?;
                    let event = event_of(topic, msg)
                        .ok_or_else(|| unavailable("a duplicate's message has no position"))?;
                    return Ok((event, true));
                }
                Some((_, false)) => {
                    let event = Event {
                        topic: topic.clone(),
                        epoch,
                        offset,
                        payload,
                        trace,
                    };
                    return Ok((event, false));
                }
                None if Instant::now() > deadline => break,
                None => {}
            }
        }
        Err(BusError::Unavailable(format!(
            "nats: publish on {topic} lost every compare-and-set"
        )))
    }

    /// The latest event of a channel, if one is retained.
    pub(super) async fn group_latest(
        &self,
        topic: &Topic,
        group: &Group,
    ) -> Result<Option<Event>, BusError> {
        let (_, head, last) = self.group_head(topic, group).await?;
        Ok(last
            .filter(|_| head.offset > 0)
            .and_then(|msg| event_of(topic, msg)))
    }
}

/// A direct get's answer: the message, `None` when there is none, or unavailability.
fn found(
    got: Result<Result<StreamMessage, stream::DirectGetError>, tokio::time::error::Elapsed>,
) -> Result<Option<StreamMessage>, BusError> {
    match got {
        Err(_) => Err(BusError::Unavailable("nats: message read timed out".into())),
        Ok(Ok(msg)) => Ok(Some(msg)),
        Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Ok(Err(e)) => Err(unavailable(e)),
    }
}
