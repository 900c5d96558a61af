//! Where GCRA state lives: [`MemoryRates`] in this process, and the broker-backed stores on
//! Redis (one Lua script per check) and NATS JetStream (compare-and-set per key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{RateStore, fnv};
use crate::bus::BusError;

const SHARDS: usize = 16;

/// GCRA state in this process: [`SHARDS`] maps, bounded in size (see the module docs).
#[derive(Debug)]
pub struct MemoryRates {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
    per_shard: usize,
}

impl MemoryRates {
    /// A store of at most `max_keys` keys (at least one per shard).
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Keys held now (idle ones included until they are swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One GCRA step (synchronous).
    pub fn step(&self, key: &str, interval: Duration, tolerance: Duration) -> Option<Duration> {
        let now = Instant::now();
        let shard = &self.shards[usize::try_from(fnv(key.as_bytes())).unwrap_or(0) % SHARDS];
        // Each critical section is a few map operations; poisoning cannot leave torn state.
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let allow_at = new_tat.checked_sub(tolerance).unwrap_or(now);
        if allow_at > now {
            return Some(allow_at - now);
        }
        if !map.contains_key(key) && map.len() >= self.per_shard {
            map.retain(|_, t| *t > now);
            if map.len() >= self.per_shard {
                // Full of live keys: evict the one closest to idle.
                if let Some(k) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                    map.remove(&k);
                }
            }
        }
        map.insert(key.to_owned(), new_tat);
        None
    }
}

#[async_trait::async_trait]
impl RateStore for MemoryRates {
    async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Option<Duration>, BusError> {
        Ok(self.step(key, interval, tolerance))
    }
}

const REDIS_GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
local allow_at = new - tolerance
if allow_at > now then return allow_at - now end
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1)
return 0
";

/// GCRA state in Redis: one script per check (see the module docs).
pub(super) struct RedisRates {
    bus: Arc<crate::bus::redis::RedisBus>,
    script: redis::Script,
}

impl RedisRates {
    /// Counts on `bus`'s connections.
    pub(super) fn new(bus: Arc<crate::bus::redis::RedisBus>) -> Self {
        Self {
            bus,
            script: redis::Script::new(REDIS_GCRA),
        }
    }
}

#[async_trait::async_trait]
impl RateStore for RedisRates {
    async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Option<Duration>, BusError> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.bus.key(&format!("rl:{key}")))
            .arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
            .arg(u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX));
        let wait = match self.bus.run_script("rate limit", inv).await? {
            redis::Value::Int(i) => u64::try_from(i).unwrap_or(0),
            other => {
                return Err(BusError::Unavailable(format!(
                    "redis: unexpected reply to the rate script: {other:?}"
                )));
            }
        };
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }
}

/// Compare-and-set attempts of one NATS check before it is refused as contended.
const NATS_ATTEMPTS: usize = 4;

/// GCRA state in NATS JetStream (see the module docs).
pub(super) struct NatsRates {
    bus: Arc<crate::bus::nats::NatsBus>,
    streams: Mutex<HashMap<u64, (async_nats::jetstream::stream::Stream, String)>>,
}

impl NatsRates {
    /// Counts on `bus`'s connections.
    pub(super) fn new(bus: Arc<crate::bus::nats::NatsBus>) -> Self {
        Self {
            bus,
            streams: Mutex::new(HashMap::new()),
        }
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[async_trait::async_trait]
impl RateStore for NatsRates {
    async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Option<Duration>, BusError> {
        // One stream per tolerance, whole seconds: a key's message is useless once `tat` has
        // passed, which is at most the tolerance after it was written.
        let ttl_s = tolerance.as_secs() + 1;
        let cached = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ttl_s)
            .cloned();
        let (stream, prefix) = match cached {
            Some(s) => s,
            None => {
                let made = self
                    .bus
                    .cas_stream(
                        &format!("ratelimit_{ttl_s}"),
                        &format!("rl{ttl_s}"),
                        Some(Duration::from_secs(ttl_s)),
                    )
                    .await?;
                self.streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ttl_s, made.clone());
                made
            }
        };
        let subject = format!("{prefix}{}", hex(key.as_bytes()));
        let interval = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let tolerance = u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX);
        for _ in 0..NATS_ATTEMPTS {
            let now = unix_micros();
            let held = self.bus.cas_get(&stream, &subject).await.inspect_err(|_| {
                // The stream may be gone (deleted, or lost by the server): look it up again.
                self.streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&ttl_s);
            })?;
            let (tat, seq) = match held {
                Some((payload, seq)) => (
                    std::str::from_utf8(&payload)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                    seq,
                ),
                None => (0, 0),
            };
            let new_tat = tat.max(now).saturating_add(interval);
            let allow_at = new_tat.saturating_sub(tolerance);
            if allow_at > now {
                return Ok(Some(Duration::from_micros(allow_at - now)));
            }
            if self
                .bus
                .cas_put(&subject, new_tat.to_string().as_bytes(), seq)
                .await?
            {
                return Ok(None);
            }
        }
        // Others kept writing this key first: it is busy, and so refused for one interval.
        Ok(Some(Duration::from_micros(interval)))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
