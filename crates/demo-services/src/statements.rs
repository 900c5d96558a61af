//! The statements service: large files both ways, for the gateways' streamed file routes.
//!
//! `GET /v1/statements/{user}?rows=N` answers a user's statement as CSV (`statements/csv.rs`):
//! generated on the fly, chunk by chunk as the connection takes it, never whole in memory, with
//! the same bytes, length and `ETag` for the same user and `rows`. So it honours one `Range`
//! (`bytes=a-b`, `bytes=a-`, `bytes=-n`) with `206` and `Content-Range`, `416` past the end,
//! and `If-Range` (a range only when the `ETag` still matches), and announces
//! `Accept-Ranges: bytes`: a download resumes where it stopped. Several ranges in one request
//! get the whole file (allowed by RFC 9110).
//!
//! `PUT /v1/receipts/{user}/{name}` stores any file under `receipts_dir/{user}/{name}`
//! ([`ReceiptName`]: a plain file name, never a path), streamed to disk as it arrives: a body
//! over `max_receipt_bytes` gets `413` (before anything is read when `Content-Length` says so,
//! otherwise as soon as the bytes passed it); the bytes go to a hidden temporary file renamed
//! into place only once complete, and removed on any failure — a client that goes away, a body
//! too large or too slow, a full disk — so no partial file is ever left under the name.
//! `201` when the name was new, `200` when it replaced one, with a [`Receipt`].
//!
//! Like the other demo services it trusts its caller (a gateway) for who the user is.

mod csv;

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use switchyard_server::metrics::service::{ServiceMetrics, ServiceMetricsConfig};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use demo_api::{Receipt, ReceiptName, UserId};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use switchyard_server::config::{LogConfig, ServerConfig};
use switchyard_server::errors::JsonError;
use switchyard_server::server::{CancellationToken, Readiness};
use switchyard_server::streaming::{ClientBody, content_length};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use crate::http;
use csv::Statement;

/// Bytes of one chunk of a statement.
const CHUNK_BYTES: u64 = 64 * 1024;

/// Configuration of the statements service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP listener (default `127.0.0.1:9104`) and request limits.
    pub server: ServerConfig,
    /// Log output (used by the binary; an embedding process sets up its own logs).
    pub log: LogConfig,
    /// Where receipts are stored, one directory per user (created at start).
    pub receipts_dir: PathBuf,
    /// Largest receipt stored, in bytes.
    pub max_receipt_bytes: u64,
    /// Most rows a statement may have (`rows` above it is a 400).
    pub max_rows: u64,
    /// Rows of a statement asked for without `rows`.
    pub default_rows: u64,
    /// Longest wait for the next chunk of a receipt's body, in milliseconds.
    pub idle_timeout_ms: u64,
    /// `/metrics` on an internal listener of its own (none by default).
    pub metrics: ServiceMetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::backend(SocketAddr::from(([127, 0, 0, 1], 9104))),
            log: LogConfig::default(),
            receipts_dir: PathBuf::from("/tmp/switchyard-receipts"),
            max_receipt_bytes: 1024 * 1024 * 1024,
            max_rows: 100_000_000,
            default_rows: 1_000,
            idle_timeout_ms: 30_000,
            metrics: ServiceMetricsConfig::default(),
        }
    }
}

switchyard_server::server_binary!(
    Config,
    "statements",
    "Users' statements as CSV and their receipts (demo backend for large files)",
    "SWITCHYARD_STATEMENTS"
);

/// What the service has done, readable while it serves (for tests and benchmarks).
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    downloads_started: AtomicU64,
    downloads_finished: AtomicU64,
    downloads_dropped: AtomicU64,
    bytes_sent: AtomicU64,
    receipts_stored: AtomicU64,
    receipts_failed: AtomicU64,
}

impl Stats {
    /// Statement bodies started.
    pub fn downloads_started(&self) -> u64 {
        self.0.downloads_started.load(Ordering::Relaxed)
    }

    /// Statement bodies sent to their end.
    pub fn downloads_finished(&self) -> u64 {
        self.0.downloads_finished.load(Ordering::Relaxed)
    }

    /// Statement bodies dropped before their end (the connection went away).
    pub fn downloads_dropped(&self) -> u64 {
        self.0.downloads_dropped.load(Ordering::Relaxed)
    }

    /// Statement bytes handed to the connection, every download together.
    pub fn bytes_sent(&self) -> u64 {
        self.0.bytes_sent.load(Ordering::Relaxed)
    }

    /// Receipts stored whole.
    pub fn receipts_stored(&self) -> u64 {
        self.0.receipts_stored.load(Ordering::Relaxed)
    }

    /// Receipts refused or abandoned once their body had started (nothing kept of them).
    pub fn receipts_failed(&self) -> u64 {
        self.0.receipts_failed.load(Ordering::Relaxed)
    }
}

/// Serves the statements service on `listener` until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (app, _, metrics) = build(&config)?;
    http::serve(
        listener,
        app,
        metrics,
        &config.metrics,
        shutdown,
        &config.server,
    )
    .await
}

