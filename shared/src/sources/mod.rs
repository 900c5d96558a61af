//! Upstream sources declared in configuration (`[sources.NAME]`): backends that already push
//! events — over their own JSON WebSocket protocol, Socket.IO, Server-Sent Events or Redis
//! pub/sub — feed catalog channels, so that clients reach them through the gateways' one
//! connection and never see the services.
//!
//! A source is interest-driven, like every feeder of the hub: [`Source`] implements
//! [`Feeder`] for the channels its `channels` template matches; the hub takes one guard per
//! channel with local subscribers (the runtime puts it behind the cluster-wide lease, so one
//! instance feeds a channel for the whole cluster). The source keeps the *desired* set of
//! channels with a reference count each, and its one task keeps the upstream in step: it
//! connects when the first channel is wanted, asks for each wanted channel (a json-ws
//! `subscribe` text, a Socket.IO `join` emit; nothing for SSE and Redis, which send everything),
//! releases each channel no longer wanted, and closes the connection when nothing is wanted. Each
//! upstream message goes through the source's rules ([`rules`]): an event for a wanted channel is
//! checked against the catalog (the entry exists, the payload fits its `max_payload_bytes`) and
//! published on the bus, which assigns its offset; anything else is counted ([`SourceStats`]) and
//! logged (at most one warning per source every 10 s), and never stops the source. A lost
//! connection is reopened with exponential backoff and full jitter, and every wanted channel is
//! asked for again.
//!
//! The engine is here; each kind is a protocol module beside it: [`json_ws`] and
//! [`socketio`] over the WebSocket transport ([`ws`]), [`sse`], [`redis_pubsub`]. A new kind never
//! touches the gateways.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

mod config;
pub mod rules;
pub mod template;

mod json_ws;
mod redis_pubsub;
mod socketio;
mod sse;
mod ws;

pub use config::{Checked, EmitConfig, SourceConfig, SourceKind};
pub use template::Vars;

use crate::backoff::Backoff;
use crate::bus::Bus;
use crate::channels::{Catalog, ChannelName};
use crate::event::Topic;
use crate::hub::Feeder;
use rules::Outcome;

/// How often, at most, a source logs a warning for each kind of bad message.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Characters of an upstream message shown in a log line.
pub(crate) const LOGGED_CHARS: usize = 200;

/// A source's counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceStats {
    /// Whether the upstream connection is open right now.
    pub connected: bool,
    /// Channels wanted now (each asked for upstream, or about to be).
    pub wanted_channels: usize,
    /// Upstream connections opened since start.
    pub connects_total: u64,
    /// Events published on the bus.
    pub events_total: u64,
    /// Messages that could not be read (not JSON, not the protocol's framing).
    pub unparsable_total: u64,
    /// Messages no rule matched (an unknown event).
    pub unmatched_total: u64,
    /// Messages a rule matched but that could not be made an event (a bad value, a missing
    /// field, a channel not in the catalog, a payload over the channel's limit).
    pub refused_total: u64,
    /// Events for channels not wanted here (in flight when released, or fed by another
    /// instance): dropped.
    pub unwanted_total: u64,
    /// Messages over `max_message_bytes`, and binary messages or attachments: dropped.
    pub oversized_total: u64,
    /// Binary messages or attachments (Socket.IO): refused.
    pub binary_total: u64,
    /// Requests the upstream refused or did not acknowledge (a Socket.IO join's ack).
    pub upstream_errors_total: u64,
    /// Channels not fed because `max_channels` were wanted already.
    pub over_capacity_total: u64,
}

/// A handle to one source; clones share it. Its task stops, closing the upstream connection,
/// when [`Source::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Source {
    handle: Arc<Handle>,
}

struct Handle {
    state: Arc<SourceState>,
    _stop: DropGuard,
}

