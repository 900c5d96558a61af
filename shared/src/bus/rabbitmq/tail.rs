//! A publishing instance's view of one topic: its publisher on the topic's stream and its tail
//! consumer, which reads every message appended from the moment it subscribed. A publish waits
//! until the tail delivers the message it sent (recognised by the instance and publish number
//! in its body): the stream offset it was stored at is the publish's answer — RabbitMQ's
//! confirm carries none.
//!
//! Cost: an instance reads back every message of every topic it publishes on (its own and the
//! other instances'), one consumer per such topic, for as long as the connection lasts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rabbitmq_stream_protocol::commands::subscribe::OffsetSpecification;
use tokio::sync::oneshot;

use super::connection::{Conn, ConnError, Publisher};
use super::wire;

/// Chunks a tail consumer may have in flight.
const CREDIT: u16 = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here are single map operations; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<u64>>>>;

/// A topic's publisher and tail consumer on one connection.
pub(super) struct Tail {
    publisher: Publisher,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Tail {
    /// Subscribes to the stream's next messages, then declares the publisher.
    pub(super) async fn open(
        conn: &Arc<Conn>,
        stream: &str,
        instance: u64,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        let mut consumer = conn
            .subscribe(stream, OffsetSpecification::Next, CREDIT)
            .await?;
        let publisher = conn.declare_publisher(stream).await?;
        let waiters: Waiters = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (w, a) = (waiters.clone(), alive.clone());
        let reader = tokio::spawn(async move {
            while let Some(chunk) = consumer.next().await {
                for (offset, message) in (chunk.first..).zip(chunk.messages) {
                    let Some(body) = message.data().and_then(wire::decode) else {
                        continue;
                    };
                    if body.instance == instance
                        && let Some(tx) = lock(&w).remove(&body.seq)
                    {
                        let _ = tx.send(offset);
                    }
                }
            }
            // The subscription ended (connection closed, stream deleted): every waiting
            // publish fails, and the bus opens a new tail for the next one.
            a.store(false, Ordering::Relaxed);
            lock(&w).clear();
        });
        Ok(Self {
            publisher,
            waiters,
            alive,
            reader,
            timeout,
        })
    }

    /// Whether the tail still reads its stream.
    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && !self.reader.is_finished()
    }

    /// Publishes `body` (publish number `seq`, written into it) and answers the stream offset
    /// it was stored at.
    pub(super) async fn publish(&self, seq: u64, body: Vec<u8>) -> Result<u64, ConnError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(seq, tx);
        if !self.is_alive() {
            lock(&self.waiters).remove(&seq);
            return Err(ConnError::Closed("tail consumer ended".into()));
        }
        if let Err(e) = self.publisher.publish(seq, body).await {
            lock(&self.waiters).remove(&seq);
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(offset)) => Ok(offset),
            Ok(Err(_)) => Err(ConnError::Closed("tail consumer ended".into())),
            Err(_) => {
                lock(&self.waiters).remove(&seq);
                Err(ConnError::Closed(
                    "published message not read back in time".into(),
                ))
            }
        }
    }
}
