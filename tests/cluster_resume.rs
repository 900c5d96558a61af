//! Resume elsewhere, against the real Redis and NATS of this machine (fixtures in
//! `common/cluster.rs`): a mobile client that saw some events on A, A stopped, more events
//! published, a new socket on B resuming from the last position seen gets exactly the missed
//! events, in order, no duplicates; a device cursor from a poll on A, given to B, brings exactly
//! the commands after it.
//!
//! A broker that cannot be reached FAILS these tests (`scripts/services` starts both).

mod common;

use std::time::Duration;

use common::cluster::{
    BROKERS, bus_client, bus_config, device_instance, http, mobile_instance, poll,
    publish_conversion, send_command, signed_in,
};
use test_support::mobile::End;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mobile_client_resumes_on_another_instance_with_exactly_what_it_missed() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let backend = bus_client(&config).await;
        let a = mobile_instance(&config).await;
        let b = mobile_instance(&config).await;

        let mut on_a = signed_in(a.addr, "alice").await;
        on_a.subbed("conversions", None).await;
        let mut last = None;
        for i in 0..3 {
            let id = format!("seen-{i}");
            let position = publish_conversion(&backend, "alice", &id).await;
            let event = on_a.event().await;
            assert_eq!(event.data["id"], id.as_str(), "{kind:?}");
            assert_eq!(event.position(), position, "{kind:?}");
            last = Some(event.position());
        }
        let last = last.expect("three events seen");

        // A goes away; the backend keeps publishing.
        a.stop().await;
        drop(on_a);
        let mut missed = Vec::new();
        for i in 0..4 {
            let id = format!("missed-{i}");
            missed.push((id.clone(), publish_conversion(&backend, "alice", &id).await));
        }

        // A new socket on B resumes after the last position seen on A.
        let mut on_b = signed_in(b.addr, "alice").await;
        let subbed = on_b.subbed("conversions", Some(last)).await;
        assert_eq!(subbed.epoch, last.epoch, "{kind:?}: the same epoch on B");
        for (id, position) in &missed {
            let event = on_b.event().await;
            assert_eq!(event.data["id"], id.as_str(), "{kind:?}: in order");
            assert_eq!(event.position(), *position, "{kind:?}");
        }
        // Nothing else: no duplicate of what A delivered or of the missed ones.
        let extra = on_b.recv_within(Duration::from_millis(500)).await;
        assert!(
            matches!(extra, Err(End::Timeout)),
            "{kind:?}: unexpected {extra:?}"
        );
        // And live delivery goes on after the resumed ones.
        let next = publish_conversion(&backend, "alice", "live").await;
        let event = on_b.event().await;
        assert_eq!(event.data["id"], "live", "{kind:?}");
        assert_eq!(event.position(), next, "{kind:?}");
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cursor_from_one_instance_brings_exactly_the_newer_commands_on_another() {
    let http = http();
    for kind in BROKERS {
        let config = bus_config(kind);
        let a = device_instance(&config).await;
        let b = device_instance(&config).await;

        let (start, _) = poll(&http, a.addr, None, 0).await;
        for id in ["c1", "c2"] {
            send_command(&http, a.addr, id).await;
        }
        let (acked, commands) = poll(&http, a.addr, Some(&start), 0).await;
        assert_eq!(commands, ["c1", "c2"], "{kind:?}");

        // A stops; commands keep coming (through B's admin API now).
        a.stop().await;
        for id in ["c3", "c4"] {
            send_command(&http, b.addr, id).await;
        }
        let (_, commands) = poll(&http, b.addr, Some(&acked), 0).await;
        assert_eq!(
            commands,
            ["c3", "c4"],
            "{kind:?}: exactly the unacknowledged ones"
        );
        // A device that lost A's answer polls B with its older cursor: everything after it.
        let (_, commands) = poll(&http, b.addr, Some(&start), 0).await;
        assert_eq!(commands, ["c1", "c2", "c3", "c4"], "{kind:?}");
        b.stop().await;
    }
}
