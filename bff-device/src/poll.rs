//! The long-poll: what is new for a device after its cursor, and holding until something is.
//!
//! [`Poller::poll`] reads the device's commands from the bus's history after the cursor (up to
//! `api.max_events_per_answer`), its configuration document if it changed, and the newest rate of
//! every pair it is configured for if it changed; it answers at once when any of that is there.
//! Otherwise it holds: it opens (or shares) the wakes of the device's topics *before* reading
//! again, so an event published at any moment either is in the read or wakes the poll; it waits
//! for a wake, the end of `wait`, or the gateway's drain — and answers the same cursor, empty,
//! in the last two cases.
//!
//! History that no longer covers the commands cursor (trimmed, or another epoch) is a reset:
//! the answer carries the reset flag and, in the same answer, what history still has (the
//! retained commands from the oldest, the configuration, every rate) with a fresh cursor. The configuration and rates
//! are conflated (only the newest counts), so they never need a reset: a changed epoch just
//! delivers the newest again. This module returns a typed [`Batch`]; encoding is [`crate::wire`]'s.
//!
//! The catalog channels the device follows come in the same answer ([`crate::follow`] reads
//! them); a held poll also waits on their wakes. A reset of the commands leaves the stream
//! channels' positions alone (each has its own gap signal) and delivers state channels again,
//! like rates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use demo_api::Pair;
use serde::Deserialize;
use switchyard_core::bus::{Bus, BusError, Read};
use switchyard_core::event::Position;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cursor::Cursor;
use crate::follow::{self, ChannelItem};
use crate::registry::Device;
use crate::wake::{RateRx, RateValue, RateWatch, TopicWake, Wakes};

/// A command for a device, as a backend publishes it on `devices.{id}.commands` (JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Command {
    /// Its id, 1 to 64 of `A-Z a-z 0-9 _ -`; the device reports the result under it.
    pub(crate) id: String,
    /// What to do, such as `reboot`.
    pub(crate) op: String,
    /// Its arguments (a JSON object; `{}` when left out).
    #[serde(default = "empty_object")]
    pub(crate) args: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// The configuration document of a device and its version.
#[derive(Debug, Clone)]
pub(crate) struct ConfigDoc {
    /// Where it is on the bus (`{0, 0}` for the configured default).
    pub(crate) position: Position,
    /// The document (a JSON object).
    pub(crate) doc: serde_json::Value,
    /// The document as compact JSON (keys sorted), what the device gets and the tag hashes.
    pub(crate) bytes: Bytes,
}

impl ConfigDoc {
    /// Reads a document; `None` unless it is a JSON object.
    pub(crate) fn parse(position: Position, raw: &[u8]) -> Option<Self> {
        let doc: serde_json::Value = serde_json::from_slice(raw).ok()?;
        if !doc.is_object() {
            return None;
        }
        let bytes = serde_json::to_vec(&doc).ok()?.into();
        Some(Self {
            position,
            doc,
            bytes,
        })
    }

    /// Its entity tag: the first 16 hex digits of the SHA-256 of the compact document.
    pub(crate) fn tag(&self) -> String {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(&self.bytes);
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One answer to a poll.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The cursor the device sends next.
    pub(crate) next: String,
    /// History no longer covers the device's cursor: it must refetch its state.
    pub(crate) reset: bool,
    /// Commands after the cursor, oldest first.
    pub(crate) commands: Vec<Command>,
    /// The configuration document, when it changed.
    pub(crate) config: Option<ConfigDoc>,
    /// The newest rate of each configured pair that changed.
    pub(crate) rates: Vec<Arc<RateValue>>,
    /// What is new on the catalog channels the device follows (events and gaps).
    pub(crate) channels: Vec<ChannelItem>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.commands.is_empty()
            && self.config.is_none()
            && self.rates.is_empty()
            && self.channels.is_empty()
    }
}

/// Limits of polls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollLimits {
    /// Commands in one answer at most.
    pub(crate) max_events: usize,
}

/// Answers polls.
pub(crate) struct Poller {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) wakes: Wakes,
    pub(crate) rates: RateWatch,
    pub(crate) limits: PollLimits,
    pub(crate) shutdown: CancellationToken,
    /// Polls waiting for a wake right now (their wakes are open and their last read was empty).
    pub(crate) holding: Arc<AtomicUsize>,
}

