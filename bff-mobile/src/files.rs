//! The file routes of bff-mobile, over HTTP beside its socket: `GET /v1/files/statements.csv
//! ?rows=N` (the signed-in user's statement, `Range` and `If-Range` honoured, `206` passed back)
//! and `PUT /v1/files/receipts/{name}` (a receipt upload, at most `files.max_upload_bytes`),
//! streamed both ways to the `statements` backend by the server crate's pass-through
//! (`switchyard_server::streaming`; docs/files.md) — the same routes as bff-web's.
//!
//! Signed-in users only (`Authorization: Bearer`, the socket's verifier): no token or a bad one
//! is a 401 before anything is read or called. This module only authenticates, checks the
//! client's input and names the backend path (`operations::files`); it never touches a body.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use demo_api::UserId;
use serde::Deserialize;
use switchyard_core::auth::AuthError;
use switchyard_server::errors::{JsonError, rejection};
use switchyard_server::streaming::{Passthrough, unauthorized};

use crate::auth::Authenticator;

#[derive(Clone)]
struct Files {
    pass: Passthrough,
    verifier: Authenticator,
}

/// The routes under `/v1`.
pub(crate) fn routes(pass: Passthrough, verifier: Authenticator) -> Router {
    Router::new()
        .route("/files/statements.csv", get(statement))
        .route("/files/receipts/{name}", put(receipt))
        .with_state(Files { pass, verifier })
}

#[derive(Deserialize)]
struct Rows {
    rows: Option<u64>,
}

/// The signed-in user, or why not (`None`: no token at all).
fn user(files: &Files, headers: &HeaderMap) -> Result<UserId, Option<AuthError>> {
    match files.verifier.user_of_headers(headers) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(None),
        Err(e) => Err(Some(e)),
    }
}

async fn statement(
    State(files): State<Files>,
    headers: HeaderMap,
    rows: Result<Query<Rows>, QueryRejection>,
) -> Response {
    let user = match user(&files, &headers) {
        Ok(user) => user,
        Err(why) => return unauthorized(why.as_ref()),
    };
    let Query(Rows { rows }) = match rows {
        Ok(rows) => rows,
        Err(e) => return rejection(e).into_response(),
    };
    let path = operations::files::statement_path(&user, rows);
    files.pass.download(path, &headers).await
}

async fn receipt(
    State(files): State<Files>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let user = match user(&files, request.headers()) {
        Ok(user) => user,
        Err(why) => return unauthorized(why.as_ref()),
    };
    match operations::files::receipt_path(&user, &name) {
        Ok(path) => files.pass.upload(path, request).await,
        Err(e) => JsonError::bad_request(e.code, e.message).into_response(),
    }
}
