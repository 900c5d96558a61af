//! The channel catalog's configuration (`[channels]`): one entry per channel pattern.
//!
//! These types only describe the section; [`Catalog::new`](super::Catalog::new) checks it as a
//! whole (patterns, rules, sizes, ambiguity) and is what a gateway uses.

use serde::{Deserialize, Serialize};

use crate::event::TopicClass;

/// The channel catalog: every channel a client may subscribe to and a publisher may publish on.
/// A name that matches no entry is refused; adding a channel is adding an entry.
///
/// The section is checked as a whole when it is read ([`Catalog::new`](super::Catalog::new)), so
/// a bad entry fails the configuration load, naming the entry, not the start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, try_from = "ChannelsFields")]
pub struct ChannelsConfig {
    /// The entries. No two patterns may match the same channel name.
    pub catalog: Vec<ChannelConfig>,
}

/// [`ChannelsConfig`] as written, before [`Catalog::new`](super::Catalog::new) checks it.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ChannelsFields {
    catalog: Vec<ChannelConfig>,
}

impl TryFrom<ChannelsFields> for ChannelsConfig {
    type Error = super::CatalogError;

    fn try_from(fields: ChannelsFields) -> Result<Self, Self::Error> {
        let config = Self {
            catalog: fields.catalog,
        };
        super::Catalog::new(&config)?;
        Ok(config)
    }
}

/// One entry of the catalog: a family of channels named by a pattern.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The channel names this entry covers: segments of `A-Z a-z 0-9 - _` separated by `.`, any
    /// of which may be a `{placeholder}` standing for exactly one segment (`announcements`,
    /// `orders.{user}`, `tenants.{tenant}.alerts`). Placeholder names are `a-z` then
    /// `a-z 0-9 _`; `{user}` and `{device}` are the ones the `user` and `device` rules read.
    pub pattern: String,
    /// `stream`: every event, with offsets, history and resume. `state`: only the latest value
    /// matters; a slow or resuming subscriber gets the newest one.
    #[serde(default = "default_class")]
    pub class: TopicClass,
    /// Events kept per channel for subscribers that resume; above zero.
    #[serde(default = "default_history_events")]
    pub history_events: u64,
    /// Largest payload accepted from a publisher, in bytes; above zero.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Who may subscribe. Required: there is no default, so that nothing becomes public by
    /// omission.
    pub subscribe: SubscribeRule,
    /// The publishers (by name) that may publish on these channels. Empty, the default, means
    /// none may.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// How long a channel of this entry may go without a publish before the broker forgets it
    /// (its history, offsets and epoch; a reader of the old epoch then gets a gap), in
    /// milliseconds: 100 to 31_536_000_000 (a year). None, the default: kept until trimmed.
    /// Redis expires a channel's keys this long after its last publish; NATS drops each message
    /// this long after it was published (the stream's `max_age`). The memory bus ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_expiry_ms: Option<u64>,
}

/// Who may subscribe to an entry's channels: a table whose `rule` says which, with exactly the
/// keys that rule reads (any other key is an error, naming it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RuleTable", into = "RuleTable")]
pub enum SubscribeRule {
    /// Anyone, signed in or not (`{ rule = "public" }`).
    Public,
    /// The signed-in user the channel is for: the `{user}` placeholder must equal the token's
    /// subject, byte for byte (`{ rule = "user" }`).
    User,
    /// The authenticated device the channel is for: the `{device}` placeholder must equal its id
    /// (`{ rule = "device" }`).
    Device,
    /// A signed-in user whose token has the string claim `claim` equal to the placeholder
    /// `placeholder` (`{ rule = "claim_equals", claim = "tenant", placeholder = "tenant" }`).
    ClaimEquals {
        /// The JWT claim read.
        claim: String,
        /// The placeholder it must equal (without braces).
        placeholder: String,
    },
    /// A signed-in user whose token's claim `claim` is the string `value` or an array holding it
    /// (`{ rule = "claim_contains", claim = "roles", value = "ops" }`).
    ClaimContains {
        /// The JWT claim read.
        claim: String,
        /// The value it must be or contain.
        value: String,
    },
}

/// The table a [`SubscribeRule`] is written as. (serde's internally tagged enums let unknown keys
/// through on unit variants, so the table is read whole and checked here.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    rule: RuleKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placeholder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RuleKind {
    Public,
    User,
    Device,
    ClaimEquals,
    ClaimContains,
}

impl TryFrom<RuleTable> for SubscribeRule {
    type Error = String;

    fn try_from(table: RuleTable) -> Result<Self, String> {
        let RuleTable {
            rule,
            claim,
            placeholder,
            value,
        } = table;
        let rule = match (rule, claim, placeholder, value) {
            (RuleKind::Public, None, None, None) => Self::Public,
            (RuleKind::User, None, None, None) => Self::User,
            (RuleKind::Device, None, None, None) => Self::Device,
            (RuleKind::ClaimEquals, Some(claim), Some(placeholder), None) => {
                Self::ClaimEquals { claim, placeholder }
            }
            (RuleKind::ClaimContains, Some(claim), None, Some(value)) => {
                Self::ClaimContains { claim, value }
            }
            (RuleKind::Public | RuleKind::User | RuleKind::Device, ..) => {
                return Err(format!(
                    "the `{}` rule takes no other key (claim, placeholder, value)",
                    kind_name(rule)
                ));
            }
            (RuleKind::ClaimEquals, ..) => {
                return Err(
                    "the `claim_equals` rule takes `claim` and `placeholder`, and only them".into(),
                );
            }
            (RuleKind::ClaimContains, ..) => {
                return Err(
                    "the `claim_contains` rule takes `claim` and `value`, and only them".into(),
                );
            }
        };
        Ok(rule)
    }
}

impl From<SubscribeRule> for RuleTable {
    fn from(rule: SubscribeRule) -> Self {
        let table = |rule| RuleTable {
            rule,
            claim: None,
            placeholder: None,
            value: None,
        };
        match rule {
            SubscribeRule::Public => table(RuleKind::Public),
            SubscribeRule::User => table(RuleKind::User),
            SubscribeRule::Device => table(RuleKind::Device),
            SubscribeRule::ClaimEquals { claim, placeholder } => RuleTable {
                claim: Some(claim),
                placeholder: Some(placeholder),
                ..table(RuleKind::ClaimEquals)
            },
            SubscribeRule::ClaimContains { claim, value } => RuleTable {
                claim: Some(claim),
                value: Some(value),
                ..table(RuleKind::ClaimContains)
            },
        }
    }
}

fn kind_name(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Public => "public",
        RuleKind::User => "user",
        RuleKind::Device => "device",
        RuleKind::ClaimEquals => "claim_equals",
        RuleKind::ClaimContains => "claim_contains",
    }
}

fn default_class() -> TopicClass {
    TopicClass::Stream
}

fn default_history_events() -> u64 {
    1000
}

fn default_max_payload_bytes() -> usize {
    64 * 1024
}
