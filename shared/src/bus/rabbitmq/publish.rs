//! Publishing on the RabbitMQ bus: the topic's tail (`tail.rs`) opened on demand, a publish
//! answered with the offset its tail read it back at and recorded as the head in the state
//! store, and `publish_once` through a key claimed in the state store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::connection::ConnError;
use super::state::Claim;
use super::tail::Tail;
use super::{Inner, lock, unavailable, wire};
use crate::bus::{BusError, IdempotencyKey, Published};
use crate::event::{Event, Topic};
use crate::trace::TraceContext;

impl Inner {
    /// The topic's live tail on the current connection, opened if needed.
    async fn tail(&self, topic: &Topic) -> Result<Arc<Tail>, BusError> {
        let conn = self.ensure(topic).await?;
        let mut tails = self.tails.lock().await;
        if let Some(tail) = tails.get(topic)
            && tail.is_alive()
        {
            return Ok(tail.clone());
        }
        tails.remove(topic);
        let opened = Tail::open(
            &conn,
            &self.stream_name(topic),
            self.instance,
            self.op_timeout,
        )
        .await;
        match opened {
            Ok(tail) => {
                let tail = Arc::new(tail);
                tails.insert(topic.clone(), tail.clone());
                Ok(tail)
            }
            Err(e) => {
                self.forget(topic, &e);
                Err(unavailable(e))
            }
        }
    }

    /// Publishes once, retrying once when the stream proves gone (it is then created again).
    pub(super) async fn publish(
        &self,
        topic: &Topic,
        payload: &Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tail = self.tail(topic).await?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let body = wire::encode(self.instance, seq, trace.as_ref(), payload);
            match tail.publish(seq, body).await {
                Ok(stream_offset) => {
                    let offset = stream_offset + 1;
                    let epoch = self.state.advance(topic, offset).await?;
                    return Ok(Event {
                        topic: topic.clone(),
                        epoch,
                        offset,
                        payload: payload.clone(),
                        trace,
                    });
                }
                // The stream or publisher is gone (a refusal, or a tail that ended before
                // anything was sent): nothing was stored, so one more try is safe.
                Err(e) if attempt == 1 && tail_gone(&e, &tail) => {
                    lock(&self.ensured).remove(topic);
                    self.tails.lock().await.remove(topic);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    pub(super) async fn publish_once(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        let token = format!(
            "{:x}-{}",
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        // A claim outlives a publish's longest wait (confirm, read back, state store).
        let claim_ms = u64::try_from(self.op_timeout.as_millis() * 4).unwrap_or(u64::MAX);
        let deadline = Instant::now() + self.op_timeout * 4;
        loop {
            match self
                .state
                .claim(topic, key.as_str(), &token, claim_ms)
                .await?
            {
                Claim::Done(position) => {
                    return Ok(Published {
                        position,
                        duplicate: true,
                    });
                }
                Claim::Pending if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Claim::Pending => {
                    return Err(BusError::Unavailable(
                        "rabbitmq: an earlier publish of this key is still in flight".into(),
                    ));
                }
                Claim::Claimed => break,
            }
        }
        match self.publish(topic, &payload, trace).await {
            Ok(event) => {
                let position = event.position();
                self.state
                    .settle(topic, key.as_str(), position, self.window_ms)
                    .await?;
                Ok(Published {
                    position,
                    duplicate: false,
                })
            }
            Err(e) => {
                // Best effort: a claim left behind expires by itself.
                let _ = self.state.release(topic, key.as_str(), &token).await;
                Err(e)
            }
        }
    }
}

/// Whether a publish failed before anything could be stored: the server refused it (no such
/// stream or publisher), or the tail had already ended.
fn tail_gone(e: &ConnError, tail: &Tail) -> bool {
    matches!(e, ConnError::Code(_)) || !tail.is_alive()
}
