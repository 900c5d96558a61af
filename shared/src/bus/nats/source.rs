//! What the NATS bus gives the shared subscription driver (`live.rs`): history reads (one
//! pipelined request per message) and live feeds — an ordered push consumer on the topic's stream
//! from the cursor's next offset, ended whenever the connection drops or comes back.

use std::sync::atomic::Ordering;

use async_nats::jetstream::consumer;
use futures::StreamExt;

use super::Inner;
use crate::bus::live::{self, LiveFeed, LiveItem};
use crate::bus::{BusError, Read};
use crate::event::{Event, Position, Topic};

#[async_trait::async_trait]
impl live::Source for Inner {
    fn metrics(&self) -> &crate::bus::BusMetrics {
        &self.metrics
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        if let Some(group) = self.retention.group_of(topic) {
            return self.group_read(topic, &group, after, max).await;
        }
        let (stream, head) = self.head(topic).await?;
        if let Some(resume) = live::uncovered(after, head.epoch, head.oldest, head.last) {
            return Ok(Read::Gap { resume });
        }
        let end = head.last.min(
            after
                .offset
                .saturating_add(u64::try_from(max).unwrap_or(u64::MAX)),
        );
        let reads = (after.offset + 1..=end).map(|seq| self.get(&stream, topic, head.epoch, seq));
        match futures::future::try_join_all(reads).await {
            Ok(events) => {
                let next = events.last().map_or(after, Event::position);
                Ok(Read::Events { events, next })
            }
            Err(e) => {
                // Trimmed between the info and the reads: the next read answers with the gap.
                let (_, now) = self.head(topic).await?;
                if now.oldest > after.offset + 1 {
                    Ok(Read::Gap {
                        resume: Position {
                            epoch: now.epoch,
                            offset: now.oldest - 1,
                        },
                    })
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn open(
        &self,
        topic: &Topic,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError> {
        if let Some(group) = self.retention.group_of(topic) {
            return self.group_open(topic, &group, after).await;
        }
        // Subscribed first: a connection change while the consumer is made ends the feed too.
        let gen_rx = self.generation.subscribe();
        let (stream, head) = self.head(topic).await?;
        let cursor = after.unwrap_or(Position {
            epoch: head.epoch,
            offset: head.last,
        });
        let (client, _) = self.connected().await?;
        let config = consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: self.subject(topic),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: cursor.offset + 1,
            },
            ..Default::default()
        };
        let consumer = self
            .deadline("consumer create", stream.create_consumer(config))
            .await?;
        let messages = self.deadline("consumer start", consumer.messages()).await?;
        let (epoch, topic, received) = (head.epoch, topic.clone(), self.received.clone());
        let state = (messages, gen_rx);
        let feed = futures::stream::unfold(state, move |(mut messages, mut gen_rx)| {
            let topic = topic.clone();
            let received = received.clone();
            async move {
                let msg = tokio::select! {
                    msg = messages.next() => msg?.ok()?,
                    // The connection dropped or came back: the server may have lost the stream.
                    _ = gen_rx.changed() => return None,
                };
                received.fetch_add(1, Ordering::Relaxed);
                let item = match msg.info() {
                    Ok(info) => LiveItem::Event(Event {
                        topic,
                        epoch,
                        offset: info.stream_sequence,
                        payload: msg.payload.clone(),
                        trace: super::streams::trace_of(msg.headers.as_ref()),
                    }),
                    Err(_) => LiveItem::Resync,
                };
                Some((item, (messages, gen_rx)))
            }
        });
        Ok((Box::pin(feed), cursor))
    }
}
