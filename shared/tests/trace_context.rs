//! The trace context an event is published with (`Bus::publish_traced`, what the publish API
//! does with a publisher's `traceparent`), on every bus — in-memory, Redis, NATS: delivered with
//! the event live (on a broker, on another instance of the same deployment), read back from history and as the
//! latest event, kept by an idempotent publish; and events published without one, side by side,
//! read back without one (the format of every event written before trace contexts existed).

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{Delivery, IdempotencyKey, Read, StartAt};
use switchyard_core::event::{Event, Position, Topic};
use switchyard_core::trace::TraceContext;
use tokio::time::timeout;

use common::{Kind, Kit};

async fn traces_survive_the_bus(kind: Kind) {
    let kit = Kit::new(kind);
    // On a broker, another instance of the deployment reads; a memory bus is its process's own.
    let publisher = kit.bus(100);
    let reader = match kind {
        Kind::Memory => publisher.clone(),
        Kind::Redis | Kind::Nats | Kind::NatsChannels | Kind::Rabbitmq => kit.bus(100),
    };
    let t = Topic::new("orders.traced").expect("topic");
    let mut live = reader
        .subscribe(&t, StartAt::Live)
        .await
        .expect("subscribe");
    let traced = TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .expect("valid traceparent");
    let other = TraceContext::new_root(false);

    let plain = publisher
        .publish(&t, Bytes::from_static(b"{\"n\":1}"))
        .await
        .expect("publish");
    let with = publisher
        .publish_traced(&t, Bytes::from_static(b"{\"n\":2}"), Some(traced))
        .await
        .expect("publish traced");
    let key = IdempotencyKey::new("trace-once").expect("key");
    let once = publisher
        .publish_once_traced(&t, Bytes::from_static(b"{\"n\":3}"), &key, Some(other))
        .await
        .expect("publish once traced");
    assert!(!once.duplicate);
    assert_eq!(plain.trace, None);
    assert_eq!(with.trace, Some(traced));

    let expected = [
        (1, &b"{\"n\":1}"[..], None),
        (2, &b"{\"n\":2}"[..], Some(traced)),
        (3, &b"{\"n\":3}"[..], Some(other)),
    ];
    let shape = |e: &Event| (e.offset, e.payload.to_vec(), e.trace);
    let want: Vec<_> = expected
        .iter()
        .map(|(o, p, t)| (*o, p.to_vec(), *t))
        .collect();

    // Live, on the other instance.
    let mut got = Vec::new();
    while got.len() < 3 {
        match timeout(Duration::from_secs(10), live.next()).await {
            Ok(Some(Delivery::Event(e))) => got.push(shape(&e)),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(got, want, "live deliveries");

    // From history, and as the latest event.
    let head = reader.head(&t).await.expect("head");
    let start = Position {
        epoch: head.epoch,
        offset: 0,
    };
    let Read::Events { events, .. } = reader.read(&t, start, 10).await.expect("read") else {
        panic!("history should cover the start");
    };
    assert_eq!(
        events.iter().map(shape).collect::<Vec<_>>(),
        want,
        "history"
    );
    let latest = reader.latest(&t).await.expect("latest").expect("an event");
    assert_eq!(latest.trace, Some(other));

    // A subscription that starts in history and catches up gets them too.
    let mut resumed = reader
        .subscribe(&t, StartAt::After(start))
        .await
        .expect("subscribe after");
    let mut again = Vec::new();
    while again.len() < 3 {
        match timeout(Duration::from_secs(10), resumed.next()).await {
            Ok(Some(Delivery::Event(e))) => again.push(shape(&e)),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(again, want, "resumed from history");

    // A duplicate publish keeps the first publish's event (and its trace).
    let dup = publisher
        .publish_once_traced(&t, Bytes::from_static(b"{\"n\":4}"), &key, Some(traced))
        .await
        .expect("duplicate");
    assert!(dup.duplicate);
    assert_eq!(dup.position.offset, 3);
    let latest = reader.latest(&t).await.expect("latest").expect("an event");
    assert_eq!((latest.offset, latest.trace), (3, Some(other)));
    kit.cleanup().await;
}

for_every_bus!(traces_survive_the_bus);
