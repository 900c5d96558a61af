//! The catalog's tests: every validation error in a table, resolution and access by example;
//! `tests/props.rs` the properties over arbitrary input (strict names, no panics, no cross-user
//! access, claim rules).

use serde_json::{Value, json};

use super::*;
use std::time::Duration;

mod props;

/// The documented example of `[channels]` (docs/configuration.md).
const EXAMPLE: &str = r#"
[[channels.catalog]]
pattern = "announcements"
subscribe = { rule = "public" }
publishers = ["news"]

[[channels.catalog]]
pattern = "orders.{user}"
history_events = 500
max_payload_bytes = 16384
subscribe = { rule = "user" }
publishers = ["orders-service"]

[[channels.catalog]]
pattern = "tenants.{tenant}.alerts"
subscribe = { rule = "claim_equals", claim = "tenant", placeholder = "tenant" }

[[channels.catalog]]
pattern = "ops.incidents"
subscribe = { rule = "claim_contains", claim = "roles", value = "ops" }

[[channels.catalog]]
pattern = "devices.{device}.firmware"
class = "state"
subscribe = { rule = "device" }
publishers = ["firmware"]
"#;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    channels: ChannelsConfig,
}

fn example() -> Catalog {
    let file: File = toml::from_str(EXAMPLE).expect("the example parses");
    Catalog::new(&file.channels).expect("the example is a valid catalog")
}

fn user(subject: &str, claims: Value) -> Subscriber {
    let Value::Object(claims) = claims else {
        panic!("claims are an object")
    };
    Subscriber::User {
        subject: subject.to_owned(),
        claims,
    }
}

fn alice() -> Subscriber {
    user("alice", json!({}))
}

#[test]
fn every_name_error_has_its_own_variant() {
    let long = "a".repeat(MAX_NAME_BYTES + 1);
    let many = vec!["a"; MAX_SEGMENTS + 1].join(".");
    let cases: &[(&str, NameError)] = &[
        ("", NameError::Empty),
        (
            long.as_str(),
            NameError::TooLong {
                len: MAX_NAME_BYTES + 1,
                max: MAX_NAME_BYTES,
            },
        ),
        ("orders.bоb", NameError::NonAscii { at: 8 }), // Cyrillic о
        ("ｏrders.bob", NameError::NonAscii { at: 0 }), // fullwidth o
        ("orders.bob\u{200b}", NameError::NonAscii { at: 10 }),
        (
            "orders.*",
            NameError::Wildcard {
                at: 7,
                wildcard: '*',
            },
        ),
        (
            "orders.>",
            NameError::Wildcard {
                at: 7,
                wildcard: '>',
            },
        ),
        (
            "orders.{user}",
            NameError::Wildcard {
                at: 7,
                wildcard: '{',
            },
        ),
        (
            "orders.bob}",
            NameError::Wildcard {
                at: 10,
                wildcard: '}',
            },
        ),
        ("orders bob", NameError::InvalidByte { at: 6, byte: b' ' }),
        (" orders.bob", NameError::InvalidByte { at: 0, byte: b' ' }),
        ("orders.%62ob", NameError::InvalidByte { at: 7, byte: b'%' }),
        ("orders/bob", NameError::InvalidByte { at: 6, byte: b'/' }),
        ("orders:bob", NameError::InvalidByte { at: 6, byte: b':' }),
        ("orders.bob\0", NameError::InvalidByte { at: 10, byte: 0 }),
        (
            "orders.bob\n",
            NameError::InvalidByte {
                at: 10,
                byte: b'\n',
            },
        ),
        (".orders.bob", NameError::EmptySegment { index: 0 }),
        ("orders..bob", NameError::EmptySegment { index: 1 }),
        ("orders.bob.", NameError::EmptySegment { index: 2 }),
        (".", NameError::EmptySegment { index: 0 }),
        (
            many.as_str(),
            NameError::TooManySegments {
                count: MAX_SEGMENTS + 1,
                max: MAX_SEGMENTS,
            },
        ),
    ];
    for (name, want) in cases {
        assert_eq!(ChannelName::parse(name).as_ref(), Err(want), "{name:?}");
        let got = example().resolve(name).map(|r| r.name().clone());
        assert_eq!(
            got,
            Err(ChannelError::InvalidName(want.clone())),
            "{name:?}"
        );
    }
    let longest = "a".repeat(MAX_NAME_BYTES);
    let deepest = vec!["a"; MAX_SEGMENTS].join(".");
    for good in [
        "a",
        "orders.bob",
        "A-b_9.x",
        longest.as_str(),
        deepest.as_str(),
    ] {
        assert!(ChannelName::parse(good).is_ok(), "{good}");
    }
}

