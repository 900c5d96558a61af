//! Upstream WebSocket bridges: one connection to a backend's own WebSocket API, carrying one
//! upstream watch per topic that has local interest, however many local subscribers it has.
//!
//! A bridge is an interest-driven publisher. Callers (the hub, through [`Feeder`]) take a
//! [`WatchGuard`] per topic; the bridge keeps the set of wanted topics with a reference count each,
//! and one task per bridge reconciles that *desired* set with what it has asked the upstream for
//! on its current connection: it sends a watch frame for every wanted topic not yet watched and an
//! unwatch frame for every watched topic no longer wanted. Each upstream message for a watched
//! topic is published on the bus, which assigns its offset; the hub's pump fans it out like any
//! other event. Because the task works from the desired *state* rather than a queue of commands,
//! the hand-over from guards to the task is bounded however fast guards come and go, and
//! resubscribing after a reconnect is the same reconciliation from an empty connection.
//!
//! The connection is lazy: it is opened when the first topic is wanted, and closed when nothing is
//! wanted any more. A failed connect or a lost connection is retried with exponential backoff and
//! full jitter (`reconnect_initial_ms` doubling up to `reconnect_max_ms`); an opening connection
//! has a deadline (`connect_timeout_ms`); inbound messages are capped at [`MAX_MESSAGE_BYTES`], and
//! a silent connection is probed with pings and dropped when nothing answers.
//!
//! What this module deliberately does not do: it does not know any upstream's protocol (an
//! [`UpstreamProtocol`] supplied from outside encodes watches and decodes messages), it does not
//! interpret payloads, and it cannot recover upstream messages sent while the connection was down
//! (upstream WebSocket APIs have no resume): that suits state topics, which only need the next
//! value. It speaks `ws://`, and `wss://` with rustls and the bridge's
//! [`TlsConfig`](crate::tls::TlsConfig) (extra CA roots, client certificate); a TLS setting that
//! cannot be used (a missing file, `tls` on a `ws://` URL) is logged when the bridge starts and
//! fails every connect attempt with that reason.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

mod config;
mod connection;

pub use config::BridgeConfig;
#[cfg(test)]
use connection::{Plan, plan};
use connection::{Timings, run, tls_connector};

use crate::bus::Bus;
use crate::event::Topic;
use crate::hub::Feeder;

/// Largest message (and frame) accepted from an upstream; a larger one drops the connection, which
/// is then reopened like any lost connection.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// An upstream's own WebSocket protocol: how to ask it for a topic and how to read its messages.
///
/// Implemented outside the core, next to the knowledge of the upstream's API. Frames are text;
/// binary messages from the upstream are logged and ignored.
pub trait UpstreamProtocol: Send + Sync + 'static {
    /// The text frame that starts the upstream sending `topic`, or `None` when this upstream does
    /// not serve that topic.
    fn watch(&self, topic: &Topic) -> Option<String>;

    /// The text frame that stops the upstream sending `topic`, or `None` when there is nothing to
    /// send.
    fn unwatch(&self, topic: &Topic) -> Option<String>;

    /// Reads one text message from the upstream. Must not panic, whatever the input.
    fn decode(&self, frame: &str) -> Decoded;
}

/// What one upstream message means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// An event to publish on `topic`.
    Event {
        /// Where to publish it.
        topic: Topic,
        /// The payload, as gateways will decode it.
        payload: Bytes,
    },
    /// A message with nothing to publish (an acknowledgement, a heartbeat).
    Ignore,
    /// The upstream reported an error, or the message could not be read. Logged; the connection
    /// stays up.
    Error(String),
}

/// A bridge's counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeStats {
    /// Whether the upstream connection is open right now.
    pub connected: bool,
    /// Topics with at least one watch: the bridge holds (or is restoring) one upstream watch for
    /// each.
    pub watched_topics: usize,
    /// Upstream connections opened since start.
    pub connects_total: u64,
    /// Upstream messages published on the bus since start.
    pub events_total: u64,
}

/// A handle to one upstream WebSocket bridge; clones share the bridge.
///
/// The bridge's task stops, closing the upstream connection, when [`UpstreamBridge::shutdown`] is
/// called or the last handle is dropped. Outstanding [`WatchGuard`]s do not keep it running.
#[derive(Clone)]
pub struct UpstreamBridge {
    handle: Arc<Handle>,
}

