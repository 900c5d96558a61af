//! Channel names as clients send them, checked strictly before anything else looks at them.
//!
//! The check works on bytes and refuses any byte outside a small ASCII alphabet before any
//! decoding, case folding or normalisation could happen, so there is nothing to trick: no
//! fullwidth or confusable letters, no percent-encoding, no padding, no wildcard, no way to add a
//! segment. This module does not decide whether a name is in the catalog (that is
//! [`Catalog::resolve`](super::Catalog::resolve)).

use std::fmt;
use std::sync::Arc;

use crate::event::Topic;

/// Longest channel name accepted, in bytes. With [`TOPIC_PREFIX`] it stays within
/// [`Topic::MAX_LEN`], so every channel has a bus topic.
pub const MAX_NAME_BYTES: usize = 192;

/// Most segments (parts between dots) a channel name may have.
pub const MAX_SEGMENTS: usize = 16;

/// What a channel's bus topic starts with. The catalog's channels live in a namespace of their own
/// on the bus: `:` is never in a channel name, so no catalog pattern can ever reach one of the
/// gateways' own topics (`devices.{id}.commands`, `telemetry.{id}`, the feeders' lease names
/// `bridge:…`), whatever an operator configures.
pub const TOPIC_PREFIX: &str = "ch:";

/// Why a channel name was refused. Positions are byte offsets; the offending name itself is not
/// repeated, since it came from a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("channel name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("channel name is {len} bytes long; the most is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// A byte outside ASCII (any unicode character, whatever it looks like).
    #[error(
        "channel name has a non-ASCII byte at {at}; use A-Z a-z 0-9 - _ and . between segments"
    )]
    NonAscii {
        /// Its position.
        at: usize,
    },
    /// A wildcard or placeholder character (`*`, `>`, `{`, `}`): clients name one channel.
    #[error("channel name has the wildcard `{wildcard}` at {at}; name one channel")]
    Wildcard {
        /// Its position.
        at: usize,
        /// The wildcard.
        wildcard: char,
    },
    /// Any other ASCII byte outside the alphabet (space, `%`, `/`, `:`, control characters…).
    #[error(
        "channel name has the byte 0x{byte:02x} at {at}; use A-Z a-z 0-9 - _ and . between segments"
    )]
    InvalidByte {
        /// Its position.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// Two dots in a row, or a dot at either end.
    #[error("channel name has an empty segment (segment {index})")]
    EmptySegment {
        /// The segment's index, from 0.
        index: usize,
    },
    /// More than [`MAX_SEGMENTS`] segments.
    #[error("channel name has {count} segments; the most is {max}")]
    TooManySegments {
        /// How many it has.
        count: usize,
        /// The most allowed.
        max: usize,
    },
}

/// Whether `b` may appear inside a segment.
pub(crate) fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A checked channel name: 1 to [`MAX_NAME_BYTES`] bytes of `A-Z a-z 0-9 - _` in 1 to
/// [`MAX_SEGMENTS`] non-empty segments separated by `.`. Case matters (`Orders.bob` is not
/// `orders.bob`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Checks a name from a client (or a publisher).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong {
                len: bytes.len(),
                max: MAX_NAME_BYTES,
            });
        }
        for (at, &byte) in bytes.iter().enumerate() {
            if !byte.is_ascii() {
                return Err(NameError::NonAscii { at });
            }
            if matches!(byte, b'*' | b'>' | b'{' | b'}') {
                return Err(NameError::Wildcard {
                    at,
                    wildcard: char::from(byte),
                });
            }
            if byte != b'.' && !is_segment_byte(byte) {
                return Err(NameError::InvalidByte { at, byte });
            }
        }
        let mut count = 0;
        for (index, segment) in name.split('.').enumerate() {
            if segment.is_empty() {
                return Err(NameError::EmptySegment { index });
            }
            count += 1;
        }
        if count > MAX_SEGMENTS {
            return Err(NameError::TooManySegments {
                count,
                max: MAX_SEGMENTS,
            });
        }
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The bus topic that carries this channel: [`TOPIC_PREFIX`] followed by the name, so
    /// `orders.bob` is carried by `ch:orders.bob`. Reversed by [`ChannelName::from_topic`].
    pub fn topic(&self) -> Topic {
        Topic::new(&format!("{TOPIC_PREFIX}{}", self.0))
            .expect("a channel name with the prefix is a valid topic (alphabet and length)")
    }

    /// The channel a bus topic carries, or `None` for a topic that carries no channel.
    pub fn from_topic(topic: &Topic) -> Option<Self> {
        let name = topic.as_str().strip_prefix(TOPIC_PREFIX)?;
        Self::parse(name).ok()
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({})", self.0)
    }
}
