//! Per-user channels at scale, on the real Redis and NATS of this machine: the channels of one
//! catalog pattern (`conversions.{user}`) — on NATS all in ONE stream, one subject each — keep
//! contiguous offsets per channel when two instances publish on one channel at once, a channel
//! idle past its entry's `idle_expiry_ms` is gone from the broker and a reader of it gets a gap,
//! 10,000 channels live in one stream, and 2,000 live subscriptions each get their own events.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{Bus, Delivery, Read, Retention, StartAt};
use switchyard_core::channels::{Catalog, ChannelConfig, ChannelsConfig, SubscribeRule};
use switchyard_core::event::{Event, Position, Topic, TopicClass};
use switchyard_core::hub::{Hub, HubConfig, Item};

use common::{Kind, Kit};

/// A catalog of one pattern, `conversions.{user}`, keeping `history` events per channel and
/// forgetting a channel idle for `idle_expiry_ms`.
fn catalog(history: u64, idle_expiry_ms: Option<u64>) -> Arc<Catalog> {
    let config = ChannelsConfig {
        catalog: vec![ChannelConfig {
            pattern: "conversions.{user}".into(),
            class: TopicClass::Stream,
            history_events: history,
            max_payload_bytes: 1024,
            subscribe: SubscribeRule::User,
            publishers: Vec::new(),
            idle_expiry_ms,
        }],
    };
    Arc::new(Catalog::new(&config).expect("catalog"))
}

fn channel(user: &str) -> Topic {
    Topic::new(&format!("ch:conversions.{user}")).expect("topic")
}

/// Every event `t` still has, oldest first.
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

/// Two instances, four publishers each, on one channel at once: every publish gets its own
/// offset, the offsets are 1..=N with none lost, and history holds each payload at the offset
/// its publish was given.
async fn two_instances_racing_on_one_channel_keep_offsets_contiguous(kind: Kind) {
    const PER_TASK: usize = 50;
    let kit = Kit::new(kind);
    let config = kit.config(1_000);
    let (a, b) = (
        kit.configured(&config, Retention::new(1_000, Some(catalog(1_000, None)))),
        kit.configured(&config, Retention::new(1_000, Some(catalog(1_000, None)))),
    );
    let t = channel("alice");
    let mut tasks = Vec::new();
    for (i, bus) in [&a, &b, &a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let (bus, t) = (bus.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for j in 0..PER_TASK {
                let payload = Bytes::from(format!("{i}-{j}"));
                let e = bus.publish(&t, payload.clone()).await.expect("publish");
                got.push((e.position(), payload));
            }
            got
        }));
    }
    let mut published = Vec::new();
    for task in tasks {
        published.extend(task.await.expect("publisher"));
    }
    published.sort_by_key(|(p, _)| p.offset);
    let n = published.len() as u64;
    let offsets: Vec<u64> = published.iter().map(|(p, _)| p.offset).collect();
    assert_eq!(
        offsets,
        (1..=n).collect::<Vec<_>>(),
        "contiguous, none twice"
    );
    let epoch = published[0].0.epoch;
    assert!(published.iter().all(|(p, _)| p.epoch == epoch), "one epoch");
    for bus in [&a, &b] {
        let seen = history(bus, &t).await;
        let seen: Vec<(Position, Bytes)> = seen
            .into_iter()
            .map(|e| (e.position(), e.payload))
            .collect();
        assert_eq!(seen, published, "history is what the publishes were told");
    }
    kit.cleanup().await;
}

/// Keys of this kit on its broker: Redis keys of its prefix, or NATS messages in its streams.
async fn stored(kit: &Kit) -> u64 {
    match kit.kind {
        Kind::Redis => {
            let client = ::redis::Client::open("redis://127.0.0.1:6379").expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("conn");
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{}:*", kit.prefix))
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            keys.len() as u64
        }
        _ => nats_streams(kit).await.iter().map(|(_, m, _)| m).sum(),
    }
}

/// The NATS streams of this kit's prefix: name, messages, subjects.
async fn nats_streams(kit: &Kit) -> Vec<(String, u64, u64)> {
    let client = async_nats::connect("127.0.0.1:4222").await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut out = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.expect("stream name");
        if name.starts_with(&format!("{}_", kit.prefix)) {
            let mut stream = js.get_stream(&name).await.expect("stream");
            let state = &stream.info().await.expect("info").state;
            out.push((name, state.messages, state.subjects_count));
        }
    }
    out
}