/// The routes counted in its metrics.
const ROUTES: [&str; 2] = ["/v1/statements/{user}", "/v1/receipts/{user}/{name}"];

/// The full application and its [`Stats`]. Fails on an invalid configuration, or when the
/// receipts directory cannot be created.
pub fn app(config: &Config) -> anyhow::Result<(Router, Stats)> {
    build(config).map(|(app, stats, _)| (app, stats))
}

fn build(config: &Config) -> anyhow::Result<(Router, Stats, ServiceMetrics)> {
    anyhow::ensure!(config.max_rows >= 1, "max_rows must be at least 1");
    anyhow::ensure!(
        (1..=config.max_rows).contains(&config.default_rows),
        "default_rows must be 1 to max_rows"
    );
    anyhow::ensure!(
        config.idle_timeout_ms >= 1,
        "idle_timeout_ms must be at least 1"
    );
    std::fs::create_dir_all(&config.receipts_dir).map_err(|e| {
        anyhow::anyhow!(
            "receipts_dir {}: cannot create it: {e}",
            config.receipts_dir.display()
        )
    })?;
    let stats = Stats::default();
    let service = Arc::new(Service {
        config: config.clone(),
        stats: stats.clone(),
    });
    let api = Router::new()
        .route("/v1/statements/{user}", get(statement))
        .route("/v1/receipts/{user}/{name}", put(receipt))
        .with_state(service);
    let metrics = ServiceMetrics::new("statements", &ROUTES);
    let app = http::finish(api, Readiness::new(None, None), &config.server, &metrics);
    Ok((app, stats, metrics))
}

struct Service {
    config: Config,
    stats: Stats,
}

#[derive(Deserialize)]
struct Rows {
    rows: Option<u64>,
}

async fn statement(
    State(service): State<Arc<Service>>,
    user: Result<Path<String>, PathRejection>,
    rows: Result<Query<Rows>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, JsonError> {
    let Path(user) = user.map_err(http::bad_input)?;
    let user = UserId::parse(&user).map_err(http::invalid)?;
    let Query(Rows { rows }) = rows.map_err(http::bad_input)?;
    let rows = rows.unwrap_or(service.config.default_rows);
    if !(1..=service.config.max_rows).contains(&rows) {
        return Err(JsonError::bad_request(
            "invalid_rows",
            format!("rows must be 1 to {}", service.config.max_rows),
        ));
    }
    let statement = Statement::new(seed(&user), rows);
    let len = statement.len();
    let etag = format!("\"v1-{rows}-{user}\"");
    let range = match headers.get(header::IF_RANGE) {
        Some(v) if v.as_bytes() != etag.as_bytes() => None,
        _ => headers.get(header::RANGE).map(|v| parse_range(v, len)),
    };
    let (status, from, to) = match range {
        None | Some(Range::Ignored) => (StatusCode::OK, 0, len),
        Some(Range::Bytes(from, to)) => (StatusCode::PARTIAL_CONTENT, from, to),
        Some(Range::Unsatisfiable) => {
            let mut r = JsonError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the statement has {len} bytes"),
            )
            .into_response();
            r.headers_mut()
                .insert(header::CONTENT_RANGE, value(format!("bytes */{len}")));
            return Ok(r);
        }
    };
    let mut response = Response::new(Body::from_stream(body(statement, from, to, &service.stats)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        value("text/csv; charset=utf-8".into()),
    );
    h.insert(header::CONTENT_LENGTH, value((to - from).to_string()));
    h.insert(header::ACCEPT_RANGES, value("bytes".into()));
    h.insert(header::ETAG, value(etag));
    h.insert(
        header::CONTENT_DISPOSITION,
        value(format!("attachment; filename=\"statement-{user}.csv\"")),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {from}-{}/{len}", to - 1);
        h.insert(header::CONTENT_RANGE, value(range));
    }
    Ok(response)
}

/// The bytes `from..to` of `statement`, a chunk at a time as the connection takes them,
/// counted in `stats` (a body dropped before its end counts as dropped).
fn body(
    statement: Statement,
    from: u64,
    to: u64,
    stats: &Stats,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + use<> {
    stats.0.downloads_started.fetch_add(1, Ordering::Relaxed);
    let progress = Progress {
        stats: stats.clone(),
        done: false,
    };
    futures::stream::unfold(
        (statement, from, progress),
        move |(statement, at, mut progress)| async move {
            if at >= to {
                progress.done = true;
                progress
                    .stats
                    .0
                    .downloads_finished
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let end = to.min(at + CHUNK_BYTES);
            let chunk = statement.bytes(at, end);
            progress
                .stats
                .0
                .bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Some((Ok(chunk), (statement, end, progress)))
        },
    )
}

/// Counts a download dropped before its end.
struct Progress {
    stats: Stats,
    done: bool,
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.done {
            self.stats
                .0
                .downloads_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn value(text: String) -> HeaderValue {
    // Every value here is made of digits, ASCII names and punctuation.
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
}

/// The user's seed: FNV-1a of the id, so a statement never changes between runs or builds.
fn seed(user: &UserId) -> u64 {
    user.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `Range` header, read against a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Bytes `from..to`.
    Bytes(u64, u64),
    /// Outside the body: 416.
    Unsatisfiable,
    /// Not one byte range this service serves (several, another unit, malformed): the whole body.
    Ignored,
}

fn parse_range(header: &HeaderValue, len: u64) -> Range {
    let Some(spec) = header
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            Some(0) => Range::Unsatisfiable,
            Some(n) if len > 0 => Range::Bytes(len - n.min(len), len),
            Some(_) => Range::Unsatisfiable,
            None => Range::Ignored,
        },
        (first, "") => match number(first) {
            Some(from) if from < len => Range::Bytes(from, len),
            Some(_) => Range::Unsatisfiable,
            None => Range::Ignored,
        },
        (first, last) => match (number(first), number(last)) {
            (Some(from), Some(last)) if from <= last => {
                if from >= len {
                    Range::Unsatisfiable
                } else {
                    Range::Bytes(from, last.min(len - 1) + 1)
                }
            }
            _ => Range::Ignored,
        },
    }
}

async fn receipt(
    State(service): State<Arc<Service>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Result<Response, JsonError> {
    let Path((user, name)) = path.map_err(http::bad_input)?;
    let user = UserId::parse(&user).map_err(http::invalid)?;
    let name = ReceiptName::parse(&name).map_err(http::invalid)?;
    let max = service.config.max_receipt_bytes;
    let (parts, body) = request.into_parts();
    let idle = Duration::from_millis(service.config.idle_timeout_ms);
    let mut body = ClientBody::new(&parts, body, idle);
    let declared = content_length(&parts.headers)
        .map_err(|e| JsonError::bad_request("invalid_request", e.to_string()))?;
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let dir = service.config.receipts_dir.join(user.as_str());
    let target = dir.join(name.as_str());
    let temp = Partial {
        path: dir.join(format!(
            ".{name}.{:016x}.part",
            unique_suffix(&service.stats)
        )),
        stats: service.stats.clone(),
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| disk_error(&dir, &e))?;
    let stored = async {
        let mut file = tokio::fs::File::create(&temp.path)
            .await
            .map_err(|e| disk_error(&temp.path, &e))?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                JsonError::bad_request("body_failed", format!("the request body failed: {e}"))
            })?;
            written += chunk.len() as u64;
            if written > max {
                return Err(too_large(max));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| disk_error(&temp.path, &e))?;
        }
        file.flush().await.map_err(|e| disk_error(&temp.path, &e))?;
        Ok(written)
    }
    .await;
    // On an error, `temp` is dropped here: the partial file goes, counted as failed.
    let bytes = stored?;
    let replaced = tokio::fs::try_exists(&target).await.unwrap_or(false);
    tokio::fs::rename(&temp.path, &target)
        .await
        .map_err(|e| disk_error(&target, &e))?;
    temp.kept();
    service
        .stats
        .0
        .receipts_stored
        .fetch_add(1, Ordering::Relaxed);
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(Receipt { user, name, bytes })).into_response())
}

