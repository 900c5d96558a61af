//! Which executions a subscription may share ([`crate::fanout`]), decided from its document
//! before anything runs: the root fields its selection can reach ([`root_fields`]) and, for the
//! `channel` field, the catalog entry each channel name resolves to.
//!
//! - **Public** (one execution for everybody, run with no principal): every reachable root
//!   field is `__typename`, a public field (`rates`), or `channel` naming — by a literal or a
//!   string variable — a channel whose catalog entry's rule is `public`, without `after`.
//!   Anything not known for sure (a name from a missing variable, an unknown or invalid name,
//!   an unknown fragment) is not public.
//! - Otherwise keyed by principal; with a `channel` field the key also holds the token's claims,
//!   so two tokens of one user with different claims (roles) never share what a claim rule
//!   decided for one of them.
//!
//! A subscription with a `channel` that has `after` (or may have it) **starts after a
//! position**: whichever its visibility, it is shared only with identical subscriptions, while
//! its execution can still give a joiner everything it emitted ([`crate::fanout`]).
//!
//! A subscription is **state** (replayed to late joiners, conflated when a client lags) when
//! every reachable field is a state field (`rates`) or a `channel` of a state entry.

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{Name, Value as GqlValue};
use serde_json::Value;
use switchyard_core::channels::{Catalog, SubscribeRule};
use switchyard_core::event::TopicClass;

use super::Limits;

/// The name of the root field that reads catalog channels.
const CHANNEL_FIELD: &str = "channel";

/// The most root field names (and `channel` fields) collected from one subscription; a
/// selection with more is classified as user-scoped (never shared across principals) without
/// looking further.
const MAX_ROOT_FIELDS: usize = 64;

/// What a document is, as far as running it goes.
pub(super) enum Root {
    /// A subscription, with what its selection can reach.
    Subscription(Reach),
    /// A query, a mutation, or anything unparsable.
    Other,
}

/// Everything a subscription's root selection can reach.
pub(super) struct Reach {
    /// Every root field name (a `...name` entry for an unknown fragment, `...` when cut short).
    fields: Vec<String>,
    /// Every `channel` field, aliased or not.
    channels: Vec<ChannelRef>,
}

/// A `channel` field's arguments, as far as they can be known before running.
struct ChannelRef {
    /// The channel name, when it is a literal string or a variable holding a string.
    name: Option<String>,
    /// Whether it may start after a position.
    after: bool,
}

/// How a subscription may be shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Share {
    /// With everybody.
    Public,
    /// With the same principal's sockets only.
    Principal,
}

impl Reach {
    /// Whether it reaches a `channel` field (then a principal's key holds its claims).
    pub(super) fn has_channel(&self) -> bool {
        !self.channels.is_empty()
    }

    /// The names of the `channel` fields (`None` where not known before running).
    pub(super) fn channel_names(&self) -> Vec<Option<String>> {
        self.channels.iter().map(|c| c.name.clone()).collect()
    }

    /// Whether it may start after a position (a `channel` with `after`).
    pub(super) fn starts_after_a_position(&self) -> bool {
        self.channels.iter().any(|c| c.after)
    }

    /// How it may be shared.
    pub(super) fn share(&self, limits: &Limits, catalog: &Catalog) -> Share {
        let public_channel = |c: &ChannelRef| {
            c.name.as_deref().is_some_and(|name| {
                catalog
                    .resolve(name)
                    .is_ok_and(|r| *r.entry().subscribe() == SubscribeRule::Public)
            })
        };
        let public = self.fields.iter().all(|f| {
            f == "__typename" || f == CHANNEL_FIELD || limits.public.contains(&f.as_str())
        }) && self.channels.iter().all(public_channel);
        if public {
            Share::Public
        } else {
            Share::Principal
        }
    }

