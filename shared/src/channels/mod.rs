//! The channel catalog: which channels exist, who may subscribe to them, who may publish on them,
//! and which bus topic carries each — from configuration (`[channels]`), with no code per channel.
//!
//! - [`ChannelsConfig`] is the section; [`Catalog::new`] checks it at load, every error naming
//!   the entry (bad pattern, a rule reading a placeholder the pattern lacks, zero sizes, two
//!   patterns that could match one name).
//! - [`ChannelName::parse`] checks a name from a client strictly, byte by byte, before anything
//!   else sees it.
//! - [`Catalog::resolve`] finds the one entry a name matches and its placeholder bindings, or
//!   refuses it ([`ChannelError::NotInCatalog`]): nothing is ever subscribed by default.
//! - [`Resolved`] answers the access questions ([`Resolved::may_subscribe`] for a
//!   [`Subscriber`], [`Resolved::may_publish`] for a publisher name, [`Resolved::check_payload`])
//!   and names the channel's bus topic ([`Resolved::topic`]: `ch:` + the name, see
//!   [`TOPIC_PREFIX`]).
//!
//! It decides; it does not serve. Verifying tokens and device keys is the gateways' (with
//! [`auth`](crate::auth)); subscribing and publishing go through the hub and the bus as for any
//! topic.

mod access;
mod config;
mod name;
mod pattern;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use access::Subscriber;
pub use config::{ChannelConfig, ChannelsConfig, SubscribeRule};
pub use name::{ChannelName, MAX_NAME_BYTES, MAX_SEGMENTS, NameError, TOPIC_PREFIX};
pub use pattern::{Pattern, PatternError, Segment};

use crate::event::{Topic, TopicClass};

/// Longest publisher name in an entry's `publishers`.
const MAX_PUBLISHER_BYTES: usize = 64;

/// Shortest `idle_expiry_ms` accepted.
pub const MIN_IDLE_EXPIRY_MS: u64 = 100;

/// Longest `idle_expiry_ms` accepted: a year.
pub const MAX_IDLE_EXPIRY_MS: u64 = 31_536_000_000;

/// A channel name a client or publisher gave that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name breaks the rules of [`ChannelName`].
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A valid name that no catalog entry matches.
    #[error("channel `{0}` is not in the catalog")]
    NotInCatalog(ChannelName),
}

/// A payload larger than its channel accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload of {len} bytes is over channel `{channel}`'s limit of {max} bytes")]
pub struct PayloadTooLarge {
    /// The channel.
    pub channel: ChannelName,
    /// The payload's size.
    pub len: usize,
    /// The channel's limit.
    pub max: usize,
}

/// A catalog that cannot be loaded, naming the entry (its index in `channels.catalog` and its
/// pattern as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channels.catalog[{index}] (`{pattern}`): {problem}")]
pub struct CatalogError {
    /// The entry's index, from 0.
    pub index: usize,
    /// Its pattern as configured.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: CatalogProblem,
}

/// What is wrong with a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogProblem {
    /// The pattern is malformed.
    #[error("bad pattern: {0}")]
    Pattern(#[from] PatternError),
    /// A `claim_equals` rule names a placeholder the pattern does not have.
    #[error("the subscribe rule reads `{{{0}}}`, which the pattern does not have")]
    UnknownPlaceholder(String),
    /// A `user` rule on a pattern without `{user}`.
    #[error("the `user` rule needs a `{{user}}` placeholder in the pattern")]
    UserRuleWithoutUser,
    /// A `device` rule on a pattern without `{device}`.
    #[error("the `device` rule needs a `{{device}}` placeholder in the pattern")]
    DeviceRuleWithoutDevice,
    /// A claim rule with an empty claim name or value.
    #[error("the claim rule's claim and value must not be empty")]
    EmptyClaimRule,
    /// `history_events` is zero.
    #[error("history_events must be above zero")]
    ZeroHistory,
    /// `max_payload_bytes` is zero.
    #[error("max_payload_bytes must be above zero")]
    ZeroPayload,
    /// `idle_expiry_ms` outside its range.
    #[error("idle_expiry_ms {0}: use {MIN_IDLE_EXPIRY_MS} to {MAX_IDLE_EXPIRY_MS} (a year)")]
    IdleExpiry(u64),
    /// A publisher name that is empty, too long or outside `A-Z a-z 0-9 - _ .`.
    #[error("publisher name `{0}` must be 1 to 64 of A-Z a-z 0-9 - _ .")]
    BadPublisher(String),
    /// Some channel name would match this entry and an earlier one.
    #[error(
        "some channel names match both this pattern and channels.catalog[{other}] (`{other_pattern}`)"
    )]
    Ambiguous {
        /// The earlier entry's index.
        other: usize,
        /// Its pattern.
        other_pattern: String,
    },
}

