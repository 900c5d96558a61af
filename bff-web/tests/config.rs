//! The shipped production example configuration: it loads, it serves the demo channel catalog,
//! and it turns introspection and GraphiQL off — checked by asking the gateway built from it.

use serde_json::json;
use switchyard_core::bus::Broker;
use switchyard_server::config::Source;
use switchyard_server::server::CancellationToken;

fn production() -> bff_web::Config {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/bff-web.toml");
    let text = std::fs::read_to_string(&path).expect("the example config exists");
    Source::new(Some((path, text)), vec![])
        .load(bff_web::ENV_PREFIX)
        .expect("the example config loads")
}

#[test]
fn the_production_example_serves_the_demo_catalog_and_no_prefix_classes() {
    let config = production();
    assert_eq!(config.channels, operations::channels::demo());
    assert_eq!(config.channels, bff_web::Config::default().channels);
    assert!(config.hub.topics.is_empty(), "{:?}", config.hub.topics);
}

#[tokio::test]
async fn the_production_example_turns_introspection_off() {
    let config = production();
    assert!(!config.graphql.introspection);
    assert!(!config.graphql.graphiql);
    let schema_of = |config: bff_web::Config| async move {
        let app =
            bff_web::app(&config, &Broker::memory(10), CancellationToken::new()).expect("app");
        let server = test_support::serve(app.router).await;
        let body: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/graphql", server.url()))
            .json(&json!({"query": "{ __schema { types { name } } }"}))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON");
        body["data"]["__schema"].clone()
    };
    assert!(
        schema_of(bff_web::Config::default()).await.is_object(),
        "on by default"
    );
    assert!(
        schema_of(config.clone()).await.is_null(),
        "off in production"
    );
    let app = bff_web::app(&config, &Broker::memory(10), CancellationToken::new()).expect("app");
    let server = test_support::serve(app.router).await;
    let client = reqwest::Client::new();
    let page = client
        .get(format!("{}/v1/graphql", server.url()))
        .header("accept", "text/html")
        .send()
        .await
        .expect("request");
    assert_eq!(page.status(), 400, "no GraphiQL in production");
}