/// The wakes a held poll opened, handed to [`Wakes::linger`] when it ends.
struct Opened<'a> {
    wakes: &'a Wakes,
    held: Vec<Arc<TopicWake>>,
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        self.wakes.linger(self.held.drain(..));
    }
}

/// Counts a poll as holding while it lives.
struct Holding(Arc<AtomicUsize>);

impl Holding {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Poller {
    /// Answers a poll of `device` after `cursor` (`raw` is its wire form), holding up to `wait`.
    pub(crate) async fn poll(
        &self,
        device: &Arc<Device>,
        cursor: Option<(Cursor, &str)>,
        wait: Duration,
    ) -> Result<Batch, BusError> {
        let mut rates = Vec::with_capacity(device.rates.len());
        for pair in &device.rates {
            rates.push((*pair, self.rates.get(*pair).await?));
        }
        let (cursor, raw) = match cursor {
            Some((c, raw)) => (Some(c), Some(raw)),
            None => (None, None),
        };
        let batch = self.collect(device, cursor.as_ref(), &mut rates).await?;
        if !batch.is_empty() || batch.reset || wait.is_zero() || self.shutdown.is_cancelled() {
            return Ok(batch);
        }
        // Nothing yet: open the wakes first, then read again, so nothing slips between.
        let deadline = tokio::time::Instant::now() + wait;
        // However the poll ends (answered, failed, or dropped with its connection), its wakes
        // linger a while for the device's next poll.
        let mut opened = Opened {
            wakes: &self.wakes,
            held: Vec::with_capacity(2 + device.channels.len()),
        };
        let (wake, mut commands_rx) = self.wakes.get(&device.topics.commands).await?;
        opened.held.push(wake);
        let (wake, mut config_rx) = self.wakes.get(&device.topics.config).await?;
        opened.held.push(wake);
        let mut channel_rxs = Vec::with_capacity(device.channels.len());
        for channel in &device.channels {
            let (wake, rx) = self.wakes.get(&channel.topic).await?;
            opened.held.push(wake);
            channel_rxs.push(rx);
        }
        let mut holding = None;
        loop {
            commands_rx.borrow_and_update();
            config_rx.borrow_and_update();
            for rx in &mut channel_rxs {
                rx.borrow_and_update();
            }
            let mut batch = self.collect(device, cursor.as_ref(), &mut rates).await?;
            if !batch.is_empty() || batch.reset {
                return Ok(batch);
            }
            holding.get_or_insert_with(|| Holding::new(&self.holding));
            let woken = tokio::select! {
                () = self.shutdown.cancelled() => false,
                () = tokio::time::sleep_until(deadline) => false,
                r = commands_rx.changed() => r.is_ok(),
                r = config_rx.changed() => r.is_ok(),
                r = any_changed(&mut rates) => r,
                r = any_woken(&mut channel_rxs) => r,
            };
            if !woken {
                // Empty, with the cursor the device sent (the computed one when it sent none).
                if let Some(raw) = raw {
                    batch.next = raw.to_owned();
                }
                return Ok(batch);
            }
        }
    }

