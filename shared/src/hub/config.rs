//! The hub's configuration (`[hub]`): per-subscriber queue bounds and topic classes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topic hub: per-subscriber queue bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Events queued for one local subscriber of a stream topic before it is cut off as lagging.
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
