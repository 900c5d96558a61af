//! The topic hub: one per process, between the bus and the gateways' connections.
//!
//! Interest is reference-counted per topic: the first local subscriber of a topic makes the hub
//! subscribe to its source once; later subscribers share that subscription; when the last one
//! leaves, the source subscription is dropped. A pump task per topic fans each event out:
//!
//! - **stream** topics: into one bounded ring per topic (`ring.rs`) that every subscriber of the
//!   topic reads with its own cursor; the pump appends once per event and never waits for
//!   anyone. A subscriber that falls more than the ring's bound behind is told so when it reads
//!   next; it then catches up from the bus's history after the last position it delivered and
//!   goes on reading the ring (dropping by position what history already gave) — or gets a gap
//!   when history no longer covers it. A slow subscriber therefore costs the items the ring
//!   keeps for it (bounded) and never loses an event silently. Cutting a slow *client* off is
//!   the gateway's decision, at its own bounded send queue.
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
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod config;
mod ring;
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
    /// The stream subscribers' shared ring (unused on a state topic).
    ring: Arc<ring::Ring>,
    state: watch::Sender<Option<Event>>,
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        // The fan-out is gone: a reader still holding the ring is told it ended.
        self.ring.close();
    }
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
            entry.shared.ring.add_depths(&mut depths);
        }
        depths
    }

    /// Subscribes to `topic`, live or after a position.
    ///
    /// For state topics the subscriber first gets the latest value (if any), whatever `from` is.
    pub async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscriber, BusError> {
        let class = self.class_of(topic);
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
        // Only a stream subscriber reads the ring: state subscribers share the topic's watch slot.
        let (shared, reader) = self.join(topic, class).await?;
        let kind = match (class, reader) {
            (TopicClass::Stream, Some(reader)) => Kind::Stream {
                reader,
                replay: match from {
                    StartAt::Live => None,
                    StartAt::After(p) => Some(Replay::after(p)),
                },
                last: match from {
                    StartAt::Live => None,
                    StartAt::After(p) => Some(p),
                },
                start,
                owed: None,
                stash: None,
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
            pattern,
            kind,
        })
    }

    /// Joins the topic's entry — with a reader of its ring on a stream topic, made under the
    /// topic table's lock like every join — creating the entry (and its one source
    /// subscription) when this is the first subscriber.
    async fn join(
        &self,
        topic: &Topic,
        class: TopicClass,
    ) -> Result<(Arc<Subscribers>, Option<ring::Reader>), BusError> {
        let stream = class == TopicClass::Stream;
        if let Some(joined) = self.join_existing(topic, stream) {
            return Ok(joined);
        }
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
            let reader = stream.then(|| entry.shared.ring.reader());
            let shared = entry.shared.clone();
            drop(topics);
            drop(feed);
            return Ok((shared, reader));
        }
        let shared = Arc::new(Subscribers {
            class,
            ring: ring::Ring::new(self.inner.config.subscriber_queue_events),
            state: watch::channel(latest).0,
        });
        let reader = stream.then(|| shared.ring.reader());
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
        Ok((shared, reader))
    }

    /// Joins the topic's entry (with a reader of its ring if `stream`) if it exists.
    fn join_existing(
        &self,
        topic: &Topic,
        stream: bool,
    ) -> Option<(Arc<Subscribers>, Option<ring::Reader>)> {
        let mut topics = lock(&self.inner.topics);
        let entry = topics.get_mut(topic)?;
        entry.refs += 1;
        let reader = stream.then(|| entry.shared.ring.reader());
        Some((entry.shared.clone(), reader))
    }

    fn leave(&self, topic: &Topic) {
        let mut topics = lock(&self.inner.topics);
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
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
    // The wakers of the readers an event is for, woken outside the ring's lock (kept to reuse
    // its allocation).
    let mut wake = Vec::new();
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
            (TopicClass::Stream, Delivery::Event(e)) => {
                shared.ring.send(Item::Event(e), &mut wake);
            }
            (TopicClass::Stream, Delivery::Gap { after, resume }) => {
                shared.ring.send(Item::Gap { after, resume }, &mut wake);
            }
        }
        wake.drain(..).for_each(std::task::Waker::wake);
    }
}