/// One checked catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pattern: Pattern,
    class: TopicClass,
    history_events: u64,
    max_payload_bytes: usize,
    subscribe: SubscribeRule,
    publishers: Vec<String>,
    idle_expiry_ms: Option<u64>,
}

impl Entry {
    /// Its pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Stream or state.
    pub fn class(&self) -> TopicClass {
        self.class
    }

    /// Events kept per channel.
    pub fn history_events(&self) -> u64 {
        self.history_events
    }

    /// Largest payload accepted, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Who may subscribe.
    pub fn subscribe(&self) -> &SubscribeRule {
        &self.subscribe
    }

    /// The publishers allowed.
    pub fn publishers(&self) -> &[String] {
        &self.publishers
    }

    /// How long a channel of this entry may go without a publish before the broker forgets it.
    pub fn idle_expiry(&self) -> Option<std::time::Duration> {
        self.idle_expiry_ms.map(std::time::Duration::from_millis)
    }
}

/// The checked catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Vec<Arc<Entry>>,
}

impl Catalog {
    /// Checks the `[channels]` section; the first problem found is returned, naming its entry.
    pub fn new(config: &ChannelsConfig) -> Result<Self, CatalogError> {
        let mut entries: Vec<Arc<Entry>> = Vec::with_capacity(config.catalog.len());
        for (index, entry) in config.catalog.iter().enumerate() {
            let fail = |problem: CatalogProblem| CatalogError {
                index,
                pattern: entry.pattern.clone(),
                problem,
            };
            let checked = check_entry(entry).map_err(fail)?;
            if let Some((other, earlier)) = entries
                .iter()
                .enumerate()
                .find(|(_, e)| e.pattern.overlaps(&checked.pattern))
            {
                return Err(fail(CatalogProblem::Ambiguous {
                    other,
                    other_pattern: earlier.pattern.as_str().to_owned(),
                }));
            }
            entries.push(Arc::new(checked));
        }
        Ok(Self { entries })
    }

    /// The entries, in configuration order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().map(|e| &**e)
    }

    /// Checks a channel name and finds its entry (at most one matches, the load made sure).
    pub fn resolve(&self, name: &str) -> Result<Resolved, ChannelError> {
        let name = ChannelName::parse(name)?;
        self.resolve_name(name)
    }

    /// The entry of the channel a bus topic carries (`ch:` + a name the catalog matches), for
    /// the hub and the bus: the class and history of that channel.
    pub fn entry_of_topic(&self, topic: &Topic) -> Option<&Entry> {
        let name = ChannelName::from_topic(topic)?;
        self.entries
            .iter()
            .find(|e| e.pattern.matches(&name).is_some())
            .map(|e| &**e)
    }

    /// Whether the catalog has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finds the entry of an already checked name.
    pub fn resolve_name(&self, name: ChannelName) -> Result<Resolved, ChannelError> {
        for entry in &self.entries {
            if let Some(bindings) = entry.pattern.matches(&name) {
                return Ok(Resolved {
                    name,
                    entry: Arc::clone(entry),
                    bindings,
                });
            }
        }
        Err(ChannelError::NotInCatalog(name))
    }
}

