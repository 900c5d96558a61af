//! Per-channel history and idempotent publishing, on every bus (the memory bus and the real
//! Redis and NATS of this machine): a catalog channel keeps its entry's `history_events` while
//! other topics keep the default; a key publishes once per topic within the window; a publish
//! while the broker is down fails at once and never lands later (a broker of the test's own,
//! stopped and started again).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_core::bus::{Broker, Bus, BusConfig, BusError, IdempotencyKey, Read, Retention};
use switchyard_core::channels::{Catalog, ChannelConfig, ChannelsConfig, SubscribeRule};
use switchyard_core::event::{Event, Position, Topic, TopicClass};

use common::{Kind, Kit, OwnBroker};

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::new(k).expect("valid key")
}

/// A catalog whose `announcements` channel keeps 3 events.
fn catalog() -> Arc<Catalog> {
    let config = ChannelsConfig {
        catalog: vec![ChannelConfig {
            pattern: "announcements".into(),
            class: TopicClass::Stream,
            history_events: 3,
            max_payload_bytes: 1024,
            subscribe: SubscribeRule::Public,
            publishers: Vec::new(),
            idle_expiry_ms: None,
        }],
    };
    Arc::new(Catalog::new(&config).expect("catalog"))
}

/// Every event `topic` still has, oldest first.
async fn history(bus: &Arc<dyn Bus>, t: &Topic) -> Vec<Event> {
    let head = bus.head(t).await.expect("head");
    let mut after = Position {
        epoch: head.epoch,
        offset: 0,
    };
    let mut events = Vec::new();
    loop {
        match bus.read(t, after, 100).await.expect("read") {
            Read::Gap { resume } => after = resume,
            Read::Events { events: got, next } => {
                if got.is_empty() {
                    return events;
                }
                events.extend(got);
                after = next;
            }
        }
    }
}

fn offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.offset).collect()
}

async fn a_channel_keeps_its_own_history_and_other_topics_the_default(kind: Kind) {
    let kit = Kit::new(kind);
    let config = kit.config(5);
    let bus = kit.configured(&config, Retention::new(5, Some(catalog())));
    let (channel, other) = (topic("ch:announcements"), topic("ch:other"));
    for i in 0..8 {
        for t in [&channel, &other] {
            bus.publish(t, Bytes::from(format!("e{i}")))
                .await
                .expect("publish");
        }
    }
    assert_eq!(offsets(&history(&bus, &channel).await), vec![6, 7, 8]);
    assert_eq!(offsets(&history(&bus, &other).await), vec![4, 5, 6, 7, 8]);
    kit.cleanup().await;
}

async fn a_key_publishes_once_per_topic(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(100);
    let (a, b) = (topic("ch:orders.alice"), topic("ch:orders.bob"));
    let first = bus
        .publish_once(&a, Bytes::from("one"), &key("order-1"))
        .await
        .expect("publish");
    assert!(!first.duplicate);
    // A retry (even with another payload) publishes nothing and answers with the first position.
    for payload in ["one", "changed"] {
        let again = bus
            .publish_once(&a, Bytes::from(payload), &key("order-1"))
            .await
            .expect("publish again");
        assert!(again.duplicate);
        assert_eq!(again.position, first.position);
    }
    let events = history(&bus, &a).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].position(), first.position);
    assert_eq!(events[0].payload, Bytes::from("one"));
    // Another key is another event; keys are compared exactly.
    let second = bus
        .publish_once(&a, Bytes::from("two"), &key("order-2"))
        .await
        .expect("publish");
    let third = bus
        .publish_once(&a, Bytes::from("three"), &key("ORDER-1"))
        .await
        .expect("publish");
    assert!(!second.duplicate && !third.duplicate);
    assert_eq!(second.position.offset, first.position.offset + 1);
    assert_eq!(third.position.offset, first.position.offset + 2);
    assert_eq!(history(&bus, &a).await.len(), 3);
    // The same key on another topic is that topic's own; plain publishes are untouched.
    let on_b = bus
        .publish_once(&b, Bytes::from("b"), &key("order-1"))
        .await
        .expect("publish on b");
    assert!(!on_b.duplicate);
    assert_eq!(on_b.position.offset, 1);
    bus.publish(&b, Bytes::from("plain"))
        .await
        .expect("publish");
    assert_eq!(history(&bus, &b).await.len(), 2);
    // Another instance on the same broker sees the key too (memory: one process, one bus).
    if kind != Kind::Memory {
        let other = kit.bus(100);
        let again = other
            .publish_once(&a, Bytes::from("one"), &key("order-1"))
            .await
            .expect("publish on another instance");
        assert!(again.duplicate);
        assert_eq!(again.position, first.position);
    }
    assert_eq!(history(&bus, &a).await.len(), 3);
    kit.cleanup().await;
}

async fn a_key_publishes_again_after_the_window(kind: Kind) {
    let kit = Kit::new(kind);
    let config = BusConfig {
        idempotency_window_ms: 300,
        ..kit.config(100)
    };
    let bus = kit.configured(&config, Retention::new(100, None));
    let t = topic("ch:announcements");
    let first = bus
        .publish_once(&t, Bytes::from("x"), &key("k"))
        .await
        .expect("publish");
    let again = bus
        .publish_once(&t, Bytes::from("x"), &key("k"))
        .await
        .expect("publish");
    assert!(again.duplicate);
    // Past the window (with room for the broker's expiry sweep): the key publishes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let later = loop {
        let p = bus
            .publish_once(&t, Bytes::from("x"), &key("k"))
            .await
            .expect("publish");
        if !p.duplicate || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!later.duplicate, "the key was never forgotten");
    assert_eq!(later.position.offset, first.position.offset + 1);
    assert_eq!(history(&bus, &t).await.len(), 2);
    kit.cleanup().await;
}

