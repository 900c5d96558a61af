//! The shared HTTP error contract: the JSON error body `{"error": {"code", "message",
//! "backend"?}}` that bff-mobile, bff-device and the demo services answer with, and the mappings
//! to it written once here — axum's extractor rejections ([`rejection`]) and backend failures
//! ([`upstream_error`]).
//!
//! `code` is stable and meant for programs; `message` is for people and may change; `backend`
//! names the backend at fault when the failure came from upstream. A rate-limit refusal has the
//! same shape with `retry_after_s` beside them (`crate::ratelimit::json_refusal`). bff-device's
//! `/v1` answers in this shape are frozen (its golden files).
//!
//! It is a wire format, which is why it lives here and not in the core: bff-web answers GraphQL
//! errors instead, and each gateway decides which of its failures map to which code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_core::upstream::{UpstreamError, UpstreamErrorKind};

/// A JSON error answer: `{"error": {"code": ..., "message": ..., "backend": ...}}`.
///
/// `code` is stable and meant for programs; `message` is for people and may change.
#[derive(Debug, Clone)]
pub struct JsonError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, such as `invalid_amount`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The backend at fault, when the failure came from upstream.
    pub backend: Option<String>,
}

impl JsonError {
    /// An error without a backend.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            backend: None,
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Names the backend the failure came from.
    pub fn with_backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(b) = self.backend {
            body["backend"] = json!(b);
        }
        (self.status, axum::Json(json!({ "error": body }))).into_response()
    }
}

/// Turns axum's extractor rejections (bad JSON, bad query string, body too large) into
/// [`JsonError`]s, so clients always get the JSON error shape.
///
/// A body that parses but does not fit the expected shape is a 400 `invalid_request` like any
/// other malformed request (axum says 422), so that 422 stays free for business refusals such as
/// `limit_exceeded`.
pub fn rejection(rejection: impl IntoResponse + std::fmt::Display) -> JsonError {
    let text = rejection.to_string();
    let (status, code) = match rejection.into_response().status() {
        StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        _ => (StatusCode::BAD_REQUEST, "invalid_request"),
    };
    JsonError::new(status, code, text)
}

/// A backend's failure (a failed required part): 504 `upstream_timeout` on a timeout, 502
/// `upstream_error` otherwise, naming the backend. The failure is logged here, once.
pub fn upstream_error(e: &UpstreamError) -> JsonError {
    tracing::warn!(backend = %e.backend, error = %e, "backend call failed");
    let (status, code) = match e.kind {
        UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
    };
    JsonError::new(status, code, e.to_string()).with_backend(e.backend.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: JsonError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn backend_failures_name_the_backend() {
        let failed = |kind| UpstreamError {
            backend: "limits".into(),
            kind,
        };
        let (status, v) = body(upstream_error(&failed(UpstreamErrorKind::Timeout))).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(v["error"]["code"], "upstream_timeout");
        assert_eq!(v["error"]["backend"], "limits");
        let (status, v) = body(upstream_error(&failed(UpstreamErrorKind::CircuitOpen))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(v["error"]["code"], "upstream_error");
        assert_eq!(v["error"]["backend"], "limits");
        assert!(v["error"]["message"].as_str().unwrap().contains("limits"));
    }

    #[tokio::test]
    async fn a_client_error_has_no_backend() {
        let (status, v) = body(JsonError::bad_request("invalid_amount", "no")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            v,
            json!({"error": {"code": "invalid_amount", "message": "no"}})
        );
    }
}
