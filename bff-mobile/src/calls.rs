//! The `call` operations of the mobile protocol — `quote`, `dashboard`, `convert` — for the
//! signed-in user, and the ONE place where operation errors become protocol `error` codes.
//!
//! Results use the shapes of `mobile_proto::data`. A failed optional part is data (null plus an
//! entry in `errors`); a failed required part fails the call with `upstream_timeout` or
//! `upstream_error`; an upstream refusal with a known code (`limit_exceeded`) keeps it. This
//! module does not touch the socket: it returns a value or an error for the socket layer to send;
//! demo values take the protocol's shapes in [`crate::shapes`], shared with event frames.

use demo_api::{Pair, UserId};
use mobile_proto::{code, data, op};
use operations::{OpError, Operations};
use serde_json::Value;
use switchyard_core::upstream::{UpstreamError, UpstreamErrorKind};

use crate::shapes::{conversion, rate};

/// A failed call: a protocol error code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl CallError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Runs operation `name` with `call`'s arguments for `user`.
pub(crate) async fn run(
    ops: &Operations,
    user: &UserId,
    call: &mobile_proto::Call,
) -> Result<Value, CallError> {
    match call.op.as_str() {
        op::QUOTE => quote(ops, user, args(call)?).await,
        op::DASHBOARD => dashboard(ops, user, args(call)?).await,
        op::CONVERT => convert(ops, user, args(call)?).await,
        other => Err(CallError::new(
            code::UNKNOWN_OP,
            format!(
                "`{}` is not an operation of v1",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

fn args<T: serde::de::DeserializeOwned>(call: &mobile_proto::Call) -> Result<T, CallError> {
    call.args_as()
        .map_err(|e| CallError::new(code::INVALID_ARGS, e.to_string()))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, CallError> {
    serde_json::to_value(v).map_err(|e| {
        tracing::error!(error = %e, "a result could not be serialised");
        CallError::new(code::INTERNAL, "internal error")
    })
}

fn pair(from: &str, to: &str) -> Result<Pair, CallError> {
    let invalid = |e: demo_api::Invalid| CallError::new(code::INVALID_ARGS, e.message);
    Pair::new(
        demo_api::Currency::parse(from).map_err(invalid)?,
        demo_api::Currency::parse(to).map_err(invalid)?,
    )
    .map_err(invalid)
}

async fn quote(ops: &Operations, user: &UserId, a: data::QuoteArgs) -> Result<Value, CallError> {
    let req = operations::QuoteRequest::parse(user.as_str(), &a.from, &a.to, &a.amount)
        .map_err(|e| CallError::new(code::INVALID_ARGS, e.message))?;
    // The socket's user quotes for itself: it sees its own limit.
    let q = ops
        .quote(&req, operations::Caller::User(user))
        .await
        .map_err(op_error)?;
    let errors = q
        .remaining_limit
        .as_ref()
        .err()
        .map(|e| match e {
            operations::NoLimit::Upstream(u) => part_error("/remaining_limit", u),
            operations::NoLimit::Withheld(w) => data::PartError {
                part: "/remaining_limit".to_owned(),
                backend: operations::backend::LIMITS.to_owned(),
                code: w.code().to_owned(),
                message: w.to_string(),
            },
        })
        .into_iter()
        .collect();
    to_value(&data::Quote {
        pair: q.pair.to_string(),
        from: q.pair.base.to_string(),
        to: q.pair.quote.to_string(),
        amount: q.amount.to_string(),
        rate: q.rate.to_string(),
        converted: q.converted.to_string(),
        remaining_limit: q.remaining_limit.as_ref().ok().map(ToString::to_string),
        within_limit: q.within_limit(),
        errors,
    })
}

async fn dashboard(
    ops: &Operations,
    user: &UserId,
    a: data::DashboardArgs,
) -> Result<Value, CallError> {
    if a.pairs.len() > operations::MAX_PAIRS {
        return Err(CallError::new(
            code::INVALID_ARGS,
            format!("pairs: at most {} pairs", operations::MAX_PAIRS),
        ));
    }
    // Parsed one by one (not `parse_pairs`, which drops duplicates): rates answer in the order
    // asked, one entry per pair asked.
    let pairs = a
        .pairs
        .iter()
        .map(|p| {
            p.parse::<Pair>()
                .map_err(|e| CallError::new(code::INVALID_ARGS, format!("pairs: {}", e.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let d = ops.dashboard(user, &pairs).await.map_err(op_error)?;
    let mut errors = Vec::new();
    let limit = match &d.limit {
        Ok(l) => Some(data::Limit {
            daily_limit: l.daily_limit.to_string(),
            used: l.used.to_string(),
            remaining: l.remaining.to_string(),
        }),
        Err(e) => {
            errors.push(part_error("/limit", e));
            None
        }
    };
    let rates = d
        .rates
        .iter()
        .enumerate()
        .map(|(i, (_, r))| match r {
            Ok(r) => Some(rate(r)),
            Err(e) => {
                errors.push(part_error(&format!("/rates/{i}"), e));
                None
            }
        })
        .collect();
    let recent = match &d.recent {
        Ok(list) => Some(list.iter().map(conversion).collect()),
        Err(e) => {
            errors.push(part_error("/recent", e));
            None
        }
    };
    to_value(&data::Dashboard {
        user: user.to_string(),
        limit,
        rates,
        recent,
        errors,
    })
}

async fn convert(
    ops: &Operations,
    user: &UserId,
    a: data::ConvertArgs,
) -> Result<Value, CallError> {
    let pair = pair(&a.from, &a.to)?;
    let amount = demo_api::parse_amount(&a.amount)
        .map_err(|e| CallError::new(code::INVALID_ARGS, format!("amount: {}", e.message)))?;
    let c = ops.convert(user, pair, amount).await.map_err(op_error)?;
    to_value(&conversion(&c))
}

fn part_error(part: &str, e: &UpstreamError) -> data::PartError {
    tracing::warn!(backend = %e.backend, error = %e, part, "optional part failed");
    data::PartError {
        part: part.to_owned(),
        backend: e.backend.to_string(),
        code: upstream_code(&e.kind).to_owned(),
        message: e.to_string(),
    }
}

fn upstream_code(kind: &UpstreamErrorKind) -> &'static str {
    match kind {
        UpstreamErrorKind::Timeout => code::UPSTREAM_TIMEOUT,
        _ => code::UPSTREAM_ERROR,
    }
}

/// The one mapping of operation errors to protocol error codes (logged here).
fn op_error(e: OpError) -> CallError {
    match e {
        OpError::Invalid(i) => CallError::new(code::INVALID_ARGS, i.message),
        OpError::Upstream(u) => {
            // A backend's refusal of the client's request keeps its meaning for the client.
            if let UpstreamErrorKind::Status {
                status: 400..=499,
                code: Some(c),
                message,
            } = &u.kind
            {
                let msg = message.clone().unwrap_or_else(|| u.to_string());
                match c.as_str() {
                    "limit_exceeded" => return CallError::new(code::LIMIT_EXCEEDED, msg),
                    c if c.starts_with("invalid")
                        || c.starts_with("unknown")
                        || c == "same_currency" =>
                    {
                        return CallError::new(code::INVALID_ARGS, msg);
                    }
                    _ => {}
                }
            }
            tracing::warn!(backend = %u.backend, error = %u, "backend call failed");
            CallError::new(upstream_code(&u.kind), u.to_string())
        }
    }
}
