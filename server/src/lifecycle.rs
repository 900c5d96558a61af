//! Request and socket lifecycles: the trace each runs in, and the lines an operator sees at the
//! default level (`info`) — one per HTTP request, one when a socket opens and one when it
//! closes; never one per delivered event.
//!
//! [`requests`] is the middleware every server's router is wrapped in (`server::with_common_layers`,
//! the publish API): it reads the client's `traceparent` strictly (a bad one is ignored and a new
//! trace started, never an error), runs the request in a `request` span and in that trace
//! ([`switchyard_core::trace::scope`], which the core's backend calls and the publish API read),
//! and logs the request when it is answered (target `switchyard::request`; `/healthz`, `/readyz`
//! and `/metrics` at `debug`, so that probes do not flood the log). [`socket`] does the same for an
//! upgraded socket's task, in the trace of its upgrade request (target `switchyard::socket`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use switchyard_core::trace::{self, TRACEPARENT, TraceContext};
use tracing::Instrument as _;
use tracing::field::{Empty, display};

use crate::telemetry;

/// The API version of a path: its first segment when it is `v` and digits (`/v1/ws` → `v1`),
/// else `-`.
pub fn api_version(path: &str) -> &str {
    let first = path.split('/').nth(1).unwrap_or("");
    match first.strip_prefix('v') {
        Some(n) if !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()) => first,
        _ => "-",
    }
}

/// The trace context a request names in its `traceparent` header, when it is valid.
pub fn traceparent(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    // Two `traceparent` headers are invalid (W3C): ignored like any other bad value.
    if values.next().is_some() {
        return None;
    }
    TraceContext::parse(value.as_bytes())
}

/// The trace a unit of work (a request, a socket) runs in: with spans exported, the context of
/// `span` made a child of the caller's `incoming` context (or a new root the sampler judged);
/// otherwise the caller's context, or a new unsampled trace.
fn trace_of(span: &tracing::Span, incoming: Option<TraceContext>) -> TraceContext {
    if telemetry::exporting() {
        if let Some(parent) = &incoming {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                span,
                telemetry::remote(parent),
            );
        }
        if let Some(own) = telemetry::context_of(span) {
            return own;
        }
    }
    incoming.unwrap_or_else(|| TraceContext::new_root(false))
}

/// The middleware of every server: the request in its trace and its `request` span, then one
/// line when it is answered (method, route template, API version, status, duration, trace id).
pub async fn requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The route template (`/v1/devices/{id}/events`), never the raw path of an unmatched request.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("-", MatchedPath::as_str);
    let path = request.uri().path();
    let version = api_version(path).to_owned();
    let quiet = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.name = Empty,
        method = %method,
        route,
        version = %version,
        status = Empty,
        trace_id = Empty,
    );
    if telemetry::exporting() {
        span.record("otel.name", display(format_args!("{method} {route}")));
    }
    let context = trace_of(&span, traceparent(request.headers()));
    span.record("trace_id", display(context.trace_id_hex()));
    let response = trace::scope(context, next.run(request))
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    span.record("status", status);
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let trace_id = context.trace_id_hex();
    if quiet {
        tracing::debug!(target: "switchyard::request", parent: None, %method, %route, %version, status, duration_ms, %trace_id, "request");
    } else {
        tracing::info!(target: "switchyard::request", parent: None, %method, %route, %version, status, duration_ms, %trace_id, "request");
    }
    response
}

/// How a socket ended, for its closing line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEnd {
    /// The gateway sent this close code.
    Closed(u16),
    /// The client closed it or went away (no close code of the gateway's).
    ClientGone,
}

/// Runs an upgraded socket's task `serve` in the trace of its upgrade request (`trace`, read
/// with [`switchyard_core::trace::current`] in the upgrade handler; a new trace when `None`),
/// logging `socket opened` and, when `serve` returns how it ended, `socket closed` with the
/// close code and duration (gateway, API version and trace id on both).
pub async fn socket<F>(gateway: &'static str, version: &str, trace: Option<TraceContext>, serve: F)
where
    F: Future<Output = SocketEnd>,
{
    let started = Instant::now();
    let context = trace.unwrap_or_else(|| TraceContext::new_root(false));
    let trace_id = context.trace_id_hex();
    tracing::info!(target: "switchyard::socket", %gateway, %version, %trace_id, "socket opened");
    let end = trace::scope(context, serve).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match end {
        SocketEnd::Closed(code) => {
            tracing::info!(target: "switchyard::socket", %gateway, %version, code, duration_ms, %trace_id, "socket closed");
        }
        SocketEnd::ClientGone => {
            tracing::info!(target: "switchyard::socket", %gateway, %version, code = "client", duration_ms, %trace_id, "socket closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_of_paths() {
        assert_eq!(api_version("/v1/ws"), "v1");
        assert_eq!(api_version("/v2/graphql"), "v2");
        assert_eq!(api_version("/v12"), "v12");
        assert_eq!(api_version("/healthz"), "-");
        assert_eq!(api_version("/v/x"), "-");
        assert_eq!(api_version("/vx1/x"), "-");
        assert_eq!(api_version("/"), "-");
        assert_eq!(api_version(""), "-");
    }

    #[test]
    fn a_traceparent_header_is_read_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(traceparent(&headers), None);
        headers.insert(TRACEPARENT, good.parse().unwrap());
        assert_eq!(traceparent(&headers).unwrap().to_string(), good);
        headers.append(TRACEPARENT, good.parse().unwrap());
        assert_eq!(traceparent(&headers), None, "two headers are invalid");
        headers.insert(TRACEPARENT, "00-zz".parse().unwrap());
        assert_eq!(traceparent(&headers), None);
    }
}
