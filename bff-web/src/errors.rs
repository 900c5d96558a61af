//! The one place where core and operation errors become GraphQL errors.
//!
//! Every error carries `extensions.code`; upstream failures also carry `extensions.backend`, so a
//! client (and an operator reading logs) can tell a backend's failure from its own bad input. The
//! detail is logged here, once.

use async_graphql::{Error, ErrorExtensions};
use operations::OpError;
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
