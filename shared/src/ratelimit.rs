//! Per-client rate limits, shared by every instance on one broker: requests per second per IP
//! and per user (or device), socket messages per second and new subscriptions per minute.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket kept as one number
//! per key: the theoretical arrival time `tat`): a rule of `n` per period with a burst of `b`
//! lets `b` requests through at once and then one every `period / n`. An over-limit request
//! learns how long to wait ([`RetryAfter`]) and consumes nothing.
//!
//! Where the counts live follows `[bus]`, on the connections of the process's
//! [`Broker`], like leases:
//!
//! - `memory`: in this process ([`MemoryRates`]): sharded maps bounded by
//!   `rate_limits.max_local_keys`; a key is idle (and dropped first) once its `tat` has passed,
//!   and when a shard is full of live keys the one closest to idle is evicted — so an attacker
//!   rotating addresses cannot grow memory, only reset the budget of the evicted keys.
//! - `redis`: one Lua script per check on the key `P:rl:{key}` (the value is `tat` in
//!   microseconds of Redis's clock, `TIME`), written with a `PX` expiry at `tat`.
//! - `nats`: a JetStream stream per tolerance (`P_ratelimit_{ms}`, one message per key, the
//!   message's age bounded by the tolerance), read by subject and written with compare-and-set on
//!   the subject's last sequence (retried a few times under contention, then refused). The
//!   clock is each instance's: keep the instances' clocks in sync (NTP).
//!
//! **Broker outage: fail open to the local limiter.** When the broker cannot be reached (or a
//! check exceeds `bus.operation_timeout_ms`) the check is made in this process's memory instead
//! — so each instance still bounds each client by the full budget, the cluster by the budget
//! times the instances — with a warning (at most one per 10 s) and a counter
//! ([`RateLimiter::fallbacks`]). A limiter must not turn a broker outage into a full outage.
//!
//! **Keys cannot be inflated by a caller**: a key is the peer's IP address (the socket's, or a
//! configured trusted proxy's `X-Forwarded-For`), an authenticated user, or an authenticated
//! device — never a value a caller chooses freely. Over-long identifiers are hashed.
//!
//! Not done here: reading HTTP requests and wrapping routers (the server crate's middleware),
//! deciding what a gateway answers when refused (each gateway maps a [`RetryAfter`] to its wire
//! format), and limits across gateways (every key carries the gateway's name).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bus::{Broker, BusError, Clients};

/// The `[rate_limits]` section of a gateway. A rate of 0 turns that limit off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// HTTP requests (socket upgrades included) per second from one IP address.
    pub requests_per_s_per_ip: u32,
    /// Requests one IP address may make at once before `requests_per_s_per_ip` paces it.
    pub requests_burst_per_ip: u32,
    /// HTTP requests per second of one authenticated user (bff-web, bff-mobile) or device
    /// (bff-device).
    pub requests_per_s_per_user: u32,
    /// Requests one user or device may make at once.
    pub requests_burst_per_user: u32,
    /// Messages per second one client sends on its sockets (bff-web, bff-mobile), per user when
    /// authenticated, per IP otherwise.
    pub socket_messages_per_s: u32,
    /// Socket messages one client may send at once.
    pub socket_messages_burst: u32,
    /// New subscriptions per minute of one client (bff-web, bff-mobile), per user when
    /// authenticated, per IP otherwise.
    pub subscriptions_per_min: u32,
    /// Subscriptions one client may open at once.
    pub subscriptions_burst: u32,
    /// Keys the in-memory limiter keeps at most (the limiter of the memory bus, and the local
    /// fallback of a broker's); idle keys go first.
    pub max_local_keys: usize,
    /// Proxies whose `X-Forwarded-For` is believed (exact addresses). Empty (the default): the
    /// client is the socket's peer and the header is ignored. Otherwise, when the peer is one of
    /// them, the client is the right-most address of the header that is not one of them.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_s_per_ip: 200,
            requests_burst_per_ip: 400,
            requests_per_s_per_user: 100,
            requests_burst_per_user: 200,
            socket_messages_per_s: 100,
            socket_messages_burst: 200,
            subscriptions_per_min: 600,
            subscriptions_burst: 100,
            max_local_keys: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    /// Every limit off (for tools and benchmarks that mean to hammer a gateway).
    pub fn off() -> Self {
        Self {
            requests_per_s_per_ip: 0,
            requests_per_s_per_user: 0,
            socket_messages_per_s: 0,
            subscriptions_per_min: 0,
            ..Self::default()
        }
    }
}

