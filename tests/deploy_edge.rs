//! nginx, run with the real `deploy/nginx` configuration in front of TWO in-process instances of
//! each gateway, spreads HTTP requests and WebSockets over both bff-web instances, keeps
//! answering when one instance stops, and upgrades graphql-transport-ws and mobile sockets;
//! device requests pass and a device gets its rates. The instances run the shipped container
//! configurations (deploy/k8s/config), with only the demo services' addresses pointed at
//! loopback, so a missing backend or source in those files fails here.
//!
//! nginx must be installed (`scripts/services` installs it): without it this test FAILS.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::deploy::shipped_config;
use common::launcher::token;
use common::nginx::{Nginx, NginxDir, nginx_listens};
use common::{PATIENCE, Running};
use serde_json::{Value as Json, json};
use switchyard::{Config as StackConfig, DEMO_SECRET, Stack};
use switchyard_core::sources::SourceConfig;
use test_support::graphql_ws::Client as GraphqlWs;

/// Requests one bff-web instance has served: all of them, and WebSocket upgrades.
#[derive(Default)]
struct Served {
    requests: AtomicUsize,
    upgrades: AtomicUsize,
}

/// Asserts that a gateway's shipped configuration has the stack's exchange ticker as a source
/// (the `rates.` channels are fed from it): a container configuration without `[sources.exchange]`
/// keeps the default, the exchange on the container's own loopback, and its clients get no
/// rates.
fn assert_sources_the_exchange(
    stack: &Stack,
    gateway: &str,
    sources: &BTreeMap<String, SourceConfig>,
) {
    let ticks = format!("ws://{}/v1/ticks", stack.addr("exchange"));
    assert_eq!(
        sources.get("exchange").map(|b| b.url.as_str()),
        Some(ticks.as_str()),
        "deploy/k8s/config/{gateway}.toml: [sources.exchange] must name the exchange service"
    );
}

/// A bff-web instance on the stack's broker, from its shipped configuration, counting what it
/// serves.
async fn web_instance(stack: &Stack) -> (Running, Arc<Served>) {
    let mut config: bff_web::Config = shipped_config(stack, "bff-web", bff_web::ENV_PREFIX);
    assert_sources_the_exchange(stack, "bff-web", &config.sources);
    // Compose and Kubernetes set the secret in the environment.
    config.auth.hs256_secret = DEMO_SECRET.to_owned();
    let served = Arc::new(Served::default());
    let counter = served.clone();
    let broker = stack.broker().clone();
    let instance = Running::start("bff-web", move |listener, stop| {
        let app = bff_web::app(&config, &broker, stop.clone()).expect("bff-web app");
        let router = app.router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    counter.requests.fetch_add(1, Ordering::SeqCst);
                    if req.headers().contains_key(axum::http::header::UPGRADE) {
                        counter.upgrades.fetch_add(1, Ordering::SeqCst);
                    }
                    next.run(req).await
                }
            },
        ));
        async move {
            switchyard_server::server::serve(listener, router, stop, Duration::from_secs(5))
                .await?;
            Ok(())
        }
    })
    .await;
    (instance, served)
}

/// A bff-mobile instance on the stack's broker, from its shipped configuration.
async fn mobile_instance(stack: &Stack) -> Running {
    let mut config: bff_mobile::Config =
        shipped_config(stack, "bff-mobile", bff_mobile::ENV_PREFIX);
    assert_sources_the_exchange(stack, "bff-mobile", &config.sources);
    // Compose and Kubernetes set the secret in the environment.
    config.auth.hs256_secret = DEMO_SECRET.to_owned();
    let broker = stack.broker().clone();
    Running::start("bff-mobile", move |l, t| {
        bff_mobile::run(config, broker, l, t)
    })
    .await
}

/// A device both bff-device instances know (the registry of an in-memory bus is per instance,
/// so it is configured in each, as a deployment's configured devices are).
const EDGE_TV: &str = "edge-tv";

