//! Small shared records: values written once under a name and read by every instance on one
//! broker (device credentials issued by an admin API, say) — so they are known everywhere at
//! once and survive a restart of the gateway.
//!
//! A record is created once ([`Records::create`] refuses a name that exists, atomically across
//! instances) and read by name; nothing here updates or lists records. Where they live follows
//! `[bus]`, on the connections of the process's [`Broker`], like leases:
//!
//! - `memory`: in this process (lost with it);
//! - `redis`: the hash `P:r:{namespace}`, one field per name (`HSETNX`, `HGET`);
//! - `nats`: the JetStream stream `P_records_0{namespace}` on subjects
//!   `P.rec0.{namespace}.{name, hex}`, one message per subject, written with compare-and-set on
//!   "no message yet".
//!
//! Values are opaque bytes; keep secrets out of them (store hashes). No caching is done here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::bus::{Broker, BusError, Clients};

/// A namespace of shared records.
#[async_trait::async_trait]
pub trait Records: Send + Sync + 'static {
    /// Writes `value` under `name` unless a record has that name; `false` when one has.
    async fn create(&self, name: &str, value: Bytes) -> Result<bool, BusError>;

    /// The record named `name`, if any.
    async fn get(&self, name: &str) -> Result<Option<Bytes>, BusError>;
}

/// Records on `broker`'s connections, in `namespace` (1 to 32 of `a-z 0-9`).
pub fn on(broker: &Broker, namespace: &str) -> Arc<dyn Records> {
    assert!(
        (1..=32).contains(&namespace.len())
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "a records namespace is 1 to 32 of a-z 0-9"
    );
    match broker.clients() {
        Clients::Memory => Arc::new(MemoryRecords::default()),
        Clients::Redis(bus) => Arc::new(RedisRecords {
            hash: bus.key(&format!("r:{namespace}")),
            bus: bus.clone(),
            create: redis::Script::new("return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])"),
            get: redis::Script::new("return redis.call('HGET', KEYS[1], ARGV[1])"),
        }),
        Clients::Nats(bus) => Arc::new(NatsRecords {
            bus: bus.clone(),
            namespace: namespace.to_owned(),
        }),
    }
}

/// Records in this process.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    map: Mutex<HashMap<String, Bytes>>,
}

#[async_trait::async_trait]
impl Records for MemoryRecords {
    async fn create(&self, name: &str, value: Bytes) -> Result<bool, BusError> {
        // One map operation per critical section; poisoning cannot leave torn state.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) {
            return Ok(false);
        }
        map.insert(name.to_owned(), value);
        Ok(true)
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, BusError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(name).cloned())
    }
}

struct RedisRecords {
    bus: Arc<crate::bus::redis::RedisBus>,
    hash: String,
    create: redis::Script,
    get: redis::Script,
}

#[async_trait::async_trait]
impl Records for RedisRecords {
    async fn create(&self, name: &str, value: Bytes) -> Result<bool, BusError> {
        let mut inv = self.create.prepare_invoke();
        inv.key(&self.hash).arg(name).arg(value.as_ref());
        Ok(matches!(
            self.bus.run_script("record create", inv).await?,
            redis::Value::Int(1)
        ))
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, BusError> {
        let mut inv = self.get.prepare_invoke();
        inv.key(&self.hash).arg(name);
        match self.bus.run_script("record read", inv).await? {
            redis::Value::BulkString(b) => Ok(Some(b.into())),
            redis::Value::Nil => Ok(None),
            other => Err(BusError::Unavailable(format!(
                "redis: unexpected reply to a record read: {other:?}"
            ))),
        }
    }
}

struct NatsRecords {
    bus: Arc<crate::bus::nats::NatsBus>,
    namespace: String,
}

impl NatsRecords {
    async fn subject(
        &self,
        name: &str,
    ) -> Result<(async_nats::jetstream::stream::Stream, String), BusError> {
        let ns = &self.namespace;
        let (stream, prefix) = self
            .bus
            .cas_stream(&format!("records_0{ns}"), &format!("rec0.{ns}"), None)
            .await?;
        let hex = name.bytes().fold(String::new(), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok((stream, format!("{prefix}{hex}")))
    }
}

#[async_trait::async_trait]
impl Records for NatsRecords {
    async fn create(&self, name: &str, value: Bytes) -> Result<bool, BusError> {
        let (_, subject) = self.subject(name).await?;
        self.bus.cas_put(&subject, &value, 0).await
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>, BusError> {
        let (stream, subject) = self.subject(name).await?;
        Ok(self.bus.cas_get(&stream, &subject).await?.map(|(v, _)| v))
    }
}
