//! Demo topic routing: which hub topic a client topic of v1 stands for, for the signed-in user,
//! and which demo type its payloads hold. This is the only place in the socket layer that knows
//! the demo's client topics: `conversions` (the user's own catalog channel `conversions.{user}`,
//! conversion events) and `rates:{BASE/QUOTE}` (channel `rates.{BASE}-{QUOTE}`, rates fed by the
//! exchange source). Their hub topics come from `operations`, which defines the demo catalog.
//! Every other client topic is a catalog channel ([`super::channels`]), whose routes carry
//! [`Payload::Json`].
//!
//! A route is decided once, when a subscription starts; events are then read by its
//! [`Payload`] without looking at names again. This module neither reads payloads
//! ([`super::events`] does) nor subscribes ([`super::subscriptions`]).

use demo_api::UserId;
use mobile_proto::topic;
use switchyard_core::event::Topic;

/// What the hub payloads of a topic hold: JSON of a `demo_api` type, or (a catalog channel)
/// any JSON, delivered as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Payload {
    /// `demo_api::ConversionEvent`.
    Conversion,
    /// `demo_api::Rate`.
    Rate,
    /// Any JSON value, as a publisher sent it (a catalog channel).
    Json,
}

/// Where a client topic leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Route {
    /// The client topic, as the client named it (and as its events name it).
    pub(super) name: String,
    /// The hub topic it maps to.
    pub(super) hub: Topic,
    /// What the hub topic's payloads hold.
    pub(super) payload: Payload,
}

/// The route of client topic `name` for `user`; `None` when v1 has no such topic.
pub(super) fn route(user: &UserId, name: &str) -> Option<Route> {
    let (hub, payload) = if name == topic::CONVERSIONS {
        (
            operations::channels::conversions_topic(user),
            Payload::Conversion,
        )
    } else {
        let pair: demo_api::Pair = topic::rates_pair(name)?.parse().ok()?;
        (operations::sources::rates_topic(&pair), Payload::Rate)
    };
    Some(Route {
        name: name.to_owned(),
        hub,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_topics_map_to_the_users_hub_topics() {
        let alice = UserId::parse("alice").unwrap();
        let c = route(&alice, "conversions").unwrap();
        assert_eq!(
            (c.hub.as_str(), c.payload),
            ("ch:conversions.alice", Payload::Conversion)
        );
        let r = route(&alice, "rates:EUR/USD").unwrap();
        assert_eq!(
            (r.hub.as_str(), r.payload),
            ("ch:rates.EUR-USD", Payload::Rate)
        );
        assert_eq!(r.name, "rates:EUR/USD");
        for unknown in [
            "rates:",
            "rates:EUR/XXX",
            "rates:EUR/EUR",
            "rates.EUR/USD",
            "rates.EUR-USD",
            "ch:rates.EUR-USD",
            "conversions.alice",
            "nope",
        ] {
            assert!(route(&alice, unknown).is_none(), "{unknown}");
        }
    }
}
