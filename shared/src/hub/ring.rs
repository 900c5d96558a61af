//! A stream topic's live fan-out: ONE bounded ring of items shared by every local subscriber of
//! the topic, each reading it with its own cursor (as `tokio::sync::broadcast` does), instead of
//! one queue per subscriber that the pump pushes every item into.
//!
//! Per event the pump takes the ring's lock once, appends one `Arc<Item>` and collects the
//! wakers of the readers waiting for it. A reader keeps its cursor itself and, per wake, takes
//! under ONE lock every item from its cursor up to the tail (at most [`BATCH`]): a pointer copy
//! and a count each, into a small buffer of its own that it hands out without the lock. While
//! events arrive faster than one socket's turn comes round (a burst, or many sockets on one
//! core), that is one lock per batch, not per item, and the reader's own state — not a shared
//! table's entry — is what each delivery touches. No per-subscriber push, semaphore permit or
//! allocation per item.
//!
//! # Bounds and memory
//!
//! An item is kept only while a reader that was there when it arrived has not taken it: each
//! item counts the readers yet to take it, and the oldest items are dropped as soon as that
//! count reaches zero (so an idle ring, e.g. a per-user topic whose one socket keeps up, holds
//! nothing and shrinks back). The ring never holds more than `capacity` items (the hub's
//! `subscriber_queue_events`, the bound each subscriber's own queue had): a new item past it
//! drops the oldest, and a reader whose cursor pointed there is told how many it missed
//! ([`Polled::Lagged`]) — never a silent skip. The hub's subscriber then catches up from
//! history, as it did when its own queue overflowed. A reader costs one slot (waker, and its
//! cursor as of its last batch, for the queue-depth gauge) in the ring's table, reused after it
//! leaves, and its buffer of taken items: empty until a wake finds two or more items, then at
//! most [`BATCH`] pointers (taken items count as delivered to it: the ring no longer holds them
//! for it, and the depth gauge no longer counts them).
//!
//! Lock order: the hub's topic table, then a ring's lock; nothing else is taken under it, and
//! wakers are woken after it is released.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Item;
use super::stats::QueueDepths;

/// Most items a reader takes under one lock.
pub(super) const BATCH: usize = 32;

/// A ring shared by the stream subscribers of one topic.
pub(super) struct Ring {
    capacity: usize,
    state: Mutex<State>,
}

struct State {
    /// The items at positions `base..base + items.len()`, each with the number of readers yet
    /// to take it.
    items: VecDeque<(Arc<Item>, usize)>,
    /// The position of `items[0]` (of the next item when there is none).
    base: u64,
    /// The readers' cursors and wakers, by slot.
    readers: Vec<ReaderSlot>,
    /// Slots free for the next reader.
    free: Vec<usize>,
    /// Readers now.
    live: usize,
    /// No more items will come (the topic's fan-out is gone).
    closed: bool,
}

#[derive(Default)]
struct ReaderSlot {
    /// The position of the reader's next item as of its last batch (the reader keeps its own).
    next: u64,
    /// Set while the reader waits for an item.
    waker: Option<Waker>,
    live: bool,
}

/// What a reader's poll found.
#[derive(Debug)]
pub(super) enum Polled {
    /// The item at its cursor.
    Item(Arc<Item>),
    /// This many items were dropped before it took them; its cursor now is the oldest kept.
    Lagged(u64),
    /// The ring is closed and the reader has taken everything.
    Closed,
}

/// One reader of a ring (a stream subscriber); dropping it releases its hold on every item.
pub(super) struct Reader {
    ring: Arc<Ring>,
    slot: usize,
    /// The position of its next item in the ring.
    next: u64,
    /// Items taken from the ring under its last lock and not handed out yet, in order.
    taken: VecDeque<Arc<Item>>,
}

impl State {
    fn tail(&self) -> u64 {
        self.base + self.items.len() as u64
    }

    /// Drops the oldest items no reader still has to take.
    fn trim(&mut self) {
        while self.items.front().is_some_and(|(_, left)| *left == 0) {
            self.items.pop_front();
            self.base += 1;
        }
        // An empty ring gives its memory back (a burst may have grown it to `capacity`).
        if self.items.is_empty() && self.items.capacity() > 32 {
            self.items.shrink_to(8);
        }
    }
}

