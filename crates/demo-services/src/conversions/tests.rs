//! Unit tests of `conversions`.

use super::*;

fn conversion(user: &str, id: &str) -> Conversion {
    Conversion {
        id: id.into(),
        user: UserId::parse(user).unwrap(),
        from: Currency::parse("EUR").unwrap(),
        to: Currency::parse("USD").unwrap(),
        amount: Decimal::ONE,
        rate: Decimal::ONE,
        converted: Decimal::ONE,
        at: now_rfc3339(),
    }
}

#[test]
fn recent_lists_are_bounded_per_user_and_in_users() {
    let r = Recent::new(2, 2);
    let alice = UserId::parse("alice").unwrap();
    for id in ["1", "2", "3"] {
        r.record(&conversion("alice", id));
    }
    let ids: Vec<String> = r.list(&alice, 10).into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["3", "2"]);
    r.record(&conversion("bob", "4"));
    r.record(&conversion("carol", "5"));
    assert!(
        r.list(&alice, 10).is_empty(),
        "alice, seen first, is forgotten"
    );
    assert_eq!(r.list(&UserId::parse("carol").unwrap(), 10).len(), 1);
}

#[test]
fn ids_are_unique_and_shaped() {
    let ids = Ids::new();
    let a = ids.next();
    let b = ids.next();
    assert_ne!(a, b);
    assert!(
        a.starts_with("cv-1-") && a.len() == "cv-1-".len() + 16,
        "{a}"
    );
}

#[test]
fn at_is_rfc3339_utc() {
    let at = now_rfc3339();
    // 2025-03-01T12:34:56.789Z
    assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    assert_eq!(&at[10..11], "T", "{at}");
}

#[test]
fn config_backends_merge_over_defaults() {
    let source = switchyard_server::config::Source::new(
        None,
        vec![(
            "T__BACKENDS__EXCHANGE__BASE_URL".into(),
            "http://10.0.0.1:1".into(),
        )],
    );
    let config: Config = source.load("T").unwrap();
    assert_eq!(config.backends[EXCHANGE].base_url, "http://10.0.0.1:1");
    assert_eq!(config.backends[LIMITS].base_url, "http://127.0.0.1:9101");
}

#[test]
fn config_backend_of_an_unknown_name_is_an_error_naming_it() {
    let source = switchyard_server::config::Source::new(
        Some((
            "conversions.toml".into(),
            "[backends.limts]\nbase_url = \"http://10.0.0.1:1\"\n".into(),
        )),
        Vec::new(),
    );
    let err = source.load::<Config>("T").unwrap_err().to_string();
    assert!(err.contains("`backends.limts`"), "{err}");
}
