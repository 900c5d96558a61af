//! The hub's counters by channel pattern, for `/metrics`: live and opened subscriptions, events
//! and gaps handed to subscribers, and catch-ups of subscribers that lagged behind the live
//! fan-out. One set per catalog entry (labelled by its pattern, never by a channel's name) and
//! one for every other topic (`other`: rates, devices' topics); built once, when the hub is first
//! used, so a delivery pays one relaxed atomic increment and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::channels::Catalog;
use crate::event::Topic;

/// The pattern label of topics that are not catalog channels.
pub const OTHER_PATTERN: &str = "other";

/// The counters of one pattern.
#[derive(Debug, Default)]
struct Counters {
    live: AtomicU64,
    opened: AtomicU64,
    deliveries: AtomicU64,
    gaps: AtomicU64,
    catch_ups: AtomicU64,
}

/// A copy of one pattern's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSnapshot {
    /// The catalog pattern (`orders.{user}`), or [`OTHER_PATTERN`].
    pub pattern: String,
    /// Local subscriptions open now.
    pub live: u64,
    /// Local subscriptions opened since start.
    pub opened: u64,
    /// Events handed to subscribers (a subscription shared by several clients counts once).
    pub deliveries: u64,
    /// Gaps handed to subscribers (history no longer covered where they were).
    pub gaps: u64,
    /// Times a subscriber fell behind its topic's ring and caught up from history.
    pub catch_ups: u64,
}

/// The stream subscribers' queues at one moment (`Hub::queue_depths`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Events queued, summed over every stream subscriber.
    pub queued: u64,
    /// The most items one subscriber has yet to take.
    pub max: u64,
    /// Stream subscribers with a queue (hooked into the live fan-out).
    pub queues: u64,
}

/// The hub's counters, by pattern.
#[derive(Debug)]
pub(super) struct HubStats {
    /// The catalog's patterns, then [`OTHER_PATTERN`].
    patterns: Vec<String>,
    counters: Box<[Counters]>,
}

impl HubStats {
    pub(super) fn new(catalog: Option<&Catalog>) -> Self {
        let mut patterns: Vec<String> = catalog
            .map(|c| {
                c.entries()
                    .map(|e| e.pattern().as_str().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        patterns.push(OTHER_PATTERN.to_owned());
        let counters = patterns.iter().map(|_| Counters::default()).collect();
        Self { patterns, counters }
    }

    /// The index of `topic`'s pattern (at subscribe time, not per delivery).
    pub(super) fn index_of(&self, catalog: Option<&Catalog>, topic: &Topic) -> usize {
        let other = self.patterns.len() - 1;
        catalog
            .and_then(|c| c.entry_of_topic(topic))
            .and_then(|entry| {
                let pattern = entry.pattern().as_str();
                self.patterns[..other].iter().position(|p| p == pattern)
            })
            .unwrap_or(other)
    }

    fn at(&self, index: usize) -> Option<&Counters> {
        self.counters.get(index)
    }

    pub(super) fn subscribed(&self, index: usize) {
        if let Some(c) = self.at(index) {
            c.live.fetch_add(1, Ordering::Relaxed);
            c.opened.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn left(&self, index: usize) {
        if let Some(c) = self.at(index) {
            c.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn delivered(&self, index: usize) {
        if let Some(c) = self.at(index) {
            c.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn gap(&self, index: usize) {
        if let Some(c) = self.at(index) {
            c.gaps.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn caught_up(&self, index: usize) {
        if let Some(c) = self.at(index) {
            c.catch_ups.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> Vec<PatternSnapshot> {
        self.patterns
            .iter()
            .zip(self.counters.iter())
            .map(|(pattern, c)| PatternSnapshot {
                pattern: pattern.clone(),
                live: c.live.load(Ordering::Relaxed),
                opened: c.opened.load(Ordering::Relaxed),
                deliveries: c.deliveries.load(Ordering::Relaxed),
                gaps: c.gaps.load(Ordering::Relaxed),
                catch_ups: c.catch_ups.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::bus::{Broker, StartAt};
    use crate::channels::ChannelsConfig;
    use crate::event::Position;
    use crate::hub::{Hub, HubConfig, Item};

    fn catalog() -> Arc<Catalog> {
        let config: ChannelsConfig = toml::from_str(
            r#"
[[catalog]]
pattern = "orders.{user}"
subscribe = { rule = "public" }
"#,
        )
        .expect("catalog");
        Arc::new(Catalog::new(&config).expect("valid"))
    }

    fn of<'a>(stats: &'a [PatternSnapshot], pattern: &str) -> &'a PatternSnapshot {
        stats
            .iter()
            .find(|s| s.pattern == pattern)
            .expect("pattern")
    }

    #[tokio::test]
    async fn counted_by_pattern_never_by_channel() {
        let bus = Broker::memory(100).bus();
        let hub = Hub::new(bus.clone(), HubConfig::default()).with_catalog(catalog());
        let alice = Topic::new("ch:orders.alice").expect("topic");
        let bob = Topic::new("ch:orders.bob").expect("topic");
        let mut a = hub.subscribe(&alice, StartAt::Live).await.expect("sub");
        let b = hub.subscribe(&bob, StartAt::Live).await.expect("sub");
        let other = hub
            .subscribe(&Topic::new("devices.tv").expect("topic"), StartAt::Live)
            .await
            .expect("sub");
        for i in 0..5 {
            bus.publish(&alice, Bytes::from(format!("{i}")))
                .await
                .expect("publish");
        }
        for _ in 0..5 {
            let item = a.next().await;
            assert!(matches!(item, Some(Item::Event(_))), "{item:?}");
        }
        drop(b);
        let stats = hub.stats();
        assert_eq!(stats.len(), 2, "{stats:?}");
        let orders = of(&stats, "orders.{user}");
        assert_eq!((orders.live, orders.opened), (1, 2));
        assert_eq!((orders.deliveries, orders.gaps), (5, 0));
        let rest = of(&stats, OTHER_PATTERN);
        assert_eq!((rest.live, rest.opened, rest.deliveries), (1, 1, 0));
        drop(other);
        assert_eq!(of(&hub.stats(), OTHER_PATTERN).live, 0);
    }

    #[tokio::test]
    async fn gaps_are_counted() {
        let bus = Broker::memory(3).bus();
        let hub = Hub::new(bus.clone(), HubConfig::default()).with_catalog(catalog());
        let alice = Topic::new("ch:orders.alice").expect("topic");
        for i in 0..5 {
            bus.publish(&alice, Bytes::from(format!("{i}")))
                .await
                .expect("publish");
        }
        // History keeps 3 events: resuming after the first of 5 is a gap, then the 3 kept.
        let mut late = hub
            .subscribe(
                &alice,
                StartAt::After(Position {
                    epoch: bus.head(&alice).await.expect("head").epoch,
                    offset: 1,
                }),
            )
            .await
            .expect("sub");
        assert!(matches!(late.next().await, Some(Item::Gap { .. })));
        for _ in 0..3 {
            assert!(matches!(late.next().await, Some(Item::Event(_))));
        }
        let stats = hub.stats();
        let orders = of(&stats, "orders.{user}");
        assert_eq!((orders.deliveries, orders.gaps, orders.opened), (3, 1, 1));
    }
}
