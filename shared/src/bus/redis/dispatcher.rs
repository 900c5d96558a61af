//! The task owning the Redis bus's pub/sub connection: the channels with local interest and the
//! subscriptions that want them. The first subscription of a topic SUBSCRIBEs its channel and
//! the last one to go UNSUBSCRIBEs it; every message goes into each subscription's bounded queue
//! without waiting (a full queue tells the subscription to resync from the stream instead). The
//! task pings its connection, reconnects with backoff, re-SUBSCRIBEs every channel with
//! interest and tells every subscription to resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, mpsc, oneshot};

use super::scripts::channel_event;
use super::{Backoff, Inner, connection_lost, lock, unavailable};
use crate::bus::BusError;
use crate::event::{Event, Topic};

/// How often the dispatcher pings an idle pub/sub connection to notice a dead broker.
const PING_EVERY: Duration = Duration::from_secs(2);

impl Inner {
    /// The dispatcher's order queue, starting the task on first use (or after it ended).
    pub(super) fn dispatcher(&self) -> mpsc::UnboundedSender<Ctl> {
        let mut d = lock(&self.dispatcher);
        if let Some(tx) = d.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Dispatcher {
            client: self.client.as_ref().ok().cloned(),
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            backoff: self.backoff.clone(),
            channels: HashMap::new(),
            up: self.live_up.clone(),
            received: self.received.clone(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(task.run(rx));
        *d = Some(tx.clone());
        tx
    }
}

/// Orders to the dispatcher. The queue is unbounded but holds at most two orders per
/// subscription (one subscribe, one unsubscribe), so it is bounded by the subscriptions.
pub(super) enum Ctl {
    Subscribe {
        channel: String,
        id: u64,
        target: Target,
        done: oneshot::Sender<Result<(), BusError>>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
}

pub(super) struct Target {
    pub(super) topic: Topic,
    pub(super) tx: mpsc::Sender<Event>,
    pub(super) resync: Arc<Notify>,
}

/// The task owning the pub/sub connection: channels with interest, and who wants them.
struct Dispatcher {
    client: Option<redis::Client>,
    connect_timeout: Duration,
    op_timeout: Duration,
    backoff: Backoff,
    channels: HashMap<String, HashMap<u64, Target>>,
    up: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    metrics: Arc<crate::bus::BusMetrics>,
}

impl Dispatcher {
    async fn run(mut self, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
        let mut conn: Option<(PubSubSink, PubSubStream)> = None;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            if conn.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.connect().await {
                    Ok(c) => {
                        conn = Some(c);
                        self.up.store(true, Ordering::Relaxed);
                        self.backoff.reset();
                        tracing::info!(
                            channels = self.channels.len(),
                            "redis bus pub/sub connected"
                        );
                        // Anything may have been published while we were away.
                        for target in self.channels.values().flat_map(HashMap::values) {
                            target.resync.notify_one();
                        }
                    }
                    Err(e) => {
                        self.up.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "redis bus pub/sub cannot connect; retrying");
                        retry_at = tokio::time::Instant::now() + self.backoff.delay();
                    }
                }
            }
            let Some((sink, stream)) = conn.as_mut() else {
                tokio::select! {
                    order = ctl.recv() => match order {
                        None => return,
                        Some(order) => self.order_while_down(order),
                    },
                    () = tokio::time::sleep_until(retry_at) => {}
                }
                continue;
            };
            let alive = tokio::select! {
                order = ctl.recv() => match order {
                    None => return,
                    Some(order) => self.order(sink, order).await,
                },
                msg = stream.next() => match msg {
                    None => false,
                    Some(msg) => {
                        self.deliver(&msg);
                        true
                    }
                },
                () = tokio::time::sleep(PING_EVERY) => {
                    matches!(
                        tokio::time::timeout(self.op_timeout, sink.ping::<String>()).await,
                        Ok(Ok(_))
                    )
                }
            };
            if !alive {
                tracing::warn!("redis bus pub/sub connection lost; reconnecting");
                self.metrics.connection_lost();
                conn = None;
                self.up.store(false, Ordering::Relaxed);
                retry_at = tokio::time::Instant::now() + self.backoff.delay();
            }
        }
    }

