//! The hub's configuration (`[hub]`): the bound of a stream topic's ring and topic classes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topic hub: ring bounds and topic classes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Events a stream topic's ring keeps for its local subscribers (one ring per topic, a cursor
    /// per subscriber): a subscriber further behind is told so and catches up from history.
    pub subscriber_queue_events: usize,
    /// Topic classes by prefix, for topics outside the channel catalog: a topic takes the class
    /// of the longest matching prefix, and is a stream topic when none matches. Empty by
    /// default. A catalog channel's topic (`ch:`…) takes its class from its catalog entry instead
    /// (`[channels]`).
    pub topics: BTreeMap<String, crate::event::TopicClass>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            subscriber_queue_events: 256,
            topics: BTreeMap::new(),
        }
    }
}
