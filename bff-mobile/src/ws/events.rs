//! Event frames: a hub event as the protocol's `event` message, its payload (JSON of a
//! `demo_api` type, as its [`Route`] says) translated to the protocol's shape
//! ([`crate::shapes`]) — or, on a catalog channel, the published JSON value as is (on CBOR the
//! equivalent CBOR value) — and encoded ONCE per event and encoding, the bytes shared by every
//! socket subscribed to its route. Routes are keyed by client topic AND hub topic, so bytes
//! never cross from one channel (or one user's `conversions`) to another.
//!
//! # Why it is shaped this way
//!
//! The cost to avoid is per item per socket: one event on a topic with N subscribed sockets is
//! N items, handled on every worker thread at once. So:
//!
//! - The gateway-wide table ([`Frames`]) is locked only when a subscription starts, to hand it
//!   the [`TopicFrames`] of its route. The first subscriber of a route creates it; the table
//!   holds it weakly, so it goes with the last subscription, and dead entries are pruned
//!   whenever the table has doubled since the last pruning: the table is bounded by the routes
//!   with subscribers (at most twice), with no entry cap to tune and nothing emptied at once.
//! - Per item, a socket touches only its route's ring of recent frames for its encoding: a read
//!   lock — shared by all readers, held for a few comparisons and a reference-count increment —
//!   to find the event's encoding by position. Only the first socket to see a new event takes
//!   that ring's write lock, to put a fresh `Arc<Encoded>` in it. Sockets on other topics, or in
//!   the other encoding, never meet on a lock; with one gateway-wide mutex every item of every
//!   socket queued on the same lock (twice on a miss), and hashed a topic name to find its entry.
//! - The translation and encoding run outside every lock, in the `Encoded`'s `OnceLock`: once
//!   per event per encoding even under a race (a socket that arrives meanwhile waits for that
//!   result instead of encoding again), and the frame's bytes are reference-counted, so a socket
//!   gets them for one more count. An unreadable payload is remembered too: logged once per
//!   event and encoding, skipped by every socket.
//!
//! # Why a ring, not the latest frame only
//!
//! Sockets of one route are rarely in step: while events arrive back to back, each socket's task
//! runs when the runtime gets to it, so at any moment the sockets hold different events of the
//! route. With one slot per encoding, a socket behind the others found the slot taken by a
//! newer event and encoded its event again (a JSON decode and a CBOR encode per socket per
//! event: a fifth of the fan-out's CPU in the profile of `docs/benchmarks.md`). The ring keeps
//! the [`RING`] most recent events per encoding — but never more than the route has
//! subscriptions, so a per-user route (one socket) keeps one frame, as before, and only routes
//! shared by many sockets keep more. A socket further behind than the ring (replaying history
//! while others are live) encodes its own frame: that costs an encoding, never wrong bytes (a
//! cached frame is used only for the very position it was made for). No lock is held across an
//! await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use axum::extract::ws::Message;
use mobile_proto::{Encoding, Frame, Position};
use switchyard_core::event::Event;

use super::topics::{Payload, Route};
use super::transport::message;
use crate::shapes;

/// Size the route table may reach before its first pruning.
const FIRST_PRUNE_AT: usize = 64;

/// The most recent events a route keeps encoded, per encoding (at most one per subscription).
const RING: usize = 64;

/// The gateway's table of routes with subscribers, each with its encoded-once frames.
pub(super) struct Frames {
    routes: Mutex<Routes>,
}

struct Routes {
    map: HashMap<Route, Weak<TopicFrames>>,
    /// The size at which dead entries are pruned next.
    prune_at: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Self {
            routes: Mutex::new(Routes {
                map: HashMap::new(),
                prune_at: FIRST_PRUNE_AT,
            }),
        }
    }
}

impl Frames {
    /// The frames of `route`, shared with every other subscription of it.
    pub(super) fn of(&self, route: &Route) -> Arc<TopicFrames> {
        // Critical sections only look up, insert or prune: a panic cannot leave torn state.
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(frames) = routes.map.get(route).and_then(Weak::upgrade) {
            return frames;
        }
        let frames = Arc::new(TopicFrames {
            route: route.clone(),
            recent: Default::default(),
        });
        routes.map.insert(route.clone(), Arc::downgrade(&frames));
        if routes.map.len() >= routes.prune_at {
            routes.map.retain(|_, w| w.strong_count() > 0);
            routes.prune_at = (routes.map.len() * 2).max(FIRST_PRUNE_AT);
        }
        frames
    }