/// Its key.
const EDGE_TV_KEY: &str = "edge-tv-key-0123456789";

/// The pair it watches: one nothing else in the test watches, so only the device instances'
/// own exchange sources can feed it.
const EDGE_TV_PAIR: &str = "CHF/CAD";

/// A bff-device instance on the stack's broker, from its shipped configuration, with [`EDGE_TV`].
async fn device_instance(stack: &Stack) -> Running {
    let mut config: bff_device::Config =
        shipped_config(stack, "bff-device", bff_device::ENV_PREFIX);
    assert_sources_the_exchange(stack, "bff-device", &config.sources);
    config.devices.insert(
        EDGE_TV.to_owned(),
        bff_device::DeviceConfig {
            key: EDGE_TV_KEY.to_owned(),
            rates: vec![EDGE_TV_PAIR.to_owned()],
            settings: BTreeMap::new(),
            channels: Vec::new(),
        },
    );
    let broker = stack.broker().clone();
    Running::start("bff-device", move |l, t| {
        bff_device::run(config, broker, l, t)
    })
    .await
}

const QUOTE: &str =
    r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "100") { pair rate converted } }"#;

/// A GraphQL quote through nginx; asserts it answered with data.
async fn quote_through(client: &reqwest::Client, port: u16) {
    let r = client
        .post(format!("http://127.0.0.1:{port}/v1/graphql"))
        .json(&json!({ "query": QUOTE }))
        .send()
        .await
        .expect("a quote through nginx");
    let status = r.status().as_u16();
    let body: Json = r.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["quote"]["pair"], "EUR/USD", "{body}");
}

/// Requests each instance has served.
fn requests(served: &[Arc<Served>; 2]) -> [usize; 2] {
    served.each_ref().map(|s| s.requests.load(Ordering::SeqCst))
}

