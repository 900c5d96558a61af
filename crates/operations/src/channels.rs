//! The demo's channel catalog, defined once: the default `[channels]` of the three gateways and
//! of the launcher, and the names of the demo's channels and bus topics.
//!
//! - `rates.{pair}` (`rates.EUR-USD`): a public state channel, one per currency pair, fed by the
//!   exchange source ([`crate::sources`]); no publisher may publish on it.
//! - `conversions.{user}` (`conversions.alice`): a stream of one user's conversion events, for
//!   that signed-in user only (`user` rule); the conversions service publishes there.
//! - `announcements`: a public stream the launcher's `demo` publisher publishes on.
//!
//! A channel's bus topic is `ch:` + its name (`Resolved::topic`), so the demo's topics are
//! `ch:rates.EUR-USD` and `ch:conversions.alice`. The gateways' typed demo routes (mobile's
//! `rates:EUR/USD`, bff-web's `rates`, …) subscribe to these topics through the functions here
//! and in [`crate::sources`], never by spelling them. This module only names and configures; the
//! catalog checks ([`Catalog::new`](switchyard_core::channels::Catalog::new)) and the hub
//! serves.

use demo_api::{Pair, UserId};
use switchyard_core::channels::{ChannelConfig, ChannelName, ChannelsConfig, SubscribeRule};
use switchyard_core::event::{Topic, TopicClass};

/// The pattern of the rates channels: one per pair, `rates.EUR-USD` (channel names have no `/`).
pub const RATES: &str = "rates.{pair}";

/// The pattern of the conversions channels: one per user, `conversions.alice`.
pub const CONVERSIONS: &str = "conversions.{user}";

/// The public announcements channel.
pub const ANNOUNCEMENTS: &str = "announcements";

/// The publisher allowed on `conversions.{user}`: the conversions service.
pub const CONVERSIONS_PUBLISHER: &str = "conversions";

/// The publisher allowed on `announcements`: the launcher's demo publisher key's name.
pub const DEMO_PUBLISHER: &str = "demo";

/// Events kept per demo channel for subscribers that resume (the catalog's default).
const HISTORY_EVENTS: u64 = 1000;

/// Largest payload a publisher may publish on a demo channel (the catalog's default).
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// The demo catalog: `rates.{pair}` (public state, no publisher), `conversions.{user}` (stream,
/// `user` rule, published by `conversions`) and `announcements` (public stream, published by
/// `demo`).
pub fn demo() -> ChannelsConfig {
    let entry = |pattern: &str, class, subscribe, publishers: &[&str]| ChannelConfig {
        pattern: pattern.to_owned(),
        class,
        history_events: HISTORY_EVENTS,
        max_payload_bytes: MAX_PAYLOAD_BYTES,
        subscribe,
        publishers: publishers.iter().map(|p| (*p).to_owned()).collect(),
        idle_expiry_ms: None,
    };
    ChannelsConfig {
        catalog: vec![
            entry(RATES, TopicClass::State, SubscribeRule::Public, &[]),
            entry(
                CONVERSIONS,
                TopicClass::Stream,
                SubscribeRule::User,
                &[CONVERSIONS_PUBLISHER],
            ),
            entry(
                ANNOUNCEMENTS,
                TopicClass::Stream,
                SubscribeRule::Public,
                &[DEMO_PUBLISHER],
            ),
        ],
    }
}

/// The channel of a pair's rates: `rates.EUR-USD` for `EUR/USD`.
pub fn rates_channel(pair: &Pair) -> ChannelName {
    ChannelName::parse(&format!("rates.{}-{}", pair.base, pair.quote))
        .expect("`rates.` and two known three-letter currency codes make a valid channel name")
}

/// The channel of a user's conversion events: `conversions.alice`.
pub fn conversions_channel(user: &UserId) -> ChannelName {
    ChannelName::parse(&format!("conversions.{user}"))
        .expect("a user id is one segment of A-Z a-z 0-9 - _, so this is a valid channel name")
}

