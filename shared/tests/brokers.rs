//! The broker buses across instances, on the real Redis, NATS and RabbitMQ of this machine: shared offsets
//! and resume on another instance, interest-based routing (an instance receives only the topics
//! it has subscribers for), and outages — a broker of the test's own, stopped and restarted
//! mid-stream, after which every subscriber has every event or a gap.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{BusError, Delivery, Read, StartAt, Subscription};
use switchyard_core::event::{Position, Topic, TopicClass};
use switchyard_core::hub::HubConfig;
use switchyard_core::hub::{Hub, Item};
use tokio::time::timeout;

use common::seen::Seen;
use common::{Kind, Kit, OwnBroker};

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

async fn next_event(sub: &mut Subscription) -> switchyard_core::event::Event {
    match timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(Delivery::Event(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn every_instance_shares_offsets_history_and_latest(kind: Kind) {
    let kit = Kit::new(kind);
    let (a, b) = (kit.bus(100), kit.bus(100));
    let t = topic("conversions.alice");
    let mut on_b = b
        .subscribe(&t, StartAt::Live)
        .await
        .expect("subscribe on B");
    let mut offsets = Vec::new();
    for (i, bus) in [&a, &b, &a, &a, &b].into_iter().enumerate() {
        let e = bus
            .publish(&t, Bytes::from(format!("e{i}")))
            .await
            .expect("publish");
        offsets.push(e.offset);
    }
    assert_eq!(
        offsets,
        vec![1, 2, 3, 4, 5],
        "offsets are assigned once, in the shared history"
    );
    for want in 1..=5 {
        assert_eq!(next_event(&mut on_b).await.offset, want);
    }
    // A client that saw offset 2 through A resumes on B.
    let seen = a.head(&t).await.expect("head");
    let from = Position { offset: 2, ..seen };
    let mut resumed = b
        .subscribe(&t, StartAt::After(from))
        .await
        .expect("resume on B");
    for want in 3..=5 {
        let e = next_event(&mut resumed).await;
        assert_eq!((e.offset, e.epoch), (want, seen.epoch));
    }
    match b.read(&t, from, 10).await.expect("read on B") {
        Read::Events { events, .. } => assert_eq!(events.len(), 3),
        gap => panic!("{gap:?}"),
    }
    // State topics: the latest value is there for a client connecting anywhere.
    let rates = topic("rates.EUR/USD");
    a.publish(&rates, Bytes::from("1.08"))
        .await
        .expect("publish");
    let latest = b.latest(&rates).await.expect("latest").expect("a value");
    assert_eq!(latest.payload, Bytes::from("1.08"));
    let state = HubConfig {
        topics: [("rates.".to_owned(), TopicClass::State)].into(),
        ..HubConfig::default()
    };
    let hub_b = Hub::new(b.clone(), state);
    let mut sub = hub_b.subscribe(&rates, StartAt::Live).await.expect("hub");
    match timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(Item::Event(e))) => assert_eq!(e.payload, Bytes::from("1.08")),
        other => panic!("{other:?}"),
    }
    kit.cleanup().await;
}

async fn an_instance_receives_only_topics_it_has_subscribers_for(kind: Kind) {
    let kit = Kit::new(kind);
    let (a, _) = kit.typed(1_000);
    let (b, b_received) = kit.typed(1_000);
    let (busy, quiet) = (topic("ticks.busy"), topic("ticks.quiet"));
    // B has local interest in `quiet` only (through its hub, as a gateway would).
    let hub_b = Hub::new(b.clone(), HubConfig::default());
    let mut on_b = hub_b
        .subscribe(&quiet, StartAt::Live)
        .await
        .expect("subscribe");
    let mut on_a = a
        .subscribe(&busy, StartAt::Live)
        .await
        .expect("subscribe on A");
    for i in 0..200 {
        a.publish(&busy, Bytes::from(format!("b{i}")))
            .await
            .expect("publish");
    }
    for i in 0..5 {
        a.publish(&quiet, Bytes::from(format!("q{i}")))
            .await
            .expect("publish");
    }
    // A's own subscriber has all of `busy` (so the broker did carry it) ...
    for want in 1..=200 {
        assert_eq!(next_event(&mut on_a).await.offset, want);
    }
    for want in 1..=5 {
        match timeout(Duration::from_secs(5), on_b.next()).await {
            Ok(Some(Item::Event(e))) => assert_eq!(e.offset, want),
            other => panic!("{other:?}"),
        }
    }
    // ... while B received exactly the five messages of `quiet`, and none of `busy`.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b_received(),
        5,
        "B received messages of a topic it has no subscriber for"
    );
    // Interest follows local subscribers: once B's last subscriber of `quiet` leaves, B's
    // broker subscription goes, and so does the traffic.
    drop(on_b);
    assert_eq!(hub_b.active_topics(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        a.publish(&quiet, Bytes::from(format!("late{i}")))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b_received(),
        5,
        "B still received `quiet` after its interest ended"
    );
    if kind == Kind::Redis {
        // The broker agrees: nobody is subscribed to `busy`'s channel but A.
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let channels = [
            format!("{}:c:ticks.busy", kit.prefix),
            format!("{}:c:ticks.quiet", kit.prefix),
        ];
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channels)
            .query_async(&mut conn)
            .await
            .expect("PUBSUB NUMSUB");
        assert_eq!(counts[0].1, 1, "{counts:?}");
        assert_eq!(counts[1].1, 0, "{counts:?}");
    }
    kit.cleanup().await;
}

