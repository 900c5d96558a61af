//! GraphQL over HTTP, after the GraphQL-over-HTTP conventions: POST with a JSON body, GET with
//! query parameters (queries only: a mutation over GET is 405), `application/json` or
//! `application/graphql-response+json` answers as the client accepts, and GraphiQL for a browser.
//!
//! With `application/json` a well-formed request always answers 200, errors in the body; with
//! `application/graphql-response+json` a request that could not be executed at all (syntax or
//! validation error) answers 400. A body that is not a GraphQL request is 400 either way.

use std::collections::HashMap;

use async_graphql::parser::types::OperationType;
use async_graphql::{ObjectType, Schema, SubscriptionType};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

struct Endpoint<Q, M, S> {
    schema: Schema<Q, M, S>,
    path: &'static str,
    graphiql: bool,
}

impl<Q, M, S> Clone for Endpoint<Q, M, S> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            path: self.path,
            graphiql: self.graphiql,
        }
    }
}

/// `/graphql` for one schema; `path` is its full public path (for GraphiQL).
pub(crate) fn routes<Q, M, S>(schema: Schema<Q, M, S>, path: &'static str, graphiql: bool) -> Router
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let endpoint = Endpoint {
        schema,
        path,
        graphiql,
    };
    Router::new().route(
        "/graphql",
        get(get_graphql::<Q, M, S>)
            .post(post_graphql::<Q, M, S>)
            .with_state(endpoint),
    )
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
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return request_error(
                media,
                StatusCode::BAD_REQUEST,
                &format!("the body is not a GraphQL request: {e}"),
            );
        }
    };
    respond(media, endpoint.schema.execute(request).await)
}

async fn get_graphql<Q, M, S>(
    State(endpoint): State<Endpoint<Q, M, S>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
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
    respond(media, endpoint.schema.execute(request).await)
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
