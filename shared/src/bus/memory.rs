//! The in-memory bus: one process, no external service — the embedded default.
//!
//! Each topic is a bounded ring of its latest events plus a watch channel that wakes readers when
//! the head moves. A subscription is a cursor into the ring: publishing never waits for readers,
//! and a reader that falls more than the ring's size behind gets a gap. The epoch is random per
//! bus, so positions from a previous process are recognised as lost history.
//!
//! Topics are created on first use and kept for the life of the process; a topic's ring size is
//! its retention's answer then ([`Retention`]). Idempotent publishes are remembered per topic and
//! key for the idempotency window, at most [`MAX_REMEMBERED_KEYS`] at once (the oldest forgotten
//! first), so no caller can grow the record without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::idempotency::Recent;
use super::{
    Bus, BusConfig, BusError, Delivery, IdempotencyKey, MAX_REMEMBERED_KEYS, Published, Read,
    Retention, StartAt, Subscription,
};
use crate::event::{Event, Position, Topic};
use crate::trace::TraceContext;

/// Events handed to a subscriber per lock of the ring.
const BATCH: usize = 128;

/// The in-memory bus.
#[derive(Debug)]
pub struct MemoryBus {
    epoch: u64,
    retention: Retention,
    topics: Mutex<HashMap<Topic, Arc<TopicLog>>>,
    /// Idempotent publishes' keys; held while such a publish appends, so a key publishes once.
    recent: Mutex<Recent>,
}

#[derive(Debug)]
struct TopicLog {
    ring: Mutex<Ring>,
    /// Events the ring keeps.
    history: usize,
    head: watch::Sender<u64>,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Event>,
    next: u64,
}

impl Ring {
    /// The oldest offset still retained (the next one when nothing is).
    fn oldest(&self) -> u64 {
        self.events.front().map_or(self.next, |e| e.offset)
    }

    /// Events after `offset` (which must be covered), at most `max`.
    fn after(&self, offset: u64, max: usize) -> impl Iterator<Item = &Event> {
        let skip = (offset + 1).saturating_sub(self.oldest()) as usize;
        self.events.iter().skip(skip).take(max)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few plain assignments; poisoning cannot leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryBus {
    /// A bus keeping `history` events per topic (at least 1), remembering idempotency keys for
    /// the default window.
    pub fn new(history: usize) -> Self {
        let window = BusConfig::default().idempotency_window();
        Self::with(Retention::new(history, None), window)
    }

    /// A bus keeping what `retention` says per topic, remembering idempotency keys for
    /// `idempotency_window`.
    pub fn with(retention: Retention, idempotency_window: Duration) -> Self {
        Self {
            epoch: rand::random::<u64>() >> 1,
            retention,
            topics: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::new(idempotency_window, MAX_REMEMBERED_KEYS)),
        }
    }

    /// This bus's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn log(&self, topic: &Topic) -> Arc<TopicLog> {
        lock(&self.topics)
            .entry(topic.clone())
            .or_insert_with(|| {
                Arc::new(TopicLog {
                    ring: Mutex::new(Ring {
                        events: VecDeque::new(),
                        next: 1,
                    }),
                    history: self.retention.history_of(topic),
                    head: watch::channel(0).0,
                })
            })
            .clone()
    }

    /// Appends an event to the topic's ring and wakes its readers.
    fn append(&self, topic: &Topic, payload: Bytes, trace: Option<TraceContext>) -> Event {
        let log = self.log(topic);
        let event = {
            let mut ring = lock(&log.ring);
            let event = Event {
                topic: topic.clone(),
                epoch: self.epoch,
                offset: ring.next,
                payload,
                trace,
            };
            ring.next += 1;
            ring.events.push_back(event.clone());
            if ring.events.len() > log.history {
                ring.events.pop_front();
            }
            event
        };
        log.head.send_replace(event.offset);
        event
    }
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        Ok(self.append(topic, payload, trace))
    }

    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        // Lock order: keys, then topics and rings (`append`); nothing takes them the other way.
        let mut recent = lock(&self.recent);
        if let Some(position) = recent.get(topic, key) {
            return Ok(Published {
                position,
                duplicate: true,
            });
        }
        let position = self.append(topic, payload, trace).position();
        recent.insert(topic, key, position);
        Ok(Published {
            position,
            duplicate: false,
        })
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        let log = self.log(topic);
        let ring = lock(&log.ring);
        Ok(Reader { epoch: self.epoch }.read(&ring, after, max))
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
        Ok(lock(&self.log(topic).ring).events.back().cloned())
    }

    async fn head(&self, topic: &Topic) -> Result<Position, BusError> {
        let log = self.log(topic);
        let offset = lock(&log.ring).next - 1;
        Ok(Position {
            epoch: self.epoch,
            offset,
        })
    }

    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError> {
        let log = self.log(topic);
        let wake = log.head.subscribe();
        let cursor = match from {
            StartAt::Live => Position {
                epoch: self.epoch,
                offset: lock(&log.ring).next - 1,
            },
            StartAt::After(p) => p,
        };
        let reader = Reader { epoch: self.epoch };
        let state = (log, wake, cursor, VecDeque::<Delivery>::new());
        let stream = futures::stream::unfold(state, move |(log, mut wake, mut cursor, mut buf)| {
            async move {
                loop {
                    if let Some(d) = buf.pop_front() {
                        return Some((d, (log, wake, cursor, buf)));
                    }
                    // Mark the head as seen before reading, so a publish after the read wakes us.
                    wake.borrow_and_update();
                    match reader.read(&lock(&log.ring), cursor, BATCH) {
                        Read::Gap { resume } => {
                            buf.push_back(Delivery::Gap {
                                after: cursor,
                                resume,
                            });
                            cursor = resume;
                        }
                        Read::Events { events, next } => {
                            cursor = next;
                            buf.extend(events.into_iter().map(Delivery::Event));
                        }
                    }
                    if buf.is_empty() && wake.changed().await.is_err() {
                        return None;
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Reads a ring on behalf of a bus of one epoch.
#[derive(Debug, Clone, Copy)]
struct Reader {
    epoch: u64,
}

impl Reader {
    fn read(&self, ring: &Ring, after: Position, max: usize) -> Read {
        let resume = Position {
            epoch: self.epoch,
            offset: ring.oldest() - 1,
        };
        let covered = after.epoch == self.epoch && after.offset >= resume.offset;
        if !covered || after.offset >= ring.next {
            return Read::Gap { resume };
        }
        let events: Vec<Event> = ring.after(after.offset, max).cloned().collect();
        let next = events.last().map_or(after, Event::position);
        Read::Events { events, next }
    }
}
