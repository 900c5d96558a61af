//! Properties of the catalog over arbitrary input: a name with any byte outside the alphabet is
//! refused, resolution never panics, alice's subject never grants `orders.bob` however it is
//! spelled, and claim rules admit exactly as configured.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{alice, example, user};
use crate::channels::{ChannelError, ChannelName, Subscriber};

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// "orders.bob" respelled: case, lookalikes, dots, padding, percent-encoding, in any mix.
fn spellings_of_bob() -> impl Strategy<Value = String> {
    const LOOKALIKES: &[char] = &['о', 'ｏ', 'Ь', 'ь', 'ｂ', 'ß', 'ᵇ', 'ⓑ', 'ο', 'ɡ'];
    const PADDING: &[&str] = &[
        " ", "\t", "\u{200b}", "\u{feff}", "\0", "\u{3000}", "\u{00a0}", "\r\n",
    ];
    proptest::collection::vec((0..6u8, any::<usize>(), any::<usize>()), 0..6).prop_map(|edits| {
        let mut s: Vec<char> = "orders.bob".chars().collect();
        for (kind, at, pick) in edits {
            let i = at % (s.len() + 1);
            let j = at % s.len().max(1);
            match kind {
                0 if !s.is_empty() => s[j] = s[j].to_ascii_uppercase(),
                1 if !s.is_empty() => s[j] = LOOKALIKES[pick % LOOKALIKES.len()],
                2 => s.insert(i, '.'),
                3 => s
                    .splice(i..i, PADDING[pick % PADDING.len()].chars())
                    .for_each(drop),
                4 if !s.is_empty() => {
                    let enc: Vec<char> =
                        format!("%{:02X}", u32::from(s[j]) & 0xff).chars().collect();
                    s.splice(j..=j, enc).for_each(drop);
                }
                _ => s.extend("bob".chars()),
            }
        }
        s.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_name_with_a_foreign_character_is_refused(
        before in "[a-z.]{0,20}",
        bad in any::<char>().prop_filter("not allowed", |c| !allowed(*c)),
        after in "[a-z.]{0,20}",
    ) {
        let name = format!("{before}{bad}{after}");
        prop_assert!(ChannelName::parse(&name).is_err());
        prop_assert!(matches!(example().resolve(&name), Err(ChannelError::InvalidName(_))));
    }

    #[test]
    fn resolve_never_panics(
        name in prop_oneof![any::<String>(), "[a-z.{}*>%_ -]{0,40}", "(orders|devices|tenants)\\.[^.]{0,12}(\\.alerts|\\.firmware)?"],
    ) {
        let catalog = example();
        if let Ok(resolved) = catalog.resolve(&name) {
            prop_assert_eq!(resolved.name().as_str(), name.as_str());
            prop_assert!(resolved.entry().pattern().matches(resolved.name()).is_some());
            let back = ChannelName::from_topic(&resolved.topic());
            prop_assert_eq!(back.as_ref(), Some(resolved.name()));
        }
    }

    #[test]
    fn alice_never_gets_orders_bob(spelling in spellings_of_bob(), claims in any::<bool>()) {
        let who = if claims {
            user("alice", json!({"sub": "bob", "user": "bob", "roles": ["ops"], "tenant": "bob"}))
        } else {
            alice()
        };
        let catalog = example();
        if let Ok(resolved) = catalog.resolve(&spelling) {
            if resolved.entry().pattern().as_str() == "orders.{user}" {
                prop_assert!(!resolved.may_subscribe(&who), "{spelling:?}");
            }
            let topic = resolved.topic();
            prop_assert_ne!(topic.as_str(), "ch:orders.alice");
        }
    }

    #[test]
    fn a_claim_rule_admits_exactly_as_configured(
        roles in proptest::collection::vec(prop_oneof!["ops", "Ops", "ops ", "dev", "admin", "[a-z]{0,4}"], 0..4),
        as_string in any::<bool>(),
        tenant in "[a-zA-Z]{1,4}",
        claimed in "[a-zA-Z]{1,4}",
    ) {
        let catalog = example();
        let mut claims = Map::new();
        let roles_claim = match (as_string, roles.first()) {
            (true, Some(role)) => Value::String(role.clone()),
            _ => json!(roles),
        };
        let holds_ops = match &roles_claim {
            Value::String(role) => role == "ops",
            _ => roles.iter().any(|r| r == "ops"),
        };
        claims.insert("roles".into(), roles_claim);
        claims.insert("tenant".into(), Value::String(claimed.clone()));
        let who = Subscriber::User { subject: "u".into(), claims };
        let incidents = catalog.resolve("ops.incidents").unwrap();
        prop_assert_eq!(incidents.may_subscribe(&who), holds_ops);
        let alerts = catalog.resolve(&format!("tenants.{tenant}.alerts")).unwrap();
        prop_assert_eq!(alerts.may_subscribe(&who), tenant == claimed);
    }

    #[test]
    fn every_valid_name_has_a_topic_and_back(name in "[A-Za-z0-9_-]{1,11}(\\.[A-Za-z0-9_-]{1,11}){0,15}") {
        let parsed = ChannelName::parse(&name).unwrap();
        prop_assert_eq!(ChannelName::from_topic(&parsed.topic()), Some(parsed));
    }
}
