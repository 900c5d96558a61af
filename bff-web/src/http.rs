//! GraphQL over HTTP, after the GraphQL-over-HTTP conventions: POST with a JSON body, GET with
//! query parameters (queries only: a mutation over GET is 405), `application/json` or
//! `application/graphql-response+json` answers as the client accepts, and GraphiQL for a browser.
//!
//! With `application/json` a well-formed request always answers 200, errors in the body; with
//! `application/graphql-response+json` a request that could not be executed at all (syntax or
//! validation error) answers 400. A body that is not a GraphQL request is 400 either way.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::parser::types::OperationType;
use async_graphql::{ObjectType, SubscriptionType};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use switchyard_server::ratelimit::ClientIp as _;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Principal};
use crate::request::{RequestBody, with_principal};
use crate::ws;

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// One GraphQL endpoint: a schema version served over HTTP and WebSocket.
pub(crate) struct Endpoint<Q, M, S> {
    /// Its public path, for GraphiQL.
    pub(crate) path: &'static str,
    /// Whether a browser gets GraphiQL.
    pub(crate) graphiql: bool,
    /// Checks bearer tokens.
    pub(crate) verifier: Arc<Authenticator>,
    /// The WebSocket side (it also holds the schema).
    pub(crate) socket: ws::Socket<Q, M, S>,
    /// Socket buffer and size limits.
    pub(crate) websocket: crate::WebSocketConfig,
    /// Who may open a socket.
    pub(crate) origins: crate::Origins,
    /// Every socket task, so the drain can wait for them.
    pub(crate) sockets: TaskTracker,
}

impl<Q, M, S> Clone for Endpoint<Q, M, S> {
    fn clone(&self) -> Self {
        Self {
            path: self.path,
            graphiql: self.graphiql,
            verifier: self.verifier.clone(),
            socket: self.socket.clone(),
            websocket: self.websocket.clone(),
            origins: self.origins.clone(),
            sockets: self.sockets.clone(),
        }
    }
}

/// `/graphql` for one endpoint.
pub(crate) fn routes<Q, M, S>(endpoint: Endpoint<Q, M, S>) -> Router
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    Router::new().route(
        "/graphql",
        get(get_graphql::<Q, M, S>)
            .post(post_graphql::<Q, M, S>)
            .with_state(endpoint),
    )
}

/// The principal of a request, or the HTTP answer refusing it (401 for a bad token).
#[allow(clippy::result_large_err)]
async fn principal(
    verifier: &Authenticator,
    headers: &HeaderMap,
    media: &'static str,
) -> Result<Option<Principal>, Response> {
    verifier.from_headers(headers).await.map_err(|e| {
        let body = serde_json::json!({"errors": [{
            "message": e.to_string(),
            "extensions": {"code": "UNAUTHENTICATED", "reason": e.code()}
        }]});
        let mut response = (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, media)],
            body.to_string(),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    })
}

async fn post_graphql<Q, M, S>(
    State(endpoint): State<Endpoint<Q, M, S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let media = accepted(&headers);
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim() == JSON));
    if !is_json {
        return request_error(
            media,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the GraphQL request as application/json",
        );
    }
    let principal = match principal(&endpoint.verifier, &headers, media).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    let request = match serde_json::from_slice::<RequestBody>(&body) {
        Ok(b) => b.into_request(),
        Err(e) => {
            return request_error(
                media,
                StatusCode::BAD_REQUEST,
                &format!("the body is not a GraphQL request: {e}"),
            );
        }
    };
    let request = with_principal(request, principal);
    respond(media, endpoint.socket.schema.execute(request).await)
}

