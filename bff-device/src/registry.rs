//! Devices and their credentials: who a device is, which rates it is configured for, its
//! default settings, and the one check of the `X-Device-Key` header.
//!
//! Configured devices (`[devices.<id>]`) live in each instance's memory. Devices issued by the
//! admin API (`POST /admin/devices`) are written to the shared records of the bus
//! ([`switchyard_core::records`]: a Redis hash, a NATS JetStream stream, or this process's
//! memory with the memory bus), so every instance on one broker knows them at once and they
//! survive restarts ([`credentials::Store`], which also holds how keys are hashed and compared).
//! Only the SHA-256 of a credential is ever kept, here or on the broker, so a dump or a log line
//! cannot leak a working key; the comparison of hashes is constant-time.
//!
//! Lookups go to the local cache (bounded by `api.max_devices`) first, then to the records on a
//! miss — there is no negative cache, so a key issued on one instance works on another at once;
//! the price is a broker read per request with an unknown key, which the per-IP rate limit
//! bounds.

//!
//! What a device is ([`Device`], its id, topics, channels and held-poll count) is in
//! `device.rs`; this module is the registry: validation (rates, settings, and the catalog
//! channels a device follows, checked against the catalog's subscribe rules for this device),
//! the cache, issuing, lookups and authentication.

mod credentials;
mod device;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use demo_api::Pair;
use switchyard_core::bus::BusError;
use switchyard_core::channels::Catalog;
use switchyard_core::records::Records;

use credentials::{Created, MAX_KEY_BYTES, Store, ct_eq, hash};
pub use credentials::{KEY_HEADER, MIN_KEY_BYTES};
pub use device::{
    Device, DeviceChannel, DeviceConfig, DeviceId, DeviceTopics, HeldGuard, valid_id,
};

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
    /// A bad identifier, credential, pair, channel or settings document.
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

/// The bounds of a registry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Devices cached at most (configured and issued).
    pub max_devices: usize,
    /// Rate pairs per device at most.
    pub max_rates: usize,
    /// Catalog channels per device at most.
    pub max_channels: usize,
}

/// The device registry.
pub struct Registry {
    inner: RwLock<Inner>,
    limits: Limits,
    catalog: Arc<Catalog>,
    store: Store,
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

#[derive(Debug, Default)]
struct Inner {
    devices: HashMap<DeviceId, Arc<Device>>,
    by_key: HashMap<[u8; 32], DeviceId>,
}

impl Registry {
    /// An empty registry within `limits`, checking channels against `catalog`, issuing
    /// devices into `records` (`shared` when they are a broker's).
    pub fn new(
        limits: Limits,
        catalog: Arc<Catalog>,
        records: Arc<dyn Records>,
        shared: bool,
    ) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            limits,
            catalog,
            store: Store::new(records),
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
        d: &DeviceConfig,
        issued: bool,
    ) -> Result<Arc<Device>, RegisterError> {
        let key = d.key.as_str();
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
        let key = hash(key.as_bytes());
        self.make(id, key, d, issued)
    }

    fn make(
        &self,
        id: DeviceId,
        key: [u8; 32],
        d: &DeviceConfig,
        issued: bool,
    ) -> Result<Arc<Device>, RegisterError> {
        let (rates, settings) = (&d.rates, &d.settings);
        if rates.len() > self.limits.max_rates {
            return Err(RegisterError::Invalid(
                "too_many_rates",
                format!(
                    "device `{id}`: at most {} rate pairs",
                    self.limits.max_rates
                ),
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
        let channels = device::follow(&self.catalog, &id, &d.channels, self.limits.max_channels)?;
        let settings = serde_json::to_vec(settings)
            .map_err(|e| RegisterError::Invalid("invalid_settings", e.to_string()))?;
        Ok(Arc::new(Device {
            topics: DeviceTopics::of(&id),
            id,
            rates: pairs,
            channels,
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
        if inner.devices.len() >= self.limits.max_devices {
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

    /// Registers a configured device (`[devices.<id>]`), in this instance only.
    pub fn register(&self, id: &str, config: &DeviceConfig) -> Result<Arc<Device>, RegisterError> {
        let device = self.build(id, config, false)?;
        self.insert(&device)?;
        Ok(device)
    }

    /// Issues a device as `config` says (its key included): written to the shared records (so
    /// every instance knows it, and it outlives this process), then cached here.
    pub async fn issue(
        &self,
        id: &str,
        config: &DeviceConfig,
    ) -> Result<Arc<Device>, RegisterError> {
        let device = self.build(id, config, true)?;
        {
            let inner = self.read();
            if inner.devices.contains_key(&device.id) {
                return Err(RegisterError::Exists(device.id.to_string()));
            }
            if !self.shared && inner.devices.len() >= self.limits.max_devices {
                return Err(RegisterError::Full);
            }
        }
        let record = credentials::encode(
            &device.key,
            device.rates.iter().map(ToString::to_string).collect(),
            device.channels.iter().map(|c| c.name.to_string()).collect(),
            &config.settings,
        )
        .map_err(|e| RegisterError::Invalid("invalid_settings", e.to_string()))?;
        match self.store.create(&device.id, &device.key, record).await? {
            Created::Yes => {}
            Created::IdTaken => return Err(RegisterError::Exists(device.id.to_string())),
            // 32 random bytes never collide; a configured key given to the admin API could.
            Created::KeyTaken => return Err(RegisterError::KeyTaken),
        }
        match self.insert(&device) {
            // Cached by a lookup in the meantime: the records are the truth either way.
            Ok(()) | Err(RegisterError::Exists(_)) => Ok(device),
            Err(e) => Err(e),
        }
    }

    /// The issued device `id` from the shared records, cached.
    async fn load(&self, id: &DeviceId) -> Result<Option<Arc<Device>>, BusError> {
        let Some(raw) = self.store.device(id).await? else {
            return Ok(None);
        };
        let Some(device) = credentials::decode(&raw).and_then(|r| {
            let config = DeviceConfig {
                key: String::new(),
                rates: r.rates,
                settings: r.settings,
                channels: self.still_followable(id, r.channels),
            };
            self.make(id.clone(), r.key, &config, true).ok()
        }) else {
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

    /// The channels of an issued device's record that it may still follow: the catalog is this
    /// instance's configuration, which may have changed since the device was issued; a channel
    /// it no longer admits is dropped (with a warning) rather than locking the device out.
    fn still_followable(&self, id: &DeviceId, channels: Vec<String>) -> Vec<String> {
        let mut kept: Vec<String> = channels
            .into_iter()
            .filter(|name| match device::followable(&self.catalog, id, name) {
                Ok(_) => true,
                Err((_, why)) => {
                    tracing::warn!(device = %id, channel = %name, %why, "issued device's channel dropped; fix the catalog or reissue the device");
                    false
                }
            })
            .collect();
        kept.truncate(self.limits.max_channels);
        kept
    }

    /// A new random credential (32 random bytes, base64url: 43 characters).
    pub fn new_key() -> String {
        credentials::new_key()
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
                .store
                .owner(&given)
                .await
                .map_err(AuthError::Unavailable)?
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
