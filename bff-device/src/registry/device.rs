//! What a device is: its configuration (`[devices.<id>]`), its identifier, its bus topics, the
//! catalog channels it follows ([`DeviceChannel`], checked against the catalog by [`follow`]),
//! the registered [`Device`] and the count of its held polls ([`HeldGuard`]). Plain data and
//! validation: no credential checks ([`super::credentials`]) and no registry
//! ([`super::Registry`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use demo_api::Pair;
use serde::{Deserialize, Serialize};
use switchyard_core::channels::{Catalog, ChannelName, Subscriber};
use switchyard_core::event::{Topic, TopicClass};

use super::RegisterError;
use crate::cursor::{ChannelKey, channel_key};

/// One configured device (`[devices.<id>]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// The device's credential, sent in the `X-Device-Key` header (16 to 256 bytes). Only its
    /// SHA-256 is kept once loaded.
    pub key: String,
    /// The rate pairs the device receives (`EUR/USD`), at most `api.max_rates_per_device`.
    pub rates: Vec<String>,
    /// The device's configuration document until the admin API sets one (a JSON object).
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Catalog channels the device follows (`announcements`, `devices.tv-1.firmware`), at most
    /// `api.max_channels_per_device`. Each must be in the catalog and its subscribe rule must
    /// admit this device (a `device` rule only for its own id); their events come in its polls
    /// under `channels`. Left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// A device identifier: 1 to 64 of `A-Z a-z 0-9 _ -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// Validates an identifier (also used for command ids).
    pub fn parse(s: &str) -> Option<Self> {
        valid_id(s).then(|| Self(s.into()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

/// Whether `s` is 1 to 64 of `A-Z a-z 0-9 _ -` (device and command ids).
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The bus topics of one device.
#[derive(Debug, Clone)]
pub struct DeviceTopics {
    /// `devices.{id}.commands` (stream): commands for the device, from backends and the admin API.
    pub commands: Topic,
    /// `devices.{id}.config` (stream, read conflated): each event is a whole configuration document.
    pub config: Topic,
    /// `devices.{id}.results` (stream): results the device reports, for backends.
    pub results: Topic,
    /// `telemetry.{id}` (stream): telemetry batches the device sends, for backends.
    pub telemetry: Topic,
}

impl DeviceTopics {
    pub(super) fn of(id: &DeviceId) -> Self {
        // A device id is at most 64 safe characters, so every name below is a valid topic.
        let topic = |name: String| {
            Topic::new(&name)
                .unwrap_or_else(|_| unreachable!("a valid device id makes valid topics"))
        };
        Self {
            commands: topic(format!("devices.{id}.commands")),
            config: topic(format!("devices.{id}.config")),
            results: topic(format!("devices.{id}.results")),
            telemetry: topic(format!("telemetry.{id}")),
        }
    }
}

/// A catalog channel a device follows, resolved once when the device is registered.
#[derive(Debug, Clone)]
pub struct DeviceChannel {
    /// Its name.
    pub name: ChannelName,
    /// Its bus topic (`ch:` + the name).
    pub topic: Topic,
    /// Stream (every event after the cursor) or state (the newest value only).
    pub class: TopicClass,
    /// What identifies it in a cursor.
    pub key: ChannelKey,
}

/// Checks the channels `names` a device `id` is to follow against `catalog`: at most `max`,
/// each in the catalog and admitted for this device by its subscribe rule (a device never
/// follows another device's channel, nor a user's). Duplicates count once; configured order is
/// kept. Errors name the device and the channel.
pub(super) fn follow(
    catalog: &Catalog,
    id: &DeviceId,
    names: &[String],
    max: usize,
) -> Result<Vec<DeviceChannel>, RegisterError> {
    if names.len() > max {
        return Err(RegisterError::Invalid(
            "too_many_channels",
            format!("device `{id}`: at most {max} channels"),
        ));
    }
    let mut out: Vec<DeviceChannel> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let channel = followable(catalog, id, name).map_err(|(code, why)| {
            RegisterError::Invalid(code, format!("device `{id}`: channels[{i}]: {why}"))
        })?;
        if out.iter().any(|c| c.name == channel.name) {
            continue;
        }
        if out.iter().any(|c| c.key == channel.key) {
            // Eight bytes of SHA-256 do not collide by chance; refuse rather than mix positions.
            return Err(RegisterError::Invalid(
                "invalid_channel",
                format!(
                    "device `{id}`: channels[{i}]: `{}` cannot be told apart from another channel in a cursor",
                    channel.name
                ),
            ));
        }
        out.push(channel);
    }
    Ok(out)
}

/// The channel `name` if device `id` may follow it, or an error code and why not.
pub(super) fn followable(
    catalog: &Catalog,
    id: &DeviceId,
    name: &str,
) -> Result<DeviceChannel, (&'static str, String)> {
    let resolved = catalog
        .resolve(name)
        .map_err(|e| ("invalid_channel", e.to_string()))?;
    let who = Subscriber::Device {
        id: id.as_str().to_owned(),
    };
    if !resolved.may_subscribe(&who) {
        return Err((
            "channel_not_allowed",
            format!(
                "may not follow channel `{}`: its subscribe rule does not admit this device",
                resolved.name()
            ),
        ));
    }
    Ok(DeviceChannel {
        topic: resolved.topic(),
        class: resolved.entry().class(),
        key: channel_key(resolved.name()),
        name: resolved.name().clone(),
    })
}

/// A registered device.
#[derive(Debug)]
pub struct Device {
    /// Its identifier.
    pub id: DeviceId,
    /// The rate pairs it receives, in configured order, without duplicates.
    pub rates: Vec<Pair>,
    /// The catalog channels it follows, in configured order, without duplicates.
    pub channels: Vec<DeviceChannel>,
    /// Its configuration document until one is set through the admin API (compact JSON object).
    pub settings: bytes::Bytes,
    /// Its bus topics.
    pub topics: DeviceTopics,
    /// Polls of this device being held right now (bounded by `api.max_held_polls_per_device`).
    pub held: AtomicUsize,
    /// The SHA-256 of its credential.
    pub(super) key: [u8; 32],
    /// Whether it was issued (kept in the shared records) rather than configured.
    pub(super) issued: bool,
}

/// Counts a held poll of a device for as long as it lives.
#[derive(Debug)]
pub struct HeldGuard {
    device: Arc<Device>,
    global: Arc<AtomicUsize>,
}

impl HeldGuard {
    /// Takes a slot for a held poll of `device`, unless the device or the gateway is at its bound.
    pub fn take(
        device: &Arc<Device>,
        global: &Arc<AtomicUsize>,
        per_device: usize,
        total: usize,
    ) -> Option<Self> {
        let take = |c: &AtomicUsize, max: usize| {
            c.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
        };
        if !take(&device.held, per_device) {
            return None;
        }
        if !take(global, total) {
            device.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            device: device.clone(),
            global: global.clone(),
        })
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.device.held.fetch_sub(1, Ordering::AcqRel);
        self.global.fetch_sub(1, Ordering::AcqRel);
    }
}
