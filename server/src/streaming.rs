//! The streamed pass-through of large bodies between a client and a backend: the HTTP side of
//! the core's streamed calls ([`Upstreams::stream`]), written once for every gateway's file
//! routes (`[files]`, docs/files.md).
//!
//! A [`Passthrough`] forwards a download (`GET`) or an upload (`PUT`) to one backend, the body
//! streamed chunk by chunk both ways — never held whole, so a gateway's memory does not grow
//! with a file — with backpressure end to end: the client's socket is read only as fast as the
//! backend takes the bytes, the backend's only as fast as the client reads. The route chooses
//! the backend path (and authenticates: this module does not know who may do what); here,
//! only the headers a file transfer needs pass, both ways: `Range`, `If-Range` and the
//! validators down; status, length, `Content-Range`, `Accept-Ranges`, `ETag` and the like back,
//! so ranges, `206` and resumable downloads work through it.
//!
//! Limits: an upload longer than `max_upload_bytes` gets `413` before anything is read when its
//! `Content-Length` says so, otherwise as soon as the bytes streamed pass it (the backend's
//! request is then dropped, and the backend discards what it had). The server's whole-body read
//! deadline becomes an idle timeout ([`BodyDeadline`]); the backend's answer head must come
//! within `head_timeout_ms`, each chunk within `idle_timeout_ms`. A client that goes away drops
//! the backend call with it, which closes the backend's connection: the transfer stops there.
//!
//! A refused upload's remaining body is read and thrown away for at most [`LINGER`] before the
//! connection closes, since closing a socket with unread data resets it, and the client would
//! then lose the refusal; not when the client asked `Expect: 100-continue` (it sent nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use switchyard_core::auth::AuthError;
use switchyard_core::upstream::{
    BoxError, StreamCall, StreamError, StreamLimits, Streamed, Upload, Upstreams,
};

use crate::errors::{JsonError, upstream_error};

/// How long the rest of a refused upload is read and discarded before the connection closes.
pub const LINGER: Duration = Duration::from_secs(1);

/// Request headers a download passes to the backend.
const DOWNLOAD_HEADERS: [HeaderName; 5] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::ACCEPT,
];

/// Request headers an upload passes to the backend.
const UPLOAD_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::CONTENT_LENGTH];

/// Answer headers passed back to the client.
const ANSWER_HEADERS: [HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CONTENT_DISPOSITION,
    header::CACHE_CONTROL,
    header::LOCATION,
];

/// `[files]`: the limits of a gateway's streamed file routes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Largest upload passed to the backend, in bytes; a larger one gets 413 (at once when its
    /// `Content-Length` says so, otherwise as soon as the streamed bytes pass it).
    pub max_upload_bytes: u64,
    /// Longest wait for the backend's answer head, from the request (or from the end of an
    /// upload's body), in milliseconds. There is no total deadline: a large file takes as long as
    /// it takes, as long as it keeps moving.
    pub head_timeout_ms: u64,
    /// Longest wait for the next chunk of a body, from the client or from the backend, in
    /// milliseconds; then the transfer is cut off.
    pub idle_timeout_ms: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 1024 * 1024 * 1024,
            head_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
        }
    }
}

/// The deadline of a request's body, which the server puts in every request's extensions when
/// the request has a body: a streamed route turns the whole-body deadline into an idle timeout.
#[derive(Debug, Clone, Default)]
pub struct BodyDeadline(Arc<AtomicU64>);

impl BodyDeadline {
    /// From now on, the body is cut off only when no chunk came for `timeout` (at least 1 ms).
    pub fn idle(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.store(ms, Ordering::Relaxed);
    }

    /// The idle timeout a route set, if any.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// A streamed pass-through to one backend (module docs).
#[derive(Debug, Clone)]
pub struct Passthrough {
    upstreams: Arc<Upstreams>,
    backend: Arc<str>,
    max_upload_bytes: u64,
    limits: StreamLimits,
}

impl Passthrough {
    /// A pass-through to `backend` of `upstreams`, with the limits of `config`. Fails when the
    /// backend is not configured or a limit is 0, naming the key.
    pub fn new(
        upstreams: Arc<Upstreams>,
        backend: &str,
        config: &FilesConfig,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            upstreams.backend(backend).is_some(),
            "backends.{backend} must be configured for the file routes"
        );
        for (key, value) in [
            ("files.max_upload_bytes", config.max_upload_bytes),
            ("files.head_timeout_ms", config.head_timeout_ms),
            ("files.idle_timeout_ms", config.idle_timeout_ms),
        ] {
            anyhow::ensure!(value >= 1, "{key} must be at least 1");
        }
        Ok(Self {
            upstreams,
            backend: backend.into(),
            max_upload_bytes: config.max_upload_bytes,
            limits: StreamLimits {
                head_timeout: Duration::from_millis(config.head_timeout_ms),
                idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            },
        })
    }

