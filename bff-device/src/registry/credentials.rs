//! Credentials: how a device key is bounded, hashed (SHA-256, the only form ever kept) and
//! compared (in constant time), both with the core's `keyhash`; new keys; and the store of
//! issued devices on the shared records of the bus ([`Store`]).
//!
//! Two records per issued device: `d:{id}` (the key's SHA-256, rates and settings, JSON) and
//! `k:{sha256 hex}` (the id), each written once (create-if-absent). This module keeps no cache
//! and decides nothing about devices: [`super::Registry`] validates, caches and authenticates.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_core::bus::BusError;
use switchyard_core::keyhash::{from_hex as unhex, to_hex as hex};
use switchyard_core::records::Records;

use super::DeviceId;

/// A credential's SHA-256, and two compared in constant time.
pub(super) use switchyard_core::keyhash::{ct_eq, sha256 as hash};

/// The header a device sends its credential in.
pub const KEY_HEADER: &str = "x-device-key";

/// Longest credential accepted, in bytes.
pub(super) const MAX_KEY_BYTES: usize = 256;

/// Shortest credential accepted from configuration, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// A new random credential (32 random bytes, base64url: 43 characters).
pub(super) fn new_key() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
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

/// An issued device read back from the records (not validated yet).
pub(super) struct Issued {
    /// The SHA-256 of its key.
    pub(super) key: [u8; 32],
    /// Its rate pairs.
    pub(super) rates: Vec<String>,
    /// Its settings.
    pub(super) settings: BTreeMap<String, serde_json::Value>,
}

/// The record of an issued device.
pub(super) fn encode(
    key: &[u8; 32],
    rates: Vec<String>,
    settings: &BTreeMap<String, serde_json::Value>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Record {
        k: hex(key),
        r: rates,
        s: settings.clone(),
    })
}

/// An issued device from its record; `None` when the record cannot be read.
pub(super) fn decode(raw: &[u8]) -> Option<Issued> {
    let r = serde_json::from_slice::<Record>(raw).ok()?;
    Some(Issued {
        key: unhex(&r.k)?,
        rates: r.r,
        settings: r.s,
    })
}

/// What writing an issued device found.
pub(super) enum Created {
    /// Both records were written.
    Yes,
    /// A device with this id exists already (nothing written).
    IdTaken,
    /// The key is another device's (the device record is written, the key record is not).
    KeyTaken,
}

/// The issued devices on the shared records.
pub(super) struct Store {
    records: Arc<dyn Records>,
}

impl Store {
    pub(super) fn new(records: Arc<dyn Records>) -> Self {
        Self { records }
    }

    /// Writes device `id` with `record` ([`encode`]) and its key's owner record.
    pub(super) async fn create(
        &self,
        id: &DeviceId,
        key: &[u8; 32],
        record: Vec<u8>,
    ) -> Result<Created, BusError> {
        if !self
            .records
            .create(&format!("d:{id}"), record.into())
            .await?
        {
            return Ok(Created::IdTaken);
        }
        if !self
            .records
            .create(
                &format!("k:{}", hex(key)),
                id.as_str().to_owned().into_bytes().into(),
            )
            .await?
        {
            return Ok(Created::KeyTaken);
        }
        Ok(Created::Yes)
    }

    /// The record of device `id` ([`decode`]), if it was issued.
    pub(super) async fn device(&self, id: &DeviceId) -> Result<Option<Bytes>, BusError> {
        self.records.get(&format!("d:{id}")).await
    }

    /// The device whose key has SHA-256 `key`, if one was issued with it.
    pub(super) async fn owner(&self, key: &[u8; 32]) -> Result<Option<DeviceId>, BusError> {
        Ok(self
            .records
            .get(&format!("k:{}", hex(key)))
            .await?
            .and_then(|raw| DeviceId::parse(std::str::from_utf8(&raw).ok()?)))
    }
}