/// The bus topic of a user's conversion events: `ch:conversions.alice`, the topic the
/// conversions service publishes on ([`demo_api::conversions_topic`]).
pub fn conversions_topic(user: &UserId) -> Topic {
    conversions_channel(user).topic()
}

#[cfg(test)]
mod tests {
    use serde_json::Map;
    use switchyard_core::channels::{Catalog, ChannelError, Subscriber};

    use super::*;

    fn user(subject: &str) -> Subscriber {
        Subscriber::User {
            subject: subject.to_owned(),
            claims: Map::new(),
        }
    }

    #[test]
    fn the_demo_catalog_loads_and_classes_its_channels() {
        let catalog = Catalog::new(&demo()).expect("the demo catalog is valid");
        let eur_usd: Pair = "EUR/USD".parse().unwrap();

        let rates = catalog.resolve("rates.EUR-USD").expect("rates");
        assert_eq!(rates.topic().as_str(), "ch:rates.EUR-USD");
        assert_eq!(rates.topic(), crate::sources::rates_topic(&eur_usd));
        assert_eq!(rates.name(), &rates_channel(&eur_usd));
        assert_eq!(rates.entry().class(), TopicClass::State);
        assert!(rates.may_subscribe(&Subscriber::Anonymous));
        for publisher in [DEMO_PUBLISHER, CONVERSIONS_PUBLISHER] {
            assert!(
                !rates.may_publish(publisher),
                "only the exchange source feeds rates"
            );
        }

        let alice = UserId::parse("alice").unwrap();
        let conversions = catalog.resolve("conversions.alice").expect("conversions");
        assert_eq!(conversions.topic(), conversions_topic(&alice));
        assert_eq!(conversions.topic().as_str(), "ch:conversions.alice");
        assert_eq!(
            demo_api::conversions_topic(&alice),
            conversions_topic(&alice).as_str(),
            "the conversions service publishes where the gateways subscribe"
        );
        assert_eq!(conversions.entry().class(), TopicClass::Stream);
        assert!(conversions.may_subscribe(&user("alice")));
        assert!(!conversions.may_subscribe(&user("bob")));
        assert!(!conversions.may_subscribe(&Subscriber::Anonymous));
        assert!(!conversions.may_subscribe(&Subscriber::Device { id: "alice".into() }));
        assert!(conversions.may_publish(CONVERSIONS_PUBLISHER));
        assert!(!conversions.may_publish(DEMO_PUBLISHER));

        let announcements = catalog.resolve(ANNOUNCEMENTS).expect("announcements");
        assert_eq!(announcements.entry().class(), TopicClass::Stream);
        assert!(announcements.may_subscribe(&Subscriber::Anonymous));
        assert!(announcements.may_publish(DEMO_PUBLISHER));
        assert!(!announcements.may_publish(CONVERSIONS_PUBLISHER));
    }

    #[test]
    fn every_pair_has_a_rates_channel_and_old_spellings_are_refused() {
        let catalog = Catalog::new(&demo()).unwrap();
        for base in demo_api::CURRENCIES {
            for quote in demo_api::CURRENCIES.iter().filter(|q| **q != base) {
                let pair: Pair = format!("{base}/{quote}").parse().unwrap();
                let resolved = catalog.resolve(rates_channel(&pair).as_str()).unwrap();
                assert_eq!(
                    resolved.binding("pair"),
                    Some(format!("{base}-{quote}").as_str())
                );
            }
        }
        assert!(matches!(
            catalog.resolve("rates.EUR/USD"),
            Err(ChannelError::InvalidName(_))
        ));
        for not_in_catalog in [
            "rates",
            "conversions",
            "conversions.alice.x",
            "announcement",
        ] {
            assert!(
                matches!(
                    catalog.resolve(not_in_catalog),
                    Err(ChannelError::NotInCatalog(_))
                ),
                "{not_in_catalog}"
            );
        }
    }
}
