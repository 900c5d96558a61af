//! `sse`: an upstream Server-Sent Events endpoint. The source GETs `url` (with the configured
//! headers, `Accept: text/event-stream` and, after a lost connection, `Last-Event-ID`), reads the
//! event stream as the HTML standard says (fields `event`, `data`, `id`, `retry`; comments; CRLF,
//! LF or CR line ends; `data` lines joined with `\n`; an event dispatched on a blank line), and
//! gives each event's `data`, parsed as JSON, with its type (`message` by default) to the rules.
//!
//! The stream is read in bounded memory: a line or an event over `max_message_bytes` is counted
//! (`oversized`) and skipped as it streams by, never buffered whole. An SSE endpoint sends every
//! event to every reader, so nothing is asked for per channel: the connection is open while any
//! channel is wanted and closed when none is, and events for channels nobody wants are dropped.
//!
//! A connection that ends, fails or stays silent for two `keepalive_ms` (a stalled TCP
//! connection; a server's comment lines count as traffic) is reopened with the engine's backoff,
//! and never sooner than the server's `retry:` asked (capped at `reconnect_max_ms`), sending the
//! last event id seen so that the server resumes after it. A connection closed because nothing
//! was wanted starts afresh, without `Last-Event-ID`: its events were for nobody.
//!
//! This module does not follow the standard where it speaks to browsers: a non-2xx answer or one
//! that is not `text/event-stream` is a failed attempt retried with backoff (a browser would give
//! up), and HTTP/2, compression and cookies are not used.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::rules::Inbound;
use super::{End, SourceState};

/// Longest event id remembered; a longer one is ignored, like an id holding NUL.
const MAX_ID_BYTES: usize = 1024;

/// How often the kernel probes an idle upstream connection (TCP keep-alive).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// The UTF-8 byte order mark, skipped once at the start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete event: its type (`message` when none was given) and its data, the `data`
    /// lines joined with `\n`.
    Event {
        /// The event type.
        event: String,
        /// The data.
        data: String,
    },
    /// An event with a line or data over the limit, skipped: the bytes of it seen.
    Oversized(usize),
}

/// An incremental event-stream parser over chunks cut anywhere, holding at most about three
/// times its limit (the line, the data and the event type being read) plus one chunk.
pub(crate) struct Parser {
    limit: usize,
    /// Bytes of the byte order mark matched at the stream's start; `None` once past it.
    bom: Option<usize>,
    /// The line being read (never longer than the limit).
    line: Vec<u8>,
    /// The line being read went over the limit: the rest of it is skipped.
    skipping: bool,
    /// The last line ended with CR: a LF right after it is part of that line end.
    after_cr: bool,
    /// The event being read went over the limit: it is skipped when dispatched.
    oversized: bool,
    /// Bytes of the event being read, for the log of an oversized one.
    event_bytes: usize,
    data: String,
    event_type: String,
    /// The standard's "last event ID buffer".
    id: String,
    /// The id of the last event dispatched; `None` until one is.
    last_id: Option<String>,
    /// The reconnection time the stream asked for, in milliseconds.
    retry_ms: Option<u64>,
    /// The chunk being read, and how far.
    chunk: Bytes,
    pos: usize,
}

