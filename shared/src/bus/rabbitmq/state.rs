//! The RabbitMQ bus's state store, on Redis (`[bus.state]`): what a stream cannot hold.
//!
//! - `P:q:m:{topic}` — a hash: `epoch` (random, 63 bits) and `head` (the highest offset a publish
//!   has been answered with). Created when missing; reset to a new epoch when this bus creates
//!   the topic's stream and the old epoch had events (a deleted or lost stream is a new
//!   history). `head` is what `head`, `latest` and reads stop at: RabbitMQ 3.10 has no command
//!   that answers a stream's last offset.
//! - `P:q:i:{topic}#{key}` — an idempotent publish's key: `p{token}` while its publish is in
//!   flight (expiring after a few operation timeouts, so a crashed publisher frees it), then
//!   `{epoch}:{offset}` for `idempotency_window_ms`.
//!
//! Leases, rate limits and records are the Redis bus's own (the `Broker` hands them out).

use std::sync::Arc;

use redis::Value;

use crate::bus::BusError;
use crate::bus::redis::RedisBus;
use crate::event::{Position, Topic};

const META: &str = r"
local e = redis.call('HGET', KEYS[1], 'epoch')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', e, 'head', 0)
end
return {e, redis.call('HGET', KEYS[1], 'head')}
";

const RESET: &str = r"
local e = redis.call('HGET', KEYS[1], 'epoch')
local h = tonumber(redis.call('HGET', KEYS[1], 'head') or '0')
if (not e) or h > 0 then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', e, 'head', 0)
end
return e
";

const ADVANCE: &str = r"
local e = redis.call('HGET', KEYS[1], 'epoch')
if not e then
  e = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', e, 'head', 0)
end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'head')) then
  redis.call('HSET', KEYS[1], 'head', ARGV[1])
end
return e
";

const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'p' .. ARGV[1], 'PX', ARGV[2])
return ''
";

const SETTLE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// What a key's claim found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// The key is this publish's now.
    Claimed,
    /// Another publish of the key is in flight.
    Pending,
    /// The key was published at this position.
    Done(Position),
}

/// The state store.
pub(super) struct State {
    redis: Arc<RedisBus>,
    scripts: [redis::Script; 6],
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    text(v)?.parse().ok()
}

fn malformed(what: &str) -> BusError {
    BusError::Unavailable(format!("rabbitmq state store: unexpected reply to {what}"))
}

/// A random epoch: 63 bits, so it survives any signed 64-bit representation.
fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}

impl State {
    pub(super) fn new(redis: Arc<RedisBus>) -> Self {
        Self {
            redis,
            scripts: [META, RESET, ADVANCE, CLAIM, SETTLE, RELEASE].map(redis::Script::new),
        }
    }

    /// The Redis bus the state lives on.
    pub(super) fn redis(&self) -> &Arc<RedisBus> {
        &self.redis
    }

    fn meta_key(&self, topic: &Topic) -> String {
        self.redis.key(&format!("q:m:{topic}"))
    }

    fn idempotency_key(&self, topic: &Topic, key: &str) -> String {
        self.redis.key(&format!("q:i:{topic}#{key}"))
    }

    /// The topic's epoch and head, creating the epoch when missing.
    pub(super) async fn meta(&self, topic: &Topic) -> Result<(u64, u64), BusError> {
        let mut inv = self.scripts[0].prepare_invoke();
        inv.key(self.meta_key(topic)).arg(new_epoch());
        match self.redis.run_script("rabbitmq meta read", inv).await? {
            Value::Array(parts) if parts.len() == 2 => number(&parts[0])
                .zip(number(&parts[1]))
                .ok_or_else(|| malformed("meta")),
            _ => Err(malformed("meta")),
        }
    }

    /// The topic's stream was just created by this bus: a new epoch unless the current one
    /// never had an event.
    pub(super) async fn reset(&self, topic: &Topic) -> Result<u64, BusError> {
        let mut inv = self.scripts[1].prepare_invoke();
        inv.key(self.meta_key(topic)).arg(new_epoch());
        number(&self.redis.run_script("rabbitmq reset", inv).await?)
            .ok_or_else(|| malformed("reset"))
    }

    /// Records that `offset` was published; answers the epoch.
    pub(super) async fn advance(&self, topic: &Topic, offset: u64) -> Result<u64, BusError> {
        let mut inv = self.scripts[2].prepare_invoke();
        inv.key(self.meta_key(topic)).arg(offset).arg(new_epoch());
        number(&self.redis.run_script("rabbitmq advance", inv).await?)
            .ok_or_else(|| malformed("advance"))
    }

    /// Claims an idempotency key for `token` for `ttl_ms`, or says who has it.
    pub(super) async fn claim(
        &self,
        topic: &Topic,
        key: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<Claim, BusError> {
        let mut inv = self.scripts[3].prepare_invoke();
        inv.key(self.idempotency_key(topic, key))
            .arg(token)
            .arg(ttl_ms);
        let found = text(&self.redis.run_script("rabbitmq claim", inv).await?)
            .ok_or_else(|| malformed("claim"))?;
        if found.is_empty() {
            return Ok(Claim::Claimed);
        }
        if found.starts_with('p') {
            return Ok(Claim::Pending);
        }
        let (epoch, offset) = found.split_once(':').ok_or_else(|| malformed("claim"))?;
        match (epoch.parse(), offset.parse()) {
            (Ok(epoch), Ok(offset)) => Ok(Claim::Done(Position { epoch, offset })),
            _ => Err(malformed("claim")),
        }
    }

    /// The key's publish landed at `position`: remembered for `window_ms`.
    pub(super) async fn settle(
        &self,
        topic: &Topic,
        key: &str,
        position: Position,
        window_ms: u64,
    ) -> Result<(), BusError> {
        let mut inv = self.scripts[4].prepare_invoke();
        inv.key(self.idempotency_key(topic, key))
            .arg(format!("{}:{}", position.epoch, position.offset))
            .arg(window_ms);
        self.redis
            .run_script("rabbitmq settle", inv)
            .await
            .map(|_| ())
    }

    /// The key's publish failed: the key is free again (if `token` still holds it).
    pub(super) async fn release(
        &self,
        topic: &Topic,
        key: &str,
        token: &str,
    ) -> Result<(), BusError> {
        let mut inv = self.scripts[5].prepare_invoke();
        inv.key(self.idempotency_key(topic, key))
            .arg(format!("p{token}"));
        self.redis
            .run_script("rabbitmq release", inv)
            .await
            .map(|_| ())
    }
}