    /// Whether it is a state subscription.
    pub(super) fn is_state(&self, limits: &Limits, catalog: &Catalog) -> bool {
        let state_channel = |c: &ChannelRef| {
            c.name.as_deref().is_some_and(|name| {
                catalog
                    .resolve(name)
                    .is_ok_and(|r| r.entry().class() == TopicClass::State)
            })
        };
        self.fields
            .iter()
            .all(|f| f == CHANNEL_FIELD || limits.state.contains(&f.as_str()))
            && self.channels.iter().all(state_channel)
    }
}

/// The operation to run, and when it is a subscription every root field its selection can
/// reach: fields of the root selection set, of inline fragments in it and of fragments spread
/// into it (recursively), whatever their directives say; `variables` give the `channel` fields'
/// arguments. Over-approximating is the safe side: a field listed here but skipped at run time
/// can only make an execution less shared.
pub(super) fn root_fields(
    query: &str,
    operation_name: Option<&str>,
    variables: &Value,
) -> Option<Root> {
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        // One named operation and no `operationName`: that operation (as the engine runs it).
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    if op.node.ty != OperationType::Subscription {
        return Some(Root::Other);
    }
    let has_default = |var: &Name| {
        op.node
            .variable_definitions
            .iter()
            .any(|d| d.node.name.node == *var && d.node.default_value.is_some())
    };
    let mut reach = Reach {
        fields: Vec::new(),
        channels: Vec::new(),
    };
    let mut pending = vec![&op.node.selection_set];
    let mut spread = std::collections::HashSet::new();
    while let Some(set) = pending.pop() {
        for item in &set.node.items {
            match &item.node {
                Selection::Field(f) => {
                    let name = f.node.name.node.as_str();
                    if !reach.fields.iter().any(|n: &String| n == name) {
                        reach.fields.push(name.to_owned());
                    }
                    if name == CHANNEL_FIELD {
                        let arg = |n: &str| {
                            f.node.get_argument(n).map(|v| {
                                v.node.clone().into_const_with(|var| {
                                    match variables.get(var.as_str()) {
                                        Some(json) => {
                                            GqlValue::from_json(json.clone()).map_err(|_| ())
                                        }
                                        // A default may apply: not known here.
                                        None if has_default(&var) => Err(()),
                                        None => Ok(GqlValue::Null),
                                    }
                                })
                            })
                        };
                        reach.channels.push(ChannelRef {
                            name: match arg("name") {
                                Some(Ok(GqlValue::String(s))) => Some(s),
                                _ => None,
                            },
                            // Absent or null for sure, or it may start after a position.
                            after: !matches!(arg("after"), None | Some(Ok(GqlValue::Null))),
                        });
                    }
                }
                Selection::InlineFragment(i) => pending.push(&i.node.selection_set),
                Selection::FragmentSpread(s) => {
                    let name = &s.node.fragment_name.node;
                    // Each fragment once: cycles and repeated spreads end here.
                    if spread.insert(name.clone()) {
                        match doc.fragments.get(name) {
                            Some(fragment) => pending.push(&fragment.node.selection_set),
                            // An unknown fragment fails validation; never share it.
                            None => reach.fields.push(format!("...{name}")),
                        }
                    }
                }
            }
            if reach.fields.len() > MAX_ROOT_FIELDS || reach.channels.len() > MAX_ROOT_FIELDS {
                reach.fields.push("...".to_owned());
                return Some(Root::Subscription(reach));
            }
        }
    }
    Some(Root::Subscription(reach))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_named_operation_needs_no_operation_name() {
        let named = "subscription Named($n: String!) { channel(name: $n) { offset } }";
        let vars = serde_json::json!({"n": "announcements"});
        assert!(matches!(
            root_fields(named, None, &vars),
            Some(Root::Subscription(_))
        ));
        assert!(matches!(
            root_fields(named, Some("Named"), &vars),
            Some(Root::Subscription(_))
        ));
        let two =
            "subscription A { rates(pairs: []) { rate } } subscription B { conversions { id } }";
        assert!(root_fields(two, None, &vars).is_none());
        assert!(matches!(
            root_fields(two, Some("B"), &vars),
            Some(Root::Subscription(_))
        ));
    }
}
