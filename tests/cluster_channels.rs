//! Catalog channels across instances, against the real Redis and NATS of this machine (fixtures
//! in `common/cluster.rs`): a backend publishes through instance A's publish API; a mobile client
//! and a web client (graphql-transport-ws) on instance B resume from the positions A's API
//! answered and get exactly the events after them, in order, then the live ones.
//!
//! A broker that cannot be reached FAILS these tests (`scripts/services` starts both).

mod common;

use std::time::Duration;

use common::cluster::{
    BROKERS, bus_config, mobile_instance, signed_in, token, web_config, web_instance,
    web_instance_with,
};
use mobile_proto::Position;
use serde_json::{Value, json};
use switchyard_core::keyhash;
use switchyard_server::publish::PublisherKey;

/// The test publisher's key (publisher `demo`, which the demo catalog lets publish on
/// `announcements`).
const KEY: &str = "cluster-publisher-key-0123456789";

const QUERY: &str = "subscription ($name: String!, $after: ChannelPosition) { channel(name: $name, after: $after) { epoch offset data } }";

/// A loopback port free right now, for a publish listener whose address the test must know.
fn free_port() -> std::net::SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

async fn publish(http: &reqwest::Client, url: &str, data: Value) -> Position {
    let answer = http
        .post(url)
        .bearer_auth(KEY)
        .json(&json!({"channel": "announcements", "data": data}))
        .send()
        .await
        .expect("the publish API answers");
    assert_eq!(answer.status(), 200);
    let v: Value = answer.json().await.expect("JSON");
    let num = |k: &str| {
        v[k].as_str()
            .and_then(|s| s.parse().ok())
            .expect("a decimal string")
    };
    Position {
        epoch: num("epoch"),
        offset: num("offset"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_on_a_received_and_resumed_on_b() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let mut a_config = web_config(&config);
        let publish_addr = free_port();
        a_config.publish.listen = publish_addr.to_string();
        a_config.publish.keys = vec![PublisherKey {
            publisher: "demo".to_owned(),
            sha256: keyhash::to_hex(&keyhash::sha256(KEY.as_bytes())),
        }];
        let a = web_instance_with(&config, a_config).await;
        // The instance is up once its main listener is; its publish listener is bound by the
        // task that serves it, a moment later.
        assert!(
            test_support::eventually(common::PATIENCE, || async {
                tokio::net::TcpStream::connect(publish_addr).await.is_ok()
            })
            .await,
            "{kind:?}: the publish listener {publish_addr} never accepted"
        );
        let b_web = web_instance(&config).await;
        let b_mobile = mobile_instance(&config).await;
        let url = format!("http://{publish_addr}/v1/publish");
        let http = test_support::http::client();

        let positions = {
            let mut p = Vec::new();
            for n in 0..3 {
                p.push(publish(&http, &url, json!({"n": n})).await);
            }
            p
        };
        let first = positions[0];

        // Mobile on B, resuming after A's first answer: events 1 and 2, then a live one.
        let mut mobile = signed_in(b_mobile.addr, "alice").await;
        let subbed = mobile.subbed("announcements", Some(first)).await;
        assert_eq!(
            (subbed.epoch, subbed.offset),
            (first.epoch, first.offset),
            "{kind:?}"
        );
        // Web on B, resuming after the same position.
        let mut web = test_support::graphql_ws::Client::connect(
            &b_web.ws_url("/v1/graphql"),
            Some(&token("alice")),
        )
        .await;
        let after = json!({"epoch": first.epoch.to_string(), "offset": first.offset.to_string()});
        web.subscribe("c", QUERY, json!({"name": "announcements", "after": after}))
            .await;

        for (n, position) in positions.iter().enumerate().skip(1) {
            let event = mobile.event().await;
            assert_eq!(event.topic, "announcements", "{kind:?}");
            assert_eq!(event.position(), *position, "{kind:?}");
            assert_eq!(event.data, json!({"n": n}), "{kind:?}");
            let next = web.recv().await;
            assert_eq!(next["type"], "next", "{kind:?}: {next}");
            let got = &next["payload"]["data"]["channel"];
            assert_eq!(got["epoch"], position.epoch.to_string(), "{kind:?}: {next}");
            assert_eq!(
                got["offset"],
                position.offset.to_string(),
                "{kind:?}: {next}"
            );
            assert_eq!(got["data"], json!({"n": n}), "{kind:?}: {next}");
        }
        // Live, published on A after both resumed on B.
        let live = publish(&http, &url, json!({"n": 3})).await;
        let event = mobile.event().await;
        assert_eq!(
            (event.position(), &event.data),
            (live, &json!({"n": 3})),
            "{kind:?}"
        );
        let next = web.recv().await;
        assert_eq!(
            next["payload"]["data"]["channel"]["offset"],
            live.offset.to_string(),
            "{kind:?}: {next}"
        );
        // Exactly once: nothing more on either.
        assert!(
            web.recv_within(Duration::from_millis(300)).await.is_none(),
            "{kind:?}"
        );
        mobile.quiet(Duration::from_millis(300)).await;

        web.close().await;
        drop(mobile);
        for instance in [a, b_web, b_mobile] {
            instance.stop().await;
        }
    }
}
