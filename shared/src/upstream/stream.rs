//! Streamed calls: large bodies passed through to and from a backend without being held whole.
//!
//! [`Upstreams::stream`] sends a [`StreamCall`] — its request body, when it has one, an
//! [`Upload`] pulled chunk by chunk as the backend's connection takes it — and hands back the
//! answer's status and headers with its body as a stream of chunks ([`Streamed`]), read from the
//! backend only as fast as the caller pulls it. So memory stays at a few chunks whatever the
//! size, and backpressure runs end to end: a slow reader slows the backend, a slow backend
//! slows the writer. Dropping the answer (or the call's future) closes the backend connection:
//! a caller that goes away cancels the transfer.
//!
//! There is no total deadline (a large file takes as long as it takes). Instead: the answer's
//! head must come within `head_timeout` of the request, or of the last byte of its body; and
//! each body chunk, either way, within `idle_timeout` of the one before. An upload passing
//! `max_bytes` fails the call at once with [`StreamError::TooLarge`], without reading further.
//! A streamed call is never retried (its body cannot be replayed); it goes through the backend's
//! circuit breaker, and its head's outcome is counted in the backend's stats like any call.
//!
//! This module does not know HTTP servers: which headers pass, and what a failure answers, is
//! the caller's (`switchyard_server::streaming`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::{Open, UpstreamError, UpstreamErrorKind, Upstreams, classify};

/// A boxed error, as request bodies carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One streamed request to a backend.
pub struct StreamCall {
    /// The backend's name in the registry.
    pub backend: Arc<str>,
    /// HTTP method.
    pub method: Method,
    /// Path and query, appended to the backend's base URL; starts with `/`.
    pub path: String,
    /// Request headers, as the caller chose to pass them.
    pub headers: HeaderMap,
    /// The request body, streamed.
    pub body: Option<Upload>,
}

/// The timers of a streamed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Longest wait for the answer's head: from the request, or from the end of its body.
    pub head_timeout: Duration,
    /// Longest wait for the next chunk of a body, either way.
    pub idle_timeout: Duration,
}

/// Why a streamed call failed: the backend's side or the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The backend failed (upstream): not reachable, too slow, cut off.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upload passed its `max_bytes` (downstream); the rest was not read.
    #[error("the body is larger than {limit_bytes} bytes")]
    TooLarge {
        /// The upload's limit.
        limit_bytes: u64,
    },
    /// The upload's own source failed (downstream): the client went away, or was too slow.
    #[error("the request body failed: {0}")]
    Body(String),
}

/// A streamed answer: status, headers, and the body as it arrives.
pub struct Streamed {
    /// The backend's status.
    pub status: StatusCode,
    /// The backend's headers.
    pub headers: HeaderMap,
    /// The body's chunks; an error ends it (the backend failed or went silent for
    /// `idle_timeout`).
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

/// A request body streamed to a backend from any stream of chunks, at most `max_bytes` long.
pub struct Upload {
    // A Mutex only to make the body `Sync`, as the HTTP client wants; it is never contended
    // (`get_mut` reaches it through `&mut self`).
    chunks: Mutex<BoxStream<'static, Result<Bytes, BoxError>>>,
    max_bytes: u64,
    length: Option<u64>,
}

impl Upload {
    /// A body of the chunks of `chunks`, failing the call once more than `max_bytes` came;
    /// `length` is its declared length when known (sent as `Content-Length`).
    pub fn new(
        chunks: impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
        max_bytes: u64,
        length: Option<u64>,
    ) -> Self {
        Self {
            chunks: Mutex::new(Box::pin(chunks)),
            max_bytes,
            length,
        }
    }
}

/// A deadline that body progress pushes forward, shared by the call and its upload.
struct Clock {
    start: Instant,
    deadline_ms: AtomicU64,
}

impl Clock {
    fn new(first: Duration) -> Self {
        let clock = Self {
            start: Instant::now(),
            deadline_ms: AtomicU64::new(0),
        };
        clock.push(first);
        clock
    }

    /// The deadline becomes `after` from now.
    fn push(&self, after: Duration) {
        let at = self.start.elapsed() + after;
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        self.deadline_ms.store(ms, Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        self.start + Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }

    /// Resolves when the deadline passes without having been pushed past it meanwhile.
    async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            tokio::time::sleep_until(deadline).await;
            if self.deadline() <= deadline {
                return;
            }
        }
    }
}

/// The upload as the HTTP client pulls it: counted, bounded, and pushing the clock.
struct Body {
    upload: Upload,
    sent: u64,
    clock: Arc<Clock>,
    limits: StreamLimits,
    failure: Arc<Mutex<Option<StreamError>>>,
}