/// A channel nobody publishes on for its `idle_expiry_ms` is gone from the broker; a reader
/// holding a position of it gets a gap (never the new epoch's offsets as if they were the old
/// ones), and the channel starts again at offset 1 in a new epoch.
async fn an_idle_channel_expires_and_a_resume_gets_a_gap(kind: Kind) {
    let kit = Kit::new(kind);
    let config = kit.config(100);
    let bus = kit.configured(
        &config,
        Retention::new(100, Some(catalog(100, Some(1_000)))),
    );
    let t = channel("bob");
    let mut last = None;
    for i in 0..3 {
        last = Some(
            bus.publish(&t, Bytes::from(format!("e{i}")))
                .await
                .expect("publish"),
        );
    }
    let seen = last.expect("published").position();
    assert_eq!(seen.offset, 3);
    assert!(stored(&kit).await > 0, "the channel is on the broker");
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored(&kit).await > 0 {
        assert!(Instant::now() < deadline, "the idle channel never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_first = Position { offset: 1, ..seen };
    match bus.read(&t, after_first, 10).await.expect("read") {
        Read::Gap { resume } => assert_ne!(resume.epoch, seen.epoch, "a new epoch"),
        other => panic!("expected a gap, got {other:?}"),
    }
    let mut sub = bus
        .subscribe(&t, StartAt::After(seen))
        .await
        .expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    let resume = match first {
        Ok(Some(Delivery::Gap { after, resume })) => {
            assert_eq!(after, seen);
            resume
        }
        other => panic!("expected a gap, got {other:?}"),
    };
    let e = bus
        .publish(&t, Bytes::from("again"))
        .await
        .expect("publish");
    assert_eq!((e.epoch, e.offset), (resume.epoch, 1), "a new epoch from 1");
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(
        matches!(next, Ok(Some(Delivery::Event(ref got))) if got.position() == e.position()),
        "{next:?}"
    );
    kit.cleanup().await;
}

/// 10,000 channels of one pattern, one event each: on NATS one stream holds them all (one
/// subject per channel); every channel has its own offset 1 and its own latest event.
async fn ten_thousand_channels_live_in_one_stream(kind: Kind) {
    const CHANNELS: usize = 10_000;
    let kit = Kit::new(kind);
    let config = kit.config(10);
    let bus = kit.configured(&config, Retention::new(10, Some(catalog(10, None))));
    let published: Vec<Event> = futures::stream::iter(0..CHANNELS)
        .map(|i| {
            let bus = bus.clone();
            async move {
                bus.publish(&channel(&format!("u{i}")), Bytes::from(format!("p{i}")))
                    .await
                    .expect("publish")
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(
        published.iter().all(|e| e.offset == 1),
        "each channel's own offsets"
    );
    if kind.is_nats() {
        let streams = nats_streams(&kit).await;
        assert_eq!(streams.len(), 1, "one stream: {streams:?}");
        assert_eq!(streams[0].1, CHANNELS as u64, "{streams:?}");
        assert_eq!(streams[0].2, CHANNELS as u64, "one subject per channel");
    } else {
        assert_eq!(
            stored(&kit).await,
            2 * CHANNELS as u64,
            "a stream and a hash each"
        );
    }
    for i in (0..CHANNELS).step_by(997) {
        let latest = bus
            .latest(&channel(&format!("u{i}")))
            .await
            .expect("latest")
            .expect("an event");
        assert_eq!(
            (latest.offset, latest.payload),
            (1, Bytes::from(format!("p{i}")))
        );
    }
    kit.cleanup().await;
}

/// 2,000 live hub subscriptions, one per channel of the pattern, opened at once: an event
/// published on any of them reaches exactly its subscription.
async fn many_live_subscriptions_each_get_their_channels_events(kind: Kind) {
    const CHANNELS: usize = 2_000;
    let kit = Kit::new(kind);
    let config = kit.config(10);
    let bus = kit.configured(&config, Retention::new(10, Some(catalog(10, None))));
    let hub = Hub::new(bus.clone(), HubConfig::default());
    let mut subs: Vec<_> = futures::stream::iter(0..CHANNELS)
        .map(|i| {
            let hub = hub.clone();
            async move {
                hub.subscribe(&channel(&format!("s{i}")), StartAt::Live)
                    .await
                    .expect("subscribe")
            }
        })
        .buffered(64)
        .collect()
        .await;
    for i in (0..CHANNELS).step_by(97) {
        let t = channel(&format!("s{i}"));
        let e = bus
            .publish(&t, Bytes::from(format!("to {i}")))
            .await
            .expect("publish");
        match tokio::time::timeout(Duration::from_secs(10), subs[i].next()).await {
            Ok(Some(Item::Event(got))) => {
                assert_eq!((got.position(), got.payload), (e.position(), e.payload));
            }
            other => panic!("subscription {i}: {other:?}"),
        }
    }
    kit.cleanup().await;
}

/// A live subscription whose client buffer overflows (4,096 messages, the bus's
/// `SUBSCRIPTION_CAPACITY`): the NATS client drops the rest and says so only in a slow-consumer
/// event. The subscription must still get every event, in order — the feed resyncs from history
/// — not stop silently at the 4,096th (what it did before the event was heeded).
async fn a_subscription_whose_client_buffer_overflows_still_gets_every_event(kind: Kind) {
    const EVENTS: u64 = 4_096 + 300;
    let kit = Kit::new(kind);
    let config = kit.config(10_000);
    let bus = kit.configured(&config, Retention::new(10_000, Some(catalog(10_000, None))));
    let t = channel("slow");
    // Connected first (a feed opened while the client makes its first connection ends at once
    // and is reopened, which would hide the loss); opened, then not read while everything is
    // published.
    bus.head(&t).await.expect("head");
    let mut sub = bus.subscribe(&t, StartAt::Live).await.expect("subscribe");
    let mut last = None;
    for i in 1..=EVENTS {
        let e = bus
            .publish(&t, Bytes::from(format!("e{i}")))
            .await
            .expect("publish");
        last = Some(e.position());
    }
    let last = last.expect("published");
    let mut offset = 0;
    while offset < last.offset {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Delivery::Event(e))) => {
                assert_eq!(e.offset, offset + 1, "in order, none lost");
                assert_eq!(e.payload, Bytes::from(format!("e{}", e.offset)));
                offset = e.offset;
            }
            other => panic!("after offset {offset} of {}: {other:?}", last.offset),
        }
    }
    kit.cleanup().await;
}

macro_rules! on_brokers {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Redis).await })*
        }
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Nats).await })*
        }
    };
}

