//! A bridge's configuration (`[bridges.NAME]`): the upstream's URL, connection timings, the
//! cluster-wide lease's time to live, and TLS.

use serde::{Deserialize, Serialize};

/// An upstream WebSocket bridge: one connection to a backend's own WebSocket API, carrying one
/// upstream subscription per topic that has local interest, however many clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// WebSocket URL of the upstream, such as `ws://127.0.0.1:9102/v1/ticks`.
    pub url: String,
    /// Longest time to open the upstream connection (TCP and WebSocket handshake).
    #[serde(default = "defaults::bridge_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First wait before reconnecting after the upstream connection is lost; doubles up to
    /// `reconnect_max_ms`, with full jitter.
    #[serde(default = "defaults::reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between two reconnection attempts.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Time to live of the cluster-wide lease that makes one instance bridge a topic (with a
    /// broker bus): when that instance dies, another with interest takes over within
    /// `lease_ttl_ms × 4/3`.
    #[serde(default = "defaults::lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// TLS of a `wss://` upstream: extra CA roots, client certificate (mutual TLS).
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
}

impl BridgeConfig {
    /// A bridge to `url` with the default timings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout_ms: defaults::bridge_connect_timeout_ms(),
            reconnect_initial_ms: defaults::reconnect_initial_ms(),
            reconnect_max_ms: defaults::reconnect_max_ms(),
            lease_ttl_ms: defaults::lease_ttl_ms(),
            tls: crate::tls::TlsConfig::default(),
        }
    }
}

mod defaults {
    pub(super) fn bridge_connect_timeout_ms() -> u64 {
        2_000
    }
    pub(super) fn reconnect_initial_ms() -> u64 {
        100
    }
    pub(super) fn reconnect_max_ms() -> u64 {
        5_000
    }
    pub(super) fn lease_ttl_ms() -> u64 {
        3_000
    }
}
