//! The device endpoints, mounted under `/v1` and `/v2`:
//!
//! - `GET /devices/{id}/events?cursor=&wait=` — the long-poll ([`crate::poll`]);
//! - `GET /devices/{id}/config` — the configuration document, with an ETag and `If-None-Match`;
//! - `POST /devices/{id}/commands/{cmd}/result` — a command's result, published on
//!   `devices.{id}.results`;
//! - `POST /devices/{id}/telemetry` — a telemetry batch, validated and published on
//!   `telemetry.{id}`; 202 only once the bus has accepted it.
//!
//! Every request is authenticated first (`X-Device-Key`: 401 unknown, 403 another device's),
//! then validated (400 with a code). Bodies are read as bytes whatever their content type (old
//! firmware sends odd ones) and parsed strictly. Only the poll answer differs between versions.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use switchyard_core::bus::{Bus, Read};
use switchyard_core::ratelimit::{Key, RateLimiter, RetryAfter, Scope};
use switchyard_server::errors::{JsonError, rejection};
use switchyard_server::ratelimit;

use crate::cursor::Cursor;
use crate::poll::Poller;
use crate::registry::{Device, HeldGuard, Registry, valid_id};
use crate::wire::{self, ApiError, Version};

/// Limits of the device API (`[api]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Longest hold of a poll, in seconds; a larger `wait` is capped to it.
    pub max_wait_s: u32,
    /// Commands in one poll answer at most; more come in the next answer.
    pub max_events_per_answer: usize,
    /// Points in one telemetry batch at most.
    pub max_telemetry_points: usize,
    /// Polls held at once across all devices; more get 429 `too_many_polls`.
    pub max_held_polls: usize,
    /// Polls of one device held at once; more get 429 `too_many_polls`.
    pub max_held_polls_per_device: usize,
    /// Devices the registry holds at most (configured and issued).
    pub max_devices: usize,
    /// Rate pairs one device may be configured for (at most 32).
    pub max_rates_per_device: usize,
    /// Catalog channels one device may follow (at most 32, the cursor's bound).
    pub max_channels_per_device: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_wait_s: 30,
            max_events_per_answer: 100,
            max_telemetry_points: 100,
            max_held_polls: 20_000,
            max_held_polls_per_device: 2,
            max_devices: 100_000,
            max_rates_per_device: 8,
            max_channels_per_device: 16,
        }
    }
}

/// What the device endpoints share.
pub(crate) struct Api {
    pub(crate) registry: Arc<Registry>,
    pub(crate) poller: Poller,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) config: ApiConfig,
    pub(crate) held: Arc<AtomicUsize>,
    pub(crate) limiter: Arc<RateLimiter>,
    /// Held polls by version × client (the device's model and firmware), resets and gaps.
    pub(crate) metrics: switchyard_server::metrics::Metrics,
}

type Shared = State<(Arc<Api>, Version)>;

pub(crate) fn routes(api: Arc<Api>, version: Version) -> Router {
    Router::new()
        .route("/devices/{id}/events", get(events))
        .route("/devices/{id}/config", get(config))
        .route("/devices/{id}/commands/{cmd}/result", post(result))
        .route("/devices/{id}/telemetry", post(telemetry))
        .with_state((api, version))
}

#[derive(Deserialize)]
struct PollParams {
    cursor: Option<String>,
    wait: Option<String>,
}

/// A refused device request: an error in the JSON shape, or a rate-limit refusal (429 with
/// `Retry-After`).
pub(crate) enum Refusal {
    Json(JsonError),
    Limited(RetryAfter),
}

impl From<JsonError> for Refusal {
    fn from(e: JsonError) -> Self {
        Self::Json(e)
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Json(e.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Json(e) => e.into_response(),
            Self::Limited(r) => ratelimit::json_refusal(r),
        }
    }
}