impl Ring {
    /// A ring that keeps at most `capacity` items (at least one).
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                items: VecDeque::new(),
                base: 0,
                readers: Vec::new(),
                free: Vec::new(),
                live: 0,
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections only move cursors, counts and pointers; each leaves the state
        // consistent before anything that could panic (an allocation) runs.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader whose first item is the next one sent.
    pub(super) fn reader(self: &Arc<Self>) -> Reader {
        let mut st = self.lock();
        let next = st.tail();
        let slot = ReaderSlot {
            next,
            waker: None,
            live: true,
        };
        let slot = match st.free.pop() {
            Some(i) => {
                st.readers[i] = slot;
                i
            }
            None => {
                st.readers.push(slot);
                st.readers.len() - 1
            }
        };
        st.live += 1;
        Reader {
            ring: self.clone(),
            slot,
            next,
            taken: VecDeque::new(),
        }
    }

    /// Appends `item` for every reader there now; the wakers of those waiting for it are
    /// added to `wake`, for the caller to wake once this returns (outside the lock).
    pub(super) fn send(&self, item: Item, wake: &mut Vec<Waker>) {
        let mut st = self.lock();
        if st.live == 0 {
            // Nobody to keep it for: the position passes.
            st.base += 1;
            return;
        }
        if st.items.len() >= self.capacity {
            // The oldest item some reader has not taken yet: that reader is told it lagged.
            st.items.pop_front();
            st.base += 1;
        }
        let live = st.live;
        st.items.push_back((Arc::new(item), live));
        wake.extend(st.readers.iter_mut().filter_map(|r| r.waker.take()));
    }

    /// Closes the ring: readers get what it holds, then [`Polled::Closed`].
    pub(super) fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut st = self.lock();
            st.closed = true;
            st.readers
                .iter_mut()
                .filter_map(|r| r.waker.take())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Adds each reader's items not yet taken to `depths`.
    pub(super) fn add_depths(&self, depths: &mut QueueDepths) {
        let st = self.lock();
        let tail = st.tail();
        for r in st.readers.iter().filter(|r| r.live) {
            let queued = (tail - r.next).min(self.capacity as u64);
            depths.queued += queued;
            depths.max = depths.max.max(queued);
            depths.queues += 1;
        }
    }

    /// Readers now (for tests).
    #[cfg(test)]
    fn readers(&self) -> usize {
        self.lock().live
    }

    /// Items held now (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().items.len()
    }
}

