//! [`Retention`]: how many events a bus keeps for each topic — the `[bus]` section's
//! `history_events` for any topic, and a catalog channel's own `history_events` for the topic
//! that carries it (`ch:` + its name).
//!
//! It only answers the question; each bus applies the answer where it keeps history: the memory
//! bus sizes a topic's ring when the topic is first used, the Redis bus trims to it at every
//! publish (`MAXLEN`), the NATS bus gives it to a topic's stream when it creates the stream
//! (`max_messages`; a stream that already exists keeps its limit).
//!
//! It also says how long a catalog channel may stay idle before the broker forgets it (its
//! entry's `idle_expiry_ms`), and which topics are the channels of one pattern ([`Group`]):
//! the NATS bus keeps all the channels of a group in one stream instead of a stream each.

use std::sync::Arc;
use std::time::Duration;

use crate::channels::Catalog;
use crate::event::Topic;

/// Events kept per topic: a default, and a catalog whose channels say their own.
#[derive(Debug, Clone)]
pub struct Retention {
    default: usize,
    catalog: Option<Arc<Catalog>>,
    /// The group every topic outside the catalog belongs to, if any ([`Self::grouped`]).
    default_group: Option<Arc<str>>,
    /// Whether a catalog pattern's channels are a group ([`Self::without_pattern_groups`]).
    pattern_groups: bool,
}

/// The channels of one catalog pattern with a placeholder (`conversions.{user}`), kept together
/// by a broker that can (NATS: one stream for the group, one subject per channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The pattern, as configured (or the name given to [`Retention::grouped`]).
    pub name: Arc<str>,
    /// Events kept per channel.
    pub history: usize,
    /// How long a channel may go without a publish before the broker forgets it.
    pub idle_expiry: Option<Duration>,
}

impl Retention {
    /// `default` events for every topic (at least 1), but the catalog's channels, which keep
    /// their entry's `history_events`.
    pub fn new(default: usize, catalog: Option<Arc<Catalog>>) -> Self {
        Self {
            default: default.max(1),
            catalog,
            default_group: None,
            pattern_groups: true,
        }
    }

    /// The same, a catalog pattern's channels being no group: each keeps a stream of its own on
    /// NATS (what a `Broker` does when `bus.nats_pattern_streams` is off).
    pub fn without_pattern_groups(self) -> Self {
        Self {
            pattern_groups: false,
            ..self
        }
    }

    /// [`Self::new`], every topic outside the catalog being a channel of one group named `name`
    /// (keeping the default history, never expiring): what the catalog's patterns get, for any
    /// topic — so the conformance suites and benchmarks run the grouped layout on any topic.
    pub fn grouped(self, name: &str) -> Self {
        Self {
            default_group: Some(name.into()),
            ..self
        }
    }

    /// How long `topic` may go without a publish before the broker forgets it: its catalog
    /// entry's `idle_expiry_ms`, none outside the catalog.
    pub fn idle_expiry_of(&self, topic: &Topic) -> Option<Duration> {
        self.catalog
            .as_deref()
            .and_then(|catalog| catalog.entry_of_topic(topic))
            .and_then(crate::channels::Entry::idle_expiry)
    }

    /// The group `topic` is a channel of: a catalog entry whose pattern has a placeholder (an
    /// entry naming one channel is no group), or the default group of [`Self::grouped`].
    pub fn group_of(&self, topic: &Topic) -> Option<Group> {
        let entry = self
            .catalog
            .as_deref()
            .and_then(|catalog| catalog.entry_of_topic(topic));
        match entry {
            Some(_) if !self.pattern_groups => None,
            Some(entry) => {
                let pattern = entry.pattern();
                let placeholders = pattern
                    .segments()
                    .iter()
                    .any(|s| matches!(s, crate::channels::Segment::Placeholder(_)));
                placeholders.then(|| Group {
                    name: pattern.as_str().into(),
                    history: usize::try_from(entry.history_events())
                        .unwrap_or(usize::MAX)
                        .max(1),
                    idle_expiry: entry.idle_expiry(),
                })
            }
            None => self.default_group.as_ref().map(|name| Group {
                name: name.clone(),
                history: self.default,
                idle_expiry: None,
            }),
        }
    }

    /// The events `topic` keeps (at least 1).
    pub fn history_of(&self, topic: &Topic) -> usize {
        self.catalog
            .as_deref()
            .and_then(|catalog| catalog.entry_of_topic(topic))
            .map_or(self.default, |entry| {
                usize::try_from(entry.history_events())
                    .unwrap_or(usize::MAX)
                    .max(1)
            })
    }

    /// The events a topic outside the catalog keeps.
    pub fn default_history(&self) -> usize {
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::{ChannelConfig, ChannelsConfig, SubscribeRule};
    use crate::event::TopicClass;

    fn catalog() -> Arc<Catalog> {
        let entry = |pattern: &str, history_events| ChannelConfig {
            pattern: pattern.into(),
            class: TopicClass::Stream,
            history_events,
            max_payload_bytes: 1024,
            subscribe: SubscribeRule::Public,
            publishers: Vec::new(),
            idle_expiry_ms: None,
        };
        let config = ChannelsConfig {
            catalog: vec![entry("announcements", 3), entry("orders.{user}", 50)],
        };
        Arc::new(Catalog::new(&config).expect("catalog"))
    }

    #[test]
    fn a_catalog_channel_keeps_its_entrys_history_and_any_other_topic_the_default() {
        let t = |s: &str| Topic::new(s).expect("topic");
        let retention = Retention::new(1_000, Some(catalog()));
        assert_eq!(retention.history_of(&t("ch:announcements")), 3);
        assert_eq!(retention.history_of(&t("ch:orders.alice")), 50);
        // Not `ch:` + a catalog name: the default, however close the spelling.
        assert_eq!(retention.history_of(&t("announcements")), 1_000);
        assert_eq!(retention.history_of(&t("ch:orders.alice.x")), 1_000);
        assert_eq!(retention.history_of(&t("ch:Announcements")), 1_000);
        assert_eq!(retention.history_of(&t("conversions.alice")), 1_000);
        let plain = Retention::new(0, None);
        assert_eq!(plain.history_of(&t("ch:announcements")), 1);
    }

    #[test]
    fn a_patterns_channels_are_a_group_and_exact_names_are_not() {
        let t = |s: &str| Topic::new(s).expect("topic");
        let retention = Retention::new(1_000, Some(catalog()));
        let group = retention.group_of(&t("ch:orders.alice")).expect("a group");
        assert_eq!(&*group.name, "orders.{user}");
        assert_eq!((group.history, group.idle_expiry), (50, None));
        assert_eq!(retention.group_of(&t("ch:orders.bob")), Some(group));
        assert_eq!(retention.group_of(&t("ch:announcements")), None);
        assert_eq!(retention.group_of(&t("orders.alice")), None);
        assert_eq!(retention.idle_expiry_of(&t("ch:orders.alice")), None);
        // `grouped`: every topic outside the catalog in one group; the catalog's stay theirs.
        let all = retention.grouped("all");
        let other = all.group_of(&t("orders.alice")).expect("the default group");
        assert_eq!((&*other.name, other.history), ("all", 1_000));
        assert_eq!(
            &*all.group_of(&t("ch:orders.x")).expect("group").name,
            "orders.{user}"
        );
        assert_eq!(all.group_of(&t("ch:announcements")), None);
    }
}
