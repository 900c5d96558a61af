//! The configuration of a backend (`[backends.NAME]`): its URL, timeouts, retries, circuit breaker,
//! answer size bound and TLS. The registry ([`super::Upstreams`]) is built from these.

use serde::{Deserialize, Serialize};

/// One backend service the core may call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Base URL, such as `http://127.0.0.1:9102`; request paths are appended to it.
    pub base_url: String,
    /// Longest time to establish a TCP connection.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest time for one attempt of one call, unless the caller's deadline is sooner.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Path probed by /readyz to decide whether this backend is reachable.
    #[serde(default = "defaults::health_path")]
    pub health_path: String,
    /// Retries of idempotent calls (GET, HEAD, PUT, DELETE). POST is never retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The circuit breaker in front of this backend.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Largest answer body read from this backend; a bigger one fails the call (`too_large`,
    /// naming the backend) without reading the rest.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: u64,
    /// TLS of an `https://` backend: extra CA roots, client certificate (mutual TLS).
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
}

impl BackendConfig {
    /// A backend at `base_url` with default timeouts, retries and breaker.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            request_timeout_ms: defaults::request_timeout_ms(),
            health_path: defaults::health_path(),
            retry: RetryConfig::default(),
            circuit: CircuitConfig::default(),
            max_response_bytes: defaults::max_response_bytes(),
            tls: crate::tls::TlsConfig::default(),
        }
    }
}

/// Retry policy for idempotent calls: exponential backoff with full jitter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// Upper bound of the first backoff; each later one doubles, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Largest backoff between two attempts.
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 25,
            max_backoff_ms: 400,
        }
    }
}

/// Circuit breaker: opens after consecutive failures, fails fast while open, then lets one probe
/// through (half-open) and closes again when it succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Consecutive failed calls (connect errors, timeouts, 5xx) that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe is let through.
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 5_000,
        }
    }
}

mod defaults {
    pub(super) fn max_response_bytes() -> u64 {
        1024 * 1024
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        500
    }
    pub(super) fn request_timeout_ms() -> u64 {
        2_000
    }
    pub(super) fn health_path() -> String {
        "/healthz".into()
    }
}