impl Parser {
    /// A parser for one stream, with lines and events of at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            bom: Some(0),
            line: Vec::new(),
            skipping: false,
            after_cr: false,
            oversized: false,
            event_bytes: 0,
            data: String::new(),
            event_type: String::new(),
            id: String::new(),
            last_id: None,
            retry_ms: None,
            chunk: Bytes::new(),
            pos: 0,
        }
    }

    /// Gives the parser the stream's next bytes; read what they complete with
    /// [`Parser::next_item`] until it returns `None` (bytes still unread when more are pushed
    /// are kept, at the cost of a copy).
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if self.pos < self.chunk.len() {
            // Bytes left unread (the caller stopped early): kept, ahead of the new ones.
            let mut joined =
                bytes::BytesMut::with_capacity(self.chunk.len() - self.pos + chunk.len());
            joined.extend_from_slice(&self.chunk[self.pos..]);
            joined.extend_from_slice(&chunk);
            self.chunk = joined.freeze();
        } else {
            self.chunk = chunk;
        }
        self.pos = 0;
    }

    /// The id of the last event dispatched on this stream (the standard's "last event ID
    /// string"; empty when the server reset it); `None` until an event is dispatched.
    pub(crate) fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection time the stream last asked for (`retry:`), if any.
    pub(crate) fn retry(&self) -> Option<Duration> {
        self.retry_ms.map(Duration::from_millis)
    }

    /// The next event the pushed bytes complete.
    pub(crate) fn next_item(&mut self) -> Option<Parsed> {
        while self.pos < self.chunk.len() {
            let byte = self.chunk[self.pos];
            if let Some(matched) = self.bom {
                if byte == BOM[matched] {
                    self.pos += 1;
                    self.bom = (matched + 1 < BOM.len()).then_some(matched + 1);
                    continue;
                }
                // Not a byte order mark: what matched of it is text of the first line.
                self.bom = None;
                self.take(&BOM[..matched]);
            }
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    self.pos += 1;
                    continue;
                }
            }
            let chunk = self.chunk.clone();
            let rest = &chunk[self.pos..];
            match rest.iter().position(|b| *b == b'\r' || *b == b'\n') {
                None => {
                    self.take(rest);
                    self.pos = chunk.len();
                }
                Some(i) => {
                    self.take(&rest[..i]);
                    self.after_cr = rest[i] == b'\r';
                    self.event_bytes = self.event_bytes.saturating_add(1);
                    self.pos += i + 1;
                    if let Some(item) = self.end_line() {
                        return Some(item);
                    }
                }
            }
        }
        None
    }

    /// Adds bytes to the line being read, or skips them once it is over the limit.
    fn take(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.event_bytes = self.event_bytes.saturating_add(bytes.len());
        if self.skipping {
            return;
        }
        if self.line.len() + bytes.len() > self.limit {
            let comment = self.line.first().or(bytes.first()) == Some(&b':');
            // An over-long comment is dropped with no harm done; any other line spoils its event.
            if !comment {
                self.oversized = true;
            }
            self.skipping = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Processes the line just ended.
    fn end_line(&mut self) -> Option<Parsed> {
        if self.skipping {
            self.skipping = false;
            return None;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event_type = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() > self.limit {
                    self.oversized = true;
                    self.data = String::new();
                } else if !self.oversized {
                    self.data.push_str(&value);
                    self.data.push('\n');
                }
            }
            // An id holding NUL is ignored.
            b"id" if !value.contains('\0') => self.id = value.into_owned(),
            // Only digits; too many for a u64 are no sensible time and ignored too.
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
        None
    }

    /// A blank line: the event read so far, if it has data.
    fn dispatch(&mut self) -> Option<Parsed> {
        self.last_id = Some(self.id.clone());
        let bytes = std::mem::take(&mut self.event_bytes);
        let event_type = std::mem::take(&mut self.event_type);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.oversized) {
            return Some(Parsed::Oversized(bytes));
        }
        if data.is_empty() {
            return None;
        }
        data.pop();
        let event = if event_type.is_empty() {
            "message".to_owned()
        } else {
            event_type
        };
        Some(Parsed::Event { event, data })
    }
}

/// What outlives one connection: where to resume, and when the next attempt may start.
#[derive(Default)]
struct Resume {
    /// The last event id seen (empty: none, no `Last-Event-ID`).
    last_id: String,
    /// The reconnection time the server last asked for.
    retry: Option<Duration>,
    /// When the last connection was lost or the last attempt failed (`None` after a closing on
    /// purpose).
    lost_at: Option<Instant>,
}

/// Starts the source's task; errors name the key (`sources.NAME.url`, `sources.NAME.tls`).
pub(super) fn spawn(state: Arc<SourceState>) -> Result<(), String> {
    let client = client(&state)?;
    let resume = Arc::new(tokio::sync::Mutex::new(Resume::default()));
    tokio::spawn(state.run(move |state| {
        let (client, resume) = (client.clone(), resume.clone());
        async move {
            let mut resume = resume.lock().await;
            let ended = attempt(&state, &client, &mut resume).await;
            match &ended {
                Ok(End::Idle) => {
                    // Its events were for nobody: a new connection starts from now.
                    resume.last_id.clear();
                    resume.lost_at = None;
                }
                Ok(End::Stopped) => {}
                Ok(End::Lost { .. }) | Err(_) => resume.lost_at = Some(Instant::now()),
            }
            ended
        }
    }));
    Ok(())
}

/// The HTTP client of the source: its connect timeout, TLS of an `https://` url, no proxy from
/// the environment, no pooled idle connections (a stream is never reused).
fn client(state: &SourceState) -> Result<reqwest::Client, String> {
    let config = &state.checked.config;
    let name = &state.name;
    let url = reqwest::Url::parse(&config.url)
        .map_err(|e| format!("sources.{name}.url: `{}`: {e}", config.url))?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout())
        .tcp_nodelay(true)
        .tcp_keepalive(TCP_KEEPALIVE)
        .pool_max_idle_per_host(0)
        .no_proxy();
    if url.scheme() == "https" {
        let tls = crate::tls::client_config(&config.tls, &[b"http/1.1"])
            .map_err(|e| format!("sources.{name}.tls: {e}"))?;
        // Never downgraded to plain HTTP by a redirect.
        builder = builder
            .use_preconfigured_tls((*tls).clone())
            .https_only(true);
    } else if config.tls.is_set() {
        return Err(format!(
            "sources.{name}.tls: TLS settings need an https:// url"
        ));
    }
    builder
        .build()
        .map_err(|e| format!("sources.{name}: cannot build the HTTP client: {e}"))
}

