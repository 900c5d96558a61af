//! A socket's subscriptions: the table of what it is subscribed to (at most
//! `max_subscriptions`, so a lookup by name is a short scan), starting one through the hub at a
//! position with a bounded wait, and the items of them all merged into one stream for the
//! socket's loop.
//!
//! It decides nothing of the protocol — which replies go out, in which order, and what is
//! refused is [`super::conn`]'s — and reads no payloads ([`super::events`] does).

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use switchyard_core::bus::{BusError, StartAt};
use switchyard_core::event::{Position, Topic, TopicClass};
use switchyard_core::hub::{Hub, Item, Subscriber};

use super::channels::Access;
use super::events::{Cursor, TopicFrames};

/// Longest wait for the bus when a subscription starts (its head, and the hub joining it).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One subscription's items: `Some(item)` each, then `None` once, when the hub ended it (so
/// the client is never left subscribed to a silent topic). Polls the hub's subscriber directly:
/// no future is built per item, and a live event is the hub's shared `Arc`, not a copy.
pub(super) struct SubStream(Option<Subscriber>);

impl Stream for SubStream {
    type Item = Option<Arc<Item>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(sub) = &mut this.0 else {
            return Poll::Ready(None);
        };
        match sub.poll_shared(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Some(item))),
            Poll::Ready(None) => {
                this.0 = None;
                Poll::Ready(Some(None))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One subscription of a socket.
pub(super) struct Sub {
    /// The frames of its route (its client topic, hub topic and payload type).
    pub(super) frames: Arc<TopicFrames>,
    /// Its place in the route's frames.
    pub(super) cursor: Cursor,
    pub(super) class: TopicClass,
    /// A catalog channel's access, judged again on re-authentication; `None` for the demo's
    /// topics (their access depends on the user alone, who never changes on a socket).
    pub(super) access: Option<Access>,
}

impl Sub {
    /// The client topic.
    pub(super) fn name(&self) -> &str {
        &self.frames.route().name
    }

    /// The hub topic it maps to.
    pub(super) fn hub_topic(&self) -> &Topic {
        &self.frames.route().hub
    }
}

/// A subscription the hub has started.
pub(super) struct Started {
    pub(super) class: TopicClass,
    /// The position announced in `subbed`.
    pub(super) position: Position,
    subscriber: Subscriber,
}

/// Starts a subscription of `topic` after `resume` (a stream topic) or from now; `None`
/// (logged) when the bus fails or does not answer within [`SUBSCRIBE_TIMEOUT`].
pub(super) async fn start(
    hub: &Hub,
    topic: &Topic,
    resume: Option<mobile_proto::Position>,
) -> Option<Started> {
    let class = hub.class_of(topic);
    let started = async {
        let head = hub.bus().head(topic).await?;
        let (position, from) = match (class, resume) {
            (TopicClass::Stream, Some(p)) => {
                let p = Position {
                    epoch: p.epoch,
                    offset: p.offset,
                };
                (p, StartAt::After(p))
            }
            // From the head read above: nothing published meanwhile is missed.
            (TopicClass::Stream, None) => (head, StartAt::After(head)),
            (TopicClass::State, _) => (head, StartAt::Live),
        };
        let subscriber = hub.subscribe(topic, from).await?;
        Ok::<_, BusError>(Started {
            class,
            position,
            subscriber,
        })
    };
    // The socket's task waits for the bus here: bounded, so a stuck broker cannot hang it.
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, started).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            log_failure(topic, &e);
            None
        }
        Err(_) => {
            log_failure(topic, &"timed out");
            None
        }
    }
}

/// Logs a failed subscription at most once every 10 s, with how many failed since the last line:
/// in a broker outage every socket's every subscription fails, and a line each (thousands a
/// second, written from the gateway's own threads) would cost more than the failures.
fn log_failure(topic: &Topic, error: &dyn std::fmt::Display) {
    static THROTTLE: switchyard_core::logthrottle::LogThrottle =
        switchyard_core::logthrottle::LogThrottle::new(10_000);
    if let Some(more) = THROTTLE.allow() {
        tracing::warn!(topic = %topic, error = %error, more, "subscription failed (logged at most every 10 s; `more` failed since the last line)");
    }
}