fn entry(pattern: &str, subscribe: SubscribeRule) -> ChannelConfig {
    ChannelConfig {
        pattern: pattern.to_owned(),
        class: TopicClass::Stream,
        history_events: 10,
        max_payload_bytes: 10,
        subscribe,
        publishers: vec![],
        idle_expiry_ms: None,
    }
}

fn load(entries: Vec<ChannelConfig>) -> Result<Catalog, CatalogError> {
    Catalog::new(&ChannelsConfig { catalog: entries })
}

#[test]
fn every_catalog_error_names_its_entry() {
    use CatalogProblem as P;
    use SubscribeRule as R;
    let pat = |e: PatternError| P::Pattern(e);
    let equals = |p: &str| R::ClaimEquals {
        claim: "tenant".into(),
        placeholder: p.into(),
    };
    let long = "a".repeat(MAX_NAME_BYTES + 1);
    let deep = vec!["a"; MAX_SEGMENTS + 1].join(".");
    let cases: Vec<(ChannelConfig, CatalogProblem)> = vec![
        (entry("", R::Public), pat(PatternError::Empty)),
        (
            entry(&long, R::Public),
            pat(PatternError::TooLong {
                max: MAX_NAME_BYTES,
            }),
        ),
        (
            entry(&deep, R::Public),
            pat(PatternError::TooManySegments { max: MAX_SEGMENTS }),
        ),
        (
            entry("a..b", R::Public),
            pat(PatternError::EmptySegment { index: 1 }),
        ),
        (
            entry("a.", R::Public),
            pat(PatternError::EmptySegment { index: 1 }),
        ),
        (
            entry("orders-{user}", R::User),
            pat(PatternError::BadSegment {
                index: 0,
                segment: "orders-{user}".into(),
            }),
        ),
        (
            entry("a.b*", R::Public),
            pat(PatternError::BadSegment {
                index: 1,
                segment: "b*".into(),
            }),
        ),
        (
            entry("a.{}", R::Public),
            pat(PatternError::BadPlaceholder { name: "".into() }),
        ),
        (
            entry("a.{User}", R::Public),
            pat(PatternError::BadPlaceholder {
                name: "User".into(),
            }),
        ),
        (
            entry("a.{1x}", R::Public),
            pat(PatternError::BadPlaceholder { name: "1x".into() }),
        ),
        (
            entry("a.{x}.{x}", R::Public),
            pat(PatternError::DuplicatePlaceholder { name: "x".into() }),
        ),
        (
            entry("tenants.{t}", equals("tenant")),
            P::UnknownPlaceholder("tenant".into()),
        ),
        (entry("orders.{owner}", R::User), P::UserRuleWithoutUser),
        (entry("fw.{id}", R::Device), P::DeviceRuleWithoutDevice),
        (
            entry(
                "t.{tenant}",
                R::ClaimEquals {
                    claim: "".into(),
                    placeholder: "tenant".into(),
                },
            ),
            P::EmptyClaimRule,
        ),
        (
            entry(
                "ops",
                R::ClaimContains {
                    claim: "roles".into(),
                    value: "".into(),
                },
            ),
            P::EmptyClaimRule,
        ),
        (
            ChannelConfig {
                history_events: 0,
                ..entry("a", R::Public)
            },
            P::ZeroHistory,
        ),
        (
            ChannelConfig {
                max_payload_bytes: 0,
                ..entry("a", R::Public)
            },
            P::ZeroPayload,
        ),
        (
            ChannelConfig {
                publishers: vec!["ok".into(), "bad name".into()],
                idle_expiry_ms: None,
                ..entry("a", R::Public)
            },
            P::BadPublisher("bad name".into()),
        ),
        (
            entry("orders.{user}", R::User),
            P::Ambiguous {
                other: 0,
                other_pattern: "orders.{user}".into(),
            },
        ),
        (
            entry("{x}.bob", R::Public),
            P::Ambiguous {
                other: 0,
                other_pattern: "orders.{user}".into(),
            },
        ),
    ];
    for (bad, problem) in cases {
        let pattern = bad.pattern.clone();
        let got = load(vec![entry("orders.{user}", R::User), bad]).expect_err(&pattern);
        assert_eq!(
            got,
            CatalogError {
                index: 1,
                pattern: pattern.clone(),
                problem
            },
            "{pattern}"
        );
        assert!(
            got.to_string().starts_with("channels.catalog[1] (`"),
            "{got}"
        );
    }
    // Patterns of other lengths, or with a differing literal, never overlap.
    let fine = vec![
        entry("orders.{user}", R::User),
        entry("orders.{user}.items", R::User),
        entry("invoices.{user}", R::User),
        entry("orders", R::Public),
    ];
    assert!(load(fine).is_ok());
}

