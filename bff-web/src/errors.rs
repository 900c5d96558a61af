//! The one place where core and operation errors become GraphQL errors.
//!
//! Every error carries `extensions.code`; upstream failures also carry `extensions.backend`, so a
//! client (and an operator reading logs) can tell a backend's failure from its own bad input. The
//! detail is logged here, once.

use async_graphql::{Error, ErrorExtensions};
use operations::{NoLimit, OpError, Withheld};
use switchyard_core::upstream::{UpstreamError, UpstreamErrorKind};

/// Maps an operation's failure.
pub(crate) fn op_error(e: OpError) -> Error {
    match e {
        OpError::Invalid(invalid) => Error::new(invalid.message).extend_with(|_, ext| {
            ext.set("code", "BAD_USER_INPUT");
            ext.set("reason", invalid.code);
        }),
        OpError::Upstream(u) => upstream_error(&u),
    }
}

/// Maps a backend's failure (a failed required part, or an optional part's error).
pub(crate) fn upstream_error(e: &UpstreamError) -> Error {
    tracing::warn!(backend = %e.backend, error = %e, "backend call failed");
    let code = match &e.kind {
        UpstreamErrorKind::Timeout => "UPSTREAM_TIMEOUT",
        UpstreamErrorKind::Status { status, .. } if *status < 500 => "UPSTREAM_REJECTED",
        _ => "UPSTREAM_UNAVAILABLE",
    };
    let backend = e.backend.to_string();
    let reason = match &e.kind {
        UpstreamErrorKind::Status {
            code: Some(code), ..
        } => code.clone(),
        kind => kind.code().to_owned(),
    };
    Error::new(e.to_string()).extend_with(move |_, ext| {
        ext.set("code", code);
        ext.set("backend", backend.as_str());
        ext.set("reason", reason.as_str());
    })
}

/// Maps why a quote has no limit: a withheld limit is `UNAUTHENTICATED` (no token) or `FORBIDDEN`
/// (another user's account, or not a user), with the reason (`unauthenticated`,
/// `not_your_account`, `not_a_user`); a backend failure is [`upstream_error`].
pub(crate) fn no_limit_error(e: &NoLimit) -> Error {
    match e {
        NoLimit::Upstream(u) => upstream_error(u),
        NoLimit::Withheld(w) => {
            let code = match w {
                Withheld::Unauthenticated => "UNAUTHENTICATED",
                Withheld::NotYourAccount | Withheld::NotAUser => "FORBIDDEN",
            };
            let reason = w.code();
            Error::new(w.to_string()).extend_with(move |_, ext| {
                ext.set("code", code);
                ext.set("reason", reason);
            })
        }
    }
}
