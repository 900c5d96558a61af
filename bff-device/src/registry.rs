//! Devices and their credentials: who a device is, which rates it is configured for, its
//! default settings, and the one check of the `X-Device-Key` header.
//!
//! Configured devices (`[devices.<id>]`) live in each instance's memory. Devices issued by the
//! admin API (`POST /admin/devices`) are written to the shared records of the bus
//! ([`switchyard_core::records`]: a Redis hash, a NATS JetStream stream, or this process's
//! memory with the memory bus), so every instance on one broker knows them at once and they
//! survive restarts. Two records per issued device: `d:{id}` (the key's SHA-256, rates and
//! settings, JSON) and `k:{sha256 hex}` (the id). Only the SHA-256 of a credential is ever
//! kept, here or on the broker, so a dump or a log line cannot leak a working key; the
//! comparison of hashes is constant-time.
//!
//! Lookups go to the local cache (bounded by `api.max_devices`) first, then to the records on a
//! miss — there is no negative cache, so a key issued on one instance works on another at once;
//! the price is a broker read per request with an unknown key, which the per-IP rate limit
//! bounds.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use base64::Engine as _;
use demo_api::Pair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchyard_core::bus::BusError;
use switchyard_core::event::Topic;
use switchyard_core::records::Records;

/// The header a device sends its credential in.
pub const KEY_HEADER: &str = "x-device-key";

/// Longest credential accepted, in bytes.
const MAX_KEY_BYTES: usize = 256;

