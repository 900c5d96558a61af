//! The bus contract and the topic hub on it, run against every bus — in-memory, Redis, NATS
//! (`common::Kind`): offsets, history, gaps, resume, conflation, shared source subscriptions,
//! and slow subscribers that cannot block anyone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{
    Bus, BusError, Delivery, IdempotencyKey, Published, Read, StartAt, Subscription,
};
use switchyard_core::event::{Event, Position, Topic, TopicClass};
use switchyard_core::hub::HubConfig;
use switchyard_core::hub::{Hub, Item};
use switchyard_core::trace::TraceContext;
use tokio::time::timeout;

use common::{Kind, Kit};

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

async fn publish_n(bus: &dyn Bus, t: &Topic, n: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    for i in 0..n {
        let e = bus
            .publish(t, Bytes::from(format!("e{i}")))
            .await
            .expect("publish");
        offsets.push(e.offset);
    }
    offsets
}

/// A hub whose `rates.` topics are state topics (by prefix, as `[hub.topics]` configures topics
/// outside the channel catalog); every other topic is a stream.
fn hub(bus: Arc<dyn Bus>, queue: usize) -> Hub {
    Hub::new(
        bus,
        HubConfig {
            subscriber_queue_events: queue,
            topics: [("rates.".to_owned(), TopicClass::State)].into(),
        },
    )
}

async fn epoch_of(bus: &dyn Bus, t: &Topic) -> u64 {
    bus.head(t).await.expect("head").epoch
}

async fn next(sub: &mut switchyard_core::hub::Subscriber) -> Item {
    timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an item within 5 s")
        .expect("subscription open")
}

async fn next_offset(sub: &mut switchyard_core::hub::Subscriber) -> u64 {
    match next(sub).await {
        Item::Event(e) => e.offset,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn offsets_increase_per_topic_from_one(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(100);
    let (a, b) = (topic("a"), topic("b"));
    assert_eq!(publish_n(&*bus, &a, 3).await, vec![1, 2, 3]);
    assert_eq!(publish_n(&*bus, &b, 2).await, vec![1, 2]);
    assert_eq!(publish_n(&*bus, &a, 1).await, vec![4]);
    assert_eq!(bus.head(&a).await.expect("head").offset, 4);
    kit.cleanup().await;
}

async fn a_live_subscription_gets_everything_published_after_it_in_order(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(1_000);
    let t = topic("orders.eu-1:x/y_z");
    publish_n(&*bus, &t, 3).await;
    let mut sub = bus.subscribe(&t, StartAt::Live).await.expect("subscribe");
    publish_n(&*bus, &t, 300).await;
    for want in 4..=303 {
        match timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Delivery::Event(e))) => {
                assert_eq!(e.offset, want);
                assert_eq!(e.payload, Bytes::from(format!("e{}", want - 4)));
                assert_eq!(e.topic, t);
            }
            other => panic!("expected event {want}, got {other:?}"),
        }
    }
    kit.cleanup().await;
}

async fn latest_and_head_follow_the_last_event(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(2);
    let t = topic("rates.EUR/USD");
    assert_eq!(bus.latest(&t).await.expect("latest"), None);
    let empty = bus.head(&t).await.expect("head");
    assert_eq!(empty.offset, 0);
    publish_n(&*bus, &t, 5).await;
    let latest = bus.latest(&t).await.expect("latest").expect("an event");
    assert_eq!((latest.offset, latest.payload), (5, Bytes::from("e4")));
    let head = bus.head(&t).await.expect("head");
    assert_eq!(
        head,
        Position {
            epoch: empty.epoch,
            offset: 5
        }
    );
    assert_eq!(latest.epoch, head.epoch);
    // A read at the head is empty, not a gap; one past it is a gap (a position never handed out).
    assert_eq!(
        bus.read(&t, head, 10).await.expect("read"),
        Read::Events {
            events: vec![],
            next: head
        }
    );
    let beyond = Position { offset: 6, ..head };
    assert!(matches!(
        bus.read(&t, beyond, 10).await.expect("read"),
        Read::Gap { .. }
    ));
    bus.check().await.expect("check");
    kit.cleanup().await;
}

