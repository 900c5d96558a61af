//! Who is asking: the caller of a subscription as the core sees it, and the one place the
//! catalog's subscribe rules are judged.
//!
//! A gateway builds a [`Subscriber`] from what it has already verified (a bearer token through
//! [`auth`](crate::auth), a device key); nothing here verifies credentials.

use serde_json::{Map, Value};

use super::config::SubscribeRule;

/// The caller of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Subscriber {
    /// Nobody signed in.
    Anonymous,
    /// A user signed in with a verified token.
    User {
        /// The token's subject (`sub`).
        subject: String,
        /// The token's claims, as verified.
        claims: Map<String, Value>,
    },
    /// A device authenticated by its key.
    Device {
        /// Its id.
        id: String,
    },
}

/// Whether `rule` admits `who` to a channel whose placeholders are bound as in `bindings`.
/// Comparisons are exact, byte for byte: the channel name was checked to be plain ASCII, and
/// nothing is case-folded or normalised on either side.
pub(crate) fn admits(
    rule: &SubscribeRule,
    bindings: &[(String, String)],
    who: &Subscriber,
) -> bool {
    let bound = |placeholder: &str| {
        bindings
            .iter()
            .find(|(p, _)| p == placeholder)
            .map(|(_, v)| v.as_str())
    };
    match (rule, who) {
        (SubscribeRule::Public, _) => true,
        (SubscribeRule::User, Subscriber::User { subject, .. }) => {
            bound("user") == Some(subject.as_str())
        }
        (SubscribeRule::Device, Subscriber::Device { id }) => bound("device") == Some(id.as_str()),
        (SubscribeRule::ClaimEquals { claim, placeholder }, Subscriber::User { claims, .. }) => {
            match (claims.get(claim), bound(placeholder)) {
                (Some(Value::String(have)), Some(want)) => have == want,
                _ => false,
            }
        }
        (SubscribeRule::ClaimContains { claim, value }, Subscriber::User { claims, .. }) => {
            match claims.get(claim) {
                Some(Value::String(have)) => have == value,
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|item| item.as_str() == Some(value.as_str())),
                _ => false,
            }
        }
        _ => false,
    }
}
