//! GraphQL over HTTP conventions and request limits, against the real gateway on a loopback
//! port: GET and POST, media types and status codes, GraphiQL, CORS, depth and alias limits.

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use switchyard_core::bus::Broker;
use switchyard_server::server::CancellationToken;
use test_support::TestServer;

const GQL_RESPONSE: &str = "application/graphql-response+json";

async fn gateway(config: bff_web::Config) -> TestServer {
    let app = bff_web::app(&config, &Broker::memory(10), CancellationToken::new()).expect("app");
    test_support::serve(app.router).await
}

fn url(server: &TestServer) -> String {
    format!("{}/v1/graphql", server.url())
}

async fn post(server: &TestServer, accept: Option<&str>, body: &str) -> (u16, String, Value) {
    let mut req = reqwest::Client::new()
        .post(url(server))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(a) = accept {
        req = req.header(ACCEPT, a);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let media = r
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, media, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn get_runs_queries_and_refuses_mutations() {
    let s = gateway(bff_web::Config::default()).await;
    let client = reqwest::Client::new();
    let r = client
        .get(url(&s))
        .query(&[("query", "{ __typename }")])
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("JSON"),
        json!({"data": {"__typename": "Query"}})
    );
    let r = client
        .get(url(&s))
        .query(&[(
            "query",
            r#"mutation { convert(from: "EUR", to: "USD", amount: "1") { id } }"#,
        )])
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
}

#[tokio::test]
async fn media_types_and_status_codes_follow_graphql_over_http() {
    let s = gateway(bff_web::Config::default()).await;
    let ok = r#"{"query":"{ __typename }"}"#;
    let syntax = r#"{"query":"{ __typename "}"#;
    // application/json (the default): 200 even for a request that cannot run.
    let (status, media, body) = post(&s, None, syntax).await;
    assert_eq!((status, media.as_str()), (200, "application/json"));
    assert!(body["errors"].is_array());
    // graphql-response+json: 400 for a request that cannot run, 200 otherwise.
    let (status, media, _) = post(&s, Some(GQL_RESPONSE), syntax).await;
    assert_eq!((status, media.as_str()), (400, GQL_RESPONSE));
    let (status, media, body) = post(&s, Some(GQL_RESPONSE), ok).await;
    assert_eq!((status, media.as_str()), (200, GQL_RESPONSE));
    assert_eq!(body["data"]["__typename"], "Query");
    // Not a GraphQL request at all: 400 either way.
    let (status, _, body) = post(&s, None, r#"{"nope": 1}"#).await;
    assert_eq!(status, 400);
    assert!(body["errors"][0]["message"].is_string());
    // Not JSON: 415.
    let r = reqwest::Client::new()
        .post(url(&s))
        .header(CONTENT_TYPE, "text/plain")
        .body("{ __typename }")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 415);
    // Over the body limit: 413.
    let big = format!(
        r#"{{"query":"{{ __typename }}","x":"{}"}}"#,
        "a".repeat(70_000)
    );
    let (status, _, _) = post(&s, None, &big).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_browser_gets_graphiql() {
    let s = gateway(bff_web::Config::default()).await;
    let r = reqwest::Client::new()
        .get(url(&s))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("html").contains("graphiql"));
}

#[tokio::test]
async fn depth_and_alias_limits_are_enforced() {
    let mut config = bff_web::Config::default();
    config.graphql.max_depth = 2;
    config.graphql.max_aliases = 2;
    let s = gateway(config).await;
    let (_, _, body) = post(
        &s,
        None,
        r#"{"query":"{ dashboard(pairs: []) { limit { used } } }"}"#,
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too deep")),
        "{body}"
    );
    let (_, _, body) = post(
        &s,
        None,
        r#"{"query":"{ a: __typename b: __typename c: __typename }"}"#,
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("aliases")),
        "{body}"
    );
    let (_, _, body) = post(&s, None, r#"{"query":"{ a: __typename b: __typename }"}"#).await;
    assert_eq!(body["data"]["b"], "Query", "{body}");
}

#[tokio::test]
async fn cors_headers_only_for_allowed_origins() {
    let mut config = bff_web::Config::default();
    config.cors.allowed_origins = vec!["https://app.example.com".into()];
    let s = gateway(config).await;
    let preflight = |origin: &'static str| {
        let u = url(&s);
        async move {
            reqwest::Client::new()
                .request(reqwest::Method::OPTIONS, u)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,authorization",
                )
                .send()
                .await
                .expect("preflight")
        }
    };
    let allowed = preflight("https://app.example.com").await;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.org").await;
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

/// A document whose fragments each spread the next one `width` times: `width^levels` fields once
/// expanded. The 917-byte one (22 levels, width 2) cost ~860 MB and 2 s of CPU before it was
/// refused at parse time; at 2^26 the process aborted. Wider and shallower ones stay under the
/// engine's own recursion limit. Over POST, GET and the socket, v1 and v2, they get a GraphQL
/// error at once.
fn exponential_fragments(levels: usize, width: usize) -> String {
    let mut q = String::from("query { ...F0 }");
    for i in 0..levels {
        let spreads = format!(" ...F{}", i + 1).repeat(width);
        q.push_str(&format!(" fragment F{i} on Query {{{spreads} }}"));
    }
    q.push_str(&format!(" fragment F{levels} on Query {{ __typename }}"));
    q
}

#[tokio::test]
async fn exponential_fragment_spreads_are_refused_before_execution() {
    let s = gateway(bff_web::Config::default()).await;
    let client = reqwest::Client::new();
    for (levels, width) in [(22, 2), (13, 4), (9, 8), (4, 200)] {
        let query = exponential_fragments(levels, width);
        for version in ["v1", "v2"] {
            let url = format!("{}/{version}/graphql", s.url());
            let post = client
                .post(&url)
                .header(ACCEPT, GQL_RESPONSE)
                .json(&json!({ "query": query }))
                .send()
                .await
                .expect("post");
            assert_eq!(post.status(), 400);
            let body: Value = post.json().await.expect("JSON");
            let get: Value = client
                .get(&url)
                .query(&[("query", query.as_str())])
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("JSON");
            for body in [body, get] {
                assert_eq!(body["data"], Value::Null, "{body}");
                assert!(
                    body["errors"][0]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("too many selections")),
                    "{body}"
                );
            }
            let ws_url = format!("ws://{}/{version}/graphql", s.addr);
            let mut socket = test_support::graphql_ws::Client::connect(&ws_url, None).await;
            socket.subscribe("1", &query, json!({})).await;
            let answer = socket.recv().await;
            assert_eq!(answer["type"], "error", "{answer}");
            assert!(
                answer.to_string().contains("too many selections"),
                "{answer}"
            );
            let sub = exponential_fragments(levels, width)
                .replace("query {", "subscription {")
                .replace("on Query", "on SubscriptionRoot");
            socket.subscribe("2", &sub, json!({})).await;
            let answer = socket.recv().await;
            assert_eq!(answer["type"], "error", "{answer}");
            assert!(
                answer.to_string().contains("too many selections"),
                "{answer}"
            );
        }
    }
    // The gateway still answers.
    let (status, _, body) = post(&s, None, r#"{"query":"{ __typename }"}"#).await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query"))
    );
}

#[tokio::test]
async fn fragment_cycles_are_refused() {
    let s = gateway(bff_web::Config::default()).await;
    let (_, _, body) = post(
        &s,
        None,
        r#"{"query":"{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"}"#,
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cycle")),
        "{body}"
    );
}
