//! Leases in Redis: the key `P:l:{name}` holds the holder, with Redis's own expiry (`PX`); renew
//! and release compare the holder first, in one script each, on the bus's command connection.

use std::time::Duration;

use super::scripts::as_u64;
use super::{Inner, RedisBus};
use crate::bus::BusError;
use crate::bus::lease::Lease;
use crate::event::Topic;

const LEASE_ACQUIRE: &str = r"
local h = redis.call('GET', KEYS[1])
if not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const LEASE_RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const LEASE_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// The three lease scripts, in the order [`Inner::lease`] numbers them.
pub(super) fn scripts() -> [redis::Script; 3] {
    [
        redis::Script::new(LEASE_ACQUIRE),
        redis::Script::new(LEASE_RENEW),
        redis::Script::new(LEASE_RELEASE),
    ]
}

impl Inner {
    /// Runs lease script `which` (0 acquire, 1 renew, 2 release) on `name`'s key.
    async fn lease(
        &self,
        which: usize,
        name: &Topic,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BusError> {
        let mut inv = self.lease_scripts[which].prepare_invoke();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        inv.key(format!("{}:l:{name}", self.prefix))
            .arg(holder)
            .arg(ttl_ms);
        Ok(as_u64(&self.run("lease", inv).await?) == Some(1))
    }
}

/// Leases in Redis: the key `P:l:{name}` holds the holder, with Redis's own expiry (`PX`);
/// renew and release compare the holder first, in one script.
#[async_trait::async_trait]
impl Lease for RedisBus {
    async fn acquire(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        self.inner.lease(0, name, holder, ttl).await
    }

    async fn renew(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        self.inner.lease(1, name, holder, ttl).await
    }

    async fn release(&self, name: &Topic, holder: &str) -> Result<(), BusError> {
        self.inner
            .lease(2, name, holder, Duration::from_millis(1))
            .await
            .map(|_| ())
    }
}
