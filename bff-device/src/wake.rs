//! Waking held polls cheaply: one source subscription per topic, shared by every poll waiting
//! on it, never a queue per poll.
//!
//! - A device's own topics (commands, configuration) get a [`TopicWake`] while at least one
//!   poll of the device is held: one bus subscription driving a `watch` counter that every
//!   waiter of the topic shares. It is reference-counted and released (its task aborted) with
//!   the last held poll, [`LINGER`] after it ends: a device polls again as soon as it has an
//!   answer, so its next poll finds the subscription open — one subscription per device while
//!   it polls, instead of a SUBSCRIBE and an UNSUBSCRIBE on the broker per answer (which, at
//!   a few thousand answers a second, queued up behind the broker's pub/sub connection until
//!   polls failed with 503 and the queued orders filled the heap). A woken poll reads what is
//!   new from the bus's history itself, so the wake carries no events and nothing can be lost
//!   between wake and read.
//! - Rate pairs get a [`RateWatch`] for the life of the gateway, started with the first device
//!   configured for the pair: one hub subscription (which starts the upstream source feeding
//!   `rates.{pair}`, once per pair), the newest rate decoded once into a shared `watch` slot.
//!   Conflation is free: a poll reads the newest value, whatever it missed.
//!
//! Nothing here encodes for the wire or decides what a device may see.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use demo_api::{Pair, Rate};
use futures::StreamExt;
use switchyard_core::bus::{Bus, BusError, StartAt};
use switchyard_core::event::{Position, Topic};
use switchyard_core::hub::{Hub, Item};
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only insert, look up or remove; poisoning cannot leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type WakeMap = Mutex<HashMap<Topic, Weak<TopicWake>>>;

/// How long a wake stays open after the last poll holding it ends.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// Wakes kept open after their last poll, until the instant each may go.
type Lingering = Mutex<HashMap<Topic, (Arc<TopicWake>, tokio::time::Instant)>>;

/// The wakes of device topics, by topic.
pub(crate) struct Wakes {
    bus: Arc<dyn Bus>,
    topics: Arc<WakeMap>,
    /// Wakes whose polls ended less than [`LINGER`] ago (bounded by the topics polled in
    /// that time); a sweeper task drops the expired ones.
    lingering: Arc<Lingering>,
    /// Whether the sweeper runs (started with the first lingering wake).
    sweeping: AtomicBool,
    /// Bus subscriptions opened for wakes, ever.
    opened: AtomicU64,
}

/// One bus subscription on a topic, shared by every poll waiting on it.
pub(crate) struct TopicWake {
    topic: Topic,
    /// Bumped once per delivery from the bus (event or gap).
    tx: watch::Sender<u64>,
    /// The task reading the subscription, once it is open.
    task: OnceCell<tokio::task::AbortHandle>,
    map: Weak<WakeMap>,
}