impl Reader {
    /// The item at this reader's cursor, or why there is none; `Pending` (woken by the next
    /// item) when it has taken everything.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        if let Some(item) = self.taken.pop_front() {
            return Poll::Ready(Polled::Item(item));
        }
        let mut st = self.ring.lock();
        let st = &mut *st;
        let base = st.base;
        let tail = st.tail();
        if self.next < base {
            let missed = base - self.next;
            self.next = base;
            return Poll::Ready(Polled::Lagged(missed));
        }
        if self.next < tail {
            let from = (self.next - base) as usize;
            let n = ((tail - self.next) as usize).min(BATCH);
            let mut taken = st.items.range_mut(from..from + n).map(|(item, left)| {
                *left -= 1;
                item.clone()
            });
            let first = taken.next();
            self.taken.extend(taken);
            self.next += n as u64;
            st.readers[self.slot].next = self.next;
            if from == 0 {
                st.trim();
            }
            if let Some(first) = first {
                return Poll::Ready(Polled::Item(first));
            }
        }
        if st.closed {
            return Poll::Ready(Polled::Closed);
        }
        match &mut st.readers[self.slot].waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.ring.lock();
        let st = &mut *st;
        let base = st.base;
        st.readers[self.slot] = ReaderSlot::default();
        // Every item from its cursor on was counted for it (those it took already were not).
        let from = self.next.max(base) - base;
        for (_, left) in st.items.iter_mut().skip(from as usize) {
            *left -= 1;
        }
        st.live -= 1;
        st.free.push(self.slot);
        st.trim();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::event::{Event, Topic};

    fn item(offset: u64) -> Item {
        Item::Event(Event {
            topic: Topic::new("t").unwrap(),
            epoch: 1,
            offset,
            payload: bytes::Bytes::new(),
            trace: None,
        })
    }

    fn poll(r: &mut Reader) -> Poll<Polled> {
        r.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn offset(p: Poll<Polled>) -> u64 {
        match p {
            Poll::Ready(Polled::Item(i)) => match &*i {
                Item::Event(e) => e.offset,
                Item::Gap { .. } => panic!("a gap"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn send(ring: &Ring, offset: u64) -> usize {
        let mut wake = Vec::new();
        ring.send(item(offset), &mut wake);
        wake.len()
    }

    #[test]
    fn every_reader_gets_every_item_after_it_joined_in_order() {
        let ring = Ring::new(8);
        let mut a = ring.reader();
        assert!(poll(&mut a).is_pending());
        // The waiting reader is handed back to be woken.
        assert_eq!(send(&ring, 1), 1);
        let mut b = ring.reader();
        for o in 2..=4 {
            assert_eq!(send(&ring, o), 0, "nobody waits");
        }
        for o in 1..=4 {
            assert_eq!(offset(poll(&mut a)), o);
        }
        for o in 2..=4 {
            assert_eq!(offset(poll(&mut b)), o);
        }
        assert!(poll(&mut a).is_pending() && poll(&mut b).is_pending());
        // Everything taken by everyone: nothing held.
        assert_eq!(ring.held(), 0);
    }

    #[test]
    fn a_reader_overrun_is_told_how_many_it_missed_and_the_others_are_not() {
        let ring = Ring::new(4);
        let mut slow = ring.reader();
        let mut fast = ring.reader();
        for o in 1..=10 {
            send(&ring, o);
            assert_eq!(offset(poll(&mut fast)), o);
        }
        // Bounded: only the last `capacity` items are held for the slow reader.
        assert_eq!(ring.held(), 4);
        let mut depths = QueueDepths::default();
        ring.add_depths(&mut depths);
        assert_eq!((depths.queued, depths.max, depths.queues), (4, 4, 2));
        assert!(matches!(poll(&mut slow), Poll::Ready(Polled::Lagged(6))));
        for o in 7..=10 {
            assert_eq!(offset(poll(&mut slow)), o);
        }
        assert!(poll(&mut slow).is_pending());
        assert_eq!(ring.held(), 0);
    }

    #[test]
    fn a_leaving_reader_releases_its_items_and_its_slot() {
        let ring = Ring::new(16);
        let mut keep = ring.reader();
        let gone = ring.reader();
        for o in 1..=5 {
            send(&ring, o);
        }
        for o in 1..=5 {
            assert_eq!(offset(poll(&mut keep)), o);
        }
        // Held only for the reader that never read.
        assert_eq!(ring.held(), 5);
        drop(gone);
        assert_eq!((ring.held(), ring.readers()), (0, 1));
        // Its slot is reused; the ring does not grow with readers that come and go.
        for _ in 0..100 {
            drop(ring.reader());
        }
        assert_eq!(ring.lock().readers.len(), 2);
        drop(keep);
        // Without readers, items are not kept at all.
        send(&ring, 6);
        assert_eq!(ring.held(), 0);
        let mut late = ring.reader();
        assert!(poll(&mut late).is_pending());
        send(&ring, 7);
        assert_eq!(offset(poll(&mut late)), 7);
    }

    #[test]
    fn a_reader_takes_a_batch_under_one_lock_and_hands_it_out_in_order() {
        let ring = Ring::new(64);
        let mut r = ring.reader();
        let mut other = ring.reader();
        for o in 1..=40 {
            send(&ring, o);
        }
        // One poll takes the first BATCH items: the ring keeps them only for the other reader.
        assert_eq!(offset(poll(&mut r)), 1);
        drop(other);
        assert_eq!(ring.held(), 40 - BATCH);
        let mut depths = QueueDepths::default();
        ring.add_depths(&mut depths);
        assert_eq!(depths.queued, (40 - BATCH) as u64);
        // Items sent meanwhile come after the taken ones, and an overrun is still told.
        for o in 41..=100 {
            send(&ring, o);
        }
        for o in 2..=BATCH as u64 {
            assert_eq!(offset(poll(&mut r)), o);
        }
        assert!(
            matches!(poll(&mut r), Poll::Ready(Polled::Lagged(n)) if n == 100 - 64 - BATCH as u64)
        );
        for o in 37..=100 {
            assert_eq!(offset(poll(&mut r)), o);
        }
        assert!(poll(&mut r).is_pending());
        assert_eq!(ring.held(), 0);
        // A reader dropped with items taken and not handed out releases everything.
        other = ring.reader();
        for o in 101..=110 {
            send(&ring, o);
        }
        assert_eq!(offset(poll(&mut other)), 101);
        drop(other);
        assert_eq!(offset(poll(&mut r)), 101);
        drop(r);
        assert_eq!((ring.held(), ring.readers()), (0, 0));
    }

    #[test]
    fn a_closed_ring_gives_what_it_holds_then_closed() {
        let ring = Ring::new(4);
        let mut r = ring.reader();
        send(&ring, 1);
        ring.close();
        assert_eq!(offset(poll(&mut r)), 1);
        assert!(matches!(poll(&mut r), Poll::Ready(Polled::Closed)));
    }
}
