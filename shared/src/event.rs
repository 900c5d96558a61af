//! Events: what flows up from backends to clients — a topic, a position in the topic's history
//! (epoch and offset), and opaque payload bytes.
//!
//! The core never looks inside a payload; gateways encode it for their wire formats. Offsets are
//! assigned by the bus when an event is published, start at 1, and grow by one per event on a
//! topic. The epoch names one generation of a topic's history: it changes when history is lost
//! (a restarted in-memory bus, a flushed broker), so a position from another epoch cannot be
//! resumed from and gets a gap instead. An event may carry the trace context of the write that
//! published it ([`TraceContext`]), kept by every bus beside the payload.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::trace::TraceContext;

/// A topic name: 1 to 200 characters of ASCII letters, digits and `. _ - : /`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// A topic name that breaks the rules of [`Topic`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic name `{0}`: use 1 to 200 of A-Z a-z 0-9 . _ - : /")]
pub struct InvalidTopic(pub String);

impl Topic {
    /// Longest topic name accepted.
    pub const MAX_LEN: usize = 200;

    /// Validates and wraps a topic name.
    pub fn new(name: &str) -> Result<Self, InvalidTopic> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
        if ok {
            Ok(Self(name.into()))
        } else {
            Err(InvalidTopic(name.chars().take(Self::MAX_LEN).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.0)
    }
}

/// How a topic's events are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicClass {
    /// Every event matters: kept in a bounded history, resumable by offset; a subscriber that
    /// falls too far behind is cut off with a signal, never silently skipped.
    Stream,
    /// Only the latest value matters: conflated per subscriber; a slow or resuming subscriber gets
    /// the newest value, never a backlog.
    State,
}

/// A position in a topic's history: every event up to and including `offset` of `epoch`.
///
/// `Position { epoch, offset: 0 }` is the start of that epoch's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The history generation.
    pub epoch: u64,
    /// The last offset seen.
    pub offset: u64,
}

/// One event on a topic.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    /// Its topic.
    pub topic: Topic,
    /// The history generation it belongs to.
    pub epoch: u64,
    /// Its offset in the topic, assigned at publish.
    pub offset: u64,
    /// The payload, opaque to the core.
    pub payload: Bytes,
    /// The trace of the write that published it (the publisher's `traceparent`), if it gave one:
    /// 25 bytes inline, so an event without one costs nothing more.
    pub trace: Option<TraceContext>,
}

impl Event {
    /// The position just after this event (resume from here to get the next one).
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("topic", &self.topic)
            .field("epoch", &self.epoch)
            .field("offset", &self.offset)
            .field("payload_bytes", &self.payload.len())
            .field("trace", &self.trace)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_validated() {
        assert!(Topic::new("conversions.alice").is_ok());
        assert!(Topic::new("rates.EUR/USD").is_ok());
        assert!(Topic::new("").is_err());
        assert!(Topic::new("has space").is_err());
        assert!(Topic::new("ünicode").is_err());
        assert!(Topic::new(&"x".repeat(201)).is_err());
    }
}