    /// Routes in the table, dead or alive (for tests of its bound).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

/// The frames of one route: its most recent events encoded, per encoding.
pub(super) struct TopicFrames {
    route: Route,
    /// Indexed by [`slot`]: the recent events' frames, oldest first, in the order they were
    /// first asked for (at most [`RING`], and at most one per subscription of the route).
    recent: [RwLock<VecDeque<Arc<Encoded>>>; 2],
}

/// One event in one encoding: made by the first socket that needs it, read by all.
pub(super) struct Encoded {
    position: Position,
    /// The `event` frame; `None` when the payload could not be read.
    frame: OnceLock<Option<Message>>,
    /// The event put in the ring after this one (weakly: the ring owns its frames), so that a
    /// socket in step with the route finds its next frame from its last one without a lock.
    next: OnceLock<Weak<Encoded>>,
}

/// Where a subscription is in its route's frames: the last frame it took. Its next one is
/// usually that frame's successor in the ring ([`Encoded::next`]), found with no lock and no
/// search; anything else takes the ring's path.
#[derive(Default)]
pub(super) struct Cursor(Option<Arc<Encoded>>);

/// The slot of an encoding in [`TopicFrames::recent`].
fn slot(enc: Encoding) -> usize {
    match enc {
        Encoding::Cbor => 0,
        Encoding::Json => 1,
    }
}

impl TopicFrames {
    /// The route these frames are for.
    pub(super) fn route(&self) -> &Route {
        &self.route
    }

    /// The `event` frame of `event` in `enc`; `None` (logged once) when its payload cannot be
    /// read.
    #[cfg(test)]
    pub(super) fn frame(self: &Arc<Self>, enc: Encoding, event: &Event) -> Option<Message> {
        self.frame_at(enc, event, &mut Cursor::default())
    }

    /// [`TopicFrames::frame`] for a subscription at `cursor` (moved to this event's frame).
    pub(super) fn frame_at(
        self: &Arc<Self>,
        enc: Encoding,
        event: &Event,
        cursor: &mut Cursor,
    ) -> Option<Message> {
        let position = Position {
            epoch: event.epoch,
            offset: event.offset,
        };
        // The fast path: the successor of the subscription's last frame is this event's.
        if let Some(next) = cursor
            .0
            .as_ref()
            .and_then(|last| last.next.get())
            .and_then(Weak::upgrade)
            && next.position == position
        {
            let frame = next
                .frame
                .get_or_init(|| encode_event(enc, &self.route, position, event).map(message))
                .clone();
            cursor.0 = Some(next);
            return frame;
        }
        let ring = &self.recent[slot(enc)];
        // Newest first: a socket is usually at or near the newest event.
        let find = |recent: &VecDeque<Arc<Encoded>>| {
            recent
                .iter()
                .rev()
                .find(|e| e.position == position)
                .cloned()
        };
        // Critical sections only compare, push and pop pointers: a panic cannot leave torn
        // state.
        let found = find(&ring.read().unwrap_or_else(|e| e.into_inner()));
        let encoded = found.unwrap_or_else(|| {
            let mut recent = ring.write().unwrap_or_else(|e| e.into_inner());
            // Another socket may have put it there between the two locks.
            find(&recent).unwrap_or_else(|| {
                let e = Arc::new(Encoded {
                    position,
                    frame: OnceLock::new(),
                    next: OnceLock::new(),
                });
                // Linked after the newest: sockets in step take them in this order. A wrong
                // guess (a socket replaying) costs a miss, never a wrong frame: the position is
                // checked.
                if let Some(newest) = recent.back() {
                    let _ = newest.next.set(Arc::downgrade(&e));
                }
                // The route's subscriptions each hold one reference; the table's is weak.
                let keep = Arc::strong_count(self).clamp(1, RING);
                while recent.len() >= keep {
                    recent.pop_front();
                }
                recent.push_back(e.clone());
                e
            })
        });
        let frame = encoded
            .frame
            .get_or_init(|| encode_event(enc, &self.route, position, event).map(message))
            .clone();
        cursor.0 = Some(encoded);
        frame
    }
}

/// Reads a hub payload as its route says and encodes it as an `event`.
fn encode_event(enc: Encoding, route: &Route, position: Position, event: &Event) -> Option<Frame> {
    let name = route.name.as_str();
    let encoded = match route.payload {
        Payload::Conversion => serde_json::from_slice::<demo_api::ConversionEvent>(&event.payload)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                enc.encode_event(name, position, &shapes::conversion(&c.conversion))
                    .map_err(|e| e.to_string())
            }),
        Payload::Rate => serde_json::from_slice::<demo_api::Rate>(&event.payload)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                enc.encode_event(name, position, &shapes::rate(&r))
                    .map_err(|e| e.to_string())
            }),
        Payload::Json => serde_json::from_slice::<serde_json::Value>(&event.payload)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                // The protocol's data model bounds nesting (the message's map is level 1): a
                // deeper payload would be refused by every client, so it is skipped here.
                if depth(&v) >= mobile_proto::MAX_DEPTH {
                    return Err(format!(
                        "nested deeper than the protocol's {} levels",
                        mobile_proto::MAX_DEPTH
                    ));
                }
                enc.encode_event(name, position, &v)
                    .map_err(|e| e.to_string())
            }),
    };
    match encoded {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(topic = %event.topic, offset = event.offset, error = %e, "unreadable event payload skipped");
            None
        }
    }
}