/// The device of a request, authenticated, and within its own request rate.
async fn authenticate(api: &Api, headers: &HeaderMap, id: &str) -> Result<Arc<Device>, Refusal> {
    let device = api
        .registry
        .authenticate(headers, id)
        .await
        .map_err(ApiError::Auth)?;
    api.limiter
        .check(
            &Key::device(Scope::Request, device.id.as_str()),
            api.limiter.requests_per_user(),
        )
        .await
        .map_err(Refusal::Limited)?;
    Ok(device)
}

/// Whether the command `cmd` was sent to this device: it is in the retained history of the
/// device's command topic. Reads at most that history (`bus.history_events`), in pages.
async fn command_sent(api: &Api, device: &Device, cmd: &str) -> Result<bool, ApiError> {
    const PAGE: usize = 256;
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let topic = &device.topics.commands;
    let head = api.bus.head(topic).await?;
    let mut after = switchyard_core::event::Position {
        epoch: head.epoch,
        offset: 0,
    };
    loop {
        match api.bus.read(topic, after, PAGE).await? {
            Read::Gap { resume } if resume != after => after = resume,
            Read::Gap { .. } => return Ok(false),
            Read::Events { events, next } => {
                if events.iter().any(|e| {
                    serde_json::from_slice::<Id<'_>>(&e.payload).is_ok_and(|c| c.id == cmd)
                }) {
                    return Ok(true);
                }
                if events.is_empty() || next.offset >= head.offset {
                    return Ok(false);
                }
                after = next;
            }
        }
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn events(
    State((api, version)): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<PollParams>, QueryRejection>,
) -> Result<Response, Refusal> {
    let device = authenticate(&api, &headers, &id).await?;
    // The client label is read now, before the headers go.
    let usage = api.metrics.usage(version.label(), &headers);
    // The request head's bytes (hyper's read buffer, which every header value points into) must
    // not live across the hold: hyper would then read the next request into a second buffer.
    drop(headers);
    let Query(params) = params.map_err(rejection)?;
    let cursor = match params.cursor.as_deref() {
        Some(raw) => Some((
            Cursor::decode(raw, &device.id).map_err(ApiError::from)?,
            raw,
        )),
        None => None,
    };
    let wait = match params.wait.as_deref() {
        None => 0,
        Some(w) if !w.is_empty() && w.len() <= 10 && w.bytes().all(|b| b.is_ascii_digit()) => w
            .parse::<u64>()
            .map_err(|_| ApiError::Wait)?
            .min(u64::from(api.config.max_wait_s)),
        Some(_) => return Err(ApiError::Wait.into()),
    };
    let _held = if wait > 0 {
        Some(
            HeldGuard::take(
                &device,
                &api.held,
                api.config.max_held_polls_per_device,
                api.config.max_held_polls,
            )
            .ok_or(ApiError::TooManyPolls)?,
        )
    } else {
        None
    };
    let _counted = (wait > 0).then(|| usage.held_poll());
    let batch = api
        .poller
        .poll(&device, cursor, Duration::from_secs(wait))
        .await
        .map_err(ApiError::from)?;
    if batch.reset {
        api.metrics.reset();
    }
    let gaps = batch.channels.iter().filter(|c| c.data.is_none()).count();
    api.metrics.poll_gaps(gaps as u64);
    let mut res = json(StatusCode::OK, wire::encode(&batch, version));
    // A poll answer is for this device at this moment: no proxy on the way may keep it.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

async fn config(
    State((api, _)): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let device = authenticate(&api, &headers, &id).await?;
    let doc = api.poller.config(&device).await.map_err(ApiError::from)?;
    let etag = format!("W/\"{}\"", doc.tag());
    let etag = HeaderValue::from_str(&etag)
        .unwrap_or_else(|_| unreachable!("hex digits in quotes make a header value"));
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if matches(headers.get(header::IF_NONE_MATCH), &doc.tag()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), cache]).into_response());
    }
    let mut res = json(StatusCode::OK, doc.bytes.to_vec());
    res.headers_mut().insert(header::ETAG, etag);
    res.headers_mut().insert(cache.0, cache.1);
    Ok(res)
}