async fn reading_from_an_old_offset_gets_the_events_after_it(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(100);
    let t = topic("t");
    publish_n(&*bus, &t, 10).await;
    let after = Position {
        epoch: epoch_of(&*bus, &t).await,
        offset: 6,
    };
    match bus.read(&t, after, 100).await.expect("read") {
        Read::Events { events, next } => {
            let offsets: Vec<u64> = events.iter().map(|e| e.offset).collect();
            assert_eq!(offsets, vec![7, 8, 9, 10]);
            assert_eq!(events[0].payload, Bytes::from("e6"));
            assert_eq!(next.offset, 10);
        }
        gap => panic!("expected events, got {gap:?}"),
    }
    kit.cleanup().await;
}

async fn reading_below_retained_history_reports_the_gap(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(5);
    let t = topic("t");
    publish_n(&*bus, &t, 12).await; // offsets 8..=12 retained
    let epoch = epoch_of(&*bus, &t).await;
    let read = bus
        .read(&t, Position { epoch, offset: 3 }, 100)
        .await
        .expect("read");
    assert_eq!(
        read,
        Read::Gap {
            resume: Position { epoch, offset: 7 }
        }
    );
    // Exactly at the edge is still covered.
    let read = bus
        .read(&t, Position { epoch, offset: 7 }, 100)
        .await
        .expect("read");
    assert!(matches!(read, Read::Events { ref events, .. } if events.len() == 5));
    // A position from another epoch (a previous process) is lost history too.
    let read = bus
        .read(
            &t,
            Position {
                epoch: epoch ^ 1,
                offset: 11,
            },
            100,
        )
        .await
        .expect("read");
    assert!(matches!(read, Read::Gap { .. }));
    kit.cleanup().await;
}

async fn bus_subscription_resumes_and_reports_gaps_in_order(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(3);
    let t = topic("t");
    publish_n(&*bus, &t, 6).await; // 4, 5, 6 retained
    let epoch = epoch_of(&*bus, &t).await;
    let mut sub = bus
        .subscribe(&t, StartAt::After(Position { epoch, offset: 1 }))
        .await
        .expect("subscribe");
    let first = sub.next().await.expect("gap");
    assert_eq!(
        first,
        Delivery::Gap {
            after: Position { epoch, offset: 1 },
            resume: Position { epoch, offset: 3 }
        }
    );
    for want in [4, 5, 6] {
        match sub.next().await.expect("event") {
            Delivery::Event(e) => assert_eq!(e.offset, want),
            other => panic!("{other:?}"),
        }
    }
    publish_n(&*bus, &t, 1).await;
    match timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("live")
        .expect("event")
    {
        Delivery::Event(e) => assert_eq!(e.offset, 7),
        other => panic!("{other:?}"),
    }
    kit.cleanup().await;
}

async fn hub_subscriber_resumes_from_history_then_live_without_duplicates(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(100);
    let hub = hub(bus.clone(), 64);
    let t = topic("conversions.alice");
    publish_n(&*bus, &t, 5).await;
    let from = Position {
        epoch: epoch_of(&*bus, &t).await,
        offset: 2,
    };
    let mut sub = hub
        .subscribe(&t, StartAt::After(from))
        .await
        .expect("subscribe");
    // Published after the subscription exists but before history is read: must come once.
    publish_n(&*bus, &t, 2).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_offset(&mut sub).await);
    }
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
    publish_n(&*bus, &t, 1).await;
    assert_eq!(next_offset(&mut sub).await, 8);
    kit.cleanup().await;
}

async fn hub_resume_below_history_gives_a_gap_then_the_rest(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(4);
    let hub = hub(bus.clone(), 64);
    let t = topic("t");
    publish_n(&*bus, &t, 10).await; // 7..=10 retained
    let epoch = epoch_of(&*bus, &t).await;
    let mut sub = hub
        .subscribe(&t, StartAt::After(Position { epoch, offset: 2 }))
        .await
        .expect("subscribe");
    assert_eq!(
        next(&mut sub).await,
        Item::Gap {
            after: Position { epoch, offset: 2 },
            resume: Position { epoch, offset: 6 }
        }
    );
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_offset(&mut sub).await);
    }
    assert_eq!(got, vec![7, 8, 9, 10]);
    kit.cleanup().await;
}

