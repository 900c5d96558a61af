//! Upstream HTTP: the backend registry and the one way the core calls a backend.
//!
//! Every call has a deadline. Idempotent calls (GET, HEAD, PUT, DELETE) are retried on connect
//! errors, timeouts and 502/503/504 with exponential backoff and full jitter, never past the
//! deadline; POST is never retried. A circuit breaker per backend fails calls fast after repeated
//! failures. Errors are typed and always name the backend.
//!
//! Each backend has its own connection pool (a bulkhead: a backend that hangs cannot use up the
//! connections of another) with its own connect timeout. Answers are read chunk by chunk up to
//! the backend's `max_response_bytes` (a bigger one fails with `too_large`, naming the backend).
//! `https://` backends use rustls with the backend's [`TlsConfig`](crate::tls::TlsConfig): extra
//! CA roots and an optional client certificate. This module knows nothing of any backend's API:
//! it moves bytes and decodes JSON for its callers. Large bodies go through [`Upstreams::stream`]
//! instead (`stream.rs`): streamed both ways, a head deadline and an idle timeout per chunk.

mod breaker;
mod config;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use bytes::Bytes;
use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument as _;

mod stats;
mod stream;

pub use breaker::{CircuitBreaker, CircuitState, Open, Permit};
pub use config::{BackendConfig, CircuitConfig, RetryConfig};
pub use stats::{CallSnapshot, CallStats, LATENCY_BUCKETS, OUTCOMES};
pub use stream::{BoxError, StreamCall, StreamError, StreamLimits, Streamed, Upload};

/// A failed backend call. Always names the backend.
#[derive(Debug, Clone, thiserror::Error)]
#[error("backend `{backend}`: {kind}")]
pub struct UpstreamError {
    /// The backend's name in the registry.
    pub backend: Arc<str>,
    /// What went wrong.
    pub kind: UpstreamErrorKind,
}

/// What went wrong with a backend call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamErrorKind {
    /// The deadline (or the per-attempt timeout) passed before an answer came.
    #[error("timed out")]
    Timeout,
    /// No connection could be made.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The backend answered with a non-success status.
    #[error("answered {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The backend's stable error code, when its body is a JSON error.
        code: Option<String>,
        /// The backend's error message, when its body is a JSON error.
        message: Option<String>,
    },
    /// The answer could not be decoded.
    #[error("undecodable answer: {0}")]
    Decode(String),
    /// The circuit breaker is open: the call was not made.
    #[error("circuit open")]
    CircuitOpen,
    /// No backend of that name is configured.
    #[error("not configured")]
    UnknownBackend,
    /// The request failed in some other way (for example the connection was reset mid-answer).
    #[error("request failed: {0}")]
    Transport(String),
    /// The answer's body is larger than the backend's `max_response_bytes`; the rest was not read.
    #[error("answer larger than {limit_bytes} bytes")]
    TooLarge {
        /// The backend's `max_response_bytes`.
        limit_bytes: u64,
    },
}

impl UpstreamErrorKind {
    /// A short stable name, for logs, metrics and client error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Status { .. } => "status",
            Self::Decode(_) => "decode",
            Self::CircuitOpen => "circuit_open",
            Self::UnknownBackend => "unknown_backend",
            Self::Transport(_) => "transport",
            Self::TooLarge { .. } => "too_large",
        }
    }

    /// Whether this failure counts against the backend's circuit breaker.
    fn is_backend_failure(&self) -> bool {
        match self {
            Self::Timeout | Self::Connect(_) | Self::Transport(_) | Self::TooLarge { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            Self::Decode(_) | Self::CircuitOpen | Self::UnknownBackend => false,
        }
    }

    /// Whether an idempotent call may be tried again after this failure.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout | Self::Connect(_) | Self::Transport(_) => true,
            Self::Status { status, .. } => matches!(status, 502..=504),
            // The same call would get the same oversized answer.
            Self::Decode(_) | Self::CircuitOpen | Self::UnknownBackend | Self::TooLarge { .. } => {
                false
            }
        }
    }
}

/// One request to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Call {
    /// The backend's name in the registry.
    pub backend: Arc<str>,
    /// HTTP method.
    pub method: Method,
    /// Path and query, appended to the backend's base URL; starts with `/`.
    pub path: String,
    /// A JSON request body.
    pub body: Option<Bytes>,
}

impl Call {
    /// A GET of `path`.
    pub fn get(backend: &str, path: impl Into<String>) -> Self {
        Self {
            backend: backend.into(),
            method: Method::GET,
            path: path.into(),
            body: None,
        }
    }