/// A receipt's temporary file, removed and counted as failed when dropped — on every path but
/// success, which renames it and calls [`Partial::kept`] — including when the request's future
/// is dropped mid-body (its connection went away).
struct Partial {
    path: PathBuf,
    stats: Stats,
}

impl Partial {
    /// The file was renamed into place: nothing to remove.
    fn kept(mut self) {
        self.path = PathBuf::new();
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        self.stats.0.receipts_failed.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "statements: cannot remove a partial receipt");
        }
    }
}

/// A suffix that keeps two uploads of one name apart: the time and a counter.
fn unique_suffix(stats: &Stats) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = stats.0.receipts_stored.load(Ordering::Relaxed) + stats.receipts_failed();
    (u64::from(nanos) << 20) ^ n ^ u64::from(std::process::id())
}

fn too_large(limit: u64) -> JsonError {
    JsonError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("a receipt may have at most {limit} bytes"),
    )
}

fn disk_error(path: &FsPath, e: &std::io::Error) -> JsonError {
    tracing::error!(path = %path.display(), error = %e, "statements: cannot store a receipt");
    JsonError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage_failed",
        "the receipt could not be stored",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let r = |s: &'static str| parse_range(&HeaderValue::from_static(s), 100);
        assert_eq!(r("bytes=0-9"), Range::Bytes(0, 10));
        assert_eq!(r("bytes=90-"), Range::Bytes(90, 100));
        assert_eq!(r("bytes=90-1000"), Range::Bytes(90, 100));
        assert_eq!(r("bytes=-10"), Range::Bytes(90, 100));
        assert_eq!(r("bytes=-1000"), Range::Bytes(0, 100));
        assert_eq!(r("bytes=100-"), Range::Unsatisfiable);
        assert_eq!(r("bytes=100-200"), Range::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Range::Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes 0-1",
        ] {
            assert_eq!(r(ignored), Range::Ignored, "{ignored}");
        }
    }
}