    /// Everything new for `device` after `cursor`, without waiting.
    async fn collect(
        &self,
        device: &Device,
        cursor: Option<&Cursor>,
        rates: &mut [(Pair, RateRx)],
    ) -> Result<Batch, BusError> {
        let topics = &device.topics;
        let after = match cursor {
            Some(c) => c.commands,
            None => Position {
                epoch: self.bus.head(&topics.commands).await?.epoch,
                offset: 0,
            },
        };
        let mut read = self
            .bus
            .read(&topics.commands, after, self.limits.max_events)
            .await?;
        // History no longer covers the cursor: a reset. The same answer carries what history
        // still has (from the oldest command retained), the configuration and every rate, so a
        // device that lags behind a busy topic makes progress instead of resetting again.
        // A first poll has nothing to lose: it starts at the oldest command retained, no reset.
        let mut reset = false;
        if let Read::Gap { resume } = read {
            reset = cursor.is_some();
            read = self
                .bus
                .read(&topics.commands, resume, self.limits.max_events)
                .await?;
        }
        let (events, commands_next) = match read {
            Read::Events { events, next } => (events, next),
            // Trimmed again between the two reads: answer the reset alone, from the head.
            Read::Gap { .. } => {
                let head = self.bus.head(&topics.commands).await?;
                // The channels keep their positions: nothing of theirs was delivered.
                let next = Cursor {
                    commands: head,
                    config: crate::cursor::UNSEEN,
                    rates: Vec::new(),
                    channels: cursor.map(|c| c.channels.clone()).unwrap_or_default(),
                };
                return Ok(Batch {
                    next: next.encode(&device.id),
                    reset: true,
                    commands: Vec::new(),
                    config: None,
                    rates: Vec::new(),
                    channels: Vec::new(),
                });
            }
        };
        // Stream channels have positions of their own, untouched by a reset of the commands.
        let streams = cursor;
        // After a reset everything is delivered again, whatever the cursor said.
        let cursor = if reset { None } else { cursor };
        let mut commands = Vec::with_capacity(events.len());
        for e in &events {
            match serde_json::from_slice::<Command>(&e.payload) {
                Ok(c) if crate::registry::valid_id(&c.id) && c.args.is_object() => {
                    commands.push(c);
                }
                _ => tracing::warn!(
                    topic = %topics.commands,
                    offset = e.offset,
                    "malformed command event skipped (not {{id, op, args}}); fix its publisher"
                ),
            }
        }
        let current = self.config(device).await?;
        let config_next = current.position;
        let config = match cursor {
            Some(c) if c.config == current.position => None,
            _ => Some(current),
        };
        let mut changed = Vec::new();
        let mut rates_next = Vec::with_capacity(rates.len());
        for (pair, rx) in rates.iter_mut() {
            let seen = cursor.and_then(|c| c.rate(pair));
            match rx.borrow_and_update().clone() {
                Some(v) => {
                    rates_next.push((*pair, v.position));
                    if seen != Some(v.position) {
                        changed.push(v);
                    }
                }
                None => {
                    if let Some(p) = seen {
                        rates_next.push((*pair, p));
                    }
                }
            }
        }
        let followed = follow::collect(
            self.bus.as_ref(),
            device,
            streams,
            cursor,
            self.limits.max_events,
        )
        .await?;
        let next = Cursor {
            commands: commands_next,
            config: config_next,
            rates: rates_next,
            channels: followed.next,
        };
        Ok(Batch {
            next: next.encode(&device.id),
            reset,
            commands,
            config,
            rates: changed,
            channels: followed.items,
        })
    }
}

impl Poller {
    /// Device topics with an open wake.
    pub(crate) fn active_wakes(&self) -> usize {
        self.wakes.active()
    }

    /// Bus subscriptions opened for wakes since the gateway started.
    pub(crate) fn wakes_opened(&self) -> u64 {
        self.wakes.opened()
    }

    /// The device's configuration document: the latest on its config topic, else its
    /// configured settings.
    pub(crate) async fn config(&self, device: &Device) -> Result<ConfigDoc, BusError> {
        let default = || {
            let origin = Position {
                epoch: 0,
                offset: 0,
            };
            ConfigDoc::parse(origin, &device.settings).unwrap_or_else(|| ConfigDoc {
                position: origin,
                doc: serde_json::Value::Object(serde_json::Map::new()),
                bytes: Bytes::from_static(b"{}"),
            })
        };
        Ok(match self.bus.latest(&device.topics.config).await? {
            Some(e) => ConfigDoc::parse(e.position(), &e.payload).unwrap_or_else(|| {
                tracing::warn!(
                    topic = %device.topics.config,
                    offset = e.offset,
                    "configuration event is not a JSON object; serving the configured settings"
                );
                default()
            }),
            None => default(),
        })
    }
}

/// Resolves `true` when any of the rates changes; never when there are none (or all have
/// stopped).
async fn any_changed(rates: &mut [(Pair, RateRx)]) -> bool {
    let waits: Vec<_> = rates
        .iter_mut()
        .map(|(_, rx)| Box::pin(changed(rx)))
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(waits).await.0
}

/// Resolves `true` when any of the channel wakes is bumped; never when there are none.
async fn any_woken(wakes: &mut [watch::Receiver<u64>]) -> bool {
    if wakes.is_empty() {
        return std::future::pending().await;
    }
    let waits: Vec<_> = wakes.iter_mut().map(|rx| Box::pin(changed(rx))).collect();
    futures::future::select_all(waits).await.0
}

async fn changed<T>(rx: &mut watch::Receiver<T>) -> bool {
    if rx.changed().await.is_ok() {
        return true;
    }
    // The sender is gone for good: this one never wakes anyone again.
    std::future::pending().await
}
