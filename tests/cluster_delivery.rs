//! Cross-instance delivery, against the real Redis and NATS of this machine (fixtures in
//! `common/cluster.rs`): an event published through one bus client reaches a client connected
//! to another instance — a mobile `conversions` subscription, a graphql-transport-ws
//! `conversions` subscription, a device poll (a command sent through instance A's admin API is
//! answered to a poll held on instance B).
//!
//! A broker that cannot be reached FAILS these tests (`scripts/services` starts both).

mod common;

use std::time::Duration;

use common::PATIENCE;
use common::cluster::{
    BROKERS, bus_client, bus_config, device_instance, http, mobile_client, mobile_instance, poll,
    publish_conversion, send_command, token, web_instance,
};
use mobile_client::Update;
use serde_json::json;
use test_support::graphql_ws::Client as GraphqlWs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobile_events_published_anywhere_reach_a_client_on_another_instance() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let backend = bus_client(&config).await;
        let a = mobile_instance(&config).await;
        let b = mobile_instance(&config).await;

        // Alice is connected to both instances; each socket gets every event of hers.
        let connect = |addr| mobile_client(addr, "alice");
        let on_a = connect(a.addr).await;
        let on_b = connect(b.addr).await;
        let mut sub_a = on_a.subscribe("conversions").await.expect("subscribed");
        let mut sub_b = on_b.subscribe("conversions").await.expect("subscribed");

        let mut published = Vec::new();
        for i in 0..3 {
            let id = format!("m{i}");
            published.push((id.clone(), publish_conversion(&backend, "alice", &id).await));
        }
        for (instance, sub) in [("A", &mut sub_a), ("B", &mut sub_b)] {
            for (id, position) in &published {
                let update = tokio::time::timeout(PATIENCE, sub.next())
                    .await
                    .unwrap_or_else(|_| panic!("{kind:?}: an update on {instance} in time"))
                    .expect("subscription open");
                let Update::Event {
                    position: p, data, ..
                } = update
                else {
                    panic!("{kind:?}: expected an event on {instance}, got {update:?}");
                };
                assert_eq!(data["id"], id.as_str(), "{kind:?} on {instance}: {data}");
                assert_eq!(p, *position, "{kind:?}: the broker's offsets on {instance}");
            }
        }
        on_a.close().await;
        on_b.close().await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_subscriptions_on_one_instance_get_events_published_through_another() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let a = web_instance(&config).await;
        let b = web_instance(&config).await;
        // The publisher has its own bus client, as a backend process would.
        let backend = bus_client(&config).await;

        let mut socket = GraphqlWs::connect(
            &format!("ws://{}/v1/graphql", b.addr),
            Some(&token("alice")),
        )
        .await;
        socket
            .subscribe(
                "s",
                "subscription { conversions { id from to amount converted } }",
                json!({}),
            )
            .await;
        // graphql-transport-ws has no "subscribed" answer: publish until one arrives (each with
        // its own id), then two more that must arrive in order.
        let mut first = None;
        for i in 0..30 {
            let id = format!("w{i}");
            publish_conversion(&backend, "alice", &id).await;
            if let Some(msg) = socket.recv_within(Duration::from_millis(500)).await {
                first = Some(msg);
                break;
            }
        }
        let first = first.unwrap_or_else(|| panic!("{kind:?}: no event reached B"));
        assert_eq!(first["type"], "next", "{kind:?}: {first}");
        let got = &first["payload"]["data"]["conversions"];
        assert!(
            got["id"].as_str().is_some_and(|id| id.starts_with('w')),
            "{kind:?}: {first}"
        );
        assert_eq!(got["amount"], "10.00", "{kind:?}: {first}");
        // Anything published before the first one arrived may still come; skip to ours.
        for id in ["last-1", "last-2"] {
            publish_conversion(&backend, "alice", id).await;
        }
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let msg = tokio::time::timeout(PATIENCE, socket.recv())
                .await
                .unwrap_or_else(|_| panic!("{kind:?}: events in time"));
            assert_eq!(msg["type"], "next", "{kind:?}: {msg}");
            let id = msg["payload"]["data"]["conversions"]["id"]
                .as_str()
                .expect("id")
                .to_owned();
            if id.starts_with("last-") {
                seen.push(id);
            }
        }
        assert_eq!(seen, ["last-1", "last-2"], "{kind:?}: in order");
        socket.close().await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_through_one_device_instance_answers_a_poll_held_on_another() {
    let http = http();
    for kind in BROKERS {
        let config = bus_config(kind);
        let a = device_instance(&config).await;
        let b = device_instance(&config).await;

        // The first poll (on B) brings the configuration and no command.
        let (cursor, commands) = poll(&http, b.addr, None, 0).await;
        assert!(commands.is_empty(), "{kind:?}: {commands:?}");

        // A poll held on B, woken by a command sent through A's admin API.
        let held = {
            let (http, cursor) = (http.clone(), cursor.clone());
            let addr = b.addr;
            tokio::spawn(async move { poll(&http, addr, Some(&cursor), 10).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_command(&http, a.addr, "cmd-1").await;
        let (next, commands) = tokio::time::timeout(PATIENCE, held)
            .await
            .expect("the held poll answers in time")
            .expect("poll task");
        assert_eq!(commands, ["cmd-1"], "{kind:?}");

        // And the same cursor on A brings the same command: one history for both.
        let (next_a, commands) = poll(&http, a.addr, Some(&cursor), 0).await;
        assert_eq!(commands, ["cmd-1"], "{kind:?}");
        assert_eq!(
            next_a, next,
            "{kind:?}: both instances give the same cursor"
        );
        a.stop().await;
        b.stop().await;
    }
}
