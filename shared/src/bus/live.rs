//! The subscription driver the broker buses share: a cursor over a topic's shared history, fed by
//! a live feed from the broker and repaired from history whenever the feed cannot be trusted.
//!
//! A broker bus supplies two things ([`Source`]): reads of the shared history, and a live feed of
//! the topic's new events. The feed may lose, repeat or reorder nothing silently *by contract*,
//! but in practice it can drop out (connection lost), fall behind (a bounded queue overflowed) or
//! come back from a broker that lost its data (new epoch). The driver therefore trusts a live
//! event only when it is exactly the next offset of the cursor's epoch; anything else — a jump,
//! another epoch, a resync signal, the feed ending — sends it back to history, which answers with
//! the missing events or an explicit gap. Duplicates are dropped by offset.
//!
//! Every repair — a jump, a resync signal, a lost feed — is counted in the broker's
//! [`super::BusMetrics`].
//!
//! The driver holds at most one history page of events; it never buffers while the broker is
//! down: it waits with backoff and retries. It does not know any broker.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;

use super::metrics::Repair;
use super::{BusError, Delivery, Read, StartAt, Subscription};
use crate::event::{Event, Position, Topic};

/// Events read from history per call while a subscription catches up.
const PAGE: usize = 256;

/// What a live feed yields.
#[derive(Debug)]
pub(crate) enum LiveItem {
    /// An event as the broker pushed it.
    Event(Event),
    /// Something may have been missed (a bounded queue overflowed, the connection came back):
    /// catch up from history.
    Resync,
}

/// A live feed of one topic; it ends when the broker connection behind it is lost.
pub(crate) type LiveFeed = BoxStream<'static, LiveItem>;

/// What a broker bus gives the driver.
#[async_trait::async_trait]
pub(crate) trait Source: Send + Sync + 'static {
    /// Reads shared history, as [`super::Bus::read`].
    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError>;

    /// Opens a live feed of `topic`. After it returns, every event published later is in the
    /// feed, and so is every event after `after` when that is given. Returns the feed and the
    /// cursor to start from: `after`, or the topic's head when `after` is `None`.
    async fn open(
        &self,
        topic: &Topic,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError>;

    /// The broker's counters, where repairs are counted.
    fn metrics(&self) -> &super::BusMetrics;
}

/// Reconnect and resubscribe delays: the core's one backoff (full jitter).
pub(crate) use crate::backoff::Retrying as Backoff;

/// Whether a broker's retained history covers a read after `after`: `None` when it does,
/// otherwise the position to resume from (just before `oldest`). The history is `epoch`'s,
/// retains `oldest` onwards (`head + 1` when it retains nothing) and ends at `head`.
pub(crate) fn uncovered(after: Position, epoch: u64, oldest: u64, head: u64) -> Option<Position> {
    let resume = Position {
        epoch,
        offset: oldest - 1,
    };
    let covered = after.epoch == epoch && after.offset >= resume.offset && after.offset <= head;
    (!covered).then_some(resume)
}

/// Opens a subscription: the live feed is opened before this returns (so every event published
/// afterwards is delivered); a start position is caught up from history first.
pub(crate) async fn subscribe<S: Source>(
    source: Arc<S>,
    topic: &Topic,
    from: StartAt,
    backoff: Backoff,
) -> Result<Subscription, BusError> {
    let after = match from {
        StartAt::Live => None,
        StartAt::After(p) => Some(p),
    };
    let (live, cursor) = source.open(topic, after).await?;
    let driver = Driver {
        source,
        topic: topic.clone(),
        cursor,
        live: Some(live),
        catch_up: after.is_some(),
        buf: VecDeque::new(),
        backoff,
    };
    Ok(Box::pin(futures::stream::unfold(
        driver,
        |mut d| async move {
            let next = d.next().await;
            next.map(|item| (item, d))
        },
    )))
}

struct Driver<S> {
    source: Arc<S>,
    topic: Topic,
    /// The position of the last delivery handed out (or buffered to be).
    cursor: Position,
    live: Option<LiveFeed>,
    /// Whether history must be read up to its head before the live feed is trusted again.
    catch_up: bool,
    buf: VecDeque<Delivery>,
    backoff: Backoff,
}

impl<S: Source> Driver<S> {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.buf.pop_front() {
                return Some(d);
            }
            let Some(live) = self.live.as_mut() else {
                match self.source.open(&self.topic, Some(self.cursor)).await {
                    Ok((live, _)) => {
                        self.live = Some(live);
                        self.catch_up = true;
                    }
                    Err(e) => {
                        tracing::debug!(topic = %self.topic, error = %e, "bus subscription cannot reopen; retrying");
                        self.backoff.wait().await;
                    }
                }
                continue;
            };
            if self.catch_up {
                match self.source.read(&self.topic, self.cursor, PAGE).await {
                    Ok(Read::Events { events, next }) => {
                        if events.is_empty() {
                            self.catch_up = false;
                            self.backoff.reset();
                        }
                        self.cursor = next;
                        self.buf.extend(events.into_iter().map(Delivery::Event));
                    }
                    Ok(Read::Gap { resume }) => {
                        tracing::debug!(topic = %self.topic, after = ?self.cursor, ?resume, "bus subscription gap");
                        self.buf.push_back(Delivery::Gap {
                            after: self.cursor,
                            resume,
                        });
                        self.cursor = resume;
                        // The feed was opened for the old position (perhaps another epoch's).
                        self.live = None;
                    }
                    Err(e) => {
                        tracing::debug!(topic = %self.topic, error = %e, "bus history read failed; retrying");
                        self.live = None;
                        self.backoff.wait().await;
                    }
                }
                continue;
            }
            match live.next().await {
                Some(LiveItem::Event(e)) => {
                    let same_epoch = e.epoch == self.cursor.epoch;
                    if same_epoch && e.offset == self.cursor.offset + 1 {
                        self.cursor = e.position();
                        return Some(Delivery::Event(e));
                    }
                    if !(same_epoch && e.offset <= self.cursor.offset) {
                        // A jump or another epoch: history says what happened in between.
                        self.catch_up = true;
                        self.source.metrics().repaired(Repair::Jump);
                    }
                }
                Some(LiveItem::Resync) => {
                    self.catch_up = true;
                    self.source.metrics().repaired(Repair::Resync);
                }
                None => {
                    tracing::debug!(topic = %self.topic, "bus live feed lost; reopening");
                    self.source.metrics().repaired(Repair::Lost);
                    self.live = None;
                    self.backoff.wait().await;
                }
            }
        }
    }
}
