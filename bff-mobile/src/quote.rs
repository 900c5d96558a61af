//! `GET /v1/quote?user=&from=&to=&amount=`: the composed quote as JSON (long keys), its errors
//! in the shared HTTP error contract (`switchyard_server::errors`).
//!
//! A failed optional part is data: `remaining_limit` is null and `errors` lists the part's
//! backend and code. A failed required part is a 502 (504 on timeout) naming the backend; bad
//! input is a 400 with a stable code.
//!
//! The limit is account data: it is given only to the quoted user, signed in with
//! `Authorization: Bearer <token>` (the socket's verifier). Anyone else gets the rate and the
//! converted amount, with `remaining_limit` null and an `errors` entry `unauthenticated` or
//! `not_your_account` — and the limits backend is not called. A token that is present but
//! invalid is a 401.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use operations::{Caller, OpError, Operations, QuoteRequest};
use serde::{Deserialize, Serialize};
use switchyard_server::errors::{JsonError, rejection};

use crate::auth::Authenticator;

pub(crate) fn routes(ops: Operations, verifier: Authenticator) -> Router {
    Router::new()
        .route("/quote", get(quote))
        .with_state(QuoteState { ops, verifier })
}

#[derive(Clone)]
struct QuoteState {
    ops: Operations,
    verifier: Authenticator,
}

#[derive(Deserialize)]
struct Params {
    user: String,
    from: String,
    to: String,
    amount: String,
}

#[derive(Serialize)]
struct QuoteBody {
    pair: String,
    amount: String,
    rate: String,
    converted: String,
    remaining_limit: Option<String>,
    within_limit: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<PartError>,
}

#[derive(Serialize)]
struct PartError {
    backend: String,
    code: &'static str,
    message: String,
}

async fn quote(
    State(state): State<QuoteState>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<QuoteBody>, Response> {
    let caller = state.verifier.user_of_headers(&headers).map_err(|e| {
        let mut r =
            JsonError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()).into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    })?;
    let Query(p) = params.map_err(|e| rejection(e).into_response())?;
    let req = QuoteRequest::parse(&p.user, &p.from, &p.to, &p.amount)
        .map_err(|e| JsonError::from(OpError::from(e)).into_response())?;
    let caller = caller.as_ref().map_or(Caller::Anonymous, Caller::User);
    let q = state
        .ops
        .quote(&req, caller)
        .await
        .map_err(|e| JsonError::from(e).into_response())?;
    let errors = q
        .remaining_limit
        .as_ref()
        .err()
        .map(|e| PartError {
            backend: e.backend().to_owned(),
            code: e.code(),
            message: e.to_string(),
        })
        .into_iter()
        .collect();
    Ok(Json(QuoteBody {
        pair: q.pair.to_string(),
        amount: q.amount.to_string(),
        rate: q.rate.to_string(),
        converted: q.converted.to_string(),
        remaining_limit: q.remaining_limit.as_ref().ok().map(ToString::to_string),
        within_limit: q.within_limit(),
        errors,
    }))
}
