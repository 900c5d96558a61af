//! Case g: a slow broker. A private Redis behind the fault proxy, slow but alive: every answer
//! late (latency), or its answers squeezed through a narrow link (a `slicer`, as in case e).
//! A slow broker is not a dead one, and the bus must not treat it as one:
//!
//! - a burst of subscriptions to new channels is sent to Redis as one SUBSCRIBE, not one round
//!   trip each (a device's poll opens its topic's wake; after a reconnect every subscription
//!   resyncs; one at a time behind a slow link, the later ones ran past their deadline and the
//!   devices were answered 503);
//! - a call that runs past its deadline while other calls are still answered on the same
//!   connection does not drop that connection (dropping it turned every call during the
//!   reconnect's backoff into a failure as well).
//!
//! Toxics are set before the bus connects through the proxy (noxious rebuilds a live link's
//! chain on any change and drops the bytes in flight in it).

use super::broker::PrivateBroker;
use super::*;
use futures::StreamExt;
use switchyard_core::bus::{Delivery, Read, StartAt};
use switchyard_core::event::{Position, Topic};

/// `direct` (a bus configuration of `broker`: same prefix) reached through `proxy`, with
/// `op_timeout_ms` and a reconnect backoff long enough that a dropped connection fails every
/// call meanwhile.
fn through(
    direct: &BusConfig,
    broker: &PrivateBroker,
    proxy: &FaultProxy,
    op_timeout_ms: u64,
) -> BusConfig {
    let mut config = direct.clone();
    config.url = config
        .url
        .replace(&broker.port.to_string(), &proxy.addr().port().to_string());
    config.operation_timeout_ms = op_timeout_ms;
    config.reconnect_initial_ms = 30_000;
    config.reconnect_max_ms = 30_000;
    config
}