    /// A POST of a JSON body to `path`.
    pub fn post_json<B: Serialize + ?Sized>(
        backend: &str,
        path: impl Into<String>,
        body: &B,
    ) -> Self {
        // Serialising plain data structs to JSON cannot fail; an error here is a broken invariant
        // of the caller's type (for example a map with non-string keys).
        let body = serde_json::to_vec(body).unwrap_or_else(|e| panic!("unserialisable body: {e}"));
        Self {
            backend: backend.into(),
            method: Method::POST,
            path: path.into(),
            body: Some(body.into()),
        }
    }

    fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        )
    }
}

/// A configured backend: its pool, limits and breaker.
pub struct Backend {
    name: Arc<str>,
    base_url: String,
    config: BackendConfig,
    client: reqwest::Client,
    breaker: CircuitBreaker,
    stats: CallStats,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// The backend's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Its circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Its call counters (calls by outcome, retries, latency), for the metrics exporter.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }
}

/// An error building the registry from configuration.
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}`: {message}")]
pub struct RegistryError {
    /// The backend at fault.
    pub backend: String,
    /// Why it cannot be used.
    pub message: String,
}

/// The backend registry: every backend a process may call, by name.
#[derive(Debug)]
pub struct Upstreams {
    backends: HashMap<Arc<str>, Backend>,
}

impl Upstreams {
    /// Builds the registry; fails on a malformed base URL.
    pub fn new(configs: &BTreeMap<String, BackendConfig>) -> Result<Self, RegistryError> {
        let mut backends = HashMap::new();
        for (name, config) in configs {
            let err = |message: String| RegistryError {
                backend: name.clone(),
                message,
            };
            let url = reqwest::Url::parse(&config.base_url)
                .map_err(|e| err(format!("base_url `{}`: {e}", config.base_url)))?;
            let mut builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .no_proxy();
            match url.scheme() {
                "http" if config.tls.is_set() => {
                    return Err(err(format!(
                        "base_url `{}`: tls settings need an https:// base_url",
                        config.base_url
                    )));
                }
                "http" => {}
                "https" => {
                    let tls =
                        crate::tls::client_config(&config.tls, &[b"http/1.1"]).map_err(err)?;
                    // Never downgraded to plain HTTP by a redirect.
                    builder = builder
                        .use_preconfigured_tls((*tls).clone())
                        .https_only(true);
                }
                _ => {
                    return Err(err(format!(
                        "base_url `{}`: only http:// and https:// backends are supported",
                        config.base_url
                    )));
                }
            }
            if config.max_response_bytes == 0 {
                return Err(err("max_response_bytes must be at least 1".to_owned()));
            }
            let client = builder
                .build()
                .map_err(|e| err(format!("cannot build HTTP client: {e}")))?;
            let name: Arc<str> = name.as_str().into();
            backends.insert(
                name.clone(),
                Backend {
                    breaker: CircuitBreaker::new(name.clone(), &config.circuit),
                    stats: CallStats::default(),
                    name,
                    base_url: config.base_url.trim_end_matches('/').to_owned(),
                    config: config.clone(),
                    client,
                },
            );
        }
        Ok(Self { backends })
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.get(name)
    }

    /// Names of all configured backends.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.backends.keys()
    }

    /// Makes `call`, retrying when allowed, and returns the body of a 2xx answer.
    /// Counted in the backend's [`Backend::stats`]: the outcome and duration of the whole call,
    /// and each retry.
    pub async fn execute(&self, call: &Call, deadline: Instant) -> Result<Bytes, UpstreamError> {
        let started = std::time::Instant::now();
        let result = self.execute_uncounted(call, deadline).await;
        if let Some(backend) = self.backends.get(call.backend.as_ref()) {
            let outcome = result.as_ref().map(|_| ()).map_err(|e| &e.kind);
            backend.stats.record(outcome, started.elapsed());
        }
        result
    }

    async fn execute_uncounted(
        &self,
        call: &Call,
        deadline: Instant,
    ) -> Result<Bytes, UpstreamError> {
        let Some(backend) = self.backends.get(call.backend.as_ref()) else {
            return Err(UpstreamError {
                backend: call.backend.clone(),
                kind: UpstreamErrorKind::UnknownBackend,
            });
        };
        let error = |kind| UpstreamError {
            backend: backend.name.clone(),
            kind,
        };
        let retry = &backend.config.retry;
        let attempts = if call.is_idempotent() {
            retry.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let permit = backend
                .breaker
                .acquire()
                .map_err(|Open| error(UpstreamErrorKind::CircuitOpen))?;
            let outcome = attempt_once(backend, call, deadline).await;
            match &outcome {
                Err(kind) if kind.is_backend_failure() => permit.failure(),
                _ => permit.success(),
            }
            let kind = match outcome {
                Ok(body) => return Ok(body),
                Err(kind) => kind,
            };
            if attempt >= attempts || !kind.is_retryable() {
                return Err(error(kind));
            }
            let backoff = Backoff::from_millis(retry.initial_backoff_ms, retry.max_backoff_ms)
                .delay(attempt - 1);
            if Instant::now() + backoff >= deadline {
                return Err(error(kind));
            }
            tracing::debug!(backend = %backend.name, attempt, error = %kind, ?backoff, "retrying");
            backend.stats.retried();
            tokio::time::sleep(backoff).await;
        }
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        backend: &str,
        path: impl Into<String>,
        deadline: Instant,
    ) -> Result<T, UpstreamError> {
        let call = Call::get(backend, path);
        let body = self.execute(&call, deadline).await?;
        decode(&call.backend, &body)
    }

    /// POSTs a JSON body to `path` and decodes the JSON answer. Never retried.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        backend: &str,
        path: impl Into<String>,
        body: &B,
        deadline: Instant,
    ) -> Result<T, UpstreamError> {
        let call = Call::post_json(backend, path, body);
        let body = self.execute(&call, deadline).await?;
        decode(&call.backend, &body)
    }

    /// Probes every backend's health path once (no retries, 1 s deadline), concurrently.
    pub async fn probe_all(&self) -> Vec<(String, Result<(), UpstreamError>)> {
        let deadline = Instant::now() + Duration::from_secs(1);
        let probes = self.backends.values().map(|b| async move {
            let result = attempt_once(
                b,
                &Call::get(&b.name, b.config.health_path.clone()),
                deadline,
            )
            .await
            .map(drop)
            .map_err(|kind| UpstreamError {
                backend: b.name.clone(),
                kind,
            });
            (b.name.to_string(), result)
        });
        let mut out = futures::future::join_all(probes).await;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Decodes a JSON body, naming the backend on failure.
pub fn decode<T: DeserializeOwned>(backend: &Arc<str>, body: &[u8]) -> Result<T, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| UpstreamError {
        backend: backend.clone(),
        kind: UpstreamErrorKind::Decode(e.to_string()),
    })
}

async fn attempt_once(
    backend: &Backend,
    call: &Call,
    deadline: Instant,
) -> Result<Bytes, UpstreamErrorKind> {
    let now = Instant::now();
    if now >= deadline {
        return Err(UpstreamErrorKind::Timeout);
    }
    let per_attempt = Duration::from_millis(backend.config.request_timeout_ms);
    let attempt_deadline = deadline.min(now + per_attempt);
    let url = format!("{}{}", backend.base_url, call.path);
    let mut request = backend.client.request(call.method.clone(), url);
    if let Some(body) = &call.body {
        request = request
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
    }
    // The call's span (exported when the server exports spans) and the trace context the
    // backend gets: the caller's trace, this call as the parent.
    let span = tracing::info_span!(
        "backend call",
        otel.kind = "client",
        backend = %backend.name,
        method = %call.method,
        path = %call.path,
    );
    if let Some(trace) = crate::trace::outgoing(&span) {
        request = request.header(crate::trace::TRACEPARENT, trace.header_value());
    }
    let exchange = async {
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        let body = read_capped(response, backend.config.max_response_bytes).await?;
        Ok::<_, UpstreamErrorKind>((status, body))
    };
    let (status, body) = tokio::time::timeout_at(attempt_deadline, exchange.instrument(span))
        .await
        .map_err(|_| UpstreamErrorKind::Timeout)??;
    if status.is_success() {
        return Ok(body);
    }
    let (code, message) = error_body(&body);
    Err(UpstreamErrorKind::Status {
        status: status.as_u16(),
        code,
        message,
    })
}

/// Reads an answer's body, chunk by chunk, failing with [`UpstreamErrorKind::TooLarge`] as soon
/// as it is known to exceed `limit` bytes: at once when `Content-Length` says so, otherwise when
/// the chunks received pass it. Memory held is bounded by `limit` plus one chunk.
async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Bytes, UpstreamErrorKind> {
    let too_large = UpstreamErrorKind::TooLarge { limit_bytes: limit };
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    // Reserve what is declared (bounded by the limit), not more.
    let capacity = usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0);
    let mut body = bytes::BytesMut::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads `{"error": {"code", "message"}}` from an error answer, when it has that shape.
fn error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let field = |k: &str| v["error"][k].as_str().map(str::to_owned);
    (field("code"), field("message"))
}

fn classify(e: reqwest::Error) -> UpstreamErrorKind {
    if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else if e.is_connect() {
        UpstreamErrorKind::Connect(source_chain(&e))
    } else {
        UpstreamErrorKind::Transport(source_chain(&e))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}
