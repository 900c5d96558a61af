//! [`Retention`]: how many events a bus keeps for each topic — the `[bus]` section's
//! `history_events` for any topic, and a catalog channel's own `history_events` for the topic
//! that carries it (`ch:` + its name).
//!
//! It only answers the question; each bus applies the answer where it keeps history: the memory
//! bus sizes a topic's ring when the topic is first used, the Redis bus trims to it at every
//! publish (`MAXLEN`), the NATS bus gives it to a topic's stream when it creates the stream
//! (`max_messages`; a stream that already exists keeps its limit).

use std::sync::Arc;

use crate::channels::Catalog;
use crate::event::Topic;

/// Events kept per topic: a default, and a catalog whose channels say their own.
#[derive(Debug, Clone)]
pub struct Retention {
    default: usize,
    catalog: Option<Arc<Catalog>>,
}

impl Retention {
    /// `default` events for every topic (at least 1), but the catalog's channels, which keep
    /// their entry's `history_events`.
    pub fn new(default: usize, catalog: Option<Arc<Catalog>>) -> Self {
        Self {
            default: default.max(1),
            catalog,
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
}
