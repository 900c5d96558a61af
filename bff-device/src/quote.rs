//! `GET /v1/quote?user=&from=&to=&amount=`: the composed quote as compact JSON (short keys:
//! devices are small and their links are slow), and the one place where operation errors become
//! this gateway's JSON errors.
//!
//! Keys: `p` pair, `a` amount, `r` rate, `c` converted, `l` remaining limit, `w` within limit,
//! `e` errors of failed optional parts (`b` backend, `k` code). A failed optional part is data:
//! `l` is null and `e` names its backend. A failed required part is a 502 (504 on timeout)
//! naming the backend; bad input is a 400 with a stable code.
//!
//! A device is not a user, and a user's limit is account data: `l` and `w` are always null here,
//! with `e` `{"b":"limits","k":"not_a_user"}`, and the limits backend is never called.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use operations::{Caller, NoLimit, OpError, Operations, QuoteRequest};
use serde::{Deserialize, Serialize};
use switchyard_core::server::{JsonError, rejection};
use switchyard_core::upstream::{UpstreamError, UpstreamErrorKind};

pub(crate) fn routes(ops: Operations) -> Router {
    Router::new().route("/quote", get(quote)).with_state(ops)
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
    p: String,
    a: String,
    r: String,
    c: String,
    l: Option<String>,
    w: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    e: Vec<PartError>,
}

#[derive(Serialize)]
struct PartError {
    b: String,
    k: &'static str,
}

async fn quote(
    State(ops): State<Operations>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<QuoteBody>, JsonError> {
    let Query(p) = params.map_err(rejection)?;
    let req = QuoteRequest::parse(&p.user, &p.from, &p.to, &p.amount)
        .map_err(|e| to_json_error(e.into()))?;
    let q = ops
        .quote(&req, Caller::Device)
        .await
        .map_err(to_json_error)?;
    let e = q
        .remaining_limit
        .as_ref()
        .err()
        .map(|e| match e {
            NoLimit::Upstream(u) => PartError {
                b: u.backend.to_string(),
                k: u.kind.code(),
            },
            NoLimit::Withheld(w) => PartError {
                b: operations::backend::LIMITS.to_owned(),
                k: w.code(),
            },
        })
        .into_iter()
        .collect();
    Ok(Json(QuoteBody {
        p: q.pair.to_string(),
        a: q.amount.to_string(),
        r: q.rate.to_string(),
        c: q.converted.to_string(),
        l: q.remaining_limit.as_ref().ok().map(ToString::to_string),
        w: q.within_limit(),
        e,
    }))
}

fn to_json_error(e: OpError) -> JsonError {
    match e {
        OpError::Invalid(i) => JsonError::bad_request(i.code, i.message),
        OpError::Upstream(u) => upstream(&u),
    }
}

fn upstream(e: &UpstreamError) -> JsonError {
    tracing::warn!(backend = %e.backend, error = %e, "backend call failed");
    let (status, code) = match e.kind {
        UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
    };
    JsonError::new(status, code, e.to_string()).with_backend(e.backend.to_string())
}