/// The nesting of arrays and maps in `v` (a scalar is 0). Recursion is bounded by
/// serde_json's parser, which refuses input nested deeper than 128.
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use mobile_proto::{FrameKind, ServerMsg, data};
    use switchyard_core::event::Topic;

    use super::*;

    fn eur_usd() -> Topic {
        operations::sources::rates_topic(&"EUR/USD".parse().unwrap())
    }

    fn rates_route() -> Route {
        Route {
            name: "rates:EUR/USD".to_owned(),
            hub: eur_usd(),
            payload: Payload::Rate,
        }
    }

    fn rate_event(offset: u64) -> Event {
        Event {
            topic: eur_usd(),
            epoch: 7,
            offset,
            payload: bytes::Bytes::from_static(br#"{"pair":"EUR/USD","rate":"1.0842","seq":3}"#),
            trace: None,
        }
    }

    fn ptr(m: &Message) -> *const u8 {
        match m {
            Message::Binary(b) => b.as_ptr(),
            Message::Text(t) => t.as_str().as_ptr(),
            _ => std::ptr::null(),
        }
    }

    /// The offset of the event a frame carries.
    fn offset_of(m: &Message) -> u64 {
        let Message::Binary(bytes) = m else {
            panic!("CBOR travels in binary frames")
        };
        let ServerMsg::Event(ev) = Encoding::Cbor
            .decode_server(FrameKind::Binary, bytes, 1 << 20)
            .unwrap()
        else {
            panic!("an event")
        };
        ev.offset
    }

    #[test]
    fn sockets_in_step_follow_the_ring_and_sockets_out_of_step_still_get_their_own_event() {
        let frames = Frames::default();
        let subs: Vec<_> = (0..4).map(|_| frames.of(&rates_route())).collect();
        let (mut a, mut b) = (Cursor::default(), Cursor::default());
        for o in 1..=6 {
            let first = subs[0]
                .frame_at(Encoding::Cbor, &rate_event(o), &mut a)
                .unwrap();
            // The second socket finds the same bytes from its cursor (after its first frame,
            // through the link from its last one).
            let second = subs[1]
                .frame_at(Encoding::Cbor, &rate_event(o), &mut b)
                .unwrap();
            assert_eq!(ptr(&first), ptr(&second), "offset {o}");
            assert_eq!(offset_of(&second), o);
        }
        // A socket replaying out of order (6, then 3, then 5, then 4): every frame is its own
        // event's, whatever the links say.
        let mut c = Cursor::default();
        for o in [6, 3, 5, 4, 5] {
            let frame = subs[2]
                .frame_at(Encoding::Cbor, &rate_event(o), &mut c)
                .unwrap();
            assert_eq!(offset_of(&frame), o);
        }
        // A new event after the replay: the in-step cursors still get it right.
        for cursor in [&mut a, &mut b] {
            let frame = subs[0]
                .frame_at(Encoding::Cbor, &rate_event(7), cursor)
                .unwrap();
            assert_eq!(offset_of(&frame), 7);
        }
    }

    #[test]
    fn an_event_is_encoded_once_per_encoding_and_shared() {
        let frames = Frames::default();
        // Two subscriptions of one route, as two sockets would hold them.
        let (one, two) = (frames.of(&rates_route()), frames.of(&rates_route()));
        assert!(Arc::ptr_eq(&one, &two));
        for enc in Encoding::ALL {
            let a = one.frame(enc, &rate_event(1)).unwrap();
            let b = two.frame(enc, &rate_event(1)).unwrap();
            // The same bytes, not an equal copy.
            assert_eq!(ptr(&a), ptr(&b));
            let c = one.frame(enc, &rate_event(2)).unwrap();
            assert_ne!(ptr(&a), ptr(&c));
        }
        let cbor = two.frame(Encoding::Cbor, &rate_event(2)).unwrap();
        let Message::Binary(bytes) = cbor else {
            panic!("CBOR travels in binary frames")
        };
        let ServerMsg::Event(ev) = Encoding::Cbor
            .decode_server(FrameKind::Binary, &bytes, 1 << 20)
            .unwrap()
        else {
            panic!("an event")
        };
        assert_eq!(
            (ev.topic.as_str(), ev.epoch, ev.offset),
            ("rates:EUR/USD", 7, 2)
        );
        assert_eq!(ev.data_as::<data::Rate>().unwrap().rate, "1.0842");
    }

    #[test]
    fn sockets_out_of_step_share_the_encodings_of_recent_events() {
        let frames = Frames::default();
        // Ten subscriptions of one route.
        let subs: Vec<_> = (0..10).map(|_| frames.of(&rates_route())).collect();
        let first: Vec<usize> = (1..=10)
            .map(|o| ptr(&subs[0].frame(Encoding::Cbor, &rate_event(o)).unwrap()) as usize)
            .collect();
        // A socket nine events behind the first still finds each event's bytes.
        for (o, p) in (1..=10).zip(&first) {
            let again = ptr(&subs[9].frame(Encoding::Cbor, &rate_event(o)).unwrap()) as usize;
            assert_eq!(again, *p, "offset {o}");
        }
        // An eleventh event pushes the oldest out: the ring holds one per subscription.
        let held = subs[0].frame(Encoding::Cbor, &rate_event(1)).unwrap();
        subs[0].frame(Encoding::Cbor, &rate_event(11)).unwrap();
        let oldest = subs[5].frame(Encoding::Cbor, &rate_event(1)).unwrap();
        assert_ne!(ptr(&oldest), ptr(&held));
    }

    #[test]
    fn a_route_of_one_socket_keeps_one_frame() {
        let one = Frames::default().of(&rates_route());
        // Held, as a socket's queue would hold it, so its bytes cannot be reused.
        let a = one.frame(Encoding::Json, &rate_event(1)).unwrap();
        one.frame(Encoding::Json, &rate_event(2)).unwrap();
        assert_eq!(one.recent[slot(Encoding::Json)].read().unwrap().len(), 1);
        // Asked again, the older event is encoded afresh (other bytes, the same content).
        let again = one.frame(Encoding::Json, &rate_event(1)).unwrap();
        assert_ne!(ptr(&again), ptr(&a));
        assert_eq!(again, a);
    }

    #[test]
    fn sockets_on_many_threads_share_one_encoding_of_an_event() {
        let frames = Frames::default().of(&rates_route());
        let seen: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| ptr(&frames.frame(Encoding::Json, &rate_event(5)).unwrap()) as usize)
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    }

    #[test]
    fn an_unreadable_payload_is_skipped_not_a_panic() {
        let frames = Frames::default().of(&rates_route());
        let mut e = rate_event(1);
        e.payload = bytes::Bytes::from_static(b"\xff not json");
        assert!(frames.frame(Encoding::Json, &e).is_none());
        assert!(frames.frame(Encoding::Json, &e).is_none());
        // The next event of the topic is read again.
        assert!(frames.frame(Encoding::Json, &rate_event(2)).is_some());
    }

    fn channel(name: &str) -> Route {
        Route {
            name: name.to_owned(),
            hub: Topic::new(&format!("ch:{name}")).unwrap(),
            payload: Payload::Json,
        }
    }

    fn published(name: &str, offset: u64, json: &serde_json::Value) -> Event {
        Event {
            topic: Topic::new(&format!("ch:{name}")).unwrap(),
            epoch: 7,
            offset,
            payload: bytes::Bytes::from(json.to_string()),
            trace: None,
        }
    }

    fn decoded(enc: Encoding, m: Message) -> mobile_proto::Event {
        let (kind, bytes) = match m {
            Message::Binary(b) => (FrameKind::Binary, b.to_vec()),
            Message::Text(t) => (FrameKind::Text, t.as_str().as_bytes().to_vec()),
            other => panic!("{other:?}"),
        };
        match enc.decode_server(kind, &bytes, 1 << 20).unwrap() {
            ServerMsg::Event(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_channel_event_carries_the_published_json_and_never_another_channels() {
        let frames = Frames::default();
        let (alice, bob) = (
            frames.of(&channel("orders.alice")),
            frames.of(&channel("orders.bob")),
        );
        assert!(!Arc::ptr_eq(&alice, &bob));
        let a = serde_json::json!({"for": "alice", "n": [1, -2, 2.5, null, true, {}]});
        let b = serde_json::json!({"for": "bob"});
        for enc in Encoding::ALL {
            // The same position on both channels: each gets its own bytes.
            let ev = decoded(
                enc,
                alice.frame(enc, &published("orders.alice", 1, &a)).unwrap(),
            );
            assert_eq!((ev.topic.as_str(), &ev.data), ("orders.alice", &a));
            let ev = decoded(
                enc,
                bob.frame(enc, &published("orders.bob", 1, &b)).unwrap(),
            );
            assert_eq!((ev.topic.as_str(), &ev.data), ("orders.bob", &b));
        }
    }

    #[test]
    fn a_channel_payload_nested_beyond_the_protocol_is_skipped() {
        let frames = Frames::default().of(&channel("deep"));
        let nested =
            |levels: usize| (0..levels).fold(serde_json::json!(1), |v, _| serde_json::json!([v]));
        let deepest = nested(mobile_proto::MAX_DEPTH - 1);
        for enc in Encoding::ALL {
            let ev = decoded(
                enc,
                frames.frame(enc, &published("deep", 1, &deepest)).unwrap(),
            );
            assert_eq!(ev.data, deepest);
            assert!(
                frames
                    .frame(enc, &published("deep", 2, &nested(mobile_proto::MAX_DEPTH)))
                    .is_none()
            );
            let mut e = published("deep", 3, &deepest);
            e.payload = bytes::Bytes::from_static(b"{\"unterminated\": ");
            assert!(frames.frame(enc, &e).is_none());
        }
    }

    #[test]
    fn the_route_table_is_bounded_by_the_routes_with_subscribers() {
        let frames = Frames::default();
        let route = |i: usize| Route {
            name: format!("t{i}"),
            hub: Topic::new(&format!("t.{i}")).unwrap(),
            payload: Payload::Rate,
        };
        let held: Vec<_> = (0..10).map(|i| frames.of(&route(i))).collect();
        // Thousands of routes subscribed and dropped, ten held throughout.
        for i in 10..5_000 {
            drop(frames.of(&route(i)));
            assert!(
                frames.entries() <= FIRST_PRUNE_AT.max(2 * held.len()),
                "{i}"
            );
        }
        // A held route keeps its frames; a dropped one starts afresh.
        assert!(Arc::ptr_eq(&held[3], &frames.of(&route(3))));
    }
}
