//! Tests of the registry: credentials checked against the path, registration validated and
//! bounded.

use super::*;

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(KEY_HEADER, key.parse().unwrap());
    h
}

fn registry(max: usize, rates: usize) -> Registry {
    Registry::new(
        max,
        rates,
        Arc::new(switchyard_core::records::MemoryRecords::default()),
        false,
    )
}

#[tokio::test]
async fn credentials_are_checked_against_the_path() {
    let r = registry(10, 4);
    r.register(
        "tv-1",
        "key-of-tv-1-0123456",
        &["EUR/USD".into()],
        &BTreeMap::new(),
    )
    .unwrap();
    r.register("tv-2", "key-of-tv-2-0123456", &[], &BTreeMap::new())
        .unwrap();
    assert_eq!(
        r.authenticate(&headers("key-of-tv-1-0123456"), "tv-1")
            .await
            .unwrap()
            .id
            .as_str(),
        "tv-1"
    );
    assert!(matches!(
        r.authenticate(&headers("key-of-tv-1-0123456"), "tv-2")
            .await
            .unwrap_err(),
        AuthError::Forbidden
    ));
    assert!(matches!(
        r.authenticate(&headers("key-of-tv-1-0123456"), "nobody")
            .await
            .unwrap_err(),
        AuthError::Forbidden
    ));
    assert!(matches!(
        r.authenticate(&headers("wrong-key-0123456789"), "tv-1")
            .await
            .unwrap_err(),
        AuthError::Unauthorized
    ));
    assert!(matches!(
        r.authenticate(&HeaderMap::new(), "tv-1").await.unwrap_err(),
        AuthError::Unauthorized
    ));
}

#[tokio::test]
async fn registration_is_validated_and_bounded() {
    let r = registry(1, 1);
    let none = BTreeMap::new();
    assert!(matches!(
        r.register("bad id", "0123456789abcdef", &[], &none),
        Err(RegisterError::Invalid("invalid_device_id", _))
    ));
    assert!(matches!(
        r.register("a", "short", &[], &none),
        Err(RegisterError::Invalid("invalid_key", _))
    ));
    assert!(matches!(
        r.register("a", "0123456789abcdef", &["EUR/XXX".into()], &none),
        Err(RegisterError::Invalid("invalid_pair", _))
    ));
    assert!(matches!(
        r.register(
            "a",
            "0123456789abcdef",
            &["EUR/USD".into(), "USD/JPY".into()],
            &none
        ),
        Err(RegisterError::Invalid("too_many_rates", _))
    ));
    r.register("a", "0123456789abcdef", &[], &none).unwrap();
    assert!(matches!(
        r.register("a", "0123456789abcdeg", &[], &none),
        Err(RegisterError::Exists(_))
    ));
    assert!(matches!(
        r.register("b", "0123456789abcdef", &[], &none),
        Err(RegisterError::KeyTaken)
    ));
    assert!(matches!(
        r.register("b", "0123456789abcdeg", &[], &none),
        Err(RegisterError::Full)
    ));
}
