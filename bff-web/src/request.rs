//! A GraphQL request as a client sends it — the JSON of a POST body or of a graphql-transport-ws
//! `subscribe` payload — and the engine's request made from it, with the caller attached. HTTP
//! ([`crate::http`]) and the socket ([`crate::ws`]) both take requests this way; a GET's query
//! parameters are read in [`crate::http`].

use crate::auth::Principal;

/// A GraphQL request as a POST body or a `subscribe` payload carries it: `query` is required
/// (without it, it is not a GraphQL request).
#[derive(Clone, serde::Deserialize)]
pub(crate) struct RequestBody {
    pub(crate) query: String,
    #[serde(default)]
    pub(crate) variables: Option<serde_json::Value>,
    #[serde(default, rename = "operationName")]
    pub(crate) operation_name: Option<String>,
    #[serde(default)]
    extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

impl RequestBody {
    /// The engine's request.
    pub(crate) fn into_request(self) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(self.query);
        if let Some(v) = self.variables {
            request = request.variables(async_graphql::Variables::from_json(v));
        }
        if let Some(name) = self.operation_name {
            request = request.operation_name(name);
        }
        for (k, v) in self.extensions.unwrap_or_default() {
            if let Ok(v) = async_graphql::Value::from_json(v) {
                request.extensions.insert(k, v);
            }
        }
        request
    }
}

/// The engine's `request`, run as `principal` (anonymous when `None`).
pub(crate) fn with_principal(
    request: async_graphql::Request,
    principal: Option<Principal>,
) -> async_graphql::Request {
    match principal {
        Some(p) => request.data(p),
        None => request,
    }
}
