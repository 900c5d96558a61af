//! The admin API, for operators and backends, protected by its own bearer token
//! (`[admin] token`; the routes are not mounted at all while it is empty):
//!
//! - `POST /admin/devices` `{"id", "rates"?, "settings"?, "channels"?}` — registers a device and
//!   issues its credential (201 `{"id", "key"}`; the key is shown once, only its hash is kept);
//!   its channels are checked against the catalog for this device, as configured ones are;
//! - `POST /admin/devices/{id}/commands` `{"op", "args"?, "id"?}` — publishes a command on
//!   `devices.{id}.commands` (202 `{"id", "offset"}`); backends may publish there directly;
//! - `PUT /admin/devices/{id}/config` `{...}` — publishes a new configuration document on
//!   `devices.{id}.config` (200 `{"etag"}`).
//!
//! Admin answers are not part of the frozen device API (devices never call them).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchyard_core::bus::Bus;
use switchyard_server::errors::{JsonError, rejection};

use crate::poll::ConfigDoc;
use crate::registry::{Device, DeviceConfig, RegisterError, Registry, valid_id};
use crate::wire::{parse_body, publish_json, valid_name};

/// The admin API (`[admin]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The bearer token of the admin API (at least 16 bytes); empty turns the admin API off.
    pub token: String,
}

pub(crate) struct Admin {
    token: [u8; 32],
    registry: Arc<Registry>,
    bus: Arc<dyn Bus>,
}

/// The admin routes, or `None` when no token is configured.
pub(crate) fn routes(
    config: &AdminConfig,
    registry: Arc<Registry>,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<Option<Router>> {
    if config.token.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        config.token.len() >= 16,
        "admin.token: use at least 16 bytes (or leave it empty to turn the admin API off)"
    );
    let admin = Arc::new(Admin {
        token: Sha256::digest(config.token.as_bytes()).into(),
        registry,
        bus,
    });
    Ok(Some(
        Router::new()
            .route("/admin/devices", post(register))
            .route("/admin/devices/{id}/commands", post(command))
            .route("/admin/devices/{id}/config", put(set_config))
            .with_state(admin),
    ))
}

fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), JsonError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // RFC 7235: the scheme is case-insensitive (`bearer`, `BEARER`).
        .and_then(|v| switchyard_core::auth::bearer_token(v).ok().flatten())
        .map(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
    // Compared in constant time: a byte-by-byte early exit would time the digest's prefix.
    if given.is_some_and(|g| constant_time_eq(&g, &admin.token)) {
        Ok(())
    } else {
        Err(JsonError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin token as `Authorization: Bearer <token>`",
        ))
    }
}

/// Whether two digests are equal, in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn device(admin: &Admin, id: &str) -> Result<Arc<Device>, JsonError> {
    admin
        .registry
        .get(id)
        .await
        .map_err(|e| bus_error(&e))?
        .ok_or_else(|| {
            JsonError::new(
                StatusCode::NOT_FOUND,
                "unknown_device",
                "no device has this id",
            )
        })
}

/// The device an admin request names in its path (`/admin/devices/{id}/...`), looked up once
/// the request is authorized: 401 without the admin token, 404 for an unknown device, 503 when
/// the bus fails.
struct Target(Arc<Device>);

impl FromRequestParts<Arc<Admin>> for Target {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Arc<Admin>) -> Result<Self, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, admin)
            .await
            .map_err(IntoResponse::into_response)?;
        authorize(admin, &parts.headers).map_err(IntoResponse::into_response)?;
        let device = device(admin, &id)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self(device))
    }
}

fn bus_error(e: &switchyard_core::bus::BusError) -> JsonError {
    tracing::warn!(error = %e, "bus failed under an admin request");
    JsonError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "bus_unavailable",
        "the bus is unavailable; retry later",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: String,
    #[serde(default)]
    rates: Vec<String>,
    #[serde(default)]
    settings: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    channels: Vec<String>,
}

#[derive(Serialize)]
struct Issued<'a> {
    id: &'a str,
    key: &'a str,
}

async fn register(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, JsonError> {
    authorize(&admin, &headers)?;
    let new: NewDevice = parse_body(body)?;
    let key = Registry::new_key();
    let config = DeviceConfig {
        key: key.clone(),
        rates: new.rates,
        settings: new.settings,
        channels: new.channels,
    };
    let device = admin
        .registry
        .issue(&new.id, &config)
        .await
        .map_err(|e| match e {
            RegisterError::Unavailable(b) => bus_error(&b),
            RegisterError::Invalid(code, m) => JsonError::bad_request(code, m),
            RegisterError::Exists(_) => {
                JsonError::new(StatusCode::CONFLICT, "device_exists", e.to_string())
            }
            RegisterError::KeyTaken => {
                JsonError::new(StatusCode::CONFLICT, "key_taken", e.to_string())
            }
            RegisterError::Full => JsonError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "registry_full",
                e.to_string(),
            ),
        })?;
    tracing::info!(device = %device.id, "device registered through the admin API");
    Ok((
        StatusCode::CREATED,
        axum::Json(Issued {
            id: device.id.as_str(),
            key: &key,
        }),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCommand {
    op: String,
    #[serde(default)]
    args: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Serialize)]
struct CommandEvent<'a> {
    id: &'a str,
    op: &'a str,
    args: &'a serde_json::Value,
}

#[derive(Serialize)]
struct Sent<'a> {
    id: &'a str,
    offset: u64,
}

async fn command(
    State(admin): State<Arc<Admin>>,
    Target(device): Target,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, JsonError> {
    let cmd: NewCommand = parse_body(body)?;
    if !valid_name(&cmd.op) {
        return Err(JsonError::bad_request(
            "invalid_op",
            "an op is 1 to 64 of a-z 0-9 _ . -",
        ));
    }
    let args = cmd
        .args
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    if !args.is_object() {
        return Err(JsonError::bad_request(
            "invalid_args",
            "`args` is a JSON object",
        ));
    }
    let cmd_id = match cmd.id {
        Some(i) if valid_id(&i) => i,
        Some(_) => {
            return Err(JsonError::bad_request(
                "invalid_command_id",
                "a command id is 1 to 64 of A-Z a-z 0-9 _ -",
            ));
        }
        None => format!("c{:016x}", rand::random::<u64>()),
    };
    let command = CommandEvent {
        id: &cmd_id,
        op: &cmd.op,
        args: &args,
    };
    let event = publish_json(admin.bus.as_ref(), &device.topics.commands, &command)
        .await
        .map_err(|e| bus_error(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Sent {
            id: &cmd_id,
            offset: event.offset,
        }),
    )
        .into_response())
}

async fn set_config(
    State(admin): State<Arc<Admin>>,
    Target(device): Target,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, JsonError> {
    let body = body.map_err(rejection)?;
    let origin = switchyard_core::event::Position {
        epoch: 0,
        offset: 0,
    };
    let doc = ConfigDoc::parse(origin, &body).ok_or_else(|| {
        JsonError::bad_request(
            "invalid_config",
            "a configuration document is a JSON object",
        )
    })?;
    admin
        .bus
        .publish(&device.topics.config, doc.bytes.clone())
        .await
        .map_err(|e| bus_error(&e))?;
    Ok(axum::Json(serde_json::json!({ "etag": format!("W/\"{}\"", doc.tag()) })).into_response())
}
