//! The RabbitMQ bus through outages, on the machine's RabbitMQ (one node per machine, shared, so
//! no test stops it): a publisher and two subscribers (live, and from the start) while every
//! connection is dropped mid-stream and then the topic's stream is deleted. Every acknowledged
//! event is delivered or announced lost by a gap, in offset order, without duplicates; the
//! deleted stream's history comes back as a new epoch, after a gap.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{Bus, BusError, Delivery, StartAt, Subscription};
use switchyard_core::event::{Position, Topic};

use common::{Kind, Kit};

/// What a subscriber saw, checked as it arrives.
#[derive(Default)]
struct Seen {
    cursor: Option<Position>,
    events: Vec<Position>,
    gaps: Vec<(Position, Position)>,
}

impl Seen {
    fn take(&mut self, d: Delivery) {
        match d {
            Delivery::Event(e) => {
                if let Some(c) = self.cursor {
                    assert!(
                        e.epoch == c.epoch && e.offset == c.offset + 1,
                        "event {:?} after {c:?}: out of order, duplicated, or a silent hole",
                        e.position()
                    );
                }
                self.cursor = Some(e.position());
                self.events.push(e.position());
            }
            Delivery::Gap { after, resume } => {
                if let Some(c) = self.cursor {
                    assert_eq!(after, c, "a gap must start where the subscriber was");
                }
                self.cursor = Some(resume);
                self.gaps.push((after, resume));
            }
        }
    }

    fn accounts_for(&self, p: Position) -> bool {
        self.events.contains(&p)
            || self.gaps.iter().any(|(after, resume)| {
                if after.epoch == resume.epoch {
                    p.epoch == after.epoch && p.offset > after.offset && p.offset <= resume.offset
                } else {
                    (p.epoch == after.epoch && p.offset > after.offset)
                        || (p.epoch == resume.epoch && p.offset <= resume.offset)
                }
            })
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_or_a_gap_across_lost_connections_and_a_deleted_stream() {
    let kit = Kit::new(Kind::Rabbitmq);
    let (publisher, subscriber) = (kit.rabbitmq(10_000), kit.rabbitmq(10_000));
    let t = Topic::new("conversions.outage").expect("topic");
    let live = subscriber.subscribe(&t, StartAt::Live).await.expect("live");
    let start = subscriber.head(&t).await.expect("head");
    let from_start = subscriber
        .subscribe(&t, StartAt::After(start))
        .await
        .expect("from the start");
    let collectors = [collect(live), collect(from_start)];

    let stop = Arc::new(AtomicBool::new(false));
    let pub_task = {
        let (bus, t, stop) = (publisher.clone(), t.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u32);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match bus.publish(&t, Bytes::from(format!("p{i}"))).await {
                    Ok(e) => acked.push(e.position()),
                    Err(BusError::Unavailable(_)) => refused += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every connection of both instances dropped, as a broker restart or a network cut would.
    subscriber.drop_connection().await;
    publisher.drop_connection().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The stream deleted (an operator's mistake, or a lost disk): its history is gone.
    publisher.delete_topic(&t).await.expect("delete the stream");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, _refused) = tokio::time::timeout(Duration::from_secs(30), pub_task)
        .await
        .expect("the publisher finished")
        .expect("publisher task");
    let last = *acked.last().expect("acknowledged events");
    assert!(
        subscriber.metrics().snapshot().connections_lost >= 1
            && publisher.metrics().snapshot().connections_lost >= 1,
        "both instances noticed their connection was lost"
    );
    assert_ne!(
        acked.first().map(|p| p.epoch),
        Some(last.epoch),
        "the re-created stream is a new epoch"
    );
    for (seen, task) in &collectors {
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.lock().expect("seen").cursor != Some(last) {
            assert!(
                Instant::now() < deadline,
                "subscription stalled at {:?} (last acknowledged {last:?})",
                seen.lock().expect("seen").cursor
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = seen.lock().expect("seen");
        let missing: Vec<&Position> = acked.iter().filter(|p| !seen.accounts_for(**p)).collect();
        assert!(
            missing.is_empty(),
            "events neither delivered nor in a gap: {missing:?}"
        );
        assert!(
            !seen.gaps.is_empty(),
            "the deleted history is signalled by a gap"
        );
        task.abort();
    }
    kit.cleanup().await;
}
