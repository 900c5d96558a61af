//! Catalog channel routing: a client topic that is not one of the demo's ([`super::topics`]) is
//! a channel name, checked strictly and resolved in the channel catalog (`[channels]`), then
//! judged by its entry's subscribe rule for the signed-in user. It leads to the channel's bus
//! topic (`ch:` + the name) with payloads delivered as published ([`Payload::Json`]).
//!
//! The access decision is kept with the subscription ([`Access`]) so that a re-authentication
//! with other claims can judge it again ([`Access::admits`]); the connection's user never
//! changes, so the rule only ever sees one subject per socket. This module neither subscribes
//! ([`super::subscriptions`]) nor reads payloads ([`super::events`]).

use std::sync::Arc;

use demo_api::UserId;
use mobile_proto::code;
use serde_json::{Map, Value};
use switchyard_core::channels::{Catalog, ChannelError, Resolved, Subscriber};

use super::topics::{Payload, Route};

/// The claims of a verified token, as `auth::Verified` keeps them.
pub(super) type Claims = Arc<Map<String, Value>>;

/// A channel subscription's access: the resolved channel, whose rule is judged again when the
/// socket re-authenticates.
#[derive(Debug, Clone)]
pub(super) struct Access(Resolved);

impl Access {
    /// Whether `user` with `claims` may (still) receive this channel.
    pub(super) fn admits(&self, user: &UserId, claims: &Claims) -> bool {
        self.0.may_subscribe(&subscriber(user, claims))
    }
}

/// A refused channel `sub`: the error code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) code: &'static str,
    pub(super) message: String,
}

/// The route of channel `name` for `user` with `claims`, and its access; refused with
/// `unknown_topic` when the name is invalid or not in the catalog, `forbidden` when the entry's
/// rule does not admit the user.
pub(super) fn route(
    catalog: &Catalog,
    user: &UserId,
    claims: &Claims,
    name: &str,
) -> Result<(Route, Access), Refused> {
    let resolved = catalog.resolve(name).map_err(|e| Refused {
        code: code::UNKNOWN_TOPIC,
        message: match e {
            ChannelError::InvalidName(why) => format!("no such topic: {why}"),
            ChannelError::NotInCatalog(_) => "no such topic".to_owned(),
        },
    })?;
    let access = Access(resolved);
    if !access.admits(user, claims) {
        return Err(Refused {
            code: code::FORBIDDEN,
            message: "this channel's subscribe rule does not admit you".to_owned(),
        });
    }
    let route = Route {
        // The name as checked: byte for byte what the client sent (nothing is normalised).
        name: access.0.name().as_str().to_owned(),
        hub: access.0.topic(),
        payload: Payload::Json,
    };
    Ok((route, access))
}

/// The catalog's view of a signed-in user. Only signed-in sockets subscribe (the protocol
/// refuses `sub` before `auth`), so a socket is never [`Subscriber::Anonymous`].
fn subscriber(user: &UserId, claims: &Claims) -> Subscriber {
    Subscriber::User {
        subject: user.to_string(),
        claims: (**claims).clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchyard_core::channels::{ChannelConfig, ChannelsConfig, SubscribeRule};
    use switchyard_core::event::TopicClass;

    use super::*;

    fn entry(pattern: &str, subscribe: SubscribeRule) -> ChannelConfig {
        ChannelConfig {
            pattern: pattern.to_owned(),
            class: TopicClass::Stream,
            history_events: 10,
            max_payload_bytes: 1024,
            subscribe,
            publishers: vec![],
            idle_expiry_ms: None,
        }
    }

    fn catalog() -> Catalog {
        Catalog::new(&ChannelsConfig {
            catalog: vec![
                entry("announcements", SubscribeRule::Public),
                entry("orders.{user}", SubscribeRule::User),
                entry(
                    "ops.alerts",
                    SubscribeRule::ClaimContains {
                        claim: "roles".into(),
                        value: "ops".into(),
                    },
                ),
            ],
        })
        .unwrap()
    }

    fn claims(v: Value) -> Claims {
        match v {
            Value::Object(m) => Arc::new(m),
            _ => unreachable!("claims are a map"),
        }
    }

    #[test]
    fn channels_route_to_their_bus_topic_for_whom_the_rule_admits() {
        let (cat, alice) = (catalog(), UserId::parse("alice").unwrap());
        let none = claims(json!({}));
        let (r, _) = route(&cat, &alice, &none, "announcements").unwrap();
        assert_eq!(
            (r.name.as_str(), r.hub.as_str(), r.payload),
            ("announcements", "ch:announcements", Payload::Json)
        );
        let (r, _) = route(&cat, &alice, &none, "orders.alice").unwrap();
        assert_eq!(r.hub.as_str(), "ch:orders.alice");
        let code = |name: &str, c: &Claims| route(&cat, &alice, c, name).unwrap_err().code;
        assert_eq!(code("orders.bob", &none), code::FORBIDDEN);
        assert_eq!(code("orders.ALICE", &none), code::FORBIDDEN);
        assert_eq!(code("ops.alerts", &none), code::FORBIDDEN);
        let ops = claims(json!({"roles": ["ops"]}));
        assert!(route(&cat, &alice, &ops, "ops.alerts").is_ok());
        for unknown in [
            "nope",
            "orders.alice.",
            "orders..alice",
            "orders.*",
            "",
            "o\0",
        ] {
            assert_eq!(code(unknown, &ops), code::UNKNOWN_TOPIC, "{unknown:?}");
        }
    }

    #[test]
    fn access_is_judged_again_with_new_claims() {
        let (cat, alice) = (catalog(), UserId::parse("alice").unwrap());
        let ops = claims(json!({"roles": ["ops", "dev"]}));
        let (_, access) = route(&cat, &alice, &ops, "ops.alerts").unwrap();
        assert!(access.admits(&alice, &ops));
        assert!(!access.admits(&alice, &claims(json!({"roles": ["dev"]}))));
    }
}
