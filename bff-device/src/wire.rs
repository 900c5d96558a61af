//! The device wire format: poll answers in v1 and v2, and the one mapping of failures to this
//! gateway's JSON errors (`{"error": {"code", "message"}}`).
//!
//! v1 (frozen, `docs/protocol/device-v1.md`): `{"n": cursor, "e": [event...]}` plus `"rs": true`
//! on a reset; each event is tagged by `t`: `c` command `{i, o, a}`, `g` configuration
//! `{v, h}`, `r` rate `{p, r, s}`. v2 groups the events by kind instead of one tagged list:
//! `{"n", "rs", "c": [{i, o, a}], "g": {v, h} (only when changed), "r": {pair: {r, s}}}` — a v1
//! device looking for `e` cannot read it, which is why it is a new version. The core's types
//! are never serialised directly: every key here is chosen for the wire.
//!
//! Both versions carry the events of the catalog channels a device follows in one more key,
//! `"channels": [{"channel", "epoch", "offset", "data"}]` (a gap: `"gap": true` and no `data`),
//! with positions as decimal strings (epochs are u64, beyond what a JSON number holds exactly).
//! The key is left out when there is nothing, so a device without channels gets exactly the
//! answers it always got.
//!
//! Requests too: bodies (of the device and the admin API) are read as strict JSON here, and the
//! records published on the bus for backends (command results, telemetry, commands) are written
//! as compact JSON here.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_core::bus::{Bus, BusError};
use switchyard_core::event::{Event, Topic};
use switchyard_server::errors::{JsonError, rejection};

use crate::cursor::BadCursor;
use crate::follow::ChannelItem;
use crate::poll::{Batch, Command, ConfigDoc};
use crate::registry::AuthError;

/// An API version of the device endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// Frozen: golden files check every answer.
    V1,
    /// Events grouped by kind.
    V2,
}

impl Version {
    /// Its path segment, the `version` label of the metrics (`v1`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

#[derive(Serialize)]
struct CommandOut<'a> {
    i: &'a str,
    o: &'a str,
    a: &'a Value,
}

impl<'a> From<&'a Command> for CommandOut<'a> {
    fn from(c: &'a Command) -> Self {
        Self {
            i: &c.id,
            o: &c.op,
            a: &c.args,
        }
    }
}

#[derive(Serialize)]
struct ConfigOut<'a> {
    v: &'a Value,
    h: String,
}

impl<'a> From<&'a ConfigDoc> for ConfigOut<'a> {
    fn from(c: &'a ConfigDoc) -> Self {
        Self {
            v: &c.doc,
            h: c.tag(),
        }
    }
}

#[derive(Serialize)]
struct ChannelOut<'a> {
    channel: &'a str,
    epoch: String,
    offset: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    gap: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::value::RawValue>,
}

impl<'a> From<&'a ChannelItem> for ChannelOut<'a> {
    fn from(c: &'a ChannelItem) -> Self {
        Self {
            channel: c.channel.as_str(),
            epoch: c.position.epoch.to_string(),
            offset: c.position.offset.to_string(),
            gap: c.data.is_none(),
            data: c.data.as_deref(),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "t")]
enum EventV1<'a> {
    #[serde(rename = "c")]
    Command(CommandOut<'a>),
    #[serde(rename = "g")]
    Config(ConfigOut<'a>),
    #[serde(rename = "r")]
    Rate { p: String, r: String, s: u64 },
}

#[derive(Serialize)]
struct AnswerV1<'a> {
    n: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    rs: bool,
    e: Vec<EventV1<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    channels: Vec<ChannelOut<'a>>,
}

#[derive(Serialize)]
struct RateV2 {
    r: String,
    s: u64,
}

#[derive(Serialize)]
struct AnswerV2<'a> {
    n: &'a str,
    rs: bool,
    c: Vec<CommandOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    g: Option<ConfigOut<'a>>,
    r: std::collections::BTreeMap<String, RateV2>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    channels: Vec<ChannelOut<'a>>,
}