async fn get_graphql<Q, M, S>(
    State(endpoint): State<Endpoint<Q, M, S>>,
    request: Request,
) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let (mut parts, _body) = request.into_parts();
    let is_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => {
                let peer = endpoint.socket.limiter.client_ip(&parts);
                upgrade_socket(endpoint, &parts, upgrade, peer)
            }
            Err(rejection) => rejection.into_response(),
        };
    }
    let headers = parts.headers;
    let Query(params) = match Query::<HashMap<String, String>>::try_from_uri(&parts.uri) {
        Ok(q) => q,
        Err(e) => {
            return request_error(accepted(&headers), StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let media = accepted(&headers);
    let Some(query) = params.get("query") else {
        let wants_html = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        if wants_html && endpoint.graphiql {
            let page = async_graphql::http::GraphiQLSource::build()
                .endpoint(endpoint.path)
                .subscription_endpoint(endpoint.path)
                .finish();
            return Html(page).into_response();
        }
        return request_error(media, StatusCode::BAD_REQUEST, "missing `query` parameter");
    };
    let mut request = async_graphql::Request::new(query.clone());
    if let Some(name) = params.get("operationName") {
        request = request.operation_name(name.clone());
    }
    if let Some(vars) = params.get("variables") {
        match serde_json::from_str::<async_graphql::Variables>(vars) {
            Ok(v) => request = request.variables(v),
            Err(e) => {
                return request_error(
                    media,
                    StatusCode::BAD_REQUEST,
                    &format!("`variables` is not a JSON object: {e}"),
                );
            }
        }
    }
    if is_mutation(query, params.get("operationName").map(String::as_str)) {
        let mut response = request_error(
            media,
            StatusCode::METHOD_NOT_ALLOWED,
            "mutations must be sent with POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let principal = match principal(&endpoint.verifier, &headers, media).await {
        Ok(p) => p,
        Err(response) => return response,
    };
    let request = with_principal(request, principal);
    respond(media, endpoint.socket.schema.execute(request).await)
}

/// Upgrades to a graphql-transport-ws socket: checks the page's origin, offers the subprotocol,
/// sizes the buffers, and hands the socket to [`ws::serve`], tracked for the drain.
fn upgrade_socket<Q, M, S>(
    endpoint: Endpoint<Q, M, S>,
    parts: &axum::http::request::Parts,
    upgrade: WebSocketUpgrade,
    peer: Option<std::net::IpAddr>,
) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    if !endpoint.origins.allows(&parts.headers) {
        return request_error(
            JSON,
            StatusCode::FORBIDDEN,
            "this origin may not open a socket",
        );
    }
    let limits = &endpoint.websocket;
    let upgrade = upgrade
        .protocols([ws::PROTOCOL])
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        // Small buffers: an idle socket should cost kilobytes, not tungstenite's default 128 KiB.
        .read_buffer_size(4 * 1024)
        // Frames handed over together are written together (one system call per batch, not
        // per frame) up to this much; the buffer is empty until a socket has traffic.
        .write_buffer_size(switchyard_server::websocket::WRITE_BATCH_BYTES)
        .max_write_buffer_size(limits.max_message_bytes.saturating_mul(4).max(64 * 1024));
    let protocol_ok = upgrade.selected_protocol().is_some();
    let socket = endpoint.socket.clone();
    let tracker = endpoint.sockets.clone();
    let usage = parts
        .extensions
        .get::<switchyard_server::metrics::Usage>()
        .cloned();
    // The socket runs in the trace of its upgrade request (its `traceparent`, if valid) until
    // its `connection_init` names one.
    let trace = switchyard_core::trace::current();
    let version = switchyard_server::lifecycle::api_version(parts.uri.path()).to_owned();
    upgrade
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |ws_socket| {
            // Counted in the gateway's metrics while the socket is open.
            let open = usage.map(|u| u.connection());
            tracker.track_future(async move {
                let serve = ws::serve(ws_socket, socket, protocol_ok, peer, open);
                switchyard_server::lifecycle::socket("bff-web", &version, trace, serve).await;
            })
        })
}

/// Whether the operation a GET would run is a mutation (unparsable queries are left to the
/// engine, which reports the syntax error).
fn is_mutation(query: &str, operation_name: Option<&str>) -> bool {
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    let ty = match (&doc.operations, operation_name) {
        (async_graphql::parser::types::DocumentOperations::Single(op), _) => Some(op.node.ty),
        (async_graphql::parser::types::DocumentOperations::Multiple(ops), Some(name)) => {
            ops.get(name).map(|op| op.node.ty)
        }
        (async_graphql::parser::types::DocumentOperations::Multiple(_), None) => None,
    };
    ty == Some(OperationType::Mutation)
}

/// The media type to answer with: graphql-response+json when the client accepts it.
fn accepted(headers: &HeaderMap) -> &'static str {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(GRAPHQL_RESPONSE) {
        GRAPHQL_RESPONSE
    } else {
        JSON
    }
}

fn respond(media: &'static str, response: async_graphql::Response) -> Response {
    // A request that never executed (syntax or validation error) has no data and no error paths.
    let not_executed = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    let status = if media == GRAPHQL_RESPONSE && not_executed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = serde_json::to_vec(&response).unwrap_or_else(|e| {
        serde_json::to_vec(&serde_json::json!({"errors": [{"message": e.to_string()}]}))
            .unwrap_or_default()
    });
    (status, [(header::CONTENT_TYPE, media)], body).into_response()
}

fn request_error(media: &'static str, status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"message": message}]});
    (status, [(header::CONTENT_TYPE, media)], body.to_string()).into_response()
}