impl Body {
    fn fail(&mut self, e: StreamError) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let message = e.to_string();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        Poll::Ready(Some(Err(message.into())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let chunks = this
            .upload
            .chunks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        match chunks.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                // The body is out: now the backend has `head_timeout` to answer.
                this.clock.push(this.limits.head_timeout);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(StreamError::Body(e.to_string())),
            Poll::Ready(Some(Ok(chunk))) => {
                this.sent += chunk.len() as u64;
                if this.sent > this.upload.max_bytes {
                    let limit_bytes = this.upload.max_bytes;
                    return this.fail(StreamError::TooLarge { limit_bytes });
                }
                this.clock.push(this.limits.idle_timeout);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.upload.length {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}

impl Upstreams {
    /// Makes a streamed call (module docs): the answer's head within `limits.head_timeout`,
    /// then its body as the caller pulls it. Any status is an answer; the caller decides what
    /// a 4xx or 5xx means. Never retried.
    pub async fn stream(
        &self,
        call: StreamCall,
        limits: StreamLimits,
    ) -> Result<Streamed, StreamError> {
        let Some(backend) = self.backend(&call.backend) else {
            return Err(UpstreamError {
                backend: call.backend,
                kind: UpstreamErrorKind::UnknownBackend,
            }
            .into());
        };
        let error = |kind| UpstreamError {
            backend: backend.name.clone(),
            kind,
        };
        let permit = backend
            .breaker
            .acquire()
            .map_err(|Open| error(UpstreamErrorKind::CircuitOpen))?;
        let started = std::time::Instant::now();
        let clock = Arc::new(Clock::new(limits.head_timeout));
        let failure = Arc::new(Mutex::new(None));
        let url = format!("{}{}", backend.base_url, call.path);
        let mut request = backend
            .client
            .request(call.method, url)
            .headers(call.headers);
        if let Some(upload) = call.body {
            clock.push(limits.idle_timeout.max(limits.head_timeout));
            request = request.body(reqwest::Body::wrap(Body {
                upload,
                sent: 0,
                clock: clock.clone(),
                limits,
                failure: failure.clone(),
            }));
        }
        let outcome = tokio::select! {
            sent = request.send() => sent.map_err(classify),
            () = clock.expired() => Err(UpstreamErrorKind::Timeout),
        };
        let caller_failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = caller_failed {
            // The caller's body failed the call: not the backend's fault.
            permit.success();
            return Err(e);
        }
        let response = match outcome {
            Ok(response) => response,
            Err(kind) => {
                permit.failure();
                backend.stats.record(Err(&kind), started.elapsed());
                return Err(error(kind).into());
            }
        };
        let status = response.status();
        let head = if status.is_success() || status.is_redirection() || status.is_client_error() {
            permit.success();
            Ok(())
        } else {
            permit.failure();
            Err(UpstreamErrorKind::Status {
                status: status.as_u16(),
                code: None,
                message: None,
            })
        };
        backend
            .stats
            .record(head.as_ref().map(|_| ()), started.elapsed());
        let headers = response.headers().clone();
        let body = IdleTimed {
            chunks: Box::pin(futures::stream::unfold(
                response,
                |mut response| async move {
                    match response.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), response)),
                        Ok(None) => None,
                        Err(e) => Some((Err(e), response)),
                    }
                },
            )),
            idle: limits.idle_timeout,
            last: Instant::now(),
            timer: None,
            backend: Some(backend.name.clone()),
        };
        Ok(Streamed {
            status,
            headers,
            body: Box::pin(body),
        })
    }
}

/// A backend's answer body, failed when no chunk comes for `idle`. The timer is not moved per
/// chunk: a chunk only notes when it came (one clock read), and the one timer, when it fires,
/// is re-armed from the last chunk if one came meanwhile — a timer operation per idle period,
/// not per chunk.
struct IdleTimed {
    chunks: BoxStream<'static, reqwest::Result<Bytes>>,
    idle: Duration,
    /// When the last chunk came (or the body started).
    last: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The backend's name, for its errors; `None` once the body ended.
    backend: Option<Arc<str>>,
}

impl Stream for IdleTimed {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(backend) = &this.backend else {
            return Poll::Ready(None);
        };
        let failed = |kind| UpstreamError {
            backend: backend.clone(),
            kind,
        };
        match this.chunks.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.last = Instant::now();
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(e))) => {
                let e = failed(classify(e));
                this.backend = None;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                this.backend = None;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        loop {
            let deadline = this.last + this.idle;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired: silent for `idle` since the last chunk (the deadline is from it).
                Poll::Ready(()) if Instant::now() >= this.last + this.idle => {
                    let e = failed(UpstreamErrorKind::Timeout);
                    this.backend = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(()) => {}
            }
        }
    }
}