    /// Opens the pub/sub connection and subscribes every channel with interest.
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), BusError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| BusError::Unavailable("redis: invalid bus.url".into()))?;
        let pubsub = tokio::time::timeout(self.connect_timeout, client.get_async_pubsub())
            .await
            .map_err(|_| BusError::Unavailable("redis: connect timed out".into()))?
            .map_err(unavailable)?;
        let (mut sink, stream) = pubsub.split();
        let channels: Vec<&String> = self.channels.keys().collect();
        if !channels.is_empty() {
            tokio::time::timeout(self.op_timeout, sink.subscribe(&channels))
                .await
                .map_err(|_| BusError::Unavailable("redis: subscribe timed out".into()))?
                .map_err(unavailable)?;
        }
        Ok((sink, stream))
    }

    /// Handles an order on a live connection; `false` when the connection proved dead.
    async fn order(&mut self, sink: &mut PubSubSink, order: Ctl) -> bool {
        match order {
            Ctl::Subscribe {
                channel,
                id,
                target,
                done,
            } => {
                // Its subscriber gave up waiting (its deadline passed while the order queued):
                // nobody wants the channel any more, and its unsubscribe order follows.
                if done.is_closed() {
                    return true;
                }
                if let Some(targets) = self.channels.get_mut(&channel) {
                    targets.insert(id, target);
                    let _ = done.send(Ok(()));
                    return true;
                }
                match tokio::time::timeout(self.op_timeout, sink.subscribe(&channel)).await {
                    Ok(Ok(())) => {
                        self.channels.insert(channel, HashMap::from([(id, target)]));
                        let _ = done.send(Ok(()));
                        true
                    }
                    Ok(Err(e)) => {
                        let _ = done.send(Err(unavailable(&e)));
                        !connection_lost(&e)
                    }
                    Err(_) => {
                        let _ = done.send(Err(BusError::Unavailable(
                            "redis: subscribe timed out".into(),
                        )));
                        false
                    }
                }
            }
            Ctl::Unsubscribe { channel, id } => {
                let Some(targets) = self.channels.get_mut(&channel) else {
                    return true;
                };
                targets.remove(&id);
                if !targets.is_empty() {
                    return true;
                }
                self.channels.remove(&channel);
                match tokio::time::timeout(self.op_timeout, sink.unsubscribe(&channel)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => !connection_lost(&e),
                    Err(_) => false,
                }
            }
        }
    }

    /// Handles an order while disconnected: subscriptions fail (a subscriber must learn that
    /// the bus is down); unsubscriptions only forget.
    fn order_while_down(&mut self, order: Ctl) {
        match order {
            Ctl::Subscribe { done, .. } => {
                let _ = done.send(Err(BusError::Unavailable(
                    "redis: pub/sub not connected (reconnecting)".into(),
                )));
            }
            Ctl::Unsubscribe { channel, id } => {
                if let Some(targets) = self.channels.get_mut(&channel) {
                    targets.remove(&id);
                    if targets.is_empty() {
                        self.channels.remove(&channel);
                    }
                }
            }
        }
    }

    fn deliver(&self, msg: &redis::Msg) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let Some(targets) = self.channels.get(msg.get_channel_name()) else {
            return; // An unsubscribed channel's last messages.
        };
        for target in targets.values() {
            let Some(event) = channel_event(&target.topic, msg.get_payload_bytes()) else {
                tracing::warn!(
                    channel = msg.get_channel_name(),
                    "malformed bus message ignored"
                );
                target.resync.notify_one();
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = target.tx.try_send(event) {
                // Never wait for a subscriber: it catches up from the stream instead.
                target.resync.notify_one();
            }
        }
    }
}