/// One limit: `rate` per `period`, `burst` at once. A rate of 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Requests per period; 0 turns the rule off.
    pub rate: u32,
    /// The period of `rate`.
    pub period: Duration,
    /// Requests allowed at once (at least 1 when the rule is on).
    pub burst: u32,
}

impl Rule {
    /// `rate` per second, `burst` at once.
    pub fn per_second(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            period: Duration::from_secs(1),
            burst,
        }
    }

    /// `rate` per minute, `burst` at once.
    pub fn per_minute(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            period: Duration::from_secs(60),
            burst,
        }
    }

    /// Whether the rule limits anything.
    pub fn is_on(&self) -> bool {
        self.rate > 0
    }

    /// The emission interval (`period / rate`) and the tolerance (`interval * burst`).
    fn gcra(&self) -> (Duration, Duration) {
        let interval = (self.period / self.rate.max(1)).max(Duration::from_micros(1));
        (interval, interval * self.burst.max(1))
    }
}

/// What is being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// HTTP requests.
    Request,
    /// Socket messages.
    Message,
    /// New subscriptions.
    Subscription,
}

/// Whose budget a check draws on: an IP address, an authenticated user or device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    fn of(scope: Scope, kind: &str, id: &str) -> Self {
        let scope = match scope {
            Scope::Request => "req",
            Scope::Message => "msg",
            Scope::Subscription => "sub",
        };
        // An identifier is bounded: a long one is replaced by its hash.
        let id = if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            id.to_owned()
        } else {
            format!("#{:016x}", fnv(id.as_bytes()))
        };
        Self(format!("{scope}:{kind}:{id}"))
    }

    /// A client by IP address.
    pub fn ip(scope: Scope, ip: IpAddr) -> Self {
        // IPv4-mapped IPv6 addresses count as the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        Self::of(scope, "ip", &ip.to_string())
    }

    /// An authenticated user.
    pub fn user(scope: Scope, user: &str) -> Self {
        Self::of(scope, "user", user)
    }

    /// An authenticated device.
    pub fn device(scope: Scope, device: &str) -> Self {
        Self::of(scope, "device", device)
    }

    /// The key's text (without the gateway's name).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A refusal: the client may try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds to wait, rounded up, at least 1 (the `Retry-After` header's value).
    pub fn secs(&self) -> u64 {
        let s = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        s.max(1)
    }

    /// Milliseconds to wait, rounded up, at least 1.
    pub fn millis(&self) -> u64 {
        u64::try_from(self.0.as_micros().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// Where GCRA state is kept.
#[async_trait::async_trait]
pub trait RateStore: Send + Sync + 'static {
    /// One GCRA step on `key`: `Ok(None)` when allowed (and counted), `Ok(Some(wait))` when
    /// refused (nothing counted).
    async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Option<Duration>, BusError>;
}

mod stores;

pub use stores::MemoryRates;
use stores::{NatsRates, RedisRates};

/// A gateway's rate limiter: its rules, its store, and the local fallback.
pub struct RateLimiter {
    gateway: String,
    config: RateLimitConfig,
    store: Option<Arc<dyn RateStore>>,
    local: MemoryRates,
    fallbacks: AtomicU64,
    refused: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("gateway", &self.gateway)
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// The limiter of `gateway` (its name goes into every key): counts on `broker`'s
    /// connections when it has a broker, in memory otherwise.
    pub fn new(gateway: &str, config: &RateLimitConfig, broker: &Broker) -> Arc<Self> {
        let store: Option<Arc<dyn RateStore>> = match broker.clients() {
            Clients::Memory => None,
            Clients::Redis(bus) => Some(Arc::new(RedisRates::new(bus.clone()))),
            Clients::Nats(bus) => Some(Arc::new(NatsRates::new(bus.clone()))),
        };
        Arc::new(Self {
            gateway: gateway.to_owned(),
            config: config.clone(),
            store,
            local: MemoryRates::new(config.max_local_keys),
            fallbacks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            warned: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Checks made locally because the broker failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Checks refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts one event of `key` against `rule`; `Err` when over the limit (nothing counted).
    pub async fn check(&self, key: &Key, rule: Rule) -> Result<(), RetryAfter> {
        if !rule.is_on() {
            return Ok(());
        }
        let (interval, tolerance) = rule.gcra();
        let full = format!("{}:{}", self.gateway, key.as_str());
        let wait = match &self.store {
            None => self.local.step(&full, interval, tolerance),
            Some(store) => match store.gcra(&full, interval, tolerance).await {
                Ok(w) => w,
                Err(e) => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.warn(&e);
                    self.local.step(&full, interval, tolerance)
                }
            },
        };
        match wait {
            None => Ok(()),
            Some(w) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(RetryAfter(w))
            }
        }
    }

    fn warn(&self, e: &BusError) {
        let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if w.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
            *w = Some(now);
            tracing::warn!(error = %e, fallbacks = self.fallbacks(), "rate limiter broker failed; counting in memory");
        }
    }

    /// The rule of HTTP requests per IP address.
    pub fn requests_per_ip(&self) -> Rule {
        Rule::per_second(
            self.config.requests_per_s_per_ip,
            self.config.requests_burst_per_ip,
        )
    }

    /// The rule of HTTP requests per user or device.
    pub fn requests_per_user(&self) -> Rule {
        Rule::per_second(
            self.config.requests_per_s_per_user,
            self.config.requests_burst_per_user,
        )
    }

    /// The rule of socket messages per client.
    pub fn socket_messages(&self) -> Rule {
        Rule::per_second(
            self.config.socket_messages_per_s,
            self.config.socket_messages_burst,
        )
    }

    /// The rule of new subscriptions per client.
    pub fn subscriptions(&self) -> Rule {
        Rule::per_minute(
            self.config.subscriptions_per_min,
            self.config.subscriptions_burst,
        )
    }

    /// Checks one socket message of a client: the user when authenticated, else its IP.
    pub async fn check_message(
        &self,
        user: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), RetryAfter> {
        match client_key(Scope::Message, user, ip) {
            Some(k) => self.check(&k, self.socket_messages()).await,
            None => Ok(()),
        }
    }

    /// Checks one new subscription of a client: the user when authenticated, else its IP.
    pub async fn check_subscription(
        &self,
        user: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), RetryAfter> {
        match client_key(Scope::Subscription, user, ip) {
            Some(k) => self.check(&k, self.subscriptions()).await,
            None => Ok(()),
        }
    }

    /// The client's IP address given the peer's address and the request's headers: the peer's,
    /// or the right-most hop of `X-Forwarded-For` that is not a trusted proxy when the peer is
    /// one. `None` when there is no peer address.
    pub fn client_ip_from(
        &self,
        peer: Option<SocketAddr>,
        headers: &http::HeaderMap,
    ) -> Option<IpAddr> {
        let peer = peer?.ip();
        if self.config.trusted_proxies.is_empty() || !self.config.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.config.trusted_proxies.contains(&ip) => {}
                Ok(ip) => return Some(ip),
                // A malformed hop: nothing to its left can be trusted; count the proxy.
                Err(_) => return Some(peer),
            }
        }
        Some(peer)
    }
}

fn client_key(scope: Scope, user: Option<&str>, ip: Option<IpAddr>) -> Option<Key> {
    match (user, ip) {
        (Some(u), _) => Some(Key::user(scope, u)),
        (None, Some(ip)) => Some(Key::ip(scope, ip)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