/// The item streams of a socket's subscriptions, merged: polled in turn, starting one further
/// each time so that a busy subscription cannot starve the others (a socket has at most
/// `max_subscriptions`, a handful, so a scan beats a map). A stream that ends is dropped.
#[derive(Default)]
pub(super) struct Merged {
    streams: Vec<(u32, SubStream)>,
    start: usize,
}

impl Merged {
    fn insert(&mut self, id: u32, stream: SubStream) {
        self.streams.push((id, stream));
    }

    fn remove(&mut self, id: &u32) {
        self.streams.retain(|(i, _)| i != id);
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

impl Stream for Merged {
    type Item = (u32, Option<Arc<Item>>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut tried = 0;
        while tried < this.streams.len() {
            let index = (this.start + tried) % this.streams.len();
            let (id, stream) = &mut this.streams[index];
            match Pin::new(stream).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let id = *id;
                    this.start = index + 1;
                    return Poll::Ready(Some((id, item)));
                }
                // Ended (after saying so with `Some(None)`): dropped; the same index now holds
                // another stream, so it is tried without counting.
                Poll::Ready(None) => {
                    this.streams.swap_remove(index);
                }
                Poll::Pending => tried += 1,
            }
        }
        if this.streams.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// The subscriptions of one socket, by id.
#[derive(Default)]
pub(super) struct Subscriptions {
    subs: Vec<(u32, Sub)>,
    /// Keyed by the subscription's id (cheap to copy on every item).
    streams: Merged,
    next_id: u32,
}

impl Subscriptions {
    pub(super) fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether client topic `name` is subscribed.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.subs.iter().any(|(_, s)| s.name() == name)
    }

    /// Ends the subscription of client topic `name`, if there is one.
    pub(super) fn remove(&mut self, name: &str) {
        if let Some(index) = self.subs.iter().position(|(_, s)| s.name() == name) {
            let (id, _) = self.subs.swap_remove(index);
            self.streams.remove(&id);
        }
    }

    /// The subscription `id`, to move its cursor.
    pub(super) fn get_mut(&mut self, id: u32) -> Option<&mut Sub> {
        self.subs.iter_mut().find(|(i, _)| *i == id).map(|(_, s)| s)
    }

    /// Forgets the subscription `id`, whose stream the hub ended.
    pub(super) fn ended(&mut self, id: u32) -> Option<Sub> {
        let index = self.subs.iter().position(|(i, _)| *i == id)?;
        Some(self.subs.swap_remove(index).1)
    }

    /// Ends every subscription whose access `keep` refuses; returns their client topics.
    pub(super) fn retain_access(&mut self, keep: impl Fn(&Access) -> bool) -> Vec<String> {
        let mut ended = Vec::new();
        let streams = &mut self.streams;
        self.subs.retain(|(id, sub)| {
            let kept = sub.access.as_ref().is_none_or(&keep);
            if !kept {
                streams.remove(id);
                ended.push(sub.name().to_owned());
            }
            kept
        });
        ended
    }

    /// Adds a started subscription, its items read through `frames`.
    pub(super) fn add(
        &mut self,
        frames: Arc<TopicFrames>,
        access: Option<Access>,
        started: Started,
    ) {
        let stream = SubStream(Some(started.subscriber));
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.streams.insert(id, stream);
        self.subs.push((
            id,
            Sub {
                frames,
                cursor: Cursor::default(),
                class: started.class,
                access,
            },
        ));
    }

    /// Whether no subscription has a stream left to poll.
    pub(super) fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    /// The merged items of every subscription, with the subscription's id.
    pub(super) fn items(&mut self) -> &mut Merged {
        &mut self.streams
    }
}
