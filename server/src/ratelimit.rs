//! The HTTP half of the core's rate limits ([`switchyard_core::ratelimit`]): the axum middleware
//! the gateways wrap their routers in (per IP for every request, per user for those a gateway
//! can name), the client address of a request (the peer's from `ConnectInfo`, or a trusted
//! proxy's `X-Forwarded-For`), and the JSON refusal (429 with `Retry-After`).
//!
//! The limiter itself — GCRA, its stores on the broker or in memory, the local fallback — is in
//! the core; this module only reads requests and writes answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use switchyard_core::ratelimit::{Key, RateLimiter, RetryAfter, Scope};

/// The client address of a request, for a [`RateLimiter`].
pub trait ClientIp {
    /// The client's IP address of a request: the peer's (from axum's
    /// `ConnectInfo<SocketAddr>` extension), or a trusted proxy's `X-Forwarded-For`. `None`
    /// when the server does not record peers.
    fn client_ip(&self, parts: &Parts) -> Option<IpAddr>;
}

impl ClientIp for RateLimiter {
    fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        self.client_ip_from(peer, &parts.headers)
    }
}

/// Names the authenticated user of a request, for the per-user rule of [`layer`]; `None` for
/// an anonymous (or wrongly authenticated) caller, who is then limited by IP only.
pub type UserOf = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Turns a refusal into the gateway's answer (429 with `Retry-After`, in its error shape).
pub type Refuse = fn(RetryAfter) -> Response;

#[derive(Clone)]
struct LayerState {
    limiter: Arc<RateLimiter>,
    user: Option<UserOf>,
    refuse: Refuse,
}

/// Wraps `router` in the per-request limits: per IP for every request, and per user for those
/// `user` names. A refused request never reaches the router.
pub fn layer<S>(
    router: axum::Router<S>,
    limiter: Arc<RateLimiter>,
    user: Option<UserOf>,
    refuse: Refuse,
) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn_with_state(
        LayerState {
            limiter,
            user,
            refuse,
        },
        limit,
    ))
}

async fn limit(State(s): State<LayerState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(ip) = s.limiter.client_ip(&parts)
        && let Err(r) = s
            .limiter
            .check(&Key::ip(Scope::Request, ip), s.limiter.requests_per_ip())
            .await
    {
        return (s.refuse)(r);
    }
    if let Some(user) = s.user.as_ref().and_then(|f| f(&parts))
        && let Err(r) = s
            .limiter
            .check(
                &Key::user(Scope::Request, &user),
                s.limiter.requests_per_user(),
            )
            .await
    {
        return (s.refuse)(r);
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The refusal of an HTTP request in the JSON error shape: 429, `Retry-After` (seconds), and
/// `{"error": {"code": "rate_limited", "message", "retry_after_s"}}`.
pub fn json_refusal(r: RetryAfter) -> Response {
    use axum::response::IntoResponse as _;
    let body = serde_json::json!({"error": {
        "code": "rate_limited",
        "message": format!("too many requests; retry after {} s", r.secs()),
        "retry_after_s": r.secs(),
    }});
    (
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        [retry_after_header(r)],
        axum::Json(body),
    )
        .into_response()
}

/// The `Retry-After` header of a refusal.
pub fn retry_after_header(r: RetryAfter) -> (axum::http::HeaderName, axum::http::HeaderValue) {
    (
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(r.secs()),
    )
}
