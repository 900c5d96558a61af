//! One upstream subscription per topic for the whole cluster: [`LeasedFeeder`] puts a
//! cluster-wide lease ([`crate::bus::lease`]) in front of any [`Feeder`] (a configured upstream
//! [`Source`](crate::sources::Source)).
//!
//! When a topic gets local interest, the instance competes for the lease `bridge:<name>:<topic>`
//! ([`LEASE_PREFIX`]); only the holder feeds the topic (opens the upstream subscription and
//! publishes on the shared bus); every other instance with interest reads the bus as for any
//! topic. The holder renews every third of the time to live and the others retry as often, so
//! when the holder dies its lease expires and another instance with interest takes over within
//! `ttl + ttl / 3`; when it loses interest it releases the lease and another takes over within
//! `ttl / 3`. A holder that cannot renew (the broker is away, or answers late) stops feeding at
//! once: it can no longer know that nobody else took over. A hand-over costs at most the upstream
//! messages sent during it (an upstream WebSocket has no resume), which suits state channels,
//! where only the latest value matters; with the in-memory bus the lease is process-local and the
//! one instance always holds it.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::lease::Lease;
use crate::event::Topic;
use crate::hub::Feeder;

/// What every feeder lease name starts with: `bridge:<name>:<topic>`.
///
/// The name predates sources (it was the upstream bridges' lease) and is kept on purpose: lease
/// names live on the shared broker, so instances of two versions in one cluster must compete for
/// the same key during a rolling upgrade, and operators' tooling (and `tests/cluster_failover.rs`,
/// which reads `bridge:exchange:ch:rates.EUR-USD`) find the holder by it.
pub const LEASE_PREFIX: &str = "bridge:";

/// A feeder that feeds a topic only while this instance holds the topic's cluster-wide lease.
pub struct LeasedFeeder {
    inner: Arc<dyn Feeder>,
    lease: Arc<dyn Lease>,
    name: String,
    holder: String,
    ttl: Duration,
    /// Leases this feeder's topics hold right now (shared with whoever reads it).
    held: Arc<AtomicUsize>,
}