impl Wakes {
    pub(crate) fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            bus,
            topics: Arc::new(Mutex::new(HashMap::new())),
            lingering: Arc::new(Mutex::new(HashMap::new())),
            sweeping: AtomicBool::new(false),
            opened: AtomicU64::new(0),
        }
    }

    /// Keeps `wakes` (those of a poll that ended) open for [`LINGER`] from now.
    pub(crate) fn linger(&self, wakes: impl IntoIterator<Item = Arc<TopicWake>>) {
        let until = tokio::time::Instant::now() + LINGER;
        {
            let mut lingering = lock(&self.lingering);
            for wake in wakes.into_iter().filter(|w| !w.ended()) {
                lingering.insert(wake.topic.clone(), (wake, until));
            }
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(sweep(Arc::downgrade(&self.lingering)))),
                // No runtime (a poll dropped while the process ends): nothing to sweep for.
                Err(_) => self.sweeping.store(false, Ordering::Release),
            }
        }
    }

    /// Bus subscriptions opened for wakes since the gateway started.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The wake of `topic`, with its bus subscription open: every event published once this
    /// returns bumps the receiver it hands out.
    pub(crate) async fn get(
        &self,
        topic: &Topic,
    ) -> Result<(Arc<TopicWake>, watch::Receiver<u64>), BusError> {
        let wake = {
            let mut topics = lock(&self.topics);
            // A wake whose bus subscription ended (the bus gave up on it) wakes nobody any
            // more: a lingering one is replaced, not handed to the next poll.
            match topics
                .get(topic)
                .and_then(Weak::upgrade)
                .filter(|w| !w.ended())
            {
                Some(w) => w,
                None => {
                    let w = Arc::new(TopicWake {
                        topic: topic.clone(),
                        tx: watch::channel(0).0,
                        task: OnceCell::new(),
                        map: Arc::downgrade(&self.topics),
                    });
                    topics.insert(topic.clone(), Arc::downgrade(&w));
                    w
                }
            }
        };
        // Subscribed before the bus subscription opens, so nothing it delivers is missed.
        let rx = wake.tx.subscribe();
        wake.task
            .get_or_try_init(|| async {
                let mut source = self.bus.subscribe(topic, StartAt::Live).await?;
                self.opened.fetch_add(1, Ordering::Relaxed);
                let tx = wake.tx.clone();
                let task = tokio::spawn(async move {
                    while source.next().await.is_some() {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                });
                Ok::<_, BusError>(task.abort_handle())
            })
            .await?;
        Ok((wake, rx))
    }

    /// Topics with a wake right now (each has one bus subscription).
    pub(crate) fn active(&self) -> usize {
        lock(&self.topics)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// Drops expired lingering wakes every half [`LINGER`], until the wakes are gone.
async fn sweep(lingering: Weak<Lingering>) {
    let mut tick = tokio::time::interval(LINGER / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(lingering) = lingering.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let expired: Vec<Arc<TopicWake>> = {
            let mut map = lock(&lingering);
            let gone: Vec<Topic> = map
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|(t, _)| t.clone())
                .collect();
            gone.iter()
                .filter_map(|t| map.remove(t).map(|(w, _)| w))
                .collect()
        };
        // Dropped outside the lock: the last one of a wake closes its bus subscription.
        drop(expired);
    }
}

impl TopicWake {
    /// Whether its bus subscription was opened and has ended.
    fn ended(&self) -> bool {
        self.task.get().is_some_and(|task| task.is_finished())
    }
}

impl Drop for TopicWake {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
        if let Some(map) = self.map.upgrade() {
            let mut topics = lock(&map);
            // A newer wake may have replaced this one meanwhile; only a dead entry goes.
            if topics
                .get(&self.topic)
                .is_some_and(|w| w.strong_count() == 0)
            {
                topics.remove(&self.topic);
            }
        }
    }
}

/// The newest rate of a pair, decoded once for every poll.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RateValue {
    /// Its position on the bus.
    pub(crate) position: Position,
    /// The rate.
    pub(crate) rate: Rate,
}

/// The newest rate of a pair, shared by every poll.
pub(crate) type RateRx = watch::Receiver<Option<Arc<RateValue>>>;

/// One hub subscription per rate pair, for the life of the gateway.
pub(crate) struct RateWatch {
    hub: Hub,
    shutdown: CancellationToken,
    pairs: Mutex<HashMap<Pair, Arc<OnceCell<RateRx>>>>,
}

impl RateWatch {
    pub(crate) fn new(hub: Hub, shutdown: CancellationToken) -> Self {
        Self {
            hub,
            shutdown,
            pairs: Mutex::new(HashMap::new()),
        }
    }

    /// The newest rate of `pair`, watched from now on (the first call subscribes).
    pub(crate) async fn get(&self, pair: Pair) -> Result<RateRx, BusError> {
        let cell = lock(&self.pairs).entry(pair).or_default().clone();
        cell.get_or_try_init(|| self.start(pair)).await.cloned()
    }

    async fn start(&self, pair: Pair) -> Result<RateRx, BusError> {
        let topic = operations::sources::rates_topic(&pair);
        let mut sub = self.hub.subscribe(&topic, StartAt::Live).await?;
        // The subscription is open: the latest value now, later ones through it.
        let first = self
            .hub
            .bus()
            .latest(&topic)
            .await?
            .and_then(|e| decode(&e.payload, e.position()))
            .map(Arc::new);
        let (tx, rx) = watch::channel(first);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    () = stop.cancelled() => return,
                    item = sub.next() => item,
                };
                match item {
                    Some(Item::Event(e)) => {
                        let Some(v) = decode(&e.payload, e.position()) else {
                            tracing::warn!(topic = %sub.topic(), offset = e.offset, "unreadable rate event skipped");
                            continue;
                        };
                        // A replayed older value never replaces a newer one.
                        tx.send_if_modified(|slot| match slot {
                            Some(old) if old.position >= v.position => false,
                            _ => {
                                *slot = Some(Arc::new(v));
                                true
                            }
                        });
                    }
                    // A state topic has no backlog: the next value replaces what was missed.
                    Some(Item::Gap { .. }) => {}
                    None => return,
                }
            }
        });
        Ok(rx)
    }
}

fn decode(payload: &[u8], position: Position) -> Option<RateValue> {
    let rate: Rate = serde_json::from_slice(payload).ok()?;
    Some(RateValue { position, rate })
}
