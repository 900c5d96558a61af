//! The topics' JetStream streams: created on first use (idempotently), their epochs (the
//! creation time, cached per connection), their heads, single-message reads, and publishing.

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures::StreamExt;

use super::connection::connects;
use super::{Inner, lock, unavailable};
use crate::bus::{BusError, IdempotencyKey};
use crate::event::{Event, Topic};
use crate::trace::{TRACEPARENT, TraceContext};

/// The trace context a message carries in its `traceparent` header, if a valid one (a message
/// published without one, or by an older version, has none).
pub(super) fn trace_of(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
    let value = headers?.get(TRACEPARENT)?;
    TraceContext::parse(value.as_str().as_bytes())
}

/// The epoch of a stream: its creation time in nanoseconds (63 bits).
pub(super) fn epoch_of(info: &stream::Info) -> u64 {
    let nanos = info.created.unix_timestamp_nanos();
    (u64::try_from(nanos).unwrap_or(0) & (u64::MAX >> 1)).max(1)
}

/// A stream's state as one read needs it.
pub(super) struct Head {
    pub(super) epoch: u64,
    /// The oldest retained offset (the next one when none is retained).
    pub(super) oldest: u64,
    /// The newest offset (0 when nothing was ever published).
    pub(super) last: u64,
}

impl Inner {
    /// The topic's stream (created if missing), with fresh info.
    pub(super) async fn stream(&self, topic: &Topic) -> Result<stream::Stream, BusError> {
        let (_, js) = self.connected().await?;
        let config = stream::Config {
            name: self.stream_name(topic),
            subjects: vec![self.subject(topic)],
            description: Some(format!("switchyard topic {topic}")),
            max_messages: i64::try_from(self.retention.history_of(topic)).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            // Only idempotent publishes carry a message id; the server remembers those ids for
            // the window, so a repeat within it is acknowledged as a duplicate of the first.
            duplicate_window: self.idempotency_window,
            ..Default::default()
        };
        let connects = connects(&self.connected().await?.0);
        let stream = self.stream_of(js, "stream lookup", config).await?;
        let epoch = epoch_of(stream.cached_info());
        lock(&self.epochs).insert(topic.clone(), (epoch, connects));
        Ok(stream)
    }

    /// The cached epoch of the topic's stream, learning it when unknown or stale.
    pub(super) async fn epoch(&self, topic: &Topic) -> Result<u64, BusError> {
        let connects = connects(&self.connected().await?.0);
        let cached = lock(&self.epochs).get(topic).copied();
        match cached {
            Some((epoch, c)) if c == connects => Ok(epoch),
            _ => Ok(epoch_of(self.stream(topic).await?.cached_info())),
        }
    }

    /// The topic's stream and its state.
    pub(super) async fn head(&self, topic: &Topic) -> Result<(stream::Stream, Head), BusError> {
        let stream = self.stream(topic).await?;
        let info = stream.cached_info();
        let state = &info.state;
        let head = Head {
            epoch: epoch_of(info),
            oldest: if state.messages == 0 {
                state.last_sequence + 1
            } else {
                state.first_sequence
            },
            last: state.last_sequence,
        };
        Ok((stream, head))
    }

    /// The event at offset `seq`.
    pub(super) async fn get(
        &self,
        stream: &stream::Stream,
        topic: &Topic,
        epoch: u64,
        seq: u64,
    ) -> Result<Event, BusError> {
        let msg = self
            .deadline("message read", stream.get_raw_message(seq))
            .await?;
        Ok(Event {
            topic: topic.clone(),
            epoch,
            offset: msg.sequence,
            trace: trace_of(Some(&msg.headers)),
            payload: msg.payload,
        })
    }

    /// One publish attempt, with the cached epoch; with a key, as message id (the answer then
    /// says whether the server found it a duplicate, and the offset is the original's).
    pub(super) async fn publish_attempt(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<(Event, bool), BusError> {
        let epoch = self.epoch(topic).await?;
        let (_, js) = self.connected().await?;
        let mut message = PublishMessage::build().payload(payload.clone());
        if let Some(key) = key {
            message = message.message_id(key.as_str());
        }
        if let Some(trace) = &trace {
            let value = trace.to_string();
            message = message.header(TRACEPARENT, value.as_str());
        }
        let ack = self
            .deadline("publish", async {
                js.send_publish(self.subject(topic), message).await?.await
            })
            .await?;
        let event = Event {
            topic: topic.clone(),
            epoch,
            offset: ack.sequence,
            payload,
            trace,
        };
        Ok((event, ack.duplicate))
    }

    /// The names of the streams starting with `start`.
    pub(super) async fn stream_names(&self, start: &str) -> Result<Vec<String>, BusError> {
        let (_, js) = self.connected().await?;
        let mut all = js.stream_names();
        let mut names = Vec::new();
        let listed = tokio::time::timeout(self.op_timeout * 4, async {
            while let Some(name) = all.next().await {
                let name = name.map_err(unavailable)?;
                if name.starts_with(start) {
                    names.push(name);
                }
            }
            Ok::<(), BusError>(())
        })
        .await;
        match listed {
            Ok(r) => r.map(|()| names),
            Err(_) => Err(BusError::Unavailable(
                "nats: stream listing timed out".into(),
            )),
        }
    }
}
