//! The RabbitMQ bus through outages, on the machine's RabbitMQ (one node per machine, shared):
//! a publisher and two subscribers (live, and from the start) while
//!
//! - every connection is dropped mid-stream and then the topic's stream is deleted: the deleted
//!   stream's history comes back as a new epoch, after a gap;
//! - the broker itself is restarted mid-stream (`rabbitmqctl stop_app` / `start_app`: the node's
//!   RabbitMQ application stops, every connection with it, and its streams come back from disk).
//!
//! Every acknowledged event is delivered or announced lost by a gap, in offset order, without
//! duplicates. The two run one after the other (the restart would disturb the other), and this
//! binary holds no other test, so no other test of the suite sees the restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{Bus, BusError, StartAt, Subscription};
use switchyard_core::event::{Position, Topic};

use common::seen::Seen;
use common::{Kind, Kit};

/// Reads `sub` into a shared [`Seen`] until dropped.
fn collect(mut sub: Subscription) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(d) = sub.next().await {
            s.lock().expect("seen").take(d);
        }
    });
    (seen, task)
}

/// Held by each test: they never run at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A publisher instance publishing on `topic` every `pace` until stopped, and a subscriber
/// instance reading it twice (live, and from the start) into [`Seen`]s.
struct Scenario {
    publisher: Arc<switchyard_core::bus::rabbitmq::RabbitBus>,
    subscriber: Arc<switchyard_core::bus::rabbitmq::RabbitBus>,
    topic: Topic,
    collectors: [(Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>); 2],
    stop: Arc<AtomicBool>,
    publishing: tokio::task::JoinHandle<(Vec<Position>, u32)>,
}

impl Scenario {
    async fn start(kit: &Kit, topic: &str, pace: Duration, strict: bool) -> Self {
        let (publisher, subscriber) = (kit.rabbitmq(10_000), kit.rabbitmq(10_000));
        let t = Topic::new(topic).expect("topic");
        let live = subscriber.subscribe(&t, StartAt::Live).await.expect("live");
        let start = subscriber.head(&t).await.expect("head");
        let from_start = subscriber
            .subscribe(&t, StartAt::After(start))
            .await
            .expect("from the start");
        let collectors = [collect(live), collect(from_start)];
        let stop = Arc::new(AtomicBool::new(false));
        let publishing = {
            let (bus, t, stop) = (publisher.clone(), t.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut acked, mut refused) = (Vec::new(), 0u32);
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    match bus.publish(&t, Bytes::from(format!("p{i}"))).await {
                        Ok(e) => acked.push(e.position()),
                        Err(BusError::Unavailable(_)) => refused += 1,
                        // A broker going down may also time a publish out: never acknowledged.
                        Err(_) if !strict => refused += 1,
                        Err(e) => panic!("unexpected {e}"),
                    }
                    i += 1;
                    tokio::time::sleep(pace).await;
                }
                (acked, refused)
            })
        };
        Self {
            publisher,
            subscriber,
            topic: t,
            collectors,
            stop,
            publishing,
        }
    }

    /// Stops publishing; the acknowledged positions and the refused count.
    async fn stop(&mut self) -> (Vec<Position>, u32) {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(60), &mut self.publishing)
            .await
            .expect("the publisher finished")
            .expect("publisher task")
    }

    /// Waits until both subscriptions reach `last`, then checks that every acknowledged event
    /// was delivered or is inside a gap; returns the gaps each saw.
    async fn check(&self, acked: &[Position]) -> Vec<usize> {
        let last = *acked.last().expect("acknowledged events");
        let mut gaps = Vec::new();
        for (seen, task) in &self.collectors {
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen.lock().expect("seen").cursor != Some(last) {
                assert!(
                    Instant::now() < deadline,
                    "subscription stalled at {:?} (last acknowledged {last:?})",
                    seen.lock().expect("seen").cursor
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let seen = seen.lock().expect("seen");
            let missing: Vec<&Position> =
                acked.iter().filter(|p| !seen.accounts_for(**p)).collect();
            assert!(
                missing.is_empty(),
                "events neither delivered nor in a gap: {missing:?}"
            );
            gaps.push(seen.gaps.len());
            task.abort();
        }
        gaps
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_or_a_gap_across_lost_connections_and_a_deleted_stream() {
    let _serial = SERIAL.lock().await;
    let kit = Kit::new(Kind::Rabbitmq);
    let mut run = Scenario::start(&kit, "conversions.outage", Duration::from_millis(2), true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every connection of both instances dropped, as a broker restart or a network cut would.
    run.subscriber.drop_connection().await;
    run.publisher.drop_connection().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The stream deleted (an operator's mistake, or a lost disk): its history is gone.
    run.publisher
        .delete_topic(&run.topic)
        .await
        .expect("delete the stream");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (acked, _refused) = run.stop().await;
    assert!(
        run.subscriber.metrics().snapshot().connections_lost >= 1
            && run.publisher.metrics().snapshot().connections_lost >= 1,
        "both instances noticed their connection was lost"
    );
    assert_ne!(
        acked.first().map(|p| p.epoch),
        acked.last().map(|p| p.epoch),
        "the re-created stream is a new epoch"
    );
    let gaps = run.check(&acked).await;
    assert!(
        gaps.iter().all(|g| *g > 0),
        "the deleted history is signalled by a gap: {gaps:?}"
    );
    kit.cleanup().await;
}

/// Runs `rabbitmqctl` with `args`; panics with its output when it fails.
async fn rabbitmqctl(args: &[&str]) {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl runs (scripts/services installs and starts RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_or_a_gap_across_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    let kit = Kit::new(Kind::Rabbitmq);
    let mut run =
        Scenario::start(&kit, "conversions.restart", Duration::from_millis(5), false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbitmqctl(&["stop_app"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rabbitmqctl(&["start_app"]).await;
    rabbitmqctl(&["await_startup"]).await;
    // Publishing goes on once the bus has reconnected: acknowledgements after the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (acked, refused) = run.stop().await;
    assert!(
        refused > 0,
        "publishes were refused while the broker was down"
    );
    assert!(
        run.publisher.metrics().snapshot().connections_lost >= 1,
        "the publisher noticed its connection was lost"
    );
    run.check(&acked).await;
    kit.cleanup().await;
}