/// WebSocket upgrades each instance has served.
fn upgrades(served: &[Arc<Served>; 2]) -> [usize; 2] {
    served.each_ref().map(|s| s.upgrades.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_requests_and_sockets_over_two_instances_of_each_gateway() {
    let mut config = StackConfig::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    let stack = Stack::start(config).await.expect("stack starts");

    let (web_a, served_a) = web_instance(&stack).await;
    let (web_b, served_b) = web_instance(&stack).await;
    let served = [served_a, served_b];
    let mobile = [mobile_instance(&stack).await, mobile_instance(&stack).await];
    let device = [device_instance(&stack).await, device_instance(&stack).await];

    let upstreams = HashMap::from([
        ("bff_web", vec![web_a.addr, web_b.addr]),
        ("bff_mobile", mobile.iter().map(|i| i.addr).collect()),
        ("bff_device", device.iter().map(|i| i.addr).collect()),
    ]);
    let listens = nginx_listens();
    let (web, mobile_port, device_port) = (listens[&8080], listens[&8081], listens[&8082]);
    let mut nginx = Nginx::start(NginxDir::new(&upstreams, &listens));
    for port in [web, mobile_port, device_port] {
        nginx.wait_ready(port).await;
    }
    let client = test_support::http::client();

    // HTTP: one request after another goes to one instance, then the other (least_conn with
    // nothing in flight is round-robin): both serve, neither serves them all.
    for _ in 0..10 {
        quote_through(&client, web).await;
    }
    let [a, b] = requests(&served);
    assert_eq!(a + b, 10, "every request reached an instance");
    assert!(
        a >= 3 && b >= 3,
        "requests spread over both instances: {a} / {b}"
    );

    // WebSockets: graphql-transport-ws through nginx (upgrade, connection_ack, an operation
    // answered over the socket). Two sockets held open land on different instances: nginx
    // sends the second to the instance with fewer connections, never back to the first.
    let url = format!("ws://127.0.0.1:{web}/v1/graphql");
    let alice = token("alice");
    let mut first = GraphqlWs::connect(&url, Some(&alice)).await;
    let mut second = GraphqlWs::connect(&url, None).await;
    assert_eq!(upgrades(&served), [1, 1], "one socket each");
    for socket in [&mut first, &mut second] {
        socket.subscribe("q", QUOTE, json!({})).await;
        let next = socket.recv().await;
        assert_eq!(next["type"], "next", "{next}");
        assert_eq!(
            next["payload"]["data"]["quote"]["pair"], "EUR/USD",
            "{next}"
        );
        let done = socket.recv().await;
        assert_eq!(done["type"], "complete", "{done}");
    }
    first.close().await;
    second.close().await;

    // One instance goes away: every request still gets an answer, from the other one.
    web_a.stop().await;
    let before = requests(&served)[1];
    for _ in 0..6 {
        quote_through(&client, web).await;
    }
    assert_eq!(
        requests(&served)[1],
        before + 6,
        "the remaining instance served every request"
    );

    // bff-mobile: the binary protocol's WebSocket upgrade (subprotocol included) and a call.
    let mobile_url = format!("ws://127.0.0.1:{mobile_port}/v1/ws");
    let token = token("bob");
    let app = tokio::time::timeout(
        PATIENCE,
        mobile_client::Client::connect(mobile_client::Config::new(mobile_url, token)),
    )
    .await
    .expect("connect in time")
    .expect("a mobile socket through nginx");
    let quote = tokio::time::timeout(
        PATIENCE,
        app.call(
            "quote",
            json!({"from": "EUR", "to": "USD", "amount": "10.00"}),
        ),
    )
    .await
    .expect("an answer in time")
    .expect("quote answers");
    assert_eq!(quote["pair"], "EUR/USD", "{quote}");
    app.close().await;

    // bff-device: plain HTTP through its server block, on both instances in turn; rates reach
    // a device; the edge keeps the admin API to the inside.
    for _ in 0..4 {
        let r = client
            .get(format!(
                "http://127.0.0.1:{device_port}/v1/quote?user=carol&from=EUR&to=USD&amount=5"
            ))
            .send()
            .await
            .expect("a device quote through nginx");
        assert_eq!(r.status().as_u16(), 200);
        let body: Json = r.json().await.expect("JSON");
        assert_eq!(body["p"], "EUR/USD", "{body}");
    }

    // A device behind nginx gets its rates: each instance's hub feeds the pair from the exchange
    // source of its shipped configuration. Long-polls (held up to a second, so that both
    // instances are asked) until a rate of the device's pair comes.
    let rate = tokio::time::timeout(PATIENCE, async {
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("wait", "1".to_owned())];
            query.extend(cursor.clone().map(|c| ("cursor", c)));
            let r = client
                .get(format!(
                    "http://127.0.0.1:{device_port}/v1/devices/{EDGE_TV}/events"
                ))
                .header("x-device-key", EDGE_TV_KEY)
                .query(&query)
                .send()
                .await
                .expect("a device poll through nginx");
            assert_eq!(r.status().as_u16(), 200);
            let body: Json = r.json().await.expect("JSON");
            let events = body["e"].as_array().expect("events");
            if let Some(rate) = events.iter().find(|e| e["t"] == "r") {
                break rate.clone();
            }
            cursor = Some(body["n"].as_str().expect("a cursor").to_owned());
        }
    })
    .await
    .expect("a rate reaches the device through nginx in time");
    assert_eq!(rate["p"], EDGE_TV_PAIR, "{rate}");
    assert!(
        rate["r"]
            .as_str()
            .is_some_and(|r| r.parse::<f64>().is_ok_and(|r| r > 0.0)),
        "{rate}"
    );

    let admin = client
        .post(format!("http://127.0.0.1:{device_port}/admin/devices"))
        .send()
        .await
        .expect("an answer from the edge");
    assert_eq!(admin.status().as_u16(), 404);

    drop(nginx);
    web_b.stop().await;
    for i in mobile.into_iter().chain(device) {
        i.stop().await;
    }
    stack.stop().await.expect("clean stop");
}
