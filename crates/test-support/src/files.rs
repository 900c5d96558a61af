//! The streamed file routes' scenarios (`/v1/files/…`, docs/files.md), written once for every
//! gateway that has them: bff-web's and bff-mobile's `tests/files.rs` start the real gateway
//! binary and the statements service, and run these against them.
//!
//! Memory is the gateway process's own, from /proc: its peak resident set (VmHWM) is reset
//! (`/proc/PID/clear_refs` ← `5`) once the gateway has served a small transfer of each kind, and
//! read after the large one. Bodies are made cheaply (one pre-made chunk sent again and again)
//! and read without being kept, so the test process's own work stays small.
//!
//! This module knows neither the gateways nor the service: the caller passes their addresses,
//! the gateway's process id and a view of the service's counters ([`Backend`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use reqwest::header;

use crate::hostile::peak_rss_kib;

/// Most the gateway's peak resident memory may grow over a large transfer, in KiB (16 MiB).
pub const MAX_GROWTH_KIB: u64 = 16 * 1024;

/// Bytes of one CSV row of a statement (the service's fixed width).
pub const ROW_BYTES: u64 = 83;

/// Bytes of a statement's header line.
pub const HEADER_BYTES: u64 = 35;

/// What the service has done so far, as its counters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Statement bodies dropped before their end.
    pub downloads_dropped: u64,
    /// Statement bytes handed to the service's connections.
    pub bytes_sent: u64,
    /// Receipts stored whole.
    pub receipts_stored: u64,
    /// Receipts refused or abandoned once their body had started.
    pub receipts_failed: u64,
}

/// The statements service as the scenarios see it.
pub trait Backend: Sync {
    /// Its counters now.
    fn counters(&self) -> Counters;
    /// Its base URL (`http://…`), to compare with what the gateway passed through.
    fn url(&self) -> String;
    /// Where it stores `user`'s receipts.
    fn receipts_of(&self, user: &str) -> PathBuf;
}

/// One gateway under test: where it listens, its process and a token of the user `alice`.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// `http://{addr}`.
    pub url: String,
    /// Its process id (its memory is read from /proc).
    pub pid: u32,
    /// A valid bearer token of `alice`.
    pub token: String,
}

impl Gateway {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    fn put(&self, path: &str) -> reqwest::RequestBuilder {
        client()
            .put(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }
}

/// A client without a total timeout (large bodies take a while), bounded while connecting.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// The rows of a statement of at least `bytes` bytes.
pub fn rows_for(bytes: u64) -> u64 {
    bytes.saturating_sub(HEADER_BYTES).div_ceil(ROW_BYTES)
}

/// Resets the process's peak resident set to its resident set now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

/// Reads a body to its end without keeping it; returns its length and its last 83 bytes.
async fn drain(response: reqwest::Response) -> (u64, Vec<u8>) {
    let mut stream = response.bytes_stream_compat();
    let mut total = 0u64;
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the body arrives whole");
        total += chunk.len() as u64;
        if chunk.len() >= ROW_BYTES as usize {
            tail = chunk[chunk.len() - ROW_BYTES as usize..].to_vec();
        } else {
            tail.extend_from_slice(&chunk);
            let cut = tail.len().saturating_sub(ROW_BYTES as usize);
            tail.drain(..cut);
        }
    }
    (total, tail)
}

/// `reqwest::Response::chunk` as a stream (the `stream` feature stays off in the workspace).
trait ChunkStream {
    fn bytes_stream_compat(self) -> Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;
}

impl ChunkStream for reqwest::Response {
    fn bytes_stream_compat(self) -> Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>> {
        Box::pin(futures::stream::unfold(self, |mut r| async move {
            match r.chunk().await {
                Ok(Some(c)) => Some((Ok(c), r)),
                Ok(None) => None,
                Err(e) => Some((Err(e), r)),
            }
        }))
    }
}

/// A request body streamed from `chunks` (`length` declared when given).
pub fn streamed_body(
    chunks: impl Stream<Item = Bytes> + Send + 'static,
    length: Option<u64>,
) -> reqwest::Body {
    reqwest::Body::wrap(StreamBody {
        chunks: Mutex::new(Box::pin(chunks)),
        length,
    })
}