impl LeasedFeeder {
    /// Wraps `inner`; leases are named `bridge:<name>:<topic>` ([`LEASE_PREFIX`]) and held by
    /// `holder` (unique per
    /// instance) for `ttl` at a time.
    pub fn new(
        inner: Arc<dyn Feeder>,
        lease: Arc<dyn Lease>,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Self {
        Self {
            inner,
            lease,
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl: ttl.max(Duration::from_millis(30)),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts the leases it holds in `held` (several feeders may share one count), for
    /// `/metrics`.
    pub fn counting_held(mut self, held: Arc<AtomicUsize>) -> Self {
        self.held = held;
        self
    }

    /// A holder name unique to this process: `<prefix>-<random>`.
    pub fn unique_holder(prefix: &str) -> String {
        format!("{prefix}-{:016x}", rand::random::<u64>())
    }
}

impl std::fmt::Debug for LeasedFeeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedFeeder")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Feeder for LeasedFeeder {
    fn feed(&self, topic: &Topic) -> Option<Box<dyn Any + Send>> {
        let Ok(name) = Topic::new(&format!("{LEASE_PREFIX}{}:{topic}", self.name)) else {
            // A topic name too long to prefix: fed by this instance alone, like without a lease.
            tracing::warn!(%topic, "topic name too long for a lease name; feeding without a lease");
            return self.inner.feed(topic);
        };
        let stop = CancellationToken::new();
        let task = Holding {
            inner: self.inner.clone(),
            lease: self.lease.clone(),
            name,
            holder: self.holder.clone(),
            ttl: self.ttl,
            topic: topic.clone(),
            held: self.held.clone(),
        };
        tokio::spawn(task.run(stop.clone()));
        Some(Box::new(stop.drop_guard()))
    }
}

/// One topic's competition for its lease, while this instance has interest in it.
struct Holding {
    inner: Arc<dyn Feeder>,
    lease: Arc<dyn Lease>,
    name: Topic,
    holder: String,
    ttl: Duration,
    topic: Topic,
    held: Arc<AtomicUsize>,
}

impl Holding {
    async fn run(self, stop: CancellationToken) {
        let period = self.ttl / 3;
        let mut feed: Option<Box<dyn Any + Send>> = None;
        loop {
            // Each attempt is bounded by the period, so a stuck broker cannot keep a feed alive
            // past its lease.
            let holding = feed.is_some();
            let attempt = tokio::time::timeout(period, async {
                if holding {
                    self.lease.renew(&self.name, &self.holder, self.ttl).await
                } else {
                    self.lease.acquire(&self.name, &self.holder, self.ttl).await
                }
            });
            let held = tokio::select! {
                () = stop.cancelled() => break,
                r = attempt => matches!(r, Ok(Ok(true))),
            };
            match (held, feed.is_some()) {
                (true, false) => {
                    tracing::info!(lease = %self.name, holder = %self.holder, "lease taken: feeding");
                    feed = self.inner.feed(&self.topic);
                    if feed.is_some() {
                        self.held.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (false, true) => {
                    tracing::warn!(lease = %self.name, holder = %self.holder, "lease lost: no longer feeding");
                    feed = None;
                    self.held.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
        if feed.take().is_some() {
            self.held.fetch_sub(1, Ordering::Relaxed);
            // Let another instance with interest take over now rather than at expiry.
            let release = self.lease.release(&self.name, &self.holder);
            if let Ok(Err(e)) = tokio::time::timeout(period, release).await {
                tracing::debug!(lease = %self.name, error = %e, "lease release failed; it expires");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusError;
    use crate::bus::lease::MemoryLease;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// Counts live feeds.
    #[derive(Default)]
    struct Counting {
        live: Arc<AtomicUsize>,
    }

    struct Live(Arc<AtomicUsize>);

    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Feeder for Counting {
        fn feed(&self, _topic: &Topic) -> Option<Box<dyn Any + Send>> {
            self.live.fetch_add(1, Ordering::SeqCst);
            Some(Box::new(Live(self.live.clone())))
        }
    }

    fn instance(lease: &Arc<MemoryLease>, holder: &str) -> (LeasedFeeder, Arc<AtomicUsize>) {
        let counting = Counting::default();
        let live = counting.live.clone();
        let feeder = LeasedFeeder::new(
            Arc::new(counting),
            lease.clone(),
            "source",
            holder,
            Duration::from_millis(300),
        );
        (feeder, live)
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn one_instance_feeds_and_another_takes_over_when_it_leaves() {
        let lease = Arc::new(MemoryLease::new());
        let (a, a_live) = instance(&lease, "a");
        let (b, b_live) = instance(&lease, "b");
        let topic = Topic::new("rates.EURUSD").unwrap();
        let guard_a = a.feed(&topic).unwrap();
        until("a feeds", || a_live.load(Ordering::SeqCst) == 1).await;
        let guard_b = b.feed(&topic).unwrap();
        // b keeps competing for several periods and never feeds while a holds the lease.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            b_live.load(Ordering::SeqCst),
            0,
            "two instances fed one topic"
        );
        assert_eq!(a_live.load(Ordering::SeqCst), 1);
        drop(guard_a);
        until("a stops", || a_live.load(Ordering::SeqCst) == 0).await;
        until("b takes over", || b_live.load(Ordering::SeqCst) == 1).await;
        drop(guard_b);
        until("b stops", || b_live.load(Ordering::SeqCst) == 0).await;
    }

    #[tokio::test]
    async fn the_leases_held_are_counted_while_held() {
        let lease = Arc::new(MemoryLease::new());
        let held = Arc::new(AtomicUsize::new(0));
        let (a, _) = instance(&lease, "a");
        let (b, _) = instance(&lease, "b");
        let a = a.counting_held(held.clone());
        let b = b.counting_held(held.clone());
        let one = a.feed(&Topic::new("rates.EURUSD").unwrap()).unwrap();
        let two = a.feed(&Topic::new("rates.USDJPY").unwrap()).unwrap();
        until("two leases held", || held.load(Ordering::SeqCst) == 2).await;
        // b wants one of them too: still two leases held between the two.
        let three = b.feed(&Topic::new("rates.EURUSD").unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(held.load(Ordering::SeqCst), 2);
        drop(one);
        drop(two);
        until("b holds the one it wants", || {
            held.load(Ordering::SeqCst) == 1
        })
        .await;
        drop(three);
        until("none held", || held.load(Ordering::SeqCst) == 0).await;
    }

    #[tokio::test]
    async fn a_holder_that_cannot_renew_stops_feeding() {
        /// Grants once, then fails like an unreachable broker.
        struct Flaky(AtomicUsize);
        #[async_trait::async_trait]
        impl Lease for Flaky {
            async fn acquire(&self, _: &Topic, _: &str, _: Duration) -> Result<bool, BusError> {
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    Ok(true)
                } else {
                    Err(BusError::Unavailable("down".into()))
                }
            }
            async fn renew(&self, n: &Topic, h: &str, t: Duration) -> Result<bool, BusError> {
                self.acquire(n, h, t).await
            }
            async fn release(&self, _: &Topic, _: &str) -> Result<(), BusError> {
                Ok(())
            }
        }
        let counting = Counting::default();
        let live = counting.live.clone();
        let feeder = LeasedFeeder::new(
            Arc::new(counting),
            Arc::new(Flaky(AtomicUsize::new(0))),
            "source",
            "a",
            Duration::from_millis(150),
        );
        let _guard = feeder.feed(&Topic::new("rates.EURUSD").unwrap()).unwrap();
        until("it feeds", || live.load(Ordering::SeqCst) == 1).await;
        until("it stops", || live.load(Ordering::SeqCst) == 0).await;
    }
}