on_brokers!(
    two_instances_racing_on_one_channel_keep_offsets_contiguous,
    an_idle_channel_expires_and_a_resume_gets_a_gap,
    ten_thousand_channels_live_in_one_stream,
    many_live_subscriptions_each_get_their_channels_events,
    a_subscription_whose_client_buffer_overflows_still_gets_every_event,
);

/// Through a `Broker` (what the gateways run), a pattern's channels share a NATS stream only with
/// `bus.nats_pattern_streams` (the default); without it each keeps a stream of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_groups_a_patterns_channels_on_nats_only_when_asked() {
    for (on, expected_streams) in [(false, 3), (true, 1)] {
        let kit = Kit::new(Kind::Nats);
        let config = switchyard_core::bus::BusConfig {
            nats_pattern_streams: on,
            ..kit.config(10)
        };
        let broker = switchyard_core::bus::Broker::connect_with(
            &config,
            Retention::new(10, Some(catalog(10, None))),
        );
        let bus = broker.bus();
        for user in ["a", "b", "c"] {
            let e = bus
                .publish(&channel(user), Bytes::from_static(b"x"))
                .await
                .expect("publish");
            assert_eq!(e.offset, 1, "each channel's own offsets");
        }
        let streams = nats_streams(&kit).await;
        assert_eq!(
            streams.len(),
            expected_streams,
            "nats_pattern_streams = {on}: {streams:?}"
        );
        // The kit did not make this bus: remove its streams by prefix.
        let client = async_nats::connect("127.0.0.1:4222").await.expect("nats");
        let js = async_nats::jetstream::new(client);
        for (name, _, _) in streams {
            js.delete_stream(&name).await.expect("delete");
        }
        kit.cleanup().await;
    }
}
