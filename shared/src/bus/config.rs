//! The `[bus]` section: which bus a process runs, where its broker is, and the broker's timings.
//!
//! The section is checked when it is deserialised (through [`BusConfig::validate`]): a bad prefix
//! or a broker URL that cannot be one fails the configuration load, naming the key, instead of a
//! gateway that starts and never connects. Nothing here contacts a broker; connecting is
//! [`super::Broker::connect`]'s job.

use serde::{Deserialize, Serialize};

/// Longest idempotency window: a day (brokers keep every key of the window).
const MAX_IDEMPOTENCY_WINDOW_MS: u64 = 86_400_000;

/// The event bus a process uses.
///
/// `memory` keeps history in this process only; `redis` and `nats` share it through a broker, so
/// every instance of a gateway delivers the same offsets and a client can resume on any of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, try_from = "BusConfigFields")]
pub struct BusConfig {
    /// `memory` (one process, the default), `redis` (Redis Streams) or `nats` (NATS JetStream).
    pub kind: BusKind,
    /// Broker URL, such as `redis://127.0.0.1:6379` or `nats://127.0.0.1:4222`; empty means the
    /// kind's local default (those two). Unused by `memory`.
    pub url: String,
    /// Namespace of every broker key, channel, subject and stream this bus uses, so several
    /// deployments (or tests) can share one broker: 1 to 64 of A-Z a-z 0-9 and `-`.
    pub prefix: String,
    /// Events kept per stream topic for resume; older ones are dropped and a subscriber asking
    /// for them gets a gap.
    pub history_events: usize,
    /// Longest time to open a broker connection.
    pub connect_timeout_ms: u64,
    /// Longest time one broker operation (publish, read, subscribe) may take before it fails as
    /// unavailable.
    pub operation_timeout_ms: u64,
    /// First wait before reconnecting to the broker, and before a subscription retries after
    /// losing it; doubles up to `reconnect_max_ms`, with full jitter.
    pub reconnect_initial_ms: u64,
    /// Longest wait between two reconnection attempts.
    pub reconnect_max_ms: u64,
    /// How long an idempotent publish's key is remembered ([`super::Bus::publish_once`]): a
    /// publish repeating a key within this window publishes nothing. 1 to 86_400_000 (a day).
    pub idempotency_window_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::Memory,
            url: String::new(),
            prefix: "switchyard".into(),
            history_events: 1_000,
            connect_timeout_ms: 2_000,
            operation_timeout_ms: 2_000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5_000,
            idempotency_window_ms: 120_000,
        }
    }
}

impl BusConfig {
    /// A bus config of `kind` with the default URL and settings.
    pub fn of(kind: BusKind) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }

    /// The broker URL, the kind's local default when `url` is empty.
    pub fn broker_url(&self) -> &str {
        match (self.kind, self.url.is_empty()) {
            (_, false) => &self.url,
            (BusKind::Redis, true) => "redis://127.0.0.1:6379",
            (BusKind::Nats, true) => "nats://127.0.0.1:4222",
            (BusKind::Memory, true) => "",
        }
    }

    /// [`Self::idempotency_window_ms`] as a duration.
    pub fn idempotency_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idempotency_window_ms.max(1))
    }

    /// Checks what deserialisation cannot: the prefix's characters, the URL's syntax and the
    /// idempotency window's range.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_IDEMPOTENCY_WINDOW_MS).contains(&self.idempotency_window_ms) {
            return Err(format!(
                "bus.idempotency_window_ms {}: use 1 to {MAX_IDEMPOTENCY_WINDOW_MS}",
                self.idempotency_window_ms
            ));
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 64
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(format!(
                "bus.prefix `{}`: use 1 to 64 of A-Z a-z 0-9 -",
                self.prefix
            ));
        }
        check_url(self.kind, self.broker_url()).map_err(|e| format!("bus.url `{}`: {e}", self.url))
    }
}

