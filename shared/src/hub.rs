//! The topic hub: one per process, between the bus and the gateways' connections.
//!
//! Interest is reference-counted per topic: the first local subscriber of a topic makes the hub
//! subscribe to its source once; later subscribers share that subscription; when the last one
//! leaves, the source subscription is dropped. A pump task per topic fans each event out:
//!
//! - **stream** topics: into a bounded queue per subscriber with `try_send`; the pump never waits
//!   for anyone. A subscriber whose queue is full is unhooked from the live fan-out; once it has
//!   read what its queue holds, it catches up from the bus's history after the last position it
//!   delivered and rejoins live delivery — or gets a gap when history no longer covers it. A slow
//!   subscriber therefore costs its bounded queue and never loses an event silently. Cutting a
//!   slow *client* off is the gateway's decision, at its own bounded send queue.
//! - **state** topics: into one watch slot shared by all subscribers, so each sees the newest value
//!   and never a backlog (conflation costs no per-subscriber memory).
//!
//! A subscriber may start after a position: it gets every retained event after it from the bus's
//! history, then live ones, in order and without duplicates, or a gap when history no longer
//! covers the position. The hub does not encode anything: gateways turn [`Item`]s into frames.
//!
//! The hub's source is always the bus. Events that come from elsewhere (an upstream service,
//! through a configured [`Source`](crate::sources::Source)) reach it through a [`Feeder`]: when a topic gets its first local subscriber, the feeder
//! registered for the longest matching prefix is asked to feed the topic onto the bus, and the
//! guard it returns is held until the last local subscriber leaves. The hub does not know what a
//! feeder talks to.
//!
//! Its counters by channel pattern (subscriptions, deliveries, gaps, catch-ups; `stats.rs`) are
//! read with [`Hub::stats`], for `/metrics`; the depth of its subscribers' queues with
//! [`Hub::queue_depths`], at scrape time.

use futures::StreamExt;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

mod config;
mod stats;
mod subscriber;
use crate::bus::{Bus, BusError, Delivery, StartAt, Subscription};
use crate::channels::Catalog;
use crate::event::{Event, Position, Topic, TopicClass};
pub use config::HubConfig;
pub use stats::{OTHER_PATTERN, PatternSnapshot, QueueDepths};
pub use subscriber::Subscriber;
use subscriber::{Kind, Replay};

/// Events read from history per bus call while a subscriber catches up.
const REPLAY_PAGE: usize = 256;

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The next event.
    Event(Event),
    /// Events between `after` and `resume` are lost (history no longer covers them); delivery
    /// continues after `resume`. The client should refetch its state.
    Gap {
        /// The last position the subscriber had.
        after: Position,
        /// Where delivery continues.
        resume: Position,
    },
}

/// Something that publishes a topic's events on the bus while there is local interest in it,
/// such as a configured upstream [`Source`](crate::sources::Source).
pub trait Feeder: Send + Sync + 'static {
    /// Starts feeding `topic`: the returned guard keeps the feed (and its upstream subscription)
    /// while it is held. `None` when this feeder does not serve `topic`.
    ///
    /// Called once per topic when its first local subscriber arrives, and (rarely, when two first
    /// subscribers race) once more for a guard that is dropped at once; it must not block.
    fn feed(&self, topic: &Topic) -> Option<Box<dyn Any + Send>>;
}

/// The per-process topic hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    config: HubConfig,
    topics: Mutex<HashMap<Topic, Entry>>,
    /// Feeders by topic prefix; the longest matching prefix wins.
    feeders: Mutex<Vec<(String, Arc<dyn Feeder>)>>,
    /// The channel catalog, for the class of channels' topics.
    catalog: std::sync::OnceLock<Arc<Catalog>>,
    /// Counters by pattern, built on first use (after the catalog is set).
    stats: std::sync::OnceLock<stats::HubStats>,
    next_id: AtomicU64,
}

struct Entry {
    shared: Arc<Subscribers>,
    refs: usize,
    pump: CancellationToken,
    /// The feeder's guard, if a feeder serves this topic: dropped with the entry.
    _feed: Option<Box<dyn Any + Send>>,
}

struct Subscribers {
    class: TopicClass,
    stream: Mutex<HashMap<u64, Slot>>,
    state: watch::Sender<Option<Event>>,
}

