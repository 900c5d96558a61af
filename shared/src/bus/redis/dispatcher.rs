//! The task owning the Redis bus's pub/sub connection: the channels with local interest and the
//! subscriptions that want them. The first subscription of a topic SUBSCRIBEs its channel and
//! the last one to go UNSUBSCRIBEs it; every message goes into each subscription's bounded queue
//! without waiting (a full queue tells the subscription to resync from the stream instead). The
//! task pings its connection, reconnects with backoff, re-SUBSCRIBEs every channel with
//! interest and tells every subscription to resync.
//!
//! Orders are taken in batches (every order queued when the task wakes, up to [`MAX_BATCH`]):
//! what they need of Redis goes as one UNSUBSCRIBE and one SUBSCRIBE, so a burst of
//! subscriptions costs two round trips, not one each. A command that runs past its deadline is
//! followed by a PING: Redis answers in order, so an answered PING means the command took effect
//! on a slow broker, and only an unanswered one drops the connection.

use std::collections::{HashMap, HashSet};
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

/// The most orders handled together (one SUBSCRIBE and one UNSUBSCRIBE for all of them).
const MAX_BATCH: usize = 1024;

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

/// What a batch of orders needs of Redis, once the orders that need nothing (a subscription to
/// a channel already subscribed, an unsubscription that leaves others) are done.
#[derive(Default)]
struct Batch {
    /// Channels to SUBSCRIBE, with the subscriptions waiting for each.
    subscribe: HashMap<String, Vec<Waiting>>,
    /// Channels whose last subscription went, to UNSUBSCRIBE.
    unsubscribe: HashSet<String>,
}

type Waiting = (u64, Target, oneshot::Sender<Result<(), BusError>>);

impl Batch {
    /// Takes one order, in queue order, against the channels subscribed before the batch.
    fn take(&mut self, channels: &mut HashMap<String, HashMap<u64, Target>>, order: Ctl) {
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
                    return;
                }
                if let Some(targets) = channels.get_mut(&channel) {
                    targets.insert(id, target);
                    let _ = done.send(Ok(()));
                } else if self.unsubscribe.remove(&channel) {
                    // Its last subscription went earlier in this batch: Redis still has it.
                    channels.insert(channel, HashMap::from([(id, target)]));
                    let _ = done.send(Ok(()));
                } else {
                    self.subscribe
                        .entry(channel)
                        .or_default()
                        .push((id, target, done));
                }
            }
            Ctl::Unsubscribe { channel, id } => {
                if let Some(waiting) = self.subscribe.get_mut(&channel) {
                    // Subscribed and gone within the batch: Redis never needs to hear of it.
                    waiting.retain(|(waiting_id, _, _)| *waiting_id != id);
                    if waiting.is_empty() {
                        self.subscribe.remove(&channel);
                    }
                    return;
                }
                let Some(targets) = channels.get_mut(&channel) else {
                    return;
                };
                targets.remove(&id);
                if targets.is_empty() {
                    channels.remove(&channel);
                    self.unsubscribe.insert(channel);
                }
            }
        }
    }
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
                    Some(order) => self.orders(sink, order, &mut ctl).await,
                },
                msg = stream.next() => match msg {
                    None => Err("the connection ended"),
                    Some(msg) => {
                        self.deliver(&msg);
                        Ok(())
                    }
                },
                () = tokio::time::sleep(PING_EVERY) => {
                    if self.answers(sink).await { Ok(()) } else { Err("idle ping unanswered") }
                }
            };
            if let Err(why) = alive {
                tracing::warn!(why, "redis bus pub/sub connection lost; reconnecting");
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

    /// Handles `first` and every order queued behind it (up to [`MAX_BATCH`]) on a live
    /// connection, sending what they need of Redis as one UNSUBSCRIBE and one SUBSCRIBE, so a
    /// burst of subscriptions costs two round trips, not one each; an error saying why when the
    /// connection proved dead.
    async fn orders(
        &mut self,
        sink: &mut PubSubSink,
        first: Ctl,
        ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    ) -> Result<(), &'static str> {
        let mut batch = Batch::default();
        batch.take(&mut self.channels, first);
        for _ in 1..MAX_BATCH {
            match ctl.try_recv() {
                Ok(order) => batch.take(&mut self.channels, order),
                Err(_) => break,
            }
        }
        let mut alive = Ok(());
        if !batch.unsubscribe.is_empty() {
            let channels: Vec<&String> = batch.unsubscribe.iter().collect();
            alive = match tokio::time::timeout(self.op_timeout, sink.unsubscribe(&channels)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if connection_lost(&e) => Err("unsubscribe failed"),
                Ok(Err(_)) => Ok(()),
                Err(_) if self.answers(sink).await => Ok(()),
                Err(_) => Err("unsubscribe and ping unanswered"),
            };
        }
        if batch.subscribe.is_empty() {
            return alive;
        }
        let outcome = if alive.is_err() {
            Err((
                BusError::Unavailable("redis: pub/sub connection lost".into()),
                Ok(()),
            ))
        } else {
            let channels: Vec<&String> = batch.subscribe.keys().collect();
            match tokio::time::timeout(self.op_timeout, sink.subscribe(&channels)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if connection_lost(&e) => {
                    Err((unavailable(&e), Err("subscribe failed")))
                }
                Ok(Err(e)) => Err((unavailable(&e), Ok(()))),
                // Redis answers a connection's commands in order: if a PING sent after the
                // SUBSCRIBE is answered, the SUBSCRIBE took effect; the broker was only slow.
                Err(_) if self.answers(sink).await => Ok(()),
                Err(_) => Err((
                    BusError::Unavailable("redis: subscribe timed out".into()),
                    Err("subscribe and ping unanswered"),
                )),
            }
        };
        match outcome {
            Ok(()) => {
                for (channel, waiting) in batch.subscribe {
                    let targets = self.channels.entry(channel).or_default();
                    for (id, target, done) in waiting {
                        // A subscriber that gave up meanwhile is registered all the same: its
                        // unsubscribe order follows and removes it (and the channel, if last).
                        targets.insert(id, target);
                        let _ = done.send(Ok(()));
                    }
                }
                alive
            }
            Err((error, still_alive)) => {
                for (_, waiting) in batch.subscribe {
                    for (_, _, done) in waiting {
                        let _ = done.send(Err(error.clone()));
                    }
                }
                alive.and(still_alive)
            }
        }
    }

    /// Whether the connection still answers a PING within the deadline (after a command on it
    /// timed out: a slow broker answers, a dead connection does not).
    async fn answers(&self, sink: &mut PubSubSink) -> bool {
        matches!(
            tokio::time::timeout(self.op_timeout, sink.ping::<String>()).await,
            Ok(Ok(_))
        )
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