#[test]
fn the_section_is_strict_and_has_defaults() {
    let catalog = example();
    let announcements = catalog.resolve("announcements").unwrap();
    assert_eq!(announcements.entry().class(), TopicClass::Stream);
    assert_eq!(announcements.entry().history_events(), 1000);
    assert_eq!(announcements.entry().max_payload_bytes(), 65536);
    let firmware = catalog.resolve("devices.d-1.firmware").unwrap();
    assert_eq!(firmware.entry().class(), TopicClass::State);
    assert!(!firmware.may_publish("news"));

    let unknown =
        "[[channels.catalog]]\npattern = \"a\"\nsubscribe = { rule = \"public\" }\nhistory = 3\n";
    assert!(toml::from_str::<File>(unknown).is_err(), "unknown key");
    let no_rule = "[[channels.catalog]]\npattern = \"a\"\n";
    assert!(
        toml::from_str::<File>(no_rule).is_err(),
        "subscribe is required"
    );
    for rule in [
        r#"{ rule = "public", claim = "x" }"#,
        r#"{ rule = "user", placeholder = "user" }"#,
        r#"{ rule = "device", value = "x" }"#,
        r#"{ rule = "claim_equals", claim = "x", value = "y" }"#,
        r#"{ rule = "claim_contains", claim = "x" }"#,
        r#"{ rule = "claim_contains", claim = "x", value = "y", other = 1 }"#,
        r#"{ rule = "anyone" }"#,
    ] {
        let text = format!("[[channels.catalog]]\npattern = \"a.{{user}}\"\nsubscribe = {rule}\n");
        assert!(toml::from_str::<File>(&text).is_err(), "{rule}");
    }
    // What --print-config would write reads back the same.
    let file: File = toml::from_str(EXAMPLE).unwrap();
    let printed = toml::to_string(&file.channels).unwrap();
    assert_eq!(
        toml::from_str::<ChannelsConfig>(&printed).unwrap(),
        file.channels
    );
    let empty: File = toml::from_str("[channels]\n").unwrap();
    assert_eq!(Catalog::new(&empty.channels).unwrap().entries().count(), 0);
}

#[test]
fn resolution_binds_placeholders_or_refuses() {
    let catalog = example();
    let bob = catalog.resolve("orders.bob").unwrap();
    assert_eq!(bob.entry().pattern().as_str(), "orders.{user}");
    assert_eq!(bob.binding("user"), Some("bob"));
    assert_eq!(bob.bindings(), &[("user".to_owned(), "bob".to_owned())]);
    let t = catalog.resolve("tenants.acme.alerts").unwrap();
    assert_eq!(t.binding("tenant"), Some("acme"));
    for missing in [
        "orders",
        "orders.bob.extra",
        "Orders.bob",
        "announcement",
        "tenants.acme",
    ] {
        let want = ChannelError::NotInCatalog(ChannelName::parse(missing).unwrap());
        assert_eq!(
            catalog.resolve(missing).map(|r| r.name().clone()),
            Err(want.clone())
        );
        assert_eq!(
            want.to_string(),
            format!("channel `{missing}` is not in the catalog")
        );
    }
}

