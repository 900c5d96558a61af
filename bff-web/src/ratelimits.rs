//! bff-web's answers to the core's rate limits ([`switchyard_core::ratelimit`]): the HTTP 429
//! with a GraphQL error body, the socket close for a message flood, and the `error` message for
//! a subscription over the rate. The counting itself is the core's.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchyard_core::ratelimit::{RateLimiter, RetryAfter};
use switchyard_server::ratelimit::retry_after_header;

use crate::fanout::Frame;
use crate::ws::transport::{Closing, close};

/// An HTTP request over its rate: 429, `Retry-After`, and a GraphQL error
/// (`extensions.code` `RATE_LIMITED`, `extensions.retryAfter` in seconds).
pub(crate) fn refuse(r: RetryAfter) -> Response {
    let body = serde_json::json!({"errors": [{
        "message": format!("too many requests; retry after {} s", r.secs()),
        "extensions": {"code": "RATE_LIMITED", "retryAfter": r.secs()}
    }]});
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (
                header::CONTENT_TYPE,
                "application/json"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            ),
            retry_after_header(r),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Counts one socket message; over the rate the socket is closed with 1008 (policy
/// violation), the reason saying when to retry.
pub(crate) async fn message(
    limiter: &RateLimiter,
    user: Option<String>,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Closing> {
    limiter
        .check_message(user.as_deref(), peer)
        .await
        .map_err(|r| {
            Closing::new(
                close::RATE_LIMITED,
                format!(
                    "Rate limited: too many messages; retry after {} s",
                    r.secs()
                ),
            )
        })
}

/// Counts one `subscribe`; over the rate the operation gets an `error` message instead.
pub(crate) async fn subscription(
    limiter: &RateLimiter,
    user: Option<String>,
    peer: Option<std::net::IpAddr>,
) -> Result<(), Frame> {
    limiter
        .check_subscription(user.as_deref(), peer)
        .await
        .map_err(|r| {
            let errors = serde_json::json!([{
                "message": format!("too many subscriptions; retry after {} s", r.secs()),
                "extensions": {"code": "RATE_LIMITED", "retryAfter": r.secs()}
            }]);
            Frame::Error(errors.to_string().into())
        })
}