    /// GETs `path` of the backend with the client's range headers, and streams its answer back.
    pub async fn download(&self, path: String, headers: &HeaderMap) -> Response {
        let call = StreamCall {
            backend: self.backend.clone(),
            method: Method::GET,
            path,
            headers: pick(headers, &DOWNLOAD_HEADERS),
            body: None,
        };
        match self.upstreams.stream(call, self.limits).await {
            Ok(answer) => pass_back(answer),
            Err(e) => refusal(e),
        }
    }

    /// PUTs the client's body to `path` of the backend, streamed and bounded, and streams the
    /// backend's answer back.
    pub async fn upload(&self, path: String, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body = ClientBody::new(&parts, body, self.limits.idle_timeout);
        let declared = match content_length(&parts.headers) {
            Ok(n) => n,
            Err(e) => {
                return JsonError::bad_request("invalid_request", e.to_string()).into_response();
            }
        };
        if declared.is_some_and(|n| n > self.max_upload_bytes) {
            return too_large(self.max_upload_bytes);
        }
        let call = StreamCall {
            backend: self.backend.clone(),
            method: Method::PUT,
            path,
            headers: pick(&parts.headers, &UPLOAD_HEADERS),
            body: Some(Upload::new(body, self.max_upload_bytes, declared)),
        };
        match self.upstreams.stream(call, self.limits).await {
            Ok(answer) => pass_back(answer),
            Err(e) => refusal(e),
        }
    }
}

/// A 401 for a file route: `error` is why the token was refused, `None` when there was none.
pub fn unauthorized(error: Option<&AuthError>) -> Response {
    let (code, message) = match error {
        Some(e) => (e.code(), e.to_string()),
        None => (
            "unauthenticated",
            "sign in first: send a bearer token".into(),
        ),
    };
    let mut r = JsonError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The headers of `names` in `from`.
fn pick(from: &HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        for value in from.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// A `Content-Length` that is not one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Content-Length")]
pub struct InvalidLength;

/// The declared length: `None` without one, an error when it is not one number.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidLength> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidLength);
    }
    let text = value.to_str().map_err(|_| InvalidLength)?;
    text.parse().map(Some).map_err(|_| InvalidLength)
}

/// The backend's answer, streamed back with the headers a file transfer needs. A 5xx is not
/// passed on: it is the backend's failure, answered in the shared contract.
fn pass_back(answer: Streamed) -> Response {
    if answer.status.is_server_error() {
        tracing::warn!(status = %answer.status, "files: the backend failed");
        return JsonError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("the backend answered {}", answer.status),
        )
        .into_response();
    }
    let mut response = Response::new(Body::from_stream(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = pick(&answer.headers, &ANSWER_HEADERS);
    response
}

fn refusal(e: StreamError) -> Response {
    match e {
        StreamError::TooLarge { limit_bytes } => too_large(limit_bytes),
        StreamError::Body(why) => {
            tracing::debug!(error = %why, "files: the client's body failed");
            JsonError::bad_request("body_failed", format!("the request body failed: {why}"))
                .into_response()
        }
        StreamError::Upstream(e) => upstream_error(&e).into_response(),
    }
}

fn too_large(limit: u64) -> Response {
    let mut r = JsonError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is larger than {limit} bytes"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A client's request body as a stream of chunks, for a route that streams it (a pass-through,
/// or a service storing it): the server's whole-body deadline becomes an idle timeout, and when
/// it is dropped before its end the rest is read and discarded for at most [`LINGER`] in the
/// background (module docs).
pub struct ClientBody {
    chunks: Option<BodyDataStream>,
    linger: bool,
}

impl ClientBody {
    /// The body of the request whose head is `parts`, cut off when no chunk comes for `idle`.
    pub fn new(parts: &axum::http::request::Parts, body: Body, idle: Duration) -> Self {
        if let Some(deadline) = parts.extensions.get::<BodyDeadline>() {
            deadline.idle(idle);
        }
        let continues = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Self {
            chunks: Some(body.into_data_stream()),
            linger: !continues,
        }
    }
}

impl Stream for ClientBody {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(chunks) = this.chunks.as_mut() else {
            return Poll::Ready(None);
        };
        match chunks.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Err(e))) => {
                this.chunks = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.chunks = None;
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let (Some(mut chunks), true) = (self.chunks.take(), self.linger) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let drain = async { while let Some(Ok(_)) = chunks.next().await {} };
                let _ = tokio::time::timeout(LINGER, drain).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_plain_content_length_counts() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), Ok(None));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(content_length(&h), Ok(Some(12)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(content_length(&h), Err(InvalidLength));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("-1"));
        assert_eq!(content_length(&h), Err(InvalidLength));
    }

    #[test]
    fn only_file_headers_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        let picked = pick(&h, &DOWNLOAD_HEADERS);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[header::RANGE], "bytes=10-");
    }
}
