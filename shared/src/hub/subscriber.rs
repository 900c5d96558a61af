//! One local subscription of the hub ([`Subscriber`]): its items read as a [`Stream`], poll by
//! poll, so that the live path — the next event at its cursor in the topic's ring — costs a
//! pointer copy under the ring's lock and a position comparison, with no future built per item.
//!
//! A stream subscriber reads its topic's shared ring with its own cursor (`ring.rs`); after
//! lagging (the ring dropped items before it took them) or when it starts after a position, it
//! first reads the bus's history, a page at a time, then the ring again, dropping what history
//! already gave (by position). Those
//! history reads are the only futures it keeps, boxed, while one is in flight. A state
//! subscriber reads the topic's watch slot (the newest value, never a backlog).
//!
//! It never delivers past a hole without a gap. When history cannot be read (the broker is
//! failing), the gap is owed from where the subscriber was, and the ring's next item settles it:
//! a gap that resumes just before that item, which covers exactly what history could not give —
//! no position is made up and no retry adds to a failing broker's load.
//!
//! It does not encode anything and never waits for anyone but its own queue and the bus.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;

use super::ring::{Polled, Reader};
use super::{Hub, Item, REPLAY_PAGE};
use crate::bus::Read;
use crate::event::{Event, Position, Topic};

/// One local subscription. Dropping it leaves the topic.
pub struct Subscriber {
    pub(super) hub: Hub,
    pub(super) topic: Topic,
    /// The index of its pattern in the hub's counters.
    pub(super) pattern: usize,
    pub(super) kind: Kind,
}

pub(super) enum Kind {
    State(StateRx),
    Stream {
        /// Its cursor in the topic's ring.
        reader: Reader,
        replay: Option<Replay>,
        /// The last position delivered (or asked to resume from), to drop live duplicates.
        last: Option<Position>,
        /// Where to catch up from after lagging when nothing has been delivered yet.
        start: Position,
        /// A gap owed from this position: history could not be read to catch up from it, so
        /// the ring's next item says where delivery resumes (see [`owed_gap`]).
        owed: Option<Position>,
        /// The ring event that follows an owed gap, delivered right after it (boxed: rare).
        stash: Option<Box<Item>>,
    },
}

/// A state subscriber's wait for the topic's next value (one allocation, reused).
pub(super) type StateRx = ReusableBoxFuture<'static, Changed>;

/// A state topic's slot once it changed (or its sender is gone: `Err`), with the receiver back.
pub(super) type Changed = (
    Result<(), watch::error::RecvError>,
    watch::Receiver<Option<Event>>,
);

/// The wait for the next change of `rx`.
pub(super) async fn changed(mut rx: watch::Receiver<Option<Event>>) -> Changed {
    let r = rx.changed().await;
    (r, rx)
}

/// A catch-up from history in progress.
pub(super) struct Replay {
    cursor: Position,
    buf: VecDeque<Event>,
    /// The bus call in flight, if any.
    fetch: Option<Pin<Box<dyn Future<Output = Fetched> + Send>>>,
}

impl Replay {
    /// A catch-up of what follows `cursor`.
    pub(super) fn after(cursor: Position) -> Self {
        Self {
            cursor,
            buf: VecDeque::new(),
            fetch: None,
        }
    }
}

/// What a history call of a catch-up answered.
enum Fetched {
    /// A page of history after the cursor.
    Page(Result<Read, crate::bus::BusError>),
}

/// What a catch-up step gave.
enum Replayed {
    /// An item from history.
    Item(Item),
    /// History has caught up with the head.
    Done,
    /// History could not be read after this position: a gap is owed from it.
    Failed(Position),
}

impl Subscriber {
    /// The subscribed topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The next item; `None` when the hub has stopped this topic's source. Counted in the
    /// hub's counters of its pattern.
    pub async fn next(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// Polls for the next item (counted, like [`Subscriber::next`]).
    pub fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.poll_shared(cx)
            .map(|item| item.map(Arc::unwrap_or_clone))
    }