async fn the_bus_recovers_from_a_broker_restart_mid_stream(kind: Kind) {
    let mut broker = OwnBroker::start(kind);
    let kit = Kit::at(kind, &broker.url());
    let (publisher, subscriber) = (kit.bus(10_000), kit.bus(10_000));
    let t = topic("conversions.restart");
    let mut live = subscriber
        .subscribe(&t, StartAt::Live)
        .await
        .expect("subscribe");
    let start = subscriber.head(&t).await.expect("head");
    let mut from_start = subscriber
        .subscribe(&t, StartAt::After(start))
        .await
        .expect("subscribe");

    // Publish continuously until told to stop; remember every event the bus acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let pub_task = {
        let (bus, t, stop) = (publisher.clone(), t.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match bus.publish(&t, Bytes::from(format!("p{i}"))).await {
                    Ok(e) => acked.push(e.position()),
                    Err(BusError::Unavailable(_)) => refused += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(4),
                    "publish hung while the broker was down"
                );
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, refused)
        })
    };
    let mut seen = [Seen::default(), Seen::default()];
    // Let some events through, then take the broker away for a while, then bring it back.
    let deadline = Instant::now() + Duration::from_millis(700);
    while Instant::now() < deadline {
        for (sub, s) in [&mut live, &mut from_start]
            .into_iter()
            .zip(seen.iter_mut())
        {
            if let Ok(Some(d)) = timeout(Duration::from_millis(10), sub.next()).await {
                s.take(d);
            }
        }
    }
    assert!(
        !seen[0].events.is_empty(),
        "events flowed before the outage"
    );
    tokio::task::block_in_place(|| broker.down());
    let outage = Instant::now();
    let mut reported_down = false;
    // The outage outlasts the operation timeout (2 s, `Kit::config`): a publish caught in flight
    // when the broker went away may be buffered by the client and acknowledged after a quick
    // reconnect, so only an outage longer than its deadline is sure to refuse some publishes.
    while outage.elapsed() < Duration::from_secs(3) {
        reported_down |= subscriber.check().await.is_err();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reported_down,
        "check() must fail while the broker is down (readyz 503)"
    );
    tokio::task::block_in_place(|| broker.up());
    let ready = Instant::now();
    while subscriber.check().await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "the bus never became ready again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Some more events after the recovery, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let (acked, refused) = timeout(Duration::from_secs(60), pub_task)
        .await
        .expect("the publisher finished")
        .expect("publisher task");
    assert!(
        refused > 0,
        "some publishes must have been refused while the broker was down"
    );
    let last = *acked.last().expect("acknowledged events");
    // Every subscriber reaches the last acknowledged event, and accounts for every one of them.
    for (sub, s) in [&mut live, &mut from_start]
        .into_iter()
        .zip(seen.iter_mut())
    {
        while s.cursor != Some(last) {
            match timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(d)) => s.take(d),
                other => panic!("subscription stalled at {:?}: {other:?}", s.cursor),
            }
        }
        let missing: Vec<&Position> = acked.iter().filter(|p| !s.accounts_for(**p)).collect();
        assert!(
            missing.is_empty(),
            "events neither delivered nor in a gap: {missing:?}"
        );
    }
    match kind {
        // Restarted without persistence: history is lost, so a new epoch and a gap.
        Kind::Redis => {
            assert!(
                acked.first().map(|p| p.epoch) != Some(last.epoch),
                "a new epoch after the restart"
            );
            assert!(!seen[0].gaps.is_empty(), "the lost history is signalled");
        }
        // JetStream's file store survived: nothing was lost, so every event and no gap.
        Kind::Nats | Kind::NatsChannels => {
            assert!(
                seen[0].gaps.is_empty() && seen[1].gaps.is_empty(),
                "no gap: {:?}",
                seen[0].gaps
            );
            assert_eq!(seen[1].events, acked, "every acknowledged event, in order");
        }
        // No private RabbitMQ: its outage test is `rabbitmq_outage.rs`.
        Kind::Memory | Kind::Rabbitmq => {}
    }
}