/// Owned by the handles only: dropping the last one stops the task.
struct Handle {
    shared: Arc<BridgeState>,
    _stop: DropGuard,
}

/// What the handles, the guards and the task share.
struct BridgeState {
    name: String,
    protocol: Arc<dyn UpstreamProtocol>,
    /// Wanted topics and how many guards want each (never zero: a topic at zero is removed).
    desired: Mutex<HashMap<Topic, usize>>,
    /// Wakes the task when `desired` changes (one stored permit at most, so it is bounded too).
    changed: Notify,
    stop: CancellationToken,
    connected: AtomicBool,
    connects_total: AtomicU64,
    events_total: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only update a counter map; poisoning cannot leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UpstreamBridge {
    /// Starts the bridge named `name` (used in logs) to `config.url`, publishing on `bus` what
    /// `protocol` decodes. Spawns its one task on the current tokio runtime; nothing is connected
    /// until a topic is watched.
    pub fn start(
        name: &str,
        config: &BridgeConfig,
        protocol: Arc<dyn UpstreamProtocol>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        let stop = CancellationToken::new();
        let shared = Arc::new(BridgeState {
            name: name.to_owned(),
            protocol,
            desired: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            stop: stop.clone(),
            connected: AtomicBool::new(false),
            connects_total: AtomicU64::new(0),
            events_total: AtomicU64::new(0),
        });
        let timings = Timings::from(config);
        let tls = tls_connector(config);
        if let Err(error) = &tls {
            tracing::error!(bridge = %name, url = %config.url, %error, "unusable TLS settings");
        }
        tokio::spawn(run(shared.clone(), config.url.clone(), tls, timings, bus));
        Self {
            handle: Arc::new(Handle {
                shared,
                _stop: stop.drop_guard(),
            }),
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// Wants `topic` until the returned guard is dropped. The first guard of a topic makes the
    /// bridge watch it upstream (connecting if needed); dropping the last one unwatches it, and
    /// closes the connection when no topic is wanted any more.
    pub fn watch(&self, topic: &Topic) -> WatchGuard {
        let shared = &self.handle.shared;
        let first = {
            let mut desired = lock(&shared.desired);
            let refs = desired.entry(topic.clone()).or_insert(0);
            *refs += 1;
            *refs == 1
        };
        if first {
            shared.changed.notify_one();
        }
        WatchGuard {
            shared: shared.clone(),
            topic: topic.clone(),
        }
    }

    /// The bridge's counters now.
    pub fn stats(&self) -> BridgeStats {
        let shared = &self.handle.shared;
        BridgeStats {
            connected: shared.connected.load(Ordering::SeqCst),
            watched_topics: lock(&shared.desired).len(),
            connects_total: shared.connects_total.load(Ordering::SeqCst),
            events_total: shared.events_total.load(Ordering::SeqCst),
        }
    }

    /// Stops the bridge: its task closes the upstream connection and ends. Watches taken later
    /// are counted but never sent upstream.
    pub fn shutdown(&self) {
        self.handle.shared.stop.cancel();
    }
}

impl fmt::Debug for UpstreamBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBridge")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Feeder for UpstreamBridge {
    /// A [`WatchGuard`] for `topic`, when the bridge's protocol serves it.
    fn feed(&self, topic: &Topic) -> Option<Box<dyn Any + Send>> {
        self.handle.shared.protocol.watch(topic)?;
        Some(Box::new(self.watch(topic)))
    }
}

/// One caller's interest in a topic of a bridge; dropping it releases that interest.
pub struct WatchGuard {
    shared: Arc<BridgeState>,
    topic: Topic,
}

impl WatchGuard {
    /// The watched topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }
}

impl fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchGuard")
            .field("bridge", &self.shared.name)
            .field("topic", &self.topic)
            .finish()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let last = {
            let mut desired = lock(&self.shared.desired);
            match desired.get_mut(&self.topic) {
                Some(refs) if *refs > 1 => {
                    *refs -= 1;
                    false
                }
                Some(_) => {
                    desired.remove(&self.topic);
                    true
                }
                None => false,
            }
        };
        if last {
            self.shared.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