/// A channel name that matched a catalog entry.
#[derive(Debug, Clone)]
pub struct Resolved {
    name: ChannelName,
    entry: Arc<Entry>,
    bindings: Vec<(String, String)>,
}

impl Resolved {
    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// The entry it matched.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The value bound to a placeholder (`binding("user")` is `bob` for `orders.bob` under
    /// `orders.{user}`).
    pub fn binding(&self, placeholder: &str) -> Option<&str> {
        self.bindings
            .iter()
            .find(|(p, _)| p == placeholder)
            .map(|(_, v)| v.as_str())
    }

    /// Every binding, in the pattern's order.
    pub fn bindings(&self) -> &[(String, String)] {
        &self.bindings
    }

    /// Whether `who` may subscribe to this channel under its entry's rule.
    pub fn may_subscribe(&self, who: &Subscriber) -> bool {
        access::admits(&self.entry.subscribe, &self.bindings, who)
    }

    /// Whether the publisher named `publisher` may publish on this channel.
    pub fn may_publish(&self, publisher: &str) -> bool {
        self.entry.publishers.iter().any(|p| p == publisher)
    }

    /// Refuses a payload over the entry's `max_payload_bytes`.
    pub fn check_payload(&self, len: usize) -> Result<(), PayloadTooLarge> {
        let max = self.entry.max_payload_bytes;
        if len > max {
            return Err(PayloadTooLarge {
                channel: self.name.clone(),
                len,
                max,
            });
        }
        Ok(())
    }

    /// The bus topic that carries this channel (see [`ChannelName::topic`]).
    pub fn topic(&self) -> Topic {
        self.name.topic()
    }
}

fn check_entry(entry: &ChannelConfig) -> Result<Entry, CatalogProblem> {
    let pattern = Pattern::parse(&entry.pattern)?;
    match &entry.subscribe {
        SubscribeRule::Public => {}
        SubscribeRule::User if !pattern.has_placeholder("user") => {
            return Err(CatalogProblem::UserRuleWithoutUser);
        }
        SubscribeRule::Device if !pattern.has_placeholder("device") => {
            return Err(CatalogProblem::DeviceRuleWithoutDevice);
        }
        SubscribeRule::User | SubscribeRule::Device => {}
        SubscribeRule::ClaimEquals { claim, placeholder } => {
            if claim.is_empty() {
                return Err(CatalogProblem::EmptyClaimRule);
            }
            if !pattern.has_placeholder(placeholder) {
                return Err(CatalogProblem::UnknownPlaceholder(placeholder.clone()));
            }
        }
        SubscribeRule::ClaimContains { claim, value } => {
            if claim.is_empty() || value.is_empty() {
                return Err(CatalogProblem::EmptyClaimRule);
            }
        }
    }
    if entry.history_events == 0 {
        return Err(CatalogProblem::ZeroHistory);
    }
    if entry.max_payload_bytes == 0 {
        return Err(CatalogProblem::ZeroPayload);
    }
    if let Some(bad) = entry.publishers.iter().find(|p| !is_publisher_name(p)) {
        return Err(CatalogProblem::BadPublisher(bad.clone()));
    }
    if let Some(ms) = entry.idle_expiry_ms
        && !(MIN_IDLE_EXPIRY_MS..=MAX_IDLE_EXPIRY_MS).contains(&ms)
    {
        return Err(CatalogProblem::IdleExpiry(ms));
    }
    Ok(Entry {
        pattern,
        class: entry.class,
        history_events: entry.history_events,
        max_payload_bytes: entry.max_payload_bytes,
        subscribe: entry.subscribe.clone(),
        publishers: entry.publishers.clone(),
        idle_expiry_ms: entry.idle_expiry_ms,
    })
}

/// Whether `name` is a valid publisher name: 1 to 64 of `A-Z a-z 0-9 - _ .` (the names of an
/// entry's `publishers`, and of the publish API's keys).
pub fn is_publisher_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PUBLISHER_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