for_every_bus!(
    a_channel_keeps_its_own_history_and_other_topics_the_default,
    a_key_publishes_once_per_topic,
    a_key_publishes_again_after_the_window,
);

#[tokio::test]
async fn the_broker_keeps_a_channels_history_from_the_retention_it_is_given() {
    let broker = Broker::connect_with(&BusConfig::default(), Retention::new(5, Some(catalog())));
    let bus = broker.bus();
    let (channel, other) = (topic("ch:announcements"), topic("conversions.alice"));
    for _ in 0..8 {
        bus.publish(&channel, Bytes::from("e"))
            .await
            .expect("publish");
        bus.publish(&other, Bytes::from("e"))
            .await
            .expect("publish");
    }
    assert_eq!(history(&bus, &channel).await.len(), 3);
    assert_eq!(history(&bus, &other).await.len(), 5);
    // `connect` keeps the default for every topic, catalog names included.
    let plain = Broker::connect(&BusConfig {
        history_events: 5,
        ..BusConfig::default()
    })
    .bus();
    for _ in 0..8 {
        plain
            .publish(&channel, Bytes::from("e"))
            .await
            .expect("publish");
    }
    assert_eq!(history(&plain, &channel).await.len(), 5);
}

#[test]
fn the_window_must_be_positive_and_at_most_a_day() {
    for bad in [0, 86_400_001] {
        let config = BusConfig {
            idempotency_window_ms: bad,
            ..BusConfig::default()
        };
        let err = config.validate().expect_err("refused");
        assert!(err.contains("bus.idempotency_window_ms"), "{err}");
    }
    assert_eq!(BusConfig::default().idempotency_window_ms, 120_000);
}

/// A bus whose broker does not answer (nothing listens on port 1) fails at once.
async fn a_publish_to_an_unreachable_broker_fails_at_once(kind: Kind) {
    let url = match kind {
        Kind::Redis => "redis://127.0.0.1:1",
        Kind::Rabbitmq => "rabbitmq-stream://127.0.0.1:1",
        _ => "nats://127.0.0.1:1",
    };
    let kit = Kit::at(kind, url);
    let bus = kit.bus(10);
    let started = Instant::now();
    for _ in 0..2 {
        let sent = bus
            .publish_once(&topic("ch:a"), Bytes::from("x"), &key("k"))
            .await;
        assert!(matches!(sent, Err(BusError::Unavailable(_))), "{sent:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed at once, not after retries: {:?}",
        started.elapsed()
    );
}

/// A publish while the broker is down fails, is not remembered, and never lands later: after
/// the broker is back nothing of it is in history, and a retry with its key publishes.
async fn a_failed_publish_never_lands_later(kind: Kind) {
    let mut broker = OwnBroker::start(kind);
    let kit = Kit::at(kind, &broker.url());
    let bus = kit.bus(100);
    let t = topic("ch:orders.alice");
    let first = bus
        .publish_once(&t, Bytes::from("before"), &key("k1"))
        .await
        .expect("publish while up");
    broker.down();
    let down = Instant::now();
    while bus.check().await.is_ok() {
        assert!(down.elapsed() < Duration::from_secs(10), "never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let sent = bus
        .publish_once(&t, Bytes::from("during"), &key("k2"))
        .await;
    assert!(matches!(sent, Err(BusError::Unavailable(_))), "{sent:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "at once");
    broker.up();
    let up = Instant::now();
    while bus.check().await.is_err() {
        assert!(up.elapsed() < Duration::from_secs(10), "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for anything queued anywhere to arrive, were anything queued.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let payloads =
        |events: &[Event]| -> Vec<Bytes> { events.iter().map(|e| e.payload.clone()).collect() };
    let seen = history(&bus, &t).await;
    assert!(
        !payloads(&seen).contains(&Bytes::from("during")),
        "the failed publish landed later: {seen:?}"
    );
    let retried = bus
        .publish_once(&t, Bytes::from("during"), &key("k2"))
        .await
        .expect("retry once the broker is back");
    assert!(!retried.duplicate, "the failed publish was not remembered");
    let seen = history(&bus, &t).await;
    let during = payloads(&seen)
        .iter()
        .filter(|p| p.as_ref() == b"during")
        .count();
    assert_eq!(during, 1, "{seen:?}");
    if kind.is_nats() {
        // NATS kept its store: the first publish is still there, before the retry.
        assert_eq!(seen[0].position(), first.position);
        assert_eq!(seen.len(), 2);
    }
}

mod redis_down {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_to_an_unreachable_broker_fails_at_once() {
        super::a_publish_to_an_unreachable_broker_fails_at_once(Kind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_publish_never_lands_later() {
        super::a_failed_publish_never_lands_later(Kind::Redis).await;
    }
}

mod nats_down {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_to_an_unreachable_broker_fails_at_once() {
        super::a_publish_to_an_unreachable_broker_fails_at_once(Kind::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_publish_never_lands_later() {
        super::a_failed_publish_never_lands_later(Kind::Nats).await;
    }
}

mod rabbitmq_down {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_to_an_unreachable_broker_fails_at_once() {
        super::a_publish_to_an_unreachable_broker_fails_at_once(Kind::Rabbitmq).await;
    }
}

mod nats_channels_down {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_to_an_unreachable_broker_fails_at_once() {
        super::a_publish_to_an_unreachable_broker_fails_at_once(Kind::NatsChannels).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_publish_never_lands_later() {
        super::a_failed_publish_never_lands_later(Kind::NatsChannels).await;
    }
}