struct StreamBody {
    chunks: Mutex<Pin<Box<dyn Stream<Item = Bytes> + Send>>>,
    length: Option<u64>,
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let chunks = self
            .get_mut()
            .chunks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        chunks
            .as_mut()
            .poll_next(cx)
            .map(|c| c.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.length.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

/// `count` copies of one 256 KiB chunk of bytes `0..=255`.
fn repeated(count: usize) -> impl Stream<Item = Bytes> + Send + 'static {
    let chunk = Bytes::from(
        (0..256 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    futures::stream::iter(std::iter::repeat_n(chunk, count))
}

/// A small download and a small upload, so the gateway's pools and buffers exist before its
/// peak is reset.
async fn warm_up(gw: &Gateway) {
    let r = gw.get("/v1/files/statements.csv?rows=20000").send().await;
    let (len, _) = drain(r.expect("a warm-up download")).await;
    assert_eq!(len, HEADER_BYTES + 20_000 * ROW_BYTES);
    let r = gw
        .put("/v1/files/receipts/warm-up.bin")
        .body(streamed_body(repeated(8), Some(8 * 256 * 1024)))
        .send()
        .await
        .expect("a warm-up upload");
    assert!(r.status().is_success(), "{}", r.status());
}

/// A statement of at least `bytes` bytes downloaded through the gateway whole, with the right
/// length and last row, while the gateway's peak memory grows by less than [`MAX_GROWTH_KIB`].
/// Returns the growth in KiB.
pub async fn large_download(gw: &Gateway, bytes: u64) -> u64 {
    warm_up(gw).await;
    let before = crate::hostile::rss_kib(gw.pid);
    reset_peak(gw.pid);
    let rows = rows_for(bytes);
    let r = gw
        .get(&format!("/v1/files/statements.csv?rows={rows}"))
        .send()
        .await
        .expect("the download starts");
    assert_eq!(r.status(), 200);
    let declared = r.content_length().expect("a Content-Length");
    assert_eq!(declared, HEADER_BYTES + rows * ROW_BYTES);
    let (len, last) = drain(r).await;
    assert_eq!(len, declared);
    let last = String::from_utf8(last).expect("CSV text");
    assert!(last.starts_with(&format!("{rows:012},")), "{last}");
    let growth = peak_rss_kib(gw.pid).saturating_sub(before);
    assert!(
        growth < MAX_GROWTH_KIB,
        "the gateway grew by {growth} KiB over a {len}-byte download"
    );
    growth
}

/// `bytes` (a multiple of 256 KiB) uploaded as a receipt through the gateway, stored whole by
/// the service, while the gateway's peak memory grows by less than [`MAX_GROWTH_KIB`]. Returns
/// the growth in KiB.
pub async fn large_upload(gw: &Gateway, backend: &dyn Backend, bytes: u64) -> u64 {
    warm_up(gw).await;
    let before = crate::hostile::rss_kib(gw.pid);
    reset_peak(gw.pid);
    let chunks = usize::try_from(bytes / (256 * 1024)).expect("a chunk count");
    let r = gw
        .put("/v1/files/receipts/large.bin")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(streamed_body(repeated(chunks), Some(bytes)))
        .send()
        .await
        .expect("the upload is answered");
    let status = r.status();
    let body: serde_json::Value = r.json().await.expect("a JSON receipt");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["bytes"], bytes, "{body}");
    let growth = peak_rss_kib(gw.pid).saturating_sub(before);
    let stored = backend.receipts_of("alice").join("large.bin");
    let size = std::fs::metadata(&stored)
        .expect("the receipt is stored")
        .len();
    assert_eq!(size, bytes);
    std::fs::remove_file(&stored).expect("remove the receipt");
    assert!(
        growth < MAX_GROWTH_KIB,
        "the gateway grew by {growth} KiB over a {bytes}-byte upload"
    );
    growth
}

/// A client reading about 1 MiB/s for `seconds`: the service sends only a bounded amount more
/// than the client has received (the buffers between them, the sockets' included), and the
/// gateway's memory stays flat. Returns (bytes received, bytes the service sent meanwhile, the
/// gateway's growth in KiB).
pub async fn slow_reader(gw: &Gateway, backend: &dyn Backend, seconds: u64) -> (u64, u64, u64) {
    // The most the service may be ahead of the client: the kernel buffers of the two sockets
    // on the way (each at most the largest send plus receive buffer the kernel grows to), and
    // 8 MiB for the user-space buffers of the three processes. An unbounded pass-through would
    // be ahead by most of the file (1 GiB) within seconds.
    let max_ahead = 2 * (tcp_buffer_max("tcp_wmem") + tcp_buffer_max("tcp_rmem")) + (8 << 20);
    warm_up(gw).await;
    let before = crate::hostile::rss_kib(gw.pid);
    reset_peak(gw.pid);
    let sent_before = backend.counters().bytes_sent;
    let rows = rows_for(1024 * 1024 * 1024);
    let r = gw
        .get(&format!("/v1/files/statements.csv?rows={rows}"))
        .send()
        .await
        .expect("the download starts");
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream_compat();
    let mut received = 0u64;
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let chunk = stream.next().await.expect("more").expect("a chunk");
        received += chunk.len() as u64;
        // Pace to 1 MiB/s: wait until the time this many bytes are due.
        let due = Duration::from_secs_f64(received as f64 / (1024.0 * 1024.0));
        tokio::time::sleep_until(start + due).await;
    }
    let sent = backend.counters().bytes_sent - sent_before;
    let growth = peak_rss_kib(gw.pid).saturating_sub(before);
    drop(stream);
    assert!(
        sent <= received + max_ahead,
        "the service sent {sent} bytes for {received} received (at most {max_ahead} ahead)"
    );
    assert!(growth < MAX_GROWTH_KIB, "the gateway grew by {growth} KiB");
    (received, sent, growth)
}

/// The largest buffer the kernel grows a TCP socket's `which` (`tcp_rmem`, `tcp_wmem`) to.
fn tcp_buffer_max(which: &str) -> u64 {
    let path = format!("/proc/sys/net/ipv4/{which}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}: {text:?}"))
}