/// Encodes a poll answer.
pub(crate) fn encode(batch: &Batch, version: Version) -> Vec<u8> {
    let out = match version {
        Version::V1 => {
            let mut e: Vec<EventV1<'_>> = batch
                .commands
                .iter()
                .map(|c| EventV1::Command(c.into()))
                .collect();
            e.extend(batch.config.as_ref().map(|c| EventV1::Config(c.into())));
            e.extend(batch.rates.iter().map(|v| EventV1::Rate {
                p: v.rate.pair.to_string(),
                r: v.rate.rate.to_string(),
                s: v.rate.seq,
            }));
            serde_json::to_vec(&AnswerV1 {
                n: &batch.next,
                rs: batch.reset,
                e,
                channels: batch.channels.iter().map(Into::into).collect(),
            })
        }
        Version::V2 => serde_json::to_vec(&AnswerV2 {
            n: &batch.next,
            rs: batch.reset,
            c: batch.commands.iter().map(Into::into).collect(),
            g: batch.config.as_ref().map(Into::into),
            r: batch
                .rates
                .iter()
                .map(|v| {
                    (
                        v.rate.pair.to_string(),
                        RateV2 {
                            r: v.rate.rate.to_string(),
                            s: v.rate.seq,
                        },
                    )
                })
                .collect(),
            channels: batch.channels.iter().map(Into::into).collect(),
        }),
    };
    // Strings, integers and JSON values read from JSON always serialise.
    out.unwrap_or_else(|e| unreachable!("a poll answer serialises: {e}"))
}

/// Reads a request body as JSON, strictly: a body that cannot be read is the rejection's answer,
/// one that does not parse into `T` is 400 `invalid_request` saying why.
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, JsonError> {
    let body = body.map_err(rejection)?;
    serde_json::from_slice(&body)
        .map_err(|e| JsonError::bad_request("invalid_request", format!("malformed body: {e}")))
}

/// Whether `name` is 1 to 64 of `a-z 0-9 _ . -`: the names of command ops and telemetry metrics.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Publishes `record` on `topic` as compact JSON, for backends to read.
pub(crate) async fn publish_json(
    bus: &dyn Bus,
    topic: &Topic,
    record: &impl Serialize,
) -> Result<Event, BusError> {
    // The records are plain structs of strings, finite numbers and JSON values read from JSON.
    let payload = serde_json::to_vec(record)
        .unwrap_or_else(|e| unreachable!("a record for backends serialises: {e}"));
    bus.publish(topic, payload.into()).await
}

/// Every failure of the device API, mapped to its status and code in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// See [`AuthError`].
    #[error("device credential refused")]
    Auth(AuthError),
    /// A malformed cursor (downstream).
    #[error(transparent)]
    Cursor(#[from] BadCursor),
    /// A bad `wait` (downstream).
    #[error("`wait` is a whole number of seconds")]
    Wait,
    /// A malformed or invalid body or parameter (downstream).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// The device has as many held polls as it may (downstream).
    #[error("too many polls of this device are being held")]
    TooManyPolls,
    /// The bus failed (upstream).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A result for a command this device was never sent (or that history no longer holds).
    #[error("this device has no command with this id")]
    UnknownCommand,
}

/// Logs a bus failure under a device request at most once every 10 s, with how many came
/// since the last line: in a broker outage every poll of every device fails, and a line each
/// (thousands a second) would cost the gateway more than the failures themselves.
fn log_bus_failure(error: &BusError) {
    static THROTTLE: switchyard_core::logthrottle::LogThrottle =
        switchyard_core::logthrottle::LogThrottle::new(10_000);
    if let Some(more) = THROTTLE.allow() {
        tracing::warn!(error = %error, more, "bus failed under a device request (logged at most every 10 s; `more` failed since the last line)");
    }
}

impl From<ApiError> for JsonError {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::Auth(AuthError::Unauthorized) => JsonError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send this device's key in X-Device-Key",
            ),
            ApiError::Auth(AuthError::Forbidden) => JsonError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this key is not this device's",
            ),
            ApiError::Auth(AuthError::Unavailable(b)) | ApiError::Bus(b) => {
                log_bus_failure(&b);
                JsonError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "bus_unavailable",
                    "events are unavailable; retry later",
                )
            }
            ApiError::UnknownCommand => {
                JsonError::new(StatusCode::NOT_FOUND, "unknown_command", message)
            }
            ApiError::Cursor(_) => JsonError::bad_request("bad_cursor", message),
            ApiError::Wait => JsonError::bad_request("bad_wait", message),
            ApiError::Invalid(code, _) => JsonError::bad_request(code, message),
            ApiError::TooManyPolls => {
                JsonError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_polls", message)
            }
        }
    }
}