#[test]
fn access_follows_each_rule() {
    let catalog = example();
    let device = |id: &str| Subscriber::Device { id: id.to_owned() };
    let ops = user("carol", json!({"roles": ["dev", "ops"], "tenant": "acme"}));
    let announcements = catalog.resolve("announcements").unwrap();
    for who in [Subscriber::Anonymous, alice(), device("d-1")] {
        assert!(announcements.may_subscribe(&who));
    }
    let orders = catalog.resolve("orders.alice").unwrap();
    assert!(orders.may_subscribe(&alice()));
    for who in [
        Subscriber::Anonymous,
        user("bob", json!({})),
        device("alice"),
        ops.clone(),
    ] {
        assert!(!orders.may_subscribe(&who), "{who:?}");
    }
    let alerts = catalog.resolve("tenants.acme.alerts").unwrap();
    assert!(alerts.may_subscribe(&ops));
    assert!(
        !catalog
            .resolve("tenants.other.alerts")
            .unwrap()
            .may_subscribe(&ops)
    );
    assert!(!alerts.may_subscribe(&user("x", json!({"tenant": ["acme"]}))));
    assert!(!alerts.may_subscribe(&Subscriber::Anonymous));
    let incidents = catalog.resolve("ops.incidents").unwrap();
    assert!(incidents.may_subscribe(&ops));
    assert!(incidents.may_subscribe(&user("d", json!({"roles": "ops"}))));
    assert!(!incidents.may_subscribe(&user("e", json!({"roles": ["Ops", "ops "]}))));
    assert!(!incidents.may_subscribe(&device("ops")));
    let firmware = catalog.resolve("devices.d-1.firmware").unwrap();
    assert!(firmware.may_subscribe(&device("d-1")));
    assert!(!firmware.may_subscribe(&device("d-2")));
    assert!(!firmware.may_subscribe(&user("d-1", json!({}))));
}

#[test]
fn publishers_payloads_and_topics() {
    let catalog = example();
    let orders = catalog.resolve("orders.bob").unwrap();
    assert!(orders.may_publish("orders-service"));
    assert!(!orders.may_publish("news"));
    assert!(
        !catalog
            .resolve("ops.incidents")
            .unwrap()
            .may_publish("orders-service")
    );
    assert_eq!(orders.check_payload(16384), Ok(()));
    let err = orders.check_payload(16385).unwrap_err();
    assert_eq!((err.len, err.max), (16385, 16384));
    assert_eq!(orders.topic().as_str(), "ch:orders.bob");
    assert_eq!(
        ChannelName::from_topic(&orders.topic()).as_ref(),
        Some(orders.name())
    );
    for not_a_channel in ["orders.bob", "ch:", "ch:a..b", "devices.d-1.commands"] {
        let topic = Topic::new(not_a_channel).unwrap();
        assert_eq!(ChannelName::from_topic(&topic), None, "{not_a_channel}");
    }
}

#[test]
fn idle_expiry_is_checked_at_load_and_optional() {
    let with = |ms| ChannelConfig {
        idle_expiry_ms: ms,
        ..entry("conversions.{user}", SubscribeRule::User)
    };
    for bad in [0, 99, MAX_IDLE_EXPIRY_MS + 1] {
        let err = load(vec![with(Some(bad))]).expect_err("out of range");
        assert_eq!(err.problem, CatalogProblem::IdleExpiry(bad));
        assert!(err.to_string().contains("idle_expiry_ms"), "{err}");
    }
    for good in [MIN_IDLE_EXPIRY_MS, 86_400_000, MAX_IDLE_EXPIRY_MS] {
        let catalog = load(vec![with(Some(good))]).expect("in range");
        let entry = catalog.entries().next().expect("entry");
        assert_eq!(entry.idle_expiry(), Some(Duration::from_millis(good)));
    }
    let catalog = load(vec![with(None)]).expect("none");
    assert_eq!(catalog.entries().next().expect("entry").idle_expiry(), None);
    // As written in a configuration file.
    let text = "[[catalog]]\npattern = \"conversions.{user}\"\nsubscribe = { rule = \"user\" }\n\
                idle_expiry_ms = 60000\n";
    let config: ChannelsConfig = toml::from_str(text).expect("parses");
    assert_eq!(config.catalog[0].idle_expiry_ms, Some(60_000));
    let text = text.replace("60000", "5");
    let err = toml::from_str::<ChannelsConfig>(&text).expect_err("refused at load");
    assert!(err.to_string().contains("idle_expiry_ms"), "{err}");
}
