//! Name patterns of catalog entries: literal segments and `{placeholder}` segments, each
//! placeholder standing for exactly one segment of a channel name.
//!
//! A pattern is checked once, when the catalog is loaded; matching a checked
//! [`ChannelName`](super::ChannelName) against it is a walk over the segments and cannot fail in
//! any other way than "no match".

use std::fmt;

use super::name::{ChannelName, MAX_NAME_BYTES, MAX_SEGMENTS, is_segment_byte};

/// Longest placeholder name.
const MAX_PLACEHOLDER_BYTES: usize = 32;

/// Why a pattern in the catalog is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("the pattern is empty")]
    Empty,
    /// Longer than a channel name may be.
    #[error("the pattern is longer than {max} bytes")]
    TooLong {
        /// The most allowed.
        max: usize,
    },
    /// More segments than a channel name may have.
    #[error("the pattern has more than {max} segments")]
    TooManySegments {
        /// The most allowed.
        max: usize,
    },
    /// Two dots in a row, or a dot at either end.
    #[error("segment {index} of the pattern is empty")]
    EmptySegment {
        /// The segment's index, from 0.
        index: usize,
    },
    /// A literal segment with a byte outside `A-Z a-z 0-9 - _`, or a segment that mixes literal
    /// text and a placeholder (`orders-{user}`): a placeholder is a whole segment.
    #[error(
        "segment {index} of the pattern, `{segment}`, is neither a literal of A-Z a-z 0-9 - _ nor one whole {{placeholder}}"
    )]
    BadSegment {
        /// The segment's index, from 0.
        index: usize,
        /// The segment.
        segment: String,
    },
    /// A placeholder whose name is not `a-z` then `a-z 0-9 _`, up to 32 bytes.
    #[error(
        "placeholder `{{{name}}}` must be a lowercase letter then lowercase letters, digits or _, up to 32 bytes"
    )]
    BadPlaceholder {
        /// The name given.
        name: String,
    },
    /// The same placeholder twice in one pattern.
    #[error("placeholder `{{{name}}}` appears twice")]
    DuplicatePlaceholder {
        /// The placeholder.
        name: String,
    },
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches this exact text (case included).
    Literal(String),
    /// Matches any one segment and binds it to this name.
    Placeholder(String),
}

/// A checked name pattern, such as `tenants.{tenant}.alerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Checks a pattern from the configuration.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_NAME_BYTES {
            return Err(PatternError::TooLong {
                max: MAX_NAME_BYTES,
            });
        }
        let mut segments = Vec::new();
        for (index, segment) in text.split('.').enumerate() {
            if segments.len() == MAX_SEGMENTS {
                return Err(PatternError::TooManySegments { max: MAX_SEGMENTS });
            }
            if segment.is_empty() {
                return Err(PatternError::EmptySegment { index });
            }
            let parsed =
                if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if !is_placeholder_name(inner) {
                        return Err(PatternError::BadPlaceholder {
                            name: inner.to_owned(),
                        });
                    }
                    if segments.contains(&Segment::Placeholder(inner.to_owned())) {
                        return Err(PatternError::DuplicatePlaceholder {
                            name: inner.to_owned(),
                        });
                    }
                    Segment::Placeholder(inner.to_owned())
                } else if segment.bytes().all(is_segment_byte) {
                    Segment::Literal(segment.to_owned())
                } else {
                    return Err(PatternError::BadSegment {
                        index,
                        segment: segment.to_owned(),
                    });
                };
            segments.push(parsed);
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the pattern has this placeholder.
    pub fn has_placeholder(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Placeholder(p) if p == name))
    }

    /// The placeholder bindings when `name` matches, in the pattern's order.
    pub fn matches(&self, name: &ChannelName) -> Option<Vec<(String, String)>> {
        let mut bindings = Vec::new();
        let mut parts = name.segments();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(text) if text == part => {}
                Segment::Literal(_) => return None,
                Segment::Placeholder(p) => bindings.push((p.clone(), part.to_owned())),
            }
        }
        parts.next().is_none().then_some(bindings)
    }

    /// Whether some channel name matches both patterns: same number of segments, and at every
    /// position a placeholder on either side or the same literal.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_placeholder_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_PLACEHOLDER_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