/// Shortest credential accepted from configuration, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

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
    fn of(id: &DeviceId) -> Self {
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

/// A registered device.
#[derive(Debug)]
pub struct Device {
    /// Its identifier.
    pub id: DeviceId,
    /// The rate pairs it receives, in configured order, without duplicates.
    pub rates: Vec<Pair>,
    /// Its configuration document until one is set through the admin API (compact JSON object).
    pub settings: bytes::Bytes,
    /// Its bus topics.
    pub topics: DeviceTopics,
    /// Polls of this device being held right now (bounded by `api.max_held_polls_per_device`).
    pub held: AtomicUsize,
    /// The SHA-256 of its credential.
    key: [u8; 32],
    /// Whether it was issued (kept in the shared records) rather than configured.
    issued: bool,
}

/// Why a device was refused.
#[derive(Debug, Clone)]
pub enum AuthError {
    /// No credential, or one that belongs to no device: 401.
    Unauthorized,
    /// A valid credential of another device: 403.
    Forbidden,
    /// The shared records could not be read: 503.
    Unavailable(BusError),
}

/// Why a device could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A bad identifier, credential, pair or settings document.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// The identifier is taken.
    #[error("device `{0}` already exists")]
    Exists(String),
    /// The credential is already another device's.
    #[error("this key is already another device's")]
    KeyTaken,
    /// The registry holds `api.max_devices` devices.
    #[error("the registry is full")]
    Full,
    /// The shared records could not be written.
    #[error(transparent)]
    Unavailable(#[from] BusError),
}

/// The device registry.
pub struct Registry {
    inner: RwLock<Inner>,
    max_devices: usize,
    max_rates: usize,
    records: Arc<dyn Records>,
    /// Whether the records are shared (a broker): then a cached issued device may be evicted
    /// and read again; otherwise the cache is the bound of what can be issued.
    shared: bool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// An issued device as the shared records keep it.
#[derive(Serialize, Deserialize)]
struct Record {
    /// The SHA-256 of its key, hex.
    k: String,
    /// Its rate pairs.
    r: Vec<String>,
    /// Its settings.
    s: BTreeMap<String, serde_json::Value>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether two hashes are equal, in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[derive(Debug, Default)]
struct Inner {
    devices: HashMap<DeviceId, Arc<Device>>,
    by_key: HashMap<[u8; 32], DeviceId>,
}

fn hash(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Registry {
    /// An empty registry caching at most `max_devices` devices with at most `max_rates` pairs
    /// each, issuing devices into `records` (`shared` when they are a broker's).
    pub fn new(
        max_devices: usize,
        max_rates: usize,
        records: Arc<dyn Records>,
        shared: bool,
    ) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            max_devices,
            max_rates,
            records,
            shared,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Critical sections only insert or look up; poisoning cannot leave torn state.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Validates a device and builds it (not registered yet).
    fn build(
        &self,
        id: &str,
        key: &str,
        rates: &[String],
        settings: &BTreeMap<String, serde_json::Value>,
        issued: bool,
    ) -> Result<Arc<Device>, RegisterError> {
        let id = DeviceId::parse(id).ok_or_else(|| {
            RegisterError::Invalid(
                "invalid_device_id",
                "a device id is 1 to 64 of A-Z a-z 0-9 _ -".to_owned(),
            )
        })?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(RegisterError::Invalid(
                "invalid_key",
                format!("device `{id}`: a key is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"),
            ));
        }
        self.make(id, hash(key.as_bytes()), rates, settings, issued)
    }

    fn make(
        &self,
        id: DeviceId,
        key: [u8; 32],
        rates: &[String],
        settings: &BTreeMap<String, serde_json::Value>,
        issued: bool,
    ) -> Result<Arc<Device>, RegisterError> {
        if rates.len() > self.max_rates {
            return Err(RegisterError::Invalid(
                "too_many_rates",
                format!("device `{id}`: at most {} rate pairs", self.max_rates),
            ));
        }
        let mut pairs: Vec<Pair> = Vec::with_capacity(rates.len());
        for r in rates {
            let pair: Pair = r.parse().map_err(|e: demo_api::Invalid| {
                RegisterError::Invalid("invalid_pair", format!("device `{id}`: {}", e.message))
            })?;
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        let settings = serde_json::to_vec(settings)
            .map_err(|e| RegisterError::Invalid("invalid_settings", e.to_string()))?;
        Ok(Arc::new(Device {
            topics: DeviceTopics::of(&id),
            id,
            rates: pairs,
            settings: settings.into(),
            held: AtomicUsize::new(0),
            key,
            issued,
        }))
    }

    /// Puts `device` in the local maps: a configured one, or an issued one (cached). When the
    /// maps are full, an issued device is evicted if the records are shared.
    fn insert(&self, device: &Arc<Device>) -> Result<(), RegisterError> {
        let mut inner = self.write();
        if inner.devices.contains_key(&device.id) {
            return Err(RegisterError::Exists(device.id.to_string()));
        }
        if inner.by_key.contains_key(&device.key) {
            return Err(RegisterError::KeyTaken);
        }
        if inner.devices.len() >= self.max_devices {
            let victim = self
                .shared
                .then(|| inner.devices.values().find(|d| d.issued).cloned())
                .flatten()
                .ok_or(RegisterError::Full)?;
            inner.devices.remove(&victim.id);
            inner.by_key.remove(&victim.key);
        }
        inner.devices.insert(device.id.clone(), device.clone());
        inner.by_key.insert(device.key, device.id.clone());
        Ok(())
    }

    /// Registers a configured device with `key`, in this instance only.
    pub fn register(
        &self,
        id: &str,
        key: &str,
        rates: &[String],
        settings: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Arc<Device>, RegisterError> {
        let device = self.build(id, key, rates, settings, false)?;
        self.insert(&device)?;
        Ok(device)
    }

    /// Issues a device with `key`: written to the shared records (so every instance knows it,
    /// and it outlives this process), then cached here.
    pub async fn issue(
        &self,
        id: &str,
        key: &str,
        rates: &[String],
        settings: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Arc<Device>, RegisterError> {
        let device = self.build(id, key, rates, settings, true)?;
        {
            let inner = self.read();
            if inner.devices.contains_key(&device.id) {
                return Err(RegisterError::Exists(device.id.to_string()));
            }
            if !self.shared && inner.devices.len() >= self.max_devices {
                return Err(RegisterError::Full);
            }
        }
        let record = serde_json::to_vec(&Record {
            k: hex(&device.key),
            r: device.rates.iter().map(ToString::to_string).collect(),
            s: settings.clone(),
        })
        .map_err(|e| RegisterError::Invalid("invalid_settings", e.to_string()))?;
        if !self
            .records
            .create(&format!("d:{}", device.id), record.into())
            .await?
        {
            return Err(RegisterError::Exists(device.id.to_string()));
        }
        if !self
            .records
            .create(
                &format!("k:{}", hex(&device.key)),
                device.id.as_str().to_owned().into_bytes().into(),
            )
            .await?
        {
            // 32 random bytes never collide; a configured key given to the admin API could.
            return Err(RegisterError::KeyTaken);
        }
        match self.insert(&device) {
            // Cached by a lookup in the meantime: the records are the truth either way.
            Ok(()) | Err(RegisterError::Exists(_)) => Ok(device),
            Err(e) => Err(e),
        }
    }

    /// The issued device `id` from the shared records, cached.
    async fn load(&self, id: &DeviceId) -> Result<Option<Arc<Device>>, BusError> {
        let Some(raw) = self.records.get(&format!("d:{id}")).await? else {
            return Ok(None);
        };
        let Some(device) = serde_json::from_slice::<Record>(&raw)
            .ok()
            .and_then(|r| Some((unhex(&r.k)?, r)))
            .and_then(|(key, r)| self.make(id.clone(), key, &r.r, &r.s, true).ok())
        else {
            tracing::error!(device = %id, "unreadable device record");
            return Ok(None);
        };
        if let Err(RegisterError::Exists(_) | RegisterError::KeyTaken) = self.insert(&device) {
            // Cached meanwhile by another request: use that one (its held-poll count).
            if let Some(d) = self.read().devices.get(id) {
                return Ok(Some(d.clone()));
            }
        }
        Ok(Some(device))
    }

    /// A new random credential (32 random bytes, base64url: 43 characters).
    pub fn new_key() -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    }

    /// The device `id`, if registered (configured, or issued on any instance).
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Device>>, BusError> {
        let Some(id) = DeviceId::parse(id) else {
            return Ok(None);
        };
        if let Some(d) = self.read().devices.get(&id).cloned() {
            return Ok(Some(d));
        }
        self.load(&id).await
    }

    /// Every registered device.
    pub fn all(&self) -> Vec<Arc<Device>> {
        self.read().devices.values().cloned().collect()
    }

    /// Checks the credential in `headers` against the device named in the path.
    ///
    /// A missing or unknown credential is [`AuthError::Unauthorized`]; a valid credential of
    /// another device (whatever the path names, registered or not) is [`AuthError::Forbidden`].
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        path_id: &str,
    ) -> Result<Arc<Device>, AuthError> {
        let key = headers
            .get(KEY_HEADER)
            .map(|v| v.as_bytes())
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES)
            .ok_or(AuthError::Unauthorized)?;
        let given = hash(key);
        let cached = self.read().by_key.get(&given).cloned();
        let owner = match cached {
            Some(owner) => owner,
            None => self
                .records
                .get(&format!("k:{}", hex(&given)))
                .await
                .map_err(AuthError::Unavailable)?
                .and_then(|raw| DeviceId::parse(std::str::from_utf8(&raw).ok()?))
                .ok_or(AuthError::Unauthorized)?,
        };
        if owner.as_str() != path_id {
            return Err(AuthError::Forbidden);
        }
        let device = self
            .get(owner.as_str())
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::Unauthorized)?;
        if ct_eq(&device.key, &given) {
            Ok(device)
        } else {
            Err(AuthError::Unauthorized)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(KEY_HEADER, key.parse().unwrap());
        h
    }

    fn registry(max: usize, rates: usize) -> Registry {
        Registry::new(
            max,
            rates,
            Arc::new(switchyard_core::records::MemoryRecords::default()),
            false,
        )
    }

    #[tokio::test]
    async fn credentials_are_checked_against_the_path() {
        let r = registry(10, 4);
        r.register(
            "tv-1",
            "key-of-tv-1-0123456",
            &["EUR/USD".into()],
            &BTreeMap::new(),
        )
        .unwrap();
        r.register("tv-2", "key-of-tv-2-0123456", &[], &BTreeMap::new())
            .unwrap();
        assert_eq!(
            r.authenticate(&headers("key-of-tv-1-0123456"), "tv-1")
                .await
                .unwrap()
                .id
                .as_str(),
            "tv-1"
        );
        assert!(matches!(
            r.authenticate(&headers("key-of-tv-1-0123456"), "tv-2")
                .await
                .unwrap_err(),
            AuthError::Forbidden
        ));
        assert!(matches!(
            r.authenticate(&headers("key-of-tv-1-0123456"), "nobody")
                .await
                .unwrap_err(),
            AuthError::Forbidden
        ));
        assert!(matches!(
            r.authenticate(&headers("wrong-key-0123456789"), "tv-1")
                .await
                .unwrap_err(),
            AuthError::Unauthorized
        ));
        assert!(matches!(
            r.authenticate(&HeaderMap::new(), "tv-1").await.unwrap_err(),
            AuthError::Unauthorized
        ));
    }

    #[tokio::test]
    async fn registration_is_validated_and_bounded() {
        let r = registry(1, 1);
        let none = BTreeMap::new();
        assert!(matches!(
            r.register("bad id", "0123456789abcdef", &[], &none),
            Err(RegisterError::Invalid("invalid_device_id", _))
        ));
        assert!(matches!(
            r.register("a", "short", &[], &none),
            Err(RegisterError::Invalid("invalid_key", _))
        ));
        assert!(matches!(
            r.register("a", "0123456789abcdef", &["EUR/XXX".into()], &none),
            Err(RegisterError::Invalid("invalid_pair", _))
        ));
        assert!(matches!(
            r.register(
                "a",
                "0123456789abcdef",
                &["EUR/USD".into(), "USD/JPY".into()],
                &none
            ),
            Err(RegisterError::Invalid("too_many_rates", _))
        ));
        r.register("a", "0123456789abcdef", &[], &none).unwrap();
        assert!(matches!(
            r.register("a", "0123456789abcdeg", &[], &none),
            Err(RegisterError::Exists(_))
        ));
        assert!(matches!(
            r.register("b", "0123456789abcdef", &[], &none),
            Err(RegisterError::KeyTaken)
        ));
        assert!(matches!(
            r.register("b", "0123456789abcdeg", &[], &none),
            Err(RegisterError::Full)
        ));
    }
}