/// A download cut after `cut` bytes resumes with `Range: bytes=cut-` and `If-Range`: 206, the
/// right `Content-Range`, and with the first part exactly the service's bytes; a range in the
/// middle is exact too; a stale `If-Range` gets the whole file.
pub async fn range_resume(gw: &Gateway, backend: &dyn Backend) {
    let rows = 30_000u64;
    let whole = client()
        .get(format!("{}/v1/statements/alice?rows={rows}", backend.url()))
        .send()
        .await
        .expect("the service answers")
        .bytes()
        .await
        .expect("the whole statement");
    let len = whole.len() as u64;
    let path = format!("/v1/files/statements.csv?rows={rows}");
    // The first attempt, cut off part-way.
    let r = gw.get(&path).send().await.expect("a download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::ACCEPT_RANGES], "bytes");
    let etag = r.headers()[header::ETAG].clone();
    let mut stream = r.bytes_stream_compat();
    let mut first = Vec::new();
    while (first.len() as u64) < len / 3 {
        first.extend_from_slice(&stream.next().await.expect("more").expect("a chunk"));
    }
    drop(stream);
    let cut = first.len() as u64;
    let r = gw
        .get(&path)
        .header(header::RANGE, format!("bytes={cut}-"))
        .header(header::IF_RANGE, etag.clone())
        .send()
        .await
        .expect("the resumed download");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()[header::CONTENT_RANGE],
        format!("bytes {cut}-{}/{len}", len - 1).as_str()
    );
    assert_eq!(r.content_length(), Some(len - cut));
    let rest = r.bytes().await.expect("the rest");
    first.extend_from_slice(&rest);
    assert!(first == whole, "the resumed download is the statement");
    // A range in the middle.
    let r = gw
        .get(&path)
        .header(header::RANGE, "bytes=1000-1999")
        .send()
        .await
        .expect("a range");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("the range"), whole.slice(1000..2000));
    // A stale validator: the whole statement again.
    let r = gw
        .get(&path)
        .header(header::RANGE, format!("bytes={cut}-"))
        .header(header::IF_RANGE, "\"another-version\"")
        .send()
        .await
        .expect("a download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(len));
    // Past the end.
    let r = gw
        .get(&path)
        .header(header::RANGE, format!("bytes={len}-"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()[header::CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );
}

/// A client that drops a large download part-way: the service sees its body dropped (within
/// 10 s), so the transfer stops there.
pub async fn cancel_reaches_backend(gw: &Gateway, backend: &dyn Backend) {
    let dropped = backend.counters().downloads_dropped;
    let rows = rows_for(4 * 1024 * 1024 * 1024);
    let r = gw
        .get(&format!("/v1/files/statements.csv?rows={rows}"))
        .send()
        .await
        .expect("the download starts");
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream_compat();
    let mut got = 0;
    while got < 1024 * 1024 {
        got += stream.next().await.expect("more").expect("a chunk").len();
    }
    drop(stream);
    let seen = crate::eventually(Duration::from_secs(10), || async {
        backend.counters().downloads_dropped > dropped
    })
    .await;
    assert!(seen, "the service saw the download dropped");
    // And it stopped sending: nothing more goes out once the body is dropped.
    let sent = backend.counters().bytes_sent;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.counters().bytes_sent, sent);
}

/// Uploads over the gateway's `limit` (which must be small, at most 4 MiB) get 413 while the
/// client is still sending: at once from `Content-Length`, and once the streamed bytes pass it
/// without one. The service keeps nothing of either.
pub async fn over_limit_is_refused_early(gw: &Gateway, backend: &dyn Backend, limit: u64) {
    let failed = backend.counters().receipts_failed;
    // Declared too large: refused before the body is read; the body never ends.
    let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
    let r = gw
        .put("/v1/files/receipts/declared.bin")
        .body(streamed_body(rx, Some(limit + 1)))
        .send()
        .await
        .expect("an answer while the body is still open");
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    drop(tx);
    // No length: chunks up to past the limit, then the body stays open.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(4);
    let sender = tokio::spawn(async move {
        use futures::SinkExt as _;
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut sent = 0;
        while sent <= limit + 64 * 1024 {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
            sent += chunk.len() as u64;
        }
        // Keep the body open: the refusal must come before its end.
        std::future::pending::<()>().await;
    });
    let r = gw
        .put("/v1/files/receipts/chunked.bin")
        .body(streamed_body(rx, None))
        .send()
        .await
        .expect("an answer while the body is still open");
    assert_eq!(r.status(), 413);
    sender.abort();
    // The service was told (its body failed) and kept no file, not even a partial one.
    let told = crate::eventually(Duration::from_secs(10), || async {
        backend.counters().receipts_failed > failed
    })
    .await;
    assert!(told, "the service saw the upload fail");
    let dir = backend.receipts_of("alice");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left in {}: {left:?}", dir.display());
}

/// No token, a bad token: 401 on both routes, and the service is never called. Names that are
/// paths, hidden files or parents: 400, nothing stored.
pub async fn refuses_strangers_and_paths(gw: &Gateway, backend: &dyn Backend) {
    let before = backend.counters();
    for token in [None, Some("not.a.token")] {
        for put in [false, true] {
            let url = if put {
                format!("{}/v1/files/receipts/a.txt", gw.url)
            } else {
                format!("{}/v1/files/statements.csv", gw.url)
            };
            let mut request = if put {
                client().put(url).body("x")
            } else {
                client().get(url)
            };
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            let r = request.send().await.expect("an answer");
            assert_eq!(r.status(), 401, "token {token:?}, put {put}");
            assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    for name in [
        "..%2F..%2Fetc%2Fpasswd",
        "..%2F",
        ".hidden",
        "a..b",
        "a%5Cb",
        "a%00b",
    ] {
        let r = gw
            .put(&format!("/v1/files/receipts/{name}"))
            .body("x")
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 400, "{name}");
        let body: serde_json::Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "invalid_name", "{name}: {body}");
    }
    let r = gw
        .get("/v1/files/statements.csv?rows=abc")
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 400);
    assert_eq!(backend.counters(), before, "the service was never called");
}