/// What the handles, the guards and the source's task share. The kinds' modules use it through
/// its `pub(crate)` methods.
pub(crate) struct SourceState {
    pub(crate) name: String,
    pub(crate) checked: Checked,
    catalog: Arc<Catalog>,
    bus: Arc<dyn Bus>,
    /// Wanted channels: how many guards want each (never zero) and the values its name gives
    /// the `channels` template's placeholders.
    desired: Mutex<BTreeMap<ChannelName, (usize, Vars)>>,
    /// Wakes the task when `desired` changes (one stored permit at most).
    pub(crate) changed: Notify,
    pub(crate) stop: CancellationToken,
    connected: AtomicBool,
    counters: Counters,
    warned: Mutex<BTreeMap<&'static str, Instant>>,
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    events: AtomicU64,
    unparsable: AtomicU64,
    unmatched: AtomicU64,
    refused: AtomicU64,
    unwanted: AtomicU64,
    oversized: AtomicU64,
    binary: AtomicU64,
    upstream_errors: AtomicU64,
    over_capacity: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only update maps of counters; poisoning cannot leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Source {
    /// Starts source `name` of `config`, publishing on `bus` the events its rules make, for the
    /// channels of `catalog`. Spawns its one task on the current tokio runtime; nothing is
    /// connected until a channel is wanted. The error names the key (`sources.NAME.…`).
    pub fn start(
        name: &str,
        config: &SourceConfig,
        catalog: Arc<Catalog>,
        bus: Arc<dyn Bus>,
    ) -> Result<Self, String> {
        let checked = config.check().map_err(|e| format!("sources.{name}.{e}"))?;
        let stop = CancellationToken::new();
        let state = Arc::new(SourceState {
            name: name.to_owned(),
            checked,
            catalog,
            bus,
            desired: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            stop: stop.clone(),
            connected: AtomicBool::new(false),
            counters: Counters::default(),
            warned: Mutex::new(BTreeMap::new()),
        });
        match config.kind {
            SourceKind::JsonWs => {
                let protocol = json_ws::JsonWs::new(&state.checked);
                ws::spawn(state.clone(), protocol)?;
            }
            SourceKind::Socketio => {
                let protocol = socketio::SocketIo::new(&state.checked)
                    .map_err(|e| format!("sources.{name}.{e}"))?;
                ws::spawn(state.clone(), protocol)?;
            }
            SourceKind::Sse => sse::spawn(state.clone())?,
            SourceKind::RedisPubsub => redis_pubsub::spawn(state.clone())?,
        }
        Ok(Self {
            handle: Arc::new(Handle {
                state,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.handle.state.name
    }

    /// The bus topics' common prefix of the channels this source feeds (`ch:prices.`): where
    /// the hub routes interest to it.
    pub fn topic_prefix(&self) -> String {
        format!(
            "{}{}",
            crate::channels::TOPIC_PREFIX,
            self.handle.state.checked.channels.prefix()
        )
    }

    /// The source's lease time to live.
    pub fn lease_ttl(&self) -> Duration {
        self.handle.state.checked.config.lease_ttl()
    }

    /// Wants `channel` until the guard is dropped; `None` when this source does not feed it.
    ///
    /// At most `max_channels` channels are wanted at once: a channel beyond them is not fed
    /// (`None`, counted in `over_capacity_total` and logged), so that clients subscribing to many
    /// distinct names cannot make the source ask its upstream for any number of them.
    pub fn want(&self, channel: &ChannelName) -> Option<Wanted> {
        let state = &self.handle.state;
        let vars = state.checked.channels.capture(channel.as_str())?;
        let first = {
            let mut desired = lock(&state.desired);
            let max = state.checked.config.max_channels;
            if !desired.contains_key(channel) && desired.len() >= max {
                drop(desired);
                state.counters.over_capacity.fetch_add(1, Ordering::SeqCst);
                state.warn(
                    "over_capacity",
                    &format!("channel `{channel}` not fed: {max} channels (max_channels) are"),
                    "",
                );
                return None;
            }
            let entry = desired.entry(channel.clone()).or_insert((0, vars));
            entry.0 += 1;
            entry.0 == 1
        };
        if first {
            state.changed.notify_one();
        }
        Some(Wanted {
            state: state.clone(),
            channel: channel.clone(),
        })
    }

    /// The counters now.
    pub fn stats(&self) -> SourceStats {
        let s = &self.handle.state;
        let c = &s.counters;
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        SourceStats {
            connected: s.connected.load(Ordering::SeqCst),
            wanted_channels: lock(&s.desired).len(),
            connects_total: n(&c.connects),
            events_total: n(&c.events),
            unparsable_total: n(&c.unparsable),
            unmatched_total: n(&c.unmatched),
            refused_total: n(&c.refused),
            unwanted_total: n(&c.unwanted),
            oversized_total: n(&c.oversized),
            binary_total: n(&c.binary),
            upstream_errors_total: n(&c.upstream_errors),
            over_capacity_total: n(&c.over_capacity),
        }
    }

    /// Stops the source: its task closes the upstream connection and ends.
    pub fn shutdown(&self) {
        self.handle.state.stop.cancel();
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Feeder for Source {
    /// A [`Wanted`] guard for the channel of `topic`, when this source feeds it.
    fn feed(&self, topic: &Topic) -> Option<Box<dyn Any + Send>> {
        let channel = ChannelName::from_topic(topic)?;
        Some(Box::new(self.want(&channel)?))
    }
}

/// One caller's interest in a channel of a source; dropping it releases that interest.
pub struct Wanted {
    state: Arc<SourceState>,
    channel: ChannelName,
}

impl fmt::Debug for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wanted")
            .field("source", &self.state.name)
            .field("channel", &self.channel)
            .finish()
    }
}

impl Drop for Wanted {
    fn drop(&mut self) {
        let last = {
            let mut desired = lock(&self.state.desired);
            match desired.get_mut(&self.channel) {
                Some((refs, _)) if *refs > 1 => {
                    *refs -= 1;
                    false
                }
                Some(_) => {
                    desired.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last {
            self.state.changed.notify_one();
        }
    }
}

/// How a connection of a source ended.
pub(crate) enum End {
    /// The source was stopped.
    Stopped,
    /// Nothing is wanted any more; the connection was closed on purpose.
    Idle,
    /// The connection failed; `healthy` when the upstream had sent something sensible first.
    Lost {
        /// Whether the connection had worked (resets the backoff).
        healthy: bool,
    },
}

impl SourceState {
    /// The wanted channels now, with their placeholders' values.
    pub(crate) fn wanted(&self) -> BTreeMap<ChannelName, Vars> {
        lock(&self.desired)
            .iter()
            .map(|(c, (_, vars))| (c.clone(), vars.clone()))
            .collect()
    }

    /// Whether nothing is wanted.
    pub(crate) fn is_idle(&self) -> bool {
        lock(&self.desired).is_empty()
    }

    /// Whether `channel` is wanted.
    pub(crate) fn is_wanted(&self, channel: &ChannelName) -> bool {
        lock(&self.desired).contains_key(channel)
    }

    /// Waits until some channel is wanted (true) or the source is stopped (false).
    pub(crate) async fn wait_for_interest(&self) -> bool {
        loop {
            if self.stop.is_cancelled() {
                return false;
            }
            if !self.is_idle() {
                return true;
            }
            // A change made between the check and this wait left a permit: no wake-up is lost.
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = self.changed.notified() => {}
            }
        }
    }

    /// Runs the source's connections until it stops: waits for interest, calls `connect_and_serve`
    /// (which returns how the connection ended, or why it could not open), and backs off between
    /// attempts.
    pub(crate) async fn run<F, Fut>(self: Arc<Self>, mut connect_and_serve: F)
    where
        F: FnMut(Arc<SourceState>) -> Fut,
        Fut: std::future::Future<Output = Result<End, String>>,
    {
        let name = self.name.clone();
        let config = &self.checked.config;
        let backoff = Backoff::from_millis(config.reconnect_initial_ms, config.reconnect_max_ms);
        let mut failures: u32 = 0;
        loop {
            if !self.wait_for_interest().await {
                break;
            }
            let ended = tokio::select! {
                () = self.stop.cancelled() => break,
                ended = connect_and_serve(self.clone()) => ended,
            };
            self.connected.store(false, Ordering::SeqCst);
            match ended {
                Ok(End::Stopped) => break,
                Ok(End::Idle) => {
                    tracing::debug!(source = %name, "nothing wanted; upstream closed");
                    failures = 0;
                    continue;
                }
                Ok(End::Lost { healthy }) => {
                    if healthy {
                        failures = 0;
                    }
                }
                Err(error) => {
                    tracing::warn!(source = %name, url = %config.url, %error, failures, "upstream connect failed");
                }
            }
            let wait = backoff.delay(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        // Stopping can drop an open connection mid-serve (the `select!` above), past the
        // store after it: the stats must not show a connection that is gone.
        self.connected.store(false, Ordering::SeqCst);
        tracing::debug!(source = %name, "source stopped");
    }

    /// Records that a connection is open.
    pub(crate) fn opened(&self) {
        self.counters.connects.fetch_add(1, Ordering::SeqCst);
        self.connected.store(true, Ordering::SeqCst);
        tracing::info!(source = %self.name, url = %self.checked.config.url, "upstream connected");
    }

    /// Handles what the rules made of a message: publishes an event for a wanted channel,
    /// counts and logs anything else. Returns whether the message was understood (an event or
    /// an ignored message), which makes a connection healthy.
    pub(crate) async fn deliver(&self, outcome: Outcome, raw: &str) -> bool {
        match outcome {
            Outcome::Event { channel, payload } => {
                self.publish(channel, payload).await;
                true
            }
            Outcome::Ignore => true,
            Outcome::Unmatched => {
                self.counters.unmatched.fetch_add(1, Ordering::SeqCst);
                self.warn("unmatched", "no rule matches an upstream message", raw);
                false
            }
            Outcome::Refused(why) => {
                self.counters.refused.fetch_add(1, Ordering::SeqCst);
                self.warn("refused", &format!("upstream message refused: {why}"), raw);
                false
            }
        }
    }

    async fn publish(&self, channel: ChannelName, payload: Bytes) {
        if !self.is_wanted(&channel) {
            self.counters.unwanted.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(source = %self.name, %channel, "event for a channel not wanted here dropped");
            return;
        }
        let resolved = match self.catalog.resolve_name(channel.clone()) {
            Ok(r) => r,
            Err(e) => {
                self.counters.refused.fetch_add(1, Ordering::SeqCst);
                self.warn("catalog", &format!("channel `{channel}`: {e}"), "");
                return;
            }
        };
        if let Err(e) = resolved.check_payload(payload.len()) {
            self.counters.refused.fetch_add(1, Ordering::SeqCst);
            self.warn("too_large", &format!("channel `{channel}`: {e}"), "");
            return;
        }
        match self.bus.publish(&resolved.topic(), payload).await {
            Ok(_) => {
                self.counters.events.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                tracing::warn!(source = %self.name, %channel, %error, "publishing an upstream event failed");
            }
        }
    }

    /// Counts and logs a message that could not be read.
    pub(crate) fn unparsable(&self, why: &str, raw: &str) {
        self.counters.unparsable.fetch_add(1, Ordering::SeqCst);
        self.warn(
            "unparsable",
            &format!("unreadable upstream message: {why}"),
            raw,
        );
    }

    /// Counts and logs a message over `max_message_bytes`.
    pub(crate) fn oversized(&self, bytes: usize) {
        self.counters.oversized.fetch_add(1, Ordering::SeqCst);
        self.warn(
            "oversized",
            &format!(
                "upstream message of {bytes} bytes is over max_message_bytes ({})",
                self.checked.config.max_message_bytes
            ),
            "",
        );
    }

    /// Counts and logs a binary message or attachment.
    pub(crate) fn binary(&self, what: &str) {
        self.counters.binary.fetch_add(1, Ordering::SeqCst);
        self.warn(
            "binary",
            &format!("binary upstream data refused: {what}"),
            "",
        );
    }

    /// Counts and logs a request the upstream refused or did not acknowledge.
    pub(crate) fn upstream_error(&self, why: &str) {
        self.counters.upstream_errors.fetch_add(1, Ordering::SeqCst);
        self.warn("upstream_error", why, "");
    }

    /// A warning, at most one per `what` every [`WARN_EVERY`] (each is logged at debug level).
    fn warn(&self, what: &'static str, message: &str, raw: &str) {
        let shown: String = raw.chars().take(LOGGED_CHARS).collect();
        tracing::debug!(source = %self.name, kind = what, message, raw = %shown, "upstream message");
        let now = Instant::now();
        let due = {
            let mut warned = lock(&self.warned);
            match warned.get(what) {
                Some(at) if now.duration_since(*at) < WARN_EVERY => false,
                _ => {
                    warned.insert(what, now);
                    true
                }
            }
        };
        if due {
            tracing::warn!(source = %self.name, kind = what, raw = %shown, "{message} (logged at most every 10 s; see the source's counters)");
        }
    }
}

#[cfg(test)]
mod tests;
