//! `GET /v1/quote?user=&from=&to=&amount=`: the composed quote as compact JSON (short keys:
//! devices are small and their links are slow); its errors in the shared HTTP error contract
//! (`switchyard_server::errors`).
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
use axum::routing::get;
use operations::{Caller, OpError, Operations, QuoteRequest};
use serde::{Deserialize, Serialize};
use switchyard_server::errors::{JsonError, rejection};

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
    let req = QuoteRequest::parse(&p.user, &p.from, &p.to, &p.amount).map_err(OpError::from)?;
    let q = ops.quote(&req, Caller::Device).await?;
    let e = q
        .remaining_limit
        .as_ref()
        .err()
        .map(|e| PartError {
            b: e.backend().to_owned(),
            k: e.code(),
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
