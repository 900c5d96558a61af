//! Tests of the registry: credentials checked against the path, registration validated and
//! bounded.

use std::collections::BTreeMap;

use super::*;

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(KEY_HEADER, key.parse().unwrap());
    h
}

fn registry(max: usize, rates: usize) -> Registry {
    Registry::new(
        Limits {
            max_devices: max,
            max_rates: rates,
            max_channels: 2,
        },
        Arc::new(catalog()),
        Arc::new(switchyard_core::records::MemoryRecords::default()),
        false,
    )
}

/// A public stream `announcements`, a device rule `devices.{device}.firmware` and a user rule
/// `orders.{user}`.
fn catalog() -> switchyard_core::channels::Catalog {
    let config: switchyard_core::channels::ChannelsConfig =
        serde_json::from_value(serde_json::json!({"catalog": [
            {"pattern": "announcements", "subscribe": {"rule": "public"}},
            {"pattern": "devices.{device}.firmware", "subscribe": {"rule": "device"}},
            {"pattern": "orders.{user}", "subscribe": {"rule": "user"}},
        ]}))
        .unwrap();
    switchyard_core::channels::Catalog::new(&config).unwrap()
}

/// A device with `key`, `rates` and `channels`.
fn dev(key: &str, rates: &[&str], channels: &[&str]) -> DeviceConfig {
    DeviceConfig {
        key: key.to_owned(),
        rates: rates.iter().map(|r| (*r).to_owned()).collect(),
        settings: BTreeMap::new(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
    }
}

#[tokio::test]
async fn credentials_are_checked_against_the_path() {
    let r = registry(10, 4);
    r.register("tv-1", &dev("key-of-tv-1-0123456", &["EUR/USD"], &[]))
        .unwrap();
    r.register("tv-2", &dev("key-of-tv-2-0123456", &[], &[]))
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
    assert!(matches!(
        r.register("bad id", &dev("0123456789abcdef", &[], &[])),
        Err(RegisterError::Invalid("invalid_device_id", _))
    ));
    assert!(matches!(
        r.register("a", &dev("short", &[], &[])),
        Err(RegisterError::Invalid("invalid_key", _))
    ));
    assert!(matches!(
        r.register("a", &dev("0123456789abcdef", &["EUR/XXX"], &[])),
        Err(RegisterError::Invalid("invalid_pair", _))
    ));
    assert!(matches!(
        r.register("a", &dev("0123456789abcdef", &["EUR/USD", "USD/JPY"], &[])),
        Err(RegisterError::Invalid("too_many_rates", _))
    ));
    r.register("a", &dev("0123456789abcdef", &[], &[])).unwrap();
    assert!(matches!(
        r.register("a", &dev("0123456789abcdeg", &[], &[])),
        Err(RegisterError::Exists(_))
    ));
    assert!(matches!(
        r.register("b", &dev("0123456789abcdef", &[], &[])),
        Err(RegisterError::KeyTaken)
    ));
    assert!(matches!(
        r.register("b", &dev("0123456789abcdeg", &[], &[])),
        Err(RegisterError::Full)
    ));
}

#[tokio::test]
async fn channels_are_checked_against_the_catalog_for_this_device() {
    let r = registry(10, 1);
    let refused = |id: &str, channels: &[&str]| match r
        .register(id, &dev(&format!("key-of-{id}-0123456789"), &[], channels))
    {
        Err(RegisterError::Invalid(code, message)) => (code, message),
        other => panic!("{id} {channels:?}: {other:?}"),
    };
    // Another device's channel: refused, naming the device and the channel.
    let (code, message) = refused("tv-1", &["devices.tv-2.firmware"]);
    assert_eq!(code, "channel_not_allowed");
    assert!(
        message.contains("tv-1") && message.contains("devices.tv-2.firmware"),
        "{message}"
    );
    // A user's channel: a device is no user.
    assert_eq!(refused("tv-1", &["orders.tv-1"]).0, "channel_not_allowed");
    // Not in the catalog, or not a channel name at all.
    let (code, message) = refused("tv-1", &["news"]);
    assert_eq!(code, "invalid_channel");
    assert!(
        message.contains("`news` is not in the catalog"),
        "{message}"
    );
    assert_eq!(refused("tv-1", &["announcements.*"]).0, "invalid_channel");
    assert_eq!(refused("tv-1", &["ch:announcements"]).0, "invalid_channel");
    // Bounded (2 here), duplicates counted by the bound but followed once.
    assert_eq!(
        refused("tv-1", &["announcements", "announcements", "announcements"]).0,
        "too_many_channels"
    );
    let d = r
        .register(
            "tv-1",
            &dev(
                "key-of-tv-1-0123456789",
                &[],
                &["devices.tv-1.firmware", "announcements"],
            ),
        )
        .unwrap();
    let names: Vec<&str> = d.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["devices.tv-1.firmware", "announcements"]);
    assert_eq!(d.channels[1].topic.as_str(), "ch:announcements");
}

#[tokio::test]
async fn an_issued_device_keeps_its_channels_across_instances() {
    let records = Arc::new(switchyard_core::records::MemoryRecords::default());
    let limits = Limits {
        max_devices: 10,
        max_rates: 1,
        max_channels: 2,
    };
    let one = Registry::new(limits, Arc::new(catalog()), records.clone(), true);
    let two = Registry::new(limits, Arc::new(catalog()), records, true);
    one.issue(
        "kiosk-1",
        &dev(
            "key-of-kiosk-1-0123456789",
            &[],
            &["devices.kiosk-1.firmware"],
        ),
    )
    .await
    .unwrap();
    assert!(matches!(
        one.issue(
            "kiosk-2",
            &dev(
                "key-of-kiosk-2-0123456789",
                &[],
                &["devices.kiosk-1.firmware"]
            )
        )
        .await,
        Err(RegisterError::Invalid("channel_not_allowed", _))
    ));
    let d = two
        .get("kiosk-1")
        .await
        .unwrap()
        .expect("issued on the other instance");
    assert_eq!(d.channels.len(), 1);
    assert_eq!(d.channels[0].name.as_str(), "devices.kiosk-1.firmware");
}
