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
/// `memory` keeps history in this process only; `redis`, `nats` and `rabbitmq` share it through a
/// broker, so every instance of a gateway delivers the same offsets and a client can resume on any
/// of them. `rabbitmq` also needs a state store (`state`, the `[bus.state]` table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, try_from = "BusConfigFields")]
pub struct BusConfig {
    /// `memory` (one process, the default), `redis` (Redis Streams), `nats` (NATS JetStream) or
    /// `rabbitmq` (RabbitMQ Streams, with a state store: `state`).
    pub kind: BusKind,
    /// Broker URL, such as `redis://127.0.0.1:6379`, `nats://127.0.0.1:4222` or
    /// `rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f` (the stream protocol's port; the path
    /// is the percent-encoded virtual host); empty means the kind's local default (those three).
    /// Unused by `memory`.
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
    /// The state store of a `rabbitmq` bus (`[bus.state]`): required by `rabbitmq`, refused by
    /// every other kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<BusStateConfig>,
    /// NATS only: the channels of one catalog pattern share ONE JetStream stream, a subject each
    /// (docs/ARCHITECTURE.md, "Channels of one pattern"), instead of a stream per channel. On
    /// by default (measured at 1,000,000 channels: docs/benchmarks.md, `channels-scale`); off
    /// keeps the older stream per channel. Every instance on one prefix must agree.
    pub nats_pattern_streams: bool,
}

/// `[bus.state]`: where a `rabbitmq` bus keeps what RabbitMQ Streams cannot — each topic's epoch
/// and head, idempotent publishes' keys — and the broker's leases, rate limits and records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BusStateConfig {
    /// `redis` (the only state store so far).
    pub kind: String,
    /// Its URL; empty means `redis://127.0.0.1:6379`.
    #[serde(default)]
    pub url: String,
}

impl BusStateConfig {
    /// A Redis state store at `url` (empty: the local default).
    pub fn redis(url: &str) -> Self {
        Self {
            kind: "redis".into(),
            url: url.into(),
        }
    }

    /// The state store's URL, the local default when `url` is empty.
    pub fn store_url(&self) -> &str {
        if self.url.is_empty() {
            "redis://127.0.0.1:6379"
        } else {
            &self.url
        }
    }
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
            state: None,
            nats_pattern_streams: true,
        }
    }
}

impl BusConfig {
    /// A bus config of `kind` with the default URL and settings (for `rabbitmq`, the local
    /// Redis as its state store).
    pub fn of(kind: BusKind) -> Self {
        Self {
            kind,
            state: (kind == BusKind::Rabbitmq).then(|| BusStateConfig::redis("")),
            ..Self::default()
        }
    }

    /// The broker URL, the kind's local default when `url` is empty.
    pub fn broker_url(&self) -> &str {
        match (self.kind, self.url.is_empty()) {
            (_, false) => &self.url,
            (BusKind::Redis, true) => "redis://127.0.0.1:6379",
            (BusKind::Nats, true) => "nats://127.0.0.1:4222",
            (BusKind::Rabbitmq, true) => "rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f",
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
        check_url(self.kind, self.broker_url())
            .map_err(|e| format!("bus.url `{}`: {e}", self.url))?;
        match (self.kind, &self.state) {
            (BusKind::Rabbitmq, None) => Err(
                "bus.state: a `rabbitmq` bus needs a state store: add [bus.state] with \
                 kind = \"redis\" and its url (docs/rabbitmq.md)"
                    .into(),
            ),
            (BusKind::Rabbitmq, Some(state)) => {
                if state.kind != "redis" {
                    return Err(format!(
                        "bus.state.kind `{}`: use `redis` (the only state store so far)",
                        state.kind
                    ));
                }
                check_url(BusKind::Redis, state.store_url())
                    .map_err(|e| format!("bus.state.url `{}`: {e}", state.url))
            }
            (_, Some(_)) => {
                Err("bus.state: only a `rabbitmq` bus has a state store; remove [bus.state]".into())
            }
            (_, None) => Ok(()),
        }
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
        BusKind::Rabbitmq => super::rabbitmq::Address::parse(url).map(|_| ()),
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
    state: Option<BusStateConfig>,
    nats_pattern_streams: bool,
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
            state: d.state,
            nats_pattern_streams: d.nats_pattern_streams,
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
            state: f.state,
            nats_pattern_streams: f.nats_pattern_streams,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Which bus implementation to run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process, no external service.
    Memory,
    /// Redis: Streams for history, pub/sub for live delivery.
    Redis,
    /// NATS: one JetStream stream per topic for history and live delivery.
    Nats,
    /// RabbitMQ: one stream per topic for history and live delivery, a state store beside it.
    Rabbitmq,
}

/// The names `kind` accepts.
const KIND_NAMES: &[&str] = &["memory", "redis", "nats", "rabbitmq"];

impl<'de> Deserialize<'de> for BusKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "nats" => Ok(Self::Nats),
            "rabbitmq" => Ok(Self::Rabbitmq),
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
    fn kinds_load_by_name() {
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
        let rabbit = "kind = \"rabbitmq\"\n[state]\nkind = \"redis\"\n";
        let config = load(rabbit).expect("rabbitmq");
        assert_eq!(config.kind, BusKind::Rabbitmq);
        let text = toml::to_string(&config).expect("serialise");
        assert_eq!(load(&text).expect("reload"), config);
        let err = load("kind = \"kafka\"\n").expect_err("kafka");
        assert!(err.contains("kafka") && err.contains("nats"), "{err}");
    }

    #[test]
    fn rabbitmq_needs_a_redis_state_store_and_no_other_kind_takes_one() {
        let err = load("kind = \"rabbitmq\"\n").expect_err("no state");
        assert!(
            err.contains("bus.state") && err.contains("docs/rabbitmq.md"),
            "{err}"
        );
        let err = load("kind = \"rabbitmq\"\n[state]\nkind = \"nats\"\n").expect_err("nats");
        assert!(err.contains("bus.state.kind `nats`"), "{err}");
        let err = load("kind = \"rabbitmq\"\n[state]\nkind = \"redis\"\nurl = \"nope\"\n")
            .expect_err("bad url");
        assert!(err.contains("bus.state.url `nope`"), "{err}");
        let err = load("kind = \"redis\"\n[state]\nkind = \"redis\"\n").expect_err("redis");
        assert!(err.contains("only a `rabbitmq` bus"), "{err}");
        let err = load("kind = \"rabbitmq\"\nurl = \"amqp://x\"\n[state]\nkind = \"redis\"\n")
            .expect_err("amqp");
        assert!(
            err.contains("bus.url `amqp://x`") && err.contains("rabbitmq-stream"),
            "{err}"
        );
    }
}