async fn a_bus_starts_while_its_broker_is_down_and_recovers(kind: Kind) {
    let mut broker = OwnBroker::start(kind);
    broker.down();
    let kit = Kit::at(kind, &broker.url());
    let bus = kit.bus(10);
    let t = topic("t");
    let started = Instant::now();
    assert!(bus.check().await.is_err());
    assert!(matches!(
        bus.publish(&t, Bytes::from("x")).await,
        Err(BusError::Unavailable(_))
    ));
    assert!(bus.subscribe(&t, StartAt::Live).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "calls while down fail, they do not hang"
    );
    broker.up();
    let ready = Instant::now();
    while bus.check().await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "the bus never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sub = bus.subscribe(&t, StartAt::Live).await.expect("subscribe");
    bus.publish(&t, Bytes::from("x")).await.expect("publish");
    assert_eq!(next_event(&mut sub).await.offset, 1);
}

mod redis_bus {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_instance_shares_offsets_history_and_latest() {
        super::every_instance_shares_offsets_history_and_latest(Kind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_receives_only_topics_it_has_subscribers_for() {
        super::an_instance_receives_only_topics_it_has_subscribers_for(Kind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bus_recovers_from_a_broker_restart_mid_stream() {
        super::the_bus_recovers_from_a_broker_restart_mid_stream(Kind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bus_starts_while_its_broker_is_down_and_recovers() {
        super::a_bus_starts_while_its_broker_is_down_and_recovers(Kind::Redis).await;
    }
}

mod nats_bus {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_instance_shares_offsets_history_and_latest() {
        super::every_instance_shares_offsets_history_and_latest(Kind::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_receives_only_topics_it_has_subscribers_for() {
        super::an_instance_receives_only_topics_it_has_subscribers_for(Kind::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bus_recovers_from_a_broker_restart_mid_stream() {
        super::the_bus_recovers_from_a_broker_restart_mid_stream(Kind::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bus_starts_while_its_broker_is_down_and_recovers() {
        super::a_bus_starts_while_its_broker_is_down_and_recovers(Kind::Nats).await;
    }
}

/// RabbitMQ runs one node per machine: its outage test (lost connections, a deleted stream)
/// is `rabbitmq_outage.rs`.
mod rabbitmq_bus {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_instance_shares_offsets_history_and_latest() {
        super::every_instance_shares_offsets_history_and_latest(Kind::Rabbitmq).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_receives_only_topics_it_has_subscribers_for() {
        super::an_instance_receives_only_topics_it_has_subscribers_for(Kind::Rabbitmq).await;
    }
}

/// The same, every topic a channel of one pattern (one stream for all, one subject each).
mod nats_channels_bus {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_instance_shares_offsets_history_and_latest() {
        super::every_instance_shares_offsets_history_and_latest(Kind::NatsChannels).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_receives_only_topics_it_has_subscribers_for() {
        super::an_instance_receives_only_topics_it_has_subscribers_for(Kind::NatsChannels).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bus_recovers_from_a_broker_restart_mid_stream() {
        super::the_bus_recovers_from_a_broker_restart_mid_stream(Kind::NatsChannels).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bus_starts_while_its_broker_is_down_and_recovers() {
        super::a_bus_starts_while_its_broker_is_down_and_recovers(Kind::NatsChannels).await;
    }
}