async fn one_source_subscription_per_topic_released_by_the_last_subscriber(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(10);
    let hub = hub(bus.clone(), 8);
    let t = topic("t");
    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(hub.subscribe(&t, StartAt::Live).await.expect("subscribe"));
    }
    assert_eq!(hub.active_topics(), 1);
    assert_eq!(hub.subscriber_count(&t), 50);
    publish_n(&*bus, &t, 1).await;
    for s in &mut subs {
        assert_eq!(next_offset(s).await, 1);
    }
    subs.truncate(1);
    assert_eq!(hub.subscriber_count(&t), 1);
    assert_eq!(hub.active_topics(), 1);
    subs.clear();
    assert_eq!(hub.active_topics(), 0);
    kit.cleanup().await;
}

async fn a_subscriber_that_does_not_read_blocks_neither_the_bus_nor_others(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(10_000);
    let hub = hub(bus.clone(), 16);
    let t = topic("t");
    let mut stalled = hub.subscribe(&t, StartAt::Live).await.expect("stalled");
    let mut reader = hub.subscribe(&t, StartAt::Live).await.expect("reader");

    let n = 2_000u64;
    let publisher = {
        let bus = bus.clone();
        let t = t.clone();
        tokio::spawn(async move { publish_n(&*bus, &t, n as usize).await })
    };
    // The reader gets every event, in order, although the other never reads and although
    // bursts overflow its own small queue (it catches up from history).
    for want in 1..=n {
        assert_eq!(next_offset(&mut reader).await, want);
    }
    timeout(Duration::from_secs(5), publisher)
        .await
        .expect("the publisher was never blocked")
        .expect("publisher task");
    // The stalled subscriber held only its bounded queue; when it reads at last it still gets
    // every event, in order, from history.
    for want in 1..=n {
        assert_eq!(next_offset(&mut stalled).await, want);
    }
    kit.cleanup().await;
}

async fn a_subscriber_lagging_beyond_history_gets_a_gap_never_a_silent_hole(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(50);
    let hub = hub(bus.clone(), 4);
    let t = topic("t");
    let mut slow = hub.subscribe(&t, StartAt::Live).await.expect("subscribe");
    publish_n(&*bus, &t, 200).await;
    let mut seen = Vec::new();
    let mut gap = None;
    while seen.last() != Some(&200) {
        match next(&mut slow).await {
            Item::Event(e) => seen.push(e.offset),
            Item::Gap { after, resume } => {
                assert!(gap.is_none(), "one gap");
                assert_eq!(after.offset, *seen.last().unwrap_or(&0));
                gap = Some(resume.offset);
            }
        }
    }
    let resume = gap.expect("a gap was signalled");
    // Everything delivered is in order, and the only hole is the one the gap announced.
    let (before, after): (Vec<u64>, Vec<u64>) = seen.iter().partition(|o| **o <= resume);
    assert_eq!(before, (1..=before.len() as u64).collect::<Vec<_>>());
    assert_eq!(after, ((resume + 1)..=200).collect::<Vec<_>>());
    kit.cleanup().await;
}

async fn subscribers_share_one_bounded_ring_and_one_left_behind_is_told_and_caught_up(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(10_000);
    let hub = hub(bus.clone(), 8);
    let t = topic("t");
    let mut behind = hub.subscribe(&t, StartAt::Live).await.expect("behind");
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(hub.subscribe(&t, StartAt::Live).await.expect("reader"));
    }
    // The readers keep up (each event is read by all before the next is published).
    let n = 100u64;
    for want in 1..=n {
        publish_n(&*bus, &t, 1).await;
        for r in &mut readers {
            assert_eq!(next_offset(r).await, want);
        }
    }
    // The readers have taken everything; the one that has not read holds the ring's bound at
    // most, never the 100 events.
    let depths = hub.queue_depths();
    assert_eq!((depths.queues, depths.max, depths.queued), (4, 8, 8));
    let catch_ups = |hub: &Hub| hub.stats().iter().map(|p| p.catch_ups).sum::<u64>();
    assert_eq!(catch_ups(&hub), 0);
    // When it reads at last it is told it fell behind (counted), catches up from history and
    // gets every event once, in order; then it follows the ring again with the others.
    for want in 1..=n {
        assert_eq!(next_offset(&mut behind).await, want);
    }
    assert_eq!(catch_ups(&hub), 1);
    publish_n(&*bus, &t, 1).await;
    for r in readers.iter_mut().chain([&mut behind]) {
        assert_eq!(next_offset(r).await, n + 1);
    }
    assert!(hub.queue_depths().max <= 8);
    drop(readers);
    assert_eq!(hub.queue_depths().queues, 1);
    kit.cleanup().await;
}

