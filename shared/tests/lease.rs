//! Cluster-wide leases on every implementation — in-memory, Redis, NATS (the real servers):
//! one holder at a time, renewal by the holder only, expiry and release hand it over.

mod common;

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::bus::lease::{Lease, MemoryLease};
use switchyard_core::event::Topic;

use common::{Kind, Kit};

/// `n` lease handles as `n` instances would have them (one shared handle for memory).
fn instances(kit: &Kit, n: usize) -> Vec<Arc<dyn Lease>> {
    let memory: Arc<dyn Lease> = Arc::new(MemoryLease::new());
    (0..n)
        .map(|_| -> Arc<dyn Lease> {
            match kit.kind {
                Kind::Memory => memory.clone(),
                Kind::Redis => kit.redis(10),
                Kind::Nats | Kind::NatsChannels => kit.nats(10),
                Kind::Rabbitmq => kit.rabbitmq(10).state(),
            }
        })
        .collect()
}

fn leases(kit: &Kit) -> (Arc<dyn Lease>, Arc<dyn Lease>) {
    let mut two = instances(kit, 2);
    let b = two.pop().expect("two");
    (two.pop().expect("two"), b)
}

async fn one_holder_at_a_time_until_release(kind: Kind) {
    let kit = Kit::new(kind);
    let (a, b) = leases(&kit);
    let name = Topic::new("feed.rates/EUR:USD").expect("topic");
    let ttl = Duration::from_secs(30);
    assert!(a.acquire(&name, "instance-a", ttl).await.expect("acquire"));
    assert!(!b.acquire(&name, "instance-b", ttl).await.expect("acquire"));
    // The holder may acquire again (an extension) and renew; others may not renew.
    assert!(
        a.acquire(&name, "instance-a", ttl)
            .await
            .expect("re-acquire")
    );
    assert!(a.renew(&name, "instance-a", ttl).await.expect("renew"));
    assert!(!b.renew(&name, "instance-b", ttl).await.expect("renew"));
    // Someone else's release changes nothing; the holder's hands it over at once.
    b.release(&name, "instance-b").await.expect("release");
    assert!(!b.acquire(&name, "instance-b", ttl).await.expect("acquire"));
    a.release(&name, "instance-a").await.expect("release");
    assert!(
        b.acquire(&name, "instance-b", ttl)
            .await
            .expect("acquire after release")
    );
    assert!(!a.renew(&name, "instance-a", ttl).await.expect("renew"));
    // Another name is another lease.
    let other = Topic::new("feed.rates/EUR:GBP").expect("topic");
    assert!(a.acquire(&other, "instance-a", ttl).await.expect("acquire"));
    kit.cleanup().await;
}

async fn an_expired_lease_can_be_taken_and_its_old_holder_learns_it(kind: Kind) {
    let kit = Kit::new(kind);
    let (a, b) = leases(&kit);
    let name = Topic::new("feed.expiring").expect("topic");
    let ttl = Duration::from_millis(400);
    assert!(a.acquire(&name, "instance-a", ttl).await.expect("acquire"));
    assert!(!b.acquire(&name, "instance-b", ttl).await.expect("acquire"));
    let taken = test_support::eventually(Duration::from_secs(5), || async {
        b.acquire(&name, "instance-b", ttl).await.expect("acquire")
    })
    .await;
    assert!(taken, "the lease never expired");
    assert!(
        !a.renew(&name, "instance-a", ttl).await.expect("renew"),
        "the old holder lost it"
    );
    kit.cleanup().await;
}

async fn contenders_never_both_win(kind: Kind) {
    let kit = Kit::new(kind);
    let name = Topic::new("feed.contended").expect("topic");
    let ttl = Duration::from_secs(30);
    let mut tasks = Vec::new();
    for (i, lease) in instances(&kit, 8).into_iter().enumerate() {
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            lease
                .acquire(&name, &format!("instance-{i}"), ttl)
                .await
                .expect("acquire")
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1);
    kit.cleanup().await;
}

for_every_bus!(
    one_holder_at_a_time_until_release,
    an_expired_lease_can_be_taken_and_its_old_holder_learns_it,
    contenders_never_both_win,
);