/// Whether `If-None-Match` names `tag` (weak comparison, as RFC 9110 asks for it).
fn matches(if_none_match: Option<&HeaderValue>, tag: &str) -> bool {
    let Some(Ok(list)) = if_none_match.map(|v| v.to_str()) else {
        return false;
    };
    list.split(',').map(str::trim).any(|t| {
        t == "*"
            || t.strip_prefix("W/")
                .unwrap_or(t)
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                == Some(tag)
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultIn {
    /// `ok` or `error`.
    s: String,
    /// Any detail the device adds.
    #[serde(default)]
    d: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ResultOut<'a> {
    device: &'a str,
    command: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct Accepted {
    a: usize,
}

fn accepted(n: usize) -> Response {
    json(
        StatusCode::ACCEPTED,
        serde_json::to_vec(&Accepted { a: n })
            .unwrap_or_else(|e| unreachable!("an integer serialises: {e}")),
    )
}

async fn result(
    State((api, _)): Shared,
    Path((id, cmd)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let device = authenticate(&api, &headers, &id).await?;
    if !valid_id(&cmd) {
        return Err(ApiError::Invalid(
            "invalid_command_id",
            "a command id is 1 to 64 of A-Z a-z 0-9 _ -".to_owned(),
        )
        .into());
    }
    let r: ResultIn = wire::parse_body(body)?;
    if r.s != "ok" && r.s != "error" {
        return Err(
            ApiError::Invalid("invalid_result", "`s` is `ok` or `error`".to_owned()).into(),
        );
    }
    if !command_sent(&api, &device, &cmd).await? {
        return Err(ApiError::UnknownCommand.into());
    }
    let out = ResultOut {
        device: device.id.as_str(),
        command: &cmd,
        status: &r.s,
        detail: r.d.as_ref(),
    };
    wire::publish_json(api.bus.as_ref(), &device.topics.results, &out)
        .await
        .map_err(ApiError::from)?;
    Ok(accepted(1))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetryIn {
    /// The points.
    p: Vec<PointIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointIn {
    /// Metric name.
    k: String,
    /// Value.
    v: f64,
    /// When it was measured, Unix seconds (optional).
    #[serde(default)]
    t: Option<u64>,
}

#[derive(Serialize)]
struct TelemetryOut<'a> {
    device: &'a str,
    received_ms: u64,
    points: Vec<PointOut<'a>>,
}

#[derive(Serialize)]
struct PointOut<'a> {
    name: &'a str,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
}

async fn telemetry(
    State((api, _)): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let device = authenticate(&api, &headers, &id).await?;
    let batch: TelemetryIn = wire::parse_body(body)?;
    let invalid = |m: String| JsonError::from(ApiError::Invalid("invalid_telemetry", m));
    if batch.p.is_empty() || batch.p.len() > api.config.max_telemetry_points {
        return Err(Refusal::Json(invalid(format!(
            "a batch has 1 to {} points",
            api.config.max_telemetry_points
        ))));
    }
    if let Some((i, _)) = batch
        .p
        .iter()
        .enumerate()
        .find(|(_, p)| !wire::valid_name(&p.k))
    {
        return Err(Refusal::Json(invalid(format!(
            "point {i}: a metric name is 1 to 64 of a-z 0-9 _ . -"
        ))));
    }
    let received_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let out = TelemetryOut {
        device: device.id.as_str(),
        received_ms,
        points: batch
            .p
            .iter()
            .map(|p| PointOut {
                name: &p.k,
                value: p.v,
                ts: p.t,
            })
            .collect(),
    };
    wire::publish_json(api.bus.as_ref(), &device.topics.telemetry, &out)
        .await
        .map_err(ApiError::from)?;
    Ok(accepted(batch.p.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_is_compared_weakly() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(matches(Some(&h("W/\"abc\"")), "abc"));
        assert!(matches(Some(&h("\"abc\"")), "abc"));
        assert!(matches(Some(&h("\"x\", W/\"abc\"")), "abc"));
        assert!(matches(Some(&h("*")), "abc"));
        assert!(!matches(Some(&h("\"abd\"")), "abc"));
        assert!(!matches(Some(&h("abc")), "abc"));
        assert!(!matches(None, "abc"));
    }
}