/// One attempt: waits what the server's `retry:` still asks, connects, serves.
async fn attempt(
    state: &SourceState,
    client: &reqwest::Client,
    resume: &mut Resume,
) -> Result<End, String> {
    let config = &state.checked.config;
    if let (Some(retry), Some(lost_at)) = (resume.retry, resume.lost_at) {
        // The engine has already waited its backoff since `lost_at`: this only adds the rest.
        let until = lost_at + retry.min(Duration::from_millis(config.reconnect_max_ms));
        while Instant::now() < until {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = state.changed.notified() => {
                    if state.is_idle() {
                        return Ok(End::Idle);
                    }
                }
            }
        }
    }
    let response = connect(state, client, &resume.last_id).await?;
    state.opened();
    Ok(serve(state, response, resume).await)
}

/// Sends the request; anything but a 2xx `text/event-stream` answer is a failed attempt.
async fn connect(
    state: &SourceState,
    client: &reqwest::Client,
    last_id: &str,
) -> Result<reqwest::Response, String> {
    let config = &state.checked.config;
    let mut request = client
        .get(&config.url)
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    for (name, value) in &config.headers {
        // Checked when the configuration was read.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            request = request.header(name, value);
        }
    }
    if !last_id.is_empty() {
        // Ids that are no header value were not kept (see `serve`).
        if let Ok(value) = http::HeaderValue::from_bytes(last_id.as_bytes()) {
            request = request.header("last-event-id", value);
        }
    }
    let timeout = config.connect_timeout();
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => return Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => return Err(error_chain(&e)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        return Err(format!("answered {status}, not 2xx"));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("text/event-stream") {
        let shown: String = content_type.chars().take(64).collect();
        return Err(format!(
            "answered with content-type `{shown}`, not text/event-stream"
        ));
    }
    Ok(response)
}

/// An error with its causes, which say what actually failed (refused, reset, a TLS alert).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads one open stream until the source stops, nothing is wanted, or the stream ends, fails
/// or stalls.
async fn serve(state: &SourceState, mut response: reqwest::Response, resume: &mut Resume) -> End {
    let config = &state.checked.config;
    let name = state.name.as_str();
    let silence = Duration::from_millis(config.keepalive_ms.max(10)).saturating_mul(2);
    let mut parser = Parser::new(config.max_message_bytes);
    let mut healthy = false;
    let mut deadline = Instant::now() + silence;
    loop {
        if state.is_idle() {
            // Dropping the response closes the connection.
            return End::Idle;
        }
        let read = tokio::select! {
            () = state.stop.cancelled() => return End::Stopped,
            () = state.changed.notified() => continue,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(source = %name, ?silence, "upstream event stream silent; reconnecting");
                // The server did answer; a silent stream is no reason to back off further.
                return End::Lost { healthy: true };
            }
            read = response.chunk() => read,
        };
        let chunk = match read {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                tracing::warn!(source = %name, "upstream ended the event stream; reconnecting");
                return End::Lost { healthy };
            }
            Err(error) => {
                tracing::warn!(source = %name, error = %error_chain(&error), "upstream read failed; reconnecting");
                return End::Lost { healthy };
            }
        };
        if chunk.is_empty() {
            continue;
        }
        healthy = true;
        deadline = Instant::now() + silence;
        parser.push(chunk);
        while let Some(item) = parser.next_item() {
            match item {
                Parsed::Event { event, data } => {
                    match serde_json::from_str::<serde_json::Value>(&data) {
                        Ok(json) => {
                            let outcome = state.checked.rules.apply(Inbound {
                                event: Some(&event),
                                channel: None,
                                json: &json,
                            });
                            state.deliver(outcome, &data).await;
                        }
                        Err(e) => {
                            state.unparsable(
                                &format!("event `{event}`: data is not JSON: {e}"),
                                &data,
                            );
                        }
                    }
                }
                Parsed::Oversized(bytes) => state.oversized(bytes),
            }
            remember(state, &parser, resume);
        }
        remember(state, &parser, resume);
    }
}

/// Keeps what the stream said about resuming: its last event id (when it can be sent back as
/// `Last-Event-ID`) and its reconnection time.
fn remember(state: &SourceState, parser: &Parser, resume: &mut Resume) {
    if let Some(id) = parser.last_event_id()
        && id != resume.last_id
    {
        if id.len() <= MAX_ID_BYTES && http::HeaderValue::from_bytes(id.as_bytes()).is_ok() {
            resume.last_id.clear();
            resume.last_id.push_str(id);
        } else {
            let shown: String = id.chars().take(super::LOGGED_CHARS).collect();
            tracing::debug!(source = %state.name, id = %shown, "event id ignored: too long or not a header value");
        }
    }
    if let Some(retry) = parser.retry() {
        resume.retry = Some(retry);
    }
}

#[cfg(test)]
mod tests;