/// The HS256 secret the gateways under test verify tokens with.
pub const SECRET: &str = "files-suite-secret-0123456789abcdef";

/// Starts the gateway binary `bin` (environment prefix `prefix`) from its shipped example
/// configuration, its `statements` backend at `statements_url`, tokens checked with [`SECRET`],
/// uploads limited to `limit` bytes when given (the configuration's otherwise).
pub fn spawn_gateway(
    bin: &str,
    prefix: &str,
    statements_url: &str,
    limit: Option<u64>,
) -> (crate::process::Spawned, Gateway) {
    let backend = format!("{prefix}__BACKENDS__STATEMENTS__BASE_URL");
    let secret = format!("{prefix}__AUTH__HS256_SECRET");
    let limit_key = format!("{prefix}__FILES__MAX_UPLOAD_BYTES");
    let limit = limit.map(|l| l.to_string());
    let mut env = vec![
        (backend.as_str(), statements_url),
        (secret.as_str(), SECRET),
    ];
    if let Some(limit) = &limit {
        env.push((limit_key.as_str(), limit.as_str()));
    }
    let spawned =
        crate::process::Spawned::start(bin, &crate::process::example_config(bin), prefix, &env);
    let gateway = Gateway {
        url: spawned.url(),
        pid: spawned.pid(),
        token: crate::hostile::good_hs256(SECRET, "alice"),
    };
    (spawned, gateway)
}