struct Slot {
    tx: mpsc::Sender<Arc<Item>>,
    lagged: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only insert, remove or try_send; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub over `bus`.
    pub fn new(bus: Arc<dyn Bus>, config: HubConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                config,
                catalog: std::sync::OnceLock::new(),
                stats: std::sync::OnceLock::new(),
                topics: Mutex::new(HashMap::new()),
                feeders: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Adds `feeder` for the topics starting with `prefix` (the longest matching prefix of all
    /// added wins). It applies to topics whose first subscriber comes after this call, so add
    /// feeders before the hub is used.
    pub fn with_feeder(self, prefix: &str, feeder: Arc<dyn Feeder>) -> Self {
        lock(&self.inner.feeders).push((prefix.to_owned(), feeder));
        self
    }

    /// Takes the class of catalog channels' topics (`ch:`…) from `catalog`; set it before the
    /// hub is used. Without one, those topics are classed by prefix like any other.
    pub fn with_catalog(self, catalog: Arc<Catalog>) -> Self {
        // A second call keeps the first catalog: the hub is configured once, at build.
        let _ = self.inner.catalog.set(catalog);
        self
    }

    /// The feeder of the longest prefix `topic` starts with.
    fn feeder_of(&self, topic: &Topic) -> Option<Arc<dyn Feeder>> {
        lock(&self.inner.feeders)
            .iter()
            .filter(|(prefix, _)| topic.as_str().starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, feeder)| feeder.clone())
    }

    /// The bus this hub reads from (publish through it).
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// The counters by channel pattern (catalog patterns, then [`OTHER_PATTERN`]).
    pub fn stats(&self) -> Vec<PatternSnapshot> {
        self.counters().snapshot()
    }

    fn counters(&self) -> &stats::HubStats {
        self.inner
            .stats
            .get_or_init(|| stats::HubStats::new(self.inner.catalog.get().map(|c| &**c)))
    }

    /// The class of `topic`: a catalog channel's from its entry; otherwise that of the longest
    /// configured prefix it starts with, else stream.
    pub fn class_of(&self, topic: &Topic) -> TopicClass {
        if let Some(entry) = self
            .inner
            .catalog
            .get()
            .and_then(|c| c.entry_of_topic(topic))
        {
            return entry.class();
        }
        self.inner
            .config
            .topics
            .iter()
            .filter(|(prefix, _)| topic.as_str().starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(TopicClass::Stream, |(_, class)| *class)
    }

    /// Local subscribers of `topic` right now.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        lock(&self.inner.topics).get(topic).map_or(0, |e| e.refs)
    }

    /// Topics with at least one local subscriber (each has exactly one source subscription).
    pub fn active_topics(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    /// The events waiting in stream subscribers' queues now: their sum and the deepest queue.
    /// Read at scrape time (it takes the topics' locks once each), never per delivery.
    pub fn queue_depths(&self) -> QueueDepths {
        let topics = lock(&self.inner.topics);
        let mut depths = QueueDepths::default();
        for entry in topics.values() {
            for slot in lock(&entry.shared.stream).values() {
                let queued = (slot.tx.max_capacity() - slot.tx.capacity()) as u64;
                depths.queued += queued;
                depths.max = depths.max.max(queued);
                depths.queues += 1;
            }
        }
        depths
    }

    /// Subscribes to `topic`, live or after a position.
    ///
    /// For state topics the subscriber first gets the latest value (if any), whatever `from` is.
    pub async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscriber, BusError> {
        let class = self.class_of(topic);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = self.inner.config.subscriber_queue_events.max(1);
        let lagged = Arc::new(AtomicBool::new(false));
        // Only a stream subscriber has a queue: state subscribers share the topic's watch slot.
        let (slot, rx) = match class {
            TopicClass::Stream => {
                let (tx, rx) = mpsc::channel(capacity);
                let slot = Slot {
                    tx,
                    lagged: lagged.clone(),
                };
                (Some(slot), Some(rx))
            }
            TopicClass::State => (None, None),
        };
        // Where a lagging subscriber that has delivered nothing yet catches up from: the head
        // before it joined (events published while it joins may then come twice, never not).
        let start = match (class, from) {
            (TopicClass::Stream, StartAt::Live) => self.inner.bus.head(topic).await?,
            (_, StartAt::After(p)) => p,
            (TopicClass::State, StartAt::Live) => Position {
                epoch: 0,
                offset: 0,
            },
        };
        let shared = self.join(topic, class, id, slot).await?;
        let kind = match (class, rx) {
            (TopicClass::Stream, Some(rx)) => Kind::Stream {
                rx,
                lagged,
                replay: match from {
                    StartAt::Live => None,
                    StartAt::After(p) => Some(Replay::after(p)),
                },
                last: match from {
                    StartAt::Live => None,
                    StartAt::After(p) => Some(p),
                },
                start,
            },
            _ => {
                let mut rx = shared.state.subscribe();
                rx.mark_changed();
                Kind::State(tokio_util::sync::ReusableBoxFuture::new(
                    subscriber::changed(rx),
                ))
            }
        };
        let counters = self.counters();
        let pattern = counters.index_of(self.inner.catalog.get().map(|c| &**c), topic);
        counters.subscribed(pattern);
        Ok(Subscriber {
            hub: self.clone(),
            topic: topic.clone(),
            id,
            pattern,
            kind,
        })
    }

    /// Adds a subscriber slot to the topic's entry, creating the entry (and its one source
    /// subscription) when this is the first subscriber.
    async fn join(
        &self,
        topic: &Topic,
        class: TopicClass,
        id: u64,
        slot: Option<Slot>,
    ) -> Result<Arc<Subscribers>, BusError> {
        let slot = match self.join_existing(topic, id, slot) {
            Ok(shared) => return Ok(shared),
            Err(slot) => slot,
        };
        // First subscriber: subscribe to the source without holding the lock.
        let source = self.inner.bus.subscribe(topic, StartAt::Live).await?;
        let latest = match class {
            TopicClass::State => self.inner.bus.latest(topic).await?,
            TopicClass::Stream => None,
        };
        // Only now start the feed: the bus subscription above sees everything it publishes.
        let feed = self.feeder_of(topic).and_then(|f| f.feed(topic));
        let mut topics = lock(&self.inner.topics);
        if let Some(entry) = topics.get_mut(topic) {
            // Another subscriber created the entry meanwhile; ours (and our feed guard) is not
            // needed. The guard is dropped after the lock, like every feed guard.
            entry.refs += 1;
            if let Some(slot) = slot {
                lock(&entry.shared.stream).insert(id, slot);
            }
            let shared = entry.shared.clone();
            drop(topics);
            drop(feed);
            return Ok(shared);
        }
        let shared = Arc::new(Subscribers {
            class,
            stream: Mutex::new(slot.map(|slot| (id, slot)).into_iter().collect()),
            state: watch::channel(latest).0,
        });
        let pump = CancellationToken::new();
        tokio::spawn(run_pump(shared.clone(), source, pump.clone()));
        topics.insert(
            topic.clone(),
            Entry {
                shared: shared.clone(),
                refs: 1,
                pump,
                _feed: feed,
            },
        );
        tracing::debug!(%topic, ?class, "source subscription opened");
        Ok(shared)
    }

    /// Joins the topic's entry if it exists; gives the slot back if it does not.
    fn join_existing(
        &self,
        topic: &Topic,
        id: u64,
        slot: Option<Slot>,
    ) -> Result<Arc<Subscribers>, Option<Slot>> {
        let mut topics = lock(&self.inner.topics);
        let Some(entry) = topics.get_mut(topic) else {
            return Err(slot);
        };
        entry.refs += 1;
        if let Some(slot) = slot {
            lock(&entry.shared.stream).insert(id, slot);
        }
        Ok(entry.shared.clone())
    }

    /// Hooks a subscriber that lagged back into the live fan-out with a fresh queue.
    fn rejoin(
        &self,
        topic: &Topic,
        id: u64,
        lagged: &Arc<AtomicBool>,
    ) -> Option<mpsc::Receiver<Arc<Item>>> {
        let topics = lock(&self.inner.topics);
        let entry = topics.get(topic)?;
        let (tx, rx) = mpsc::channel(self.inner.config.subscriber_queue_events.max(1));
        lagged.store(false, Ordering::Release);
        let lagged = lagged.clone();
        lock(&entry.shared.stream).insert(id, Slot { tx, lagged });
        Some(rx)
    }

    fn leave(&self, topic: &Topic, id: u64) {
        let mut topics = lock(&self.inner.topics);
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        lock(&entry.shared.stream).remove(&id);
        entry.refs -= 1;
        if entry.refs == 0
            && let Some(entry) = topics.remove(topic)
        {
            entry.pump.cancel();
            // The feed guard is dropped without the lock: a feeder's release never runs under it.
            drop(topics);
            drop(entry);
            tracing::debug!(%topic, "source subscription released");
        }
    }
}

async fn run_pump(shared: Arc<Subscribers>, mut source: Subscription, stop: CancellationToken) {
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return,
            d = source.next() => d,
        };
        let Some(delivery) = delivery else {
            return;
        };
        if let Delivery::Event(e) = &delivery {
            crate::trace::delivered(e);
        }
        match (shared.class, delivery) {
            (TopicClass::State, Delivery::Event(e)) => {
                shared.state.send_replace(Some(e));
            }
            // A state topic has no backlog to lose: the next value replaces the missed ones.
            (TopicClass::State, Delivery::Gap { .. }) => {}
            (TopicClass::Stream, Delivery::Event(e)) => shared.fan_out(Item::Event(e)),
            (TopicClass::Stream, Delivery::Gap { after, resume }) => {
                shared.fan_out(Item::Gap { after, resume });
            }
        }
    }
}

impl Subscribers {
    /// Offers `item` to every stream subscriber; cuts off those whose queue is full.
    fn fan_out(&self, item: Item) {
        // One allocation per event, shared by every queue: a queue slot is one pointer, so a
        // subscriber's queue costs a few hundred bytes however large an event is.
        let item = Arc::new(item);
        lock(&self.stream).retain(|_, slot| match slot.tx.try_send(item.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slot.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}