#[tokio::test]
async fn on_a_slow_redis_a_burst_of_subscriptions_to_new_channels_all_open_and_deliver() {
    /// Subscriptions opened at once, each to a channel of its own.
    const BURST: usize = 300;
    let broker = PrivateBroker::start(BusKind::Redis).await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], broker.port))).await;
    // Every answer 100 ms late: serial SUBSCRIBEs took ≥ 100 ms each, so 300 of them needed
    // 30 s against a 5 s deadline. (noxious delays one read chunk after another, so the heads
    // the subscriptions read next, pipelined, come back in a few chunks 100 ms apart each, not
    // all after 100 ms as on a real link: the deadline leaves room for that.)
    proxy
        .add(
            "latency",
            ToxicKind::Latency {
                latency: 100,
                jitter: 0,
            },
            StreamDirection::Downstream,
        )
        .await;
    let direct = broker.bus_config();
    let bus = Broker::connect(&through(&direct, &broker, &proxy, 5_000)).bus();
    let topics: Vec<Topic> = (0..BURST)
        .map(|i| Topic::new(&format!("slow.burst.{i}")).expect("a topic"))
        .collect();

    let started = Instant::now();
    let opened = futures::future::join_all(
        topics
            .iter()
            .map(|topic| bus.subscribe(topic, StartAt::Live)),
    )
    .await;
    let took = started.elapsed();
    let failed: Vec<String> = opened
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    println!(
        "FIGURES | g. slow Redis (100 ms latency) | {BURST} subscriptions at once | opened {} in {} ms | failed {} |",
        BURST - failed.len(),
        took.as_millis(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {BURST} subscriptions failed on a slow but live Redis, first: {:?}",
        failed.len(),
        failed.first()
    );

    // Each subscription gets its own channel's event, and only it.
    let publisher = common::cluster::bus_client(&direct).await;
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .publish(topic, format!("event {i}").into_bytes().into())
            .await
            .expect("publish");
    }
    let mut subscriptions: Vec<_> = opened.into_iter().map(Result::unwrap).collect();
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("subscription {i} got nothing"))
            .expect("the subscription goes on");
        match delivery {
            Delivery::Event(event) => {
                assert_eq!(event.topic, topics[i]);
                assert_eq!(event.offset, 1);
                assert_eq!(&event.payload[..], format!("event {i}").as_bytes());
            }
            other => panic!("subscription {i}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn on_a_slow_redis_a_timed_out_call_does_not_drop_a_connection_that_still_answers() {
    let broker = PrivateBroker::start(BusKind::Redis).await;
    let topic = Topic::new("slow.reads").expect("a topic");
    let direct = broker.bus_config();
    let publisher = common::cluster::bus_client(&direct).await;
    for i in 0..60u32 {
        let payload = format!("{i:04}{}", "x".repeat(996));
        publisher
            .publish(&topic, payload.into_bytes().into())
            .await
            .expect("publish");
    }
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], broker.port))).await;
    // About 20 KB/s from Redis to the bus: 500 B every 25 ms.
    proxy
        .add(
            "narrow",
            ToxicKind::Slicer {
                average_size: 500,
                size_variation: 0,
                delay: 25_000,
            },
            StreamDirection::Downstream,
        )
        .await;
    let client = Broker::connect(&through(&direct, &broker, &proxy, 1_500));
    let bus = client.bus();
    let head = bus
        .head(&topic)
        .await
        .expect("the head, over the narrow link");
    assert_eq!(head.offset, 60);
    let start = Position {
        epoch: head.epoch,
        offset: 0,
    };

    // A read of ~10 KB (about 0.5 s through the link), and right behind it one of ~50 KB (about
    // 2.5 s more: past its 1.5 s deadline). The first is answered while the second waits.
    let first = {
        let bus = bus.clone();
        let topic = topic.clone();
        tokio::spawn(async move { bus.read(&topic, start, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = bus.read(&topic, start, 50).await;
    let first = first.await.expect("the first read's task");
    assert!(
        matches!(&first, Ok(Read::Events { events, .. }) if events.len() == 10),
        "the first read is answered: {first:?}"
    );
    assert!(
        second.is_err(),
        "the second read runs past its deadline: {second:?}"
    );
    assert_eq!(
        client.metrics().snapshot().connections_lost,
        0,
        "the connection was dropped although the first read was answered while the second waited"
    );

    // Once the late answer has gone through, the connection serves the next call at once; a
    // dropped one would refuse every call for the 30 s backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = bus
        .read(
            &topic,
            Position {
                offset: 59,
                ..start
            },
            10,
        )
        .await;
    match &third {
        Ok(Read::Events { events, .. }) => {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].offset, 60);
        }
        other => panic!("the connection was dropped after one slow call: {other:?}"),
    }
}

#[tokio::test]
async fn a_redis_that_answers_nothing_still_loses_its_connection_after_one_deadline() {
    // The other side of the rule above: a half-open link (every byte dropped, no FIN) answers
    // nothing, so the first timed-out call drops the connection and the bus reports the broker
    // unavailable at once (until the backoff lets it reconnect) rather than waiting out a
    // deadline per call.
    let broker = PrivateBroker::start(BusKind::Redis).await;
    let topic = Topic::new("slow.dead").expect("a topic");
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], broker.port))).await;
    let direct = broker.bus_config();
    let client = Broker::connect(&through(&direct, &broker, &proxy, 500));
    let bus = client.bus();
    bus.head(&topic)
        .await
        .expect("the head, while the link is good");
    // The live link keeps its toxic-free chain; cut it the way case d does: black-hole both
    // directions, which noxious applies to the open link too.
    for (name, direction) in [
        ("hole-up", StreamDirection::Upstream),
        ("hole-down", StreamDirection::Downstream),
    ] {
        proxy
            .add(name, ToxicKind::Timeout { timeout: 0 }, direction)
            .await;
    }
    let timed_out = bus.head(&topic).await;
    assert!(timed_out.is_err(), "a black hole answers: {timed_out:?}");
    assert_eq!(client.metrics().snapshot().connections_lost, 1);
    // Refused without a call (the only source of this error): no second deadline waited out.
    let refused = bus.head(&topic).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("not connected")),
        "the dead connection was kept: {refused:?}"
    );
}