/// The next item as the hub shares it.
async fn shared(sub: &mut switchyard_core::hub::Subscriber) -> Arc<Item> {
    let next = std::future::poll_fn(|cx| sub.poll_shared(cx));
    timeout(Duration::from_secs(5), next)
        .await
        .expect("an item within 5 s")
        .expect("subscription open")
}

async fn live_events_are_shared_by_every_subscriber_not_copied(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(10_000);
    // Room for every event: none is read from history (a catch-up's items are each reader's).
    let hub = hub(bus.clone(), 1_000);
    let t = topic("shared");
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(hub.subscribe(&t, StartAt::Live).await.expect("subscribe"));
    }
    // More than one reader's batch, published before anyone reads: taken in batches, handed
    // out one by one, in order, and every subscriber holds the very same item.
    let n = 100u64;
    publish_n(&*bus, &t, n as usize).await;
    for want in 1..=n {
        let mut items = Vec::new();
        for sub in &mut subs {
            items.push(shared(sub).await);
        }
        match &*items[0] {
            Item::Event(e) => assert_eq!(e.offset, want),
            other => panic!("expected event {want}, got {other:?}"),
        }
        assert!(
            items.iter().all(|i| Arc::ptr_eq(i, &items[0])),
            "event {want} copied"
        );
    }
    // `poll_item` still hands out an owned copy of the same event.
    publish_n(&*bus, &t, 1).await;
    let owned = next_offset(&mut subs[0]).await;
    let Item::Event(e) = &*shared(&mut subs[1]).await else {
        panic!("an event")
    };
    assert_eq!((owned, e.offset), (n + 1, n + 1));
    kit.cleanup().await;
}

async fn state_topics_are_conflated_to_the_latest_value(kind: Kind) {
    let kit = Kit::new(kind);
    let bus = kit.bus(100);
    let hub = hub(bus.clone(), 4);
    let t = topic("rates.EUR/USD");
    publish_n(&*bus, &t, 3).await;
    let mut sub = hub.subscribe(&t, StartAt::Live).await.expect("subscribe");
    // A new subscriber starts with the latest value only.
    assert_eq!(next_offset(&mut sub).await, 3);
    // A slow one is never cut off and never sees a backlog: only the newest value.
    publish_n(&*bus, &t, 100).await;
    assert!(
        test_support::eventually(Duration::from_secs(5), || async {
            bus.head(&t).await.expect("head").offset == 103
        })
        .await
    );
    let mut last = 0;
    while let Ok(Some(Item::Event(e))) = timeout(Duration::from_millis(200), sub.next()).await {
        last = e.offset;
    }
    assert_eq!(last, 103);
    kit.cleanup().await;
}

async fn topic_classes_come_from_prefix_rules(kind: Kind) {
    let kit = Kit::new(kind);
    let hub = hub(kit.bus(1), 1);
    assert_eq!(hub.class_of(&topic("rates.EUR/USD")), TopicClass::State);
    assert_eq!(hub.class_of(&topic("conversions.bob")), TopicClass::Stream);
    // With no prefix rule (the default), every topic outside the catalog is a stream.
    let default = Hub::new(kit.bus(1), HubConfig::default());
    assert_eq!(
        default.class_of(&topic("rates.EUR/USD")),
        TopicClass::Stream
    );
    kit.cleanup().await;
}

/// A bus whose history (`read`, `head`) fails while `down` is set, as a slow broker's timed-out
/// calls do; publishing and live delivery go on.
struct HistoryDown {
    inner: Arc<dyn Bus>,
    down: std::sync::atomic::AtomicBool,
}