/// Whether `url` can be a broker URL for `kind` (syntax only; nothing is contacted).
fn check_url(kind: BusKind, url: &str) -> Result<(), String> {
    match kind {
        BusKind::Memory => Ok(()),
        BusKind::Redis => ::redis::Client::open(url)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        BusKind::Nats => {
            let addr = url
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| e.to_string())?;
            if addr.host().is_empty() {
                return Err("no host".into());
            }
            Ok(())
        }
    }
}

/// The fields of [`BusConfig`] as written, before [`BusConfig::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BusConfigFields {
    kind: BusKind,
    url: String,
    prefix: String,
    history_events: usize,
    connect_timeout_ms: u64,
    operation_timeout_ms: u64,
    reconnect_initial_ms: u64,
    reconnect_max_ms: u64,
    idempotency_window_ms: u64,
}

impl Default for BusConfigFields {
    fn default() -> Self {
        let d = BusConfig::default();
        Self {
            kind: d.kind,
            url: d.url,
            prefix: d.prefix,
            history_events: d.history_events,
            connect_timeout_ms: d.connect_timeout_ms,
            operation_timeout_ms: d.operation_timeout_ms,
            reconnect_initial_ms: d.reconnect_initial_ms,
            reconnect_max_ms: d.reconnect_max_ms,
            idempotency_window_ms: d.idempotency_window_ms,
        }
    }
}

impl TryFrom<BusConfigFields> for BusConfig {
    type Error = String;

    fn try_from(f: BusConfigFields) -> Result<Self, String> {
        let config = Self {
            kind: f.kind,
            url: f.url,
            prefix: f.prefix,
            history_events: f.history_events,
            connect_timeout_ms: f.connect_timeout_ms,
            operation_timeout_ms: f.operation_timeout_ms,
            reconnect_initial_ms: f.reconnect_initial_ms,
            reconnect_max_ms: f.reconnect_max_ms,
            idempotency_window_ms: f.idempotency_window_ms,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Which bus implementation to run.
///
/// `rabbitmq` is refused with its own message (see docs/rabbitmq.md): RabbitMQ Streams alone
/// cannot keep the bus's contract on the servers the project runs, so there is no RabbitMQ bus
/// yet, and a configuration asking for one fails to load instead of falling back to another.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process, no external service.
    Memory,
    /// Redis: Streams for history, pub/sub for live delivery.
    Redis,
    /// NATS: one JetStream stream per topic for history and live delivery.
    Nats,
}

/// The names `kind` accepts.
const KIND_NAMES: &[&str] = &["memory", "redis", "nats"];

impl<'de> Deserialize<'de> for BusKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "nats" => Ok(Self::Nats),
            "rabbitmq" => Err(D::Error::custom(
                "bus.kind `rabbitmq` is not available: RabbitMQ Streams cannot carry the bus \
                 on their own yet (docs/rabbitmq.md says why); use `redis` or `nats`",
            )),
            other => Err(D::Error::unknown_variant(other, KIND_NAMES)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<BusConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn kinds_load_by_name_and_rabbitmq_is_refused_with_a_pointer() {
        for (name, kind) in [
            ("memory", BusKind::Memory),
            ("redis", BusKind::Redis),
            ("nats", BusKind::Nats),
        ] {
            let config = load(&format!("kind = \"{name}\"\n")).expect(name);
            assert_eq!(config.kind, kind);
            // What is written back reads back.
            let text = toml::to_string(&config).expect("serialise");
            assert_eq!(load(&text).expect("reload").kind, kind);
        }
        let err = load("kind = \"rabbitmq\"\n").expect_err("rabbitmq");
        assert!(err.contains("docs/rabbitmq.md"), "{err}");
        let err = load("kind = \"kafka\"\n").expect_err("kafka");
        assert!(err.contains("kafka") && err.contains("nats"), "{err}");
    }
}