    /// Polls for the next item as the hub shares it (counted, like [`Subscriber::next`]): a
    /// stream topic's live event is the very `Arc` every subscriber of the topic reads from its
    /// ring, so a subscriber that only reads the item (to find its encoded frame) gets it for
    /// one reference count, where [`Subscriber::poll_item`] copies the event out of it (its
    /// topic, payload and trace, each a count up and, later, down).
    pub fn poll_shared(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Item>>> {
        let item = ready!(self.poll_uncounted(cx));
        match item.as_deref() {
            Some(Item::Event(_)) => self.hub.counters().delivered(self.pattern),
            Some(Item::Gap { .. }) => self.hub.counters().gap(self.pattern),
            None => {}
        }
        Poll::Ready(item)
    }

    fn poll_uncounted(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<Item>>> {
        match &mut self.kind {
            Kind::State(wait) => loop {
                let (changed, mut rx) = ready!(wait.poll(cx));
                let value = changed.is_ok().then(|| rx.borrow_and_update().clone());
                let ended = changed.is_err();
                wait.set(self::changed(rx));
                if ended {
                    return Poll::Ready(None);
                }
                if let Some(Some(e)) = value {
                    return Poll::Ready(Some(Arc::new(Item::Event(e))));
                }
            },
            Kind::Stream {
                reader,
                replay,
                last,
                start,
                owed,
                stash,
            } => loop {
                if let Some(item) = stash.take() {
                    *last = Some(position_after(&item));
                    return Poll::Ready(Some(Arc::new(*item)));
                }
                if let Some(r) = replay {
                    match ready!(poll_replayed(&self.hub, &self.topic, r, cx)) {
                        Replayed::Item(item) => {
                            *last = Some(position_after(&item));
                            return Poll::Ready(Some(Arc::new(item)));
                        }
                        Replayed::Done => *replay = None,
                        Replayed::Failed(after) => {
                            *replay = None;
                            *owed = Some(after);
                        }
                    }
                }
                let item = match ready!(reader.poll(cx)) {
                    Polled::Item(item) => item,
                    Polled::Closed => return Poll::Ready(None),
                    Polled::Lagged(missed) => {
                        // The ring dropped items before it took them: catch up from history,
                        // then go on reading the ring (what history gave is dropped there).
                        self.hub.counters().caught_up(self.pattern);
                        *replay = Some(Replay::after(owed.take().or(*last).unwrap_or(*start)));
                        tracing::debug!(topic = %self.topic, missed, "subscriber lagged; catching up from history");
                        continue;
                    }
                };
                if let Some(after) = *owed {
                    match owed_gap(after, Arc::unwrap_or_clone(item)) {
                        Owed::Skip => continue,
                        Owed::Deliver(item) => {
                            *owed = None;
                            *last = Some(position_after(&item));
                            return Poll::Ready(Some(Arc::new(item)));
                        }
                        Owed::Gap(gap, next) => {
                            *owed = None;
                            *last = Some(position_after(&gap));
                            *stash = next.map(Box::new);
                            return Poll::Ready(Some(Arc::new(gap)));
                        }
                    }
                }
                if let (Item::Event(e), Some(l)) = (&*item, *last)
                    && e.epoch == l.epoch
                    && e.offset <= l.offset
                {
                    continue; // Already delivered from history.
                }
                if let Item::Event(e) = &*item {
                    *last = Some(e.position());
                }
                return Poll::Ready(Some(item));
            },
        }
    }
}

impl Stream for Subscriber {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// The position a reader is at once it has `item`.
fn position_after(item: &Item) -> Position {
    match item {
        Item::Event(e) => e.position(),
        Item::Gap { resume, .. } => *resume,
    }
}

/// What to do with a ring item while a gap is owed.
enum Owed {
    /// Already covered by the position the gap is owed from.
    Skip,
    /// The very next item: nothing was missed after all.
    Deliver(Item),
    /// The gap, exactly up to this item, then the item itself (none for a gap, merged).
    Gap(Item, Option<Item>),
}

/// Settles a gap owed from `after` with the ring's next `item`: the events between the two are
/// the ones history could not give, so the gap resumes just before `item` — no bus call, and
/// no position made up.
fn owed_gap(after: Position, item: Item) -> Owed {
    match item {
        Item::Event(e) if e.epoch == after.epoch && e.offset <= after.offset => Owed::Skip,
        Item::Event(e) if e.epoch == after.epoch && e.offset == after.offset + 1 => {
            Owed::Deliver(Item::Event(e))
        }
        Item::Event(e) => {
            let resume = Position {
                epoch: e.epoch,
                offset: e.offset.saturating_sub(1),
            };
            Owed::Gap(Item::Gap { after, resume }, Some(Item::Event(e)))
        }
        Item::Gap { resume, .. } => Owed::Gap(Item::Gap { after, resume }, None),
    }
}

/// The next step of a catch-up from history.
fn poll_replayed(hub: &Hub, topic: &Topic, r: &mut Replay, cx: &mut Context<'_>) -> Poll<Replayed> {
    if let Some(e) = r.buf.pop_front() {
        return Poll::Ready(Replayed::Item(Item::Event(e)));
    }
    let fetch = r.fetch.get_or_insert_with(|| {
        let bus = hub.inner.bus.clone();
        let topic = topic.clone();
        let cursor = r.cursor;
        Box::pin(async move { Fetched::Page(bus.read(&topic, cursor, REPLAY_PAGE).await) })
    });
    let fetched = ready!(fetch.as_mut().poll(cx));
    r.fetch = None;
    Poll::Ready(match fetched {
        Fetched::Page(Ok(Read::Events { events, next })) => {
            r.cursor = next;
            r.buf.extend(events);
            // An empty page: history has caught up with the head.
            match r.buf.pop_front() {
                Some(e) => Replayed::Item(Item::Event(e)),
                None => Replayed::Done,
            }
        }
        Fetched::Page(Ok(Read::Gap { resume })) => {
            let after = r.cursor;
            r.cursor = resume;
            Replayed::Item(Item::Gap { after, resume })
        }
        Fetched::Page(Err(e)) => {
            // Never skip silently and never make a position up (nor retry into a broker that
            // is already failing): the gap is owed, and the ring's next item says exactly where
            // it ends.
            static THROTTLE: crate::logthrottle::LogThrottle =
                crate::logthrottle::LogThrottle::new(10_000);
            if let Some(more) = THROTTLE.allow() {
                tracing::warn!(%topic, error = %e, more, "history read failed during a catch-up; a gap is owed (logged at most every 10 s; `more` since the last line)");
            }
            Replayed::Failed(r.cursor)
        }
    })
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.counters().left(self.pattern);
        self.hub.leave(&self.topic);
    }
}
