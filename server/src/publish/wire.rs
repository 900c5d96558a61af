//! The publish API's wire format: request bodies read strictly, the answers, and the one
//! mapping of every refusal to the shared JSON error shape (`{"error": {"code", "message"}}`,
//! with `index` naming the batch item at fault, and `results` beside it when a batch stopped
//! midway).
//!
//! Positions are decimal strings (`"epoch": "6130412896125523119"`): a random epoch is above
//! 2^53, past what a JSON number holds exactly in most languages.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use switchyard_core::bus::BusError;
use switchyard_core::bus::Published;
use switchyard_core::channels::{ChannelError, PayloadTooLarge};
use switchyard_core::event::Event;

use crate::errors::JsonError;

/// `POST /v1/publish`, and each item of a batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Publish {
    /// The channel's name.
    pub(super) channel: String,
    /// Any JSON; published as its compact text.
    pub(super) data: Box<RawValue>,
}

/// `POST /v1/publish/batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Batch {
    /// The events, published in this order.
    pub(super) events: Vec<Publish>,
}

/// Where a published event landed.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Landed {
    channel: String,
    epoch: String,
    offset: String,
    /// With an `Idempotency-Key` only: whether the key had already landed (this answer then
    /// names the first publish's position, and nothing was published again).
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
}

impl Landed {
    pub(super) fn new(channel: &str, event: &Event) -> Self {
        Self {
            channel: channel.to_owned(),
            epoch: event.epoch.to_string(),
            offset: event.offset.to_string(),
            duplicate: None,
        }
    }

    /// A publish with an idempotency key, as the bus answered it.
    pub(super) fn once(channel: &str, published: &Published) -> Self {
        Self {
            channel: channel.to_owned(),
            epoch: published.position.epoch.to_string(),
            offset: published.position.offset.to_string(),
            duplicate: Some(published.duplicate),
        }
    }
}

/// The answer to a batch that published every event.
#[derive(Serialize)]
pub(super) struct BatchLanded {
    pub(super) results: Vec<Landed>,
}

/// `data` as compact JSON: the text the publisher sent without the whitespace between tokens
/// (strings are copied untouched, numbers keep every digit). `raw` is valid JSON, as read.
pub(super) fn compact(raw: &RawValue) -> Bytes {
    let text = raw.get().as_bytes();
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    Bytes::from(out)
}

/// A refused or failed publish, as its answer.
#[derive(Debug)]
pub(super) struct Refusal {
    error: JsonError,
    /// The batch item at fault.
    index: Option<usize>,
    /// The batch items that landed before the failure.
    results: Option<Vec<Landed>>,
}

impl From<JsonError> for Refusal {
    fn from(error: JsonError) -> Self {
        Self {
            error,
            index: None,
            results: None,
        }
    }
}

impl Refusal {
    /// Its stable code (`forbidden`, `bus_unavailable`, …).
    pub(super) fn code(&self) -> &'static str {
        self.error.code
    }

    /// 400 `bad_request`.
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        JsonError::bad_request("bad_request", message).into()
    }

    /// 401 `unauthorized`.
    pub(super) fn unauthorized() -> Self {
        JsonError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown publisher key: send `Authorization: Bearer <key>`",
        )
        .into()
    }

    /// 403 `forbidden`: the publisher is not in the channel's `publishers`.
    pub(super) fn forbidden(publisher: &str, channel: &str) -> Self {
        JsonError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("publisher `{publisher}` may not publish on channel `{channel}`"),
        )
        .into()
    }

    /// 413 `payload_too_large`.
    pub(super) fn too_large(message: impl Into<String>) -> Self {
        JsonError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).into()
    }

    /// 404 `not_found`.
    pub(super) fn not_found() -> Self {
        JsonError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such path: POST /v1/publish or /v1/publish/batch",
        )
        .into()
    }

    /// 405 `method_not_allowed`.
    pub(super) fn method_not_allowed() -> Self {
        JsonError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        )
        .into()
    }

    /// A channel name that is invalid (400 `bad_request`) or in no catalog entry (400
    /// `not_in_catalog`).
    pub(super) fn channel(e: &ChannelError) -> Self {
        match e {
            ChannelError::InvalidName(_) => Self::bad_request(e.to_string()),
            ChannelError::NotInCatalog(_) => {
                JsonError::bad_request("not_in_catalog", e.to_string()).into()
            }
        }
    }

    /// `data` over the channel's `max_payload_bytes`: 413 `payload_too_large`.
    pub(super) fn payload(e: &PayloadTooLarge) -> Self {
        Self::too_large(format!("data: {e}"))
    }

    /// The bus failed: 503 `bus_unavailable`, logged here once.
    pub(super) fn bus(e: &BusError, channel: &str) -> Self {
        tracing::warn!(channel, error = %e, "publish failed: the bus is unavailable");
        JsonError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            format!("the event bus did not take the event: {e}"),
        )
        .into()
    }

    /// Names the batch item at fault (in `error.index` and the message).
    pub(super) fn at(mut self, index: usize) -> Self {
        self.error.message = format!("events[{index}]: {}", self.error.message);
        self.indexed(index)
    }

    /// Names the batch item at fault in `error.index` only (the message names it already).
    pub(super) fn indexed(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// Carries the results of the batch items that landed before this failure.
    pub(super) fn with_results(mut self, results: Vec<Landed>) -> Self {
        self.results = Some(results);
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.error.status;
        let mut error = json!({"code": self.error.code, "message": self.error.message});
        if let Some(index) = self.index {
            error["index"] = json!(index);
        }
        let mut body = json!({ "error": error });
        if let Some(results) = self.results {
            body["results"] = json!(results);
        }
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(text: &str) -> String {
        let raw: Box<RawValue> = serde_json::from_str(text).expect("JSON");
        String::from_utf8(compact(&raw).to_vec()).expect("UTF-8")
    }

    #[test]
    fn compact_drops_only_the_whitespace_between_tokens() {
        assert_eq!(
            compacted(
                " { \"a\" : [ 1 , 2.50 ,\n\t123456789012345678901234567890 ] ,\r\n \"b\": null } "
            ),
            r#"{"a":[1,2.50,123456789012345678901234567890],"b":null}"#
        );
        assert_eq!(
            compacted(r#" { "s p" : "a \" b \\" , "t": "\\\"  x" } "#),
            r#"{"s p":"a \" b \\","t":"\\\"  x"}"#
        );
        assert_eq!(compacted("\"  \""), "\"  \"");
        assert_eq!(compacted(" 42 "), "42");
    }
}