impl HistoryDown {
    fn check_history(&self) -> Result<(), BusError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(BusError::Unavailable("test: history read timed out".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Bus for HistoryDown {
    async fn publish_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        trace: Option<TraceContext>,
    ) -> Result<Event, BusError> {
        self.inner.publish_traced(topic, payload, trace).await
    }

    async fn publish_once_traced(
        &self,
        topic: &Topic,
        payload: Bytes,
        key: &IdempotencyKey,
        trace: Option<TraceContext>,
    ) -> Result<Published, BusError> {
        self.inner
            .publish_once_traced(topic, payload, key, trace)
            .await
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        self.check_history()?;
        self.inner.read(topic, after, max).await
    }

    async fn latest(&self, topic: &Topic) -> Result<Option<Event>, BusError> {
        self.inner.latest(topic).await
    }

    async fn head(&self, topic: &Topic) -> Result<Position, BusError> {
        self.check_history()?;
        self.inner.head(topic).await
    }

    async fn subscribe(&self, topic: &Topic, from: StartAt) -> Result<Subscription, BusError> {
        self.inner.subscribe(topic, from).await
    }

    async fn check(&self) -> Result<(), BusError> {
        self.inner.check().await
    }
}

/// The soak's two silent losses: a subscriber resuming after the head it had just read, while
/// the broker's history calls time out, was handed a gap that resumed at its own position
/// (the head call failed too), then the topic's live events from where its ring cursor
/// joined — a jump over the events published between the two, under a gap that covered none.
async fn a_resume_whose_history_read_fails_gets_the_exact_gap_never_a_jump(kind: Kind) {
    let kit = Kit::new(kind);
    let flaky = Arc::new(HistoryDown {
        inner: kit.bus(100),
        down: false.into(),
    });
    let bus: Arc<dyn Bus> = flaky.clone();
    let hub = hub(bus.clone(), 64);
    let t = topic("conversions.carol");
    // A live subscriber keeps the topic's ring and bus subscription open throughout.
    let mut live = hub.subscribe(&t, StartAt::Live).await.expect("subscribe");
    publish_n(&*bus, &t, 3).await;
    let head = bus.head(&t).await.expect("head");
    assert_eq!(head.offset, 3);
    publish_n(&*bus, &t, 2).await;
    for want in 1..=5 {
        assert_eq!(next_offset(&mut live).await, want);
    }
    // The resume starts while history cannot be read: 4 and 5 are out of its reach.
    flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut resumed = hub
        .subscribe(&t, StartAt::After(head))
        .await
        .expect("subscribe");
    let early = timeout(Duration::from_millis(300), resumed.next()).await;
    assert!(
        early.is_err(),
        "nothing can be said before the next event (no made-up gap), got {early:?}"
    );
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    publish_n(&*bus, &t, 2).await;
    match next(&mut resumed).await {
        Item::Gap { after, resume } => {
            assert_eq!(after, head, "the gap starts where the subscriber was");
            assert_eq!(
                (resume.epoch, resume.offset),
                (head.epoch, 5),
                "and covers exactly what history could not give"
            );
        }
        other => panic!("expected the owed gap, got {other:?}"),
    }
    assert_eq!(next_offset(&mut resumed).await, 6);
    assert_eq!(next_offset(&mut resumed).await, 7);
    kit.cleanup().await;
}

for_every_bus!(
    a_live_subscription_gets_everything_published_after_it_in_order,
    latest_and_head_follow_the_last_event,
    offsets_increase_per_topic_from_one,
    reading_from_an_old_offset_gets_the_events_after_it,
    reading_below_retained_history_reports_the_gap,
    bus_subscription_resumes_and_reports_gaps_in_order,
    hub_subscriber_resumes_from_history_then_live_without_duplicates,
    hub_resume_below_history_gives_a_gap_then_the_rest,
    one_source_subscription_per_topic_released_by_the_last_subscriber,
    a_subscriber_that_does_not_read_blocks_neither_the_bus_nor_others,
    a_subscriber_lagging_beyond_history_gets_a_gap_never_a_silent_hole,
    subscribers_share_one_bounded_ring_and_one_left_behind_is_told_and_caught_up,
    live_events_are_shared_by_every_subscriber_not_copied,
    state_topics_are_conflated_to_the_latest_value,
    topic_classes_come_from_prefix_rules,
    a_resume_whose_history_read_fails_gets_the_exact_gap_never_a_jump,
);
