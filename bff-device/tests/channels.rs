//! Catalog channels a device follows, end to end over real sockets: events published on the
//! bus (`ch:<name>`, as the publish API does) come in the device's polls exactly once across
//! consecutive polls with cursors, in order, paged, with an explicit gap when history no longer
//! covers the cursor; a held poll wakes on a channel event; a state channel gives its newest
//! value only; a device without channels sees no change; and a device cannot be configured or
//! issued with another device's channel, a user's, or a name not in the catalog.

mod common;

use std::sync::Arc;

use bff_device::{Config, DeviceConfig};
use common::{HANG, TV2_KEY, catalog, channel_data, channel_items, config, start};
use serde_json::{Value, json};
use switchyard_core::bus::Broker;
use switchyard_server::server::CancellationToken;

const BOX_KEY: &str = "box-1-key-0123456789";

/// The test configuration with the catalog and `box-1`, which follows `announcements`, its own
/// firmware channel and the state channel `status`.
fn channels_config() -> Config {
    let mut c = config();
    c.channels = catalog();
    c.devices.insert(
        "box-1".to_owned(),
        DeviceConfig {
            key: BOX_KEY.to_owned(),
            channels: vec![
                "announcements".to_owned(),
                "devices.box-1.firmware".to_owned(),
                "status".to_owned(),
            ],
            ..DeviceConfig::default()
        },
    );
    c
}

fn cursor(v: &Value) -> String {
    v["n"].as_str().expect("a cursor").to_owned()
}

#[tokio::test]
async fn stream_events_come_exactly_once_across_polls_in_order() {
    let mut c = channels_config();
    // Two stream channels share 3 events per answer: at most 1 each, so paging is exercised.
    c.api.max_events_per_answer = 3;
    let gw = start(c, 100).await;
    let first = gw.poll("box-1", BOX_KEY, None, 0).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert!(first.get("channels").is_none(), "{first}");
    let mut next = cursor(&first);

    let published: Vec<Value> = (0..5).map(|i| json!({"n": i, "text": "hello"})).collect();
    let mut events = Vec::new();
    for data in &published {
        events.push(gw.publish_channel("announcements", data.clone()).await);
    }
    gw.publish_channel("devices.box-1.firmware", json!({"version": "2.1"}))
        .await;
    let mut got = Vec::new();
    let mut firmware = Vec::new();
    for _ in 0..10 {
        let v = gw.poll("box-1", BOX_KEY, Some(&next), 0).await.json();
        let items = channel_items(&v, "announcements");
        if items.is_empty() && channel_items(&v, "devices.box-1.firmware").is_empty() {
            break;
        }
        assert!(items.len() <= 1, "a share of the answer's budget: {v}");
        for item in &items {
            let e = &events[got.len()];
            assert_eq!(item["epoch"], e.epoch.to_string(), "{v}");
            assert_eq!(item["offset"], e.offset.to_string(), "{v}");
            assert!(item.get("gap").is_none(), "{v}");
            got.push(item["data"].clone());
        }
        firmware.extend(channel_data(&v, "devices.box-1.firmware"));
        next = cursor(&v);
    }
    assert_eq!(got, published, "each event once, in order");
    assert_eq!(firmware, [json!({"version": "2.1"})]);

    // The same cursor again: nothing new (it is past every event), an empty answer.
    let v = gw.poll("box-1", BOX_KEY, Some(&next), 0).await.json();
    assert_eq!(v, json!({"n": next, "e": []}));
    // One more event: only it.
    gw.publish_channel("announcements", json!("last")).await;
    let v = gw.poll("box-1", BOX_KEY, Some(&next), 0).await.json();
    assert_eq!(channel_data(&v, "announcements"), [json!("last")], "{v}");
    // v2 carries the same key, from the same cursor.
    let v2 = gw
        .poll_v("v2", "box-1", BOX_KEY, Some(&next), 0)
        .await
        .json();
    assert_eq!(channel_data(&v2, "announcements"), [json!("last")], "{v2}");
    assert_eq!(v2["rs"], false);
}

#[tokio::test]
async fn a_held_poll_wakes_on_a_channel_event() {
    let gw = Arc::new(start(channels_config(), 100).await);
    let c0 = cursor(&gw.poll("box-1", BOX_KEY, None, 0).await.json());
    let g = gw.clone();
    let c = c0.clone();
    let held = tokio::spawn(async move { g.poll("box-1", BOX_KEY, Some(&c), 30).await });
    gw.holding(1).await;
    assert_eq!(
        gw.app.active_wakes(),
        5,
        "commands, config and each channel: one wake each"
    );
    let e = gw
        .publish_channel("announcements", json!({"text": "maintenance at 2am"}))
        .await;
    let a = tokio::time::timeout(HANG, held).await.unwrap().unwrap();
    let v = a.json();
    assert_eq!(
        v["channels"],
        json!([{
            "channel": "announcements",
            "epoch": e.epoch.to_string(),
            "offset": e.offset.to_string(),
            "data": {"text": "maintenance at 2am"},
        }]),
        "{v}"
    );
    assert_eq!(v["e"], json!([]));
}

#[tokio::test]
async fn a_state_channel_gives_the_newest_value_only() {
    let gw = Arc::new(start(channels_config(), 100).await);
    for i in 1..=3 {
        gw.publish_channel("status", json!({"level": i})).await;
    }
    let v = gw.poll("box-1", BOX_KEY, None, 0).await.json();
    assert_eq!(channel_data(&v, "status"), [json!({"level": 3})], "{v}");
    let c1 = cursor(&v);
    let v = gw.poll("box-1", BOX_KEY, Some(&c1), 0).await.json();
    assert!(
        channel_items(&v, "status").is_empty(),
        "delivered already: {v}"
    );
    // Held: woken by the next value, which is all it gets.
    let g = gw.clone();
    let held = tokio::spawn(async move { g.poll("box-1", BOX_KEY, Some(&c1), 30).await });
    gw.holding(1).await;
    gw.publish_channel("status", json!({"level": 4})).await;
    let v = tokio::time::timeout(HANG, held)
        .await
        .unwrap()
        .unwrap()
        .json();
    assert_eq!(channel_data(&v, "status"), [json!({"level": 4})], "{v}");
}

#[tokio::test]
async fn history_that_no_longer_covers_the_cursor_is_an_explicit_gap() {
    let gw = start(channels_config(), 3).await;
    gw.publish_channel("announcements", json!(0)).await;
    let c0 = cursor(&gw.poll("box-1", BOX_KEY, None, 0).await.json());
    for i in 1..=6 {
        gw.publish_channel("announcements", json!(i)).await;
    }
    let v = gw.poll("box-1", BOX_KEY, Some(&c0), 0).await.json();
    let items = channel_items(&v, "announcements");
    assert_eq!(items[0]["gap"], true, "{v}");
    assert!(items[0].get("data").is_none(), "{v}");
    assert_eq!(
        channel_data(&v, "announcements"),
        [json!(4), json!(5), json!(6)],
        "what history still has, after the gap: {v}"
    );
    // The commands were not reset: no `rs`.
    assert!(v.get("rs").is_none(), "{v}");
    let v = gw.poll("box-1", BOX_KEY, Some(&cursor(&v)), 0).await.json();
    assert!(v.get("channels").is_none(), "{v}");
}

#[tokio::test]
async fn a_device_without_channels_gets_the_answers_it_always_got() {
    let gw = start(channels_config(), 100).await;
    let v = gw.poll("tv-2", TV2_KEY, None, 0).await.json();
    let c0 = cursor(&v);
    gw.publish_channel("announcements", json!("hi")).await;
    gw.publish_channel("status", json!("up")).await;
    let v = gw.poll("tv-2", TV2_KEY, Some(&c0), 0).await.json();
    assert_eq!(v, json!({"n": c0, "e": []}));
    let v2 = gw.poll_v("v2", "tv-2", TV2_KEY, Some(&c0), 0).await.json();
    assert_eq!(v2, json!({"n": c0, "rs": false, "c": [], "r": {}}));
}

async fn refused_at_load(channels: &[&str]) -> String {
    let mut c = config();
    c.channels = catalog();
    c.devices.get_mut("tv-2").unwrap().channels =
        channels.iter().map(|s| (*s).to_owned()).collect();
    match bff_device::app(&c, &Broker::memory(10), CancellationToken::new()) {
        Ok(_) => panic!("{channels:?} accepted"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_device_configured_with_a_channel_not_its_own_is_refused_at_load() {
    let e = refused_at_load(&["announcements", "devices.tv-1.firmware"]).await;
    assert!(e.contains("devices.tv-2"), "names the device: {e}");
    assert!(
        e.contains("`devices.tv-1.firmware`"),
        "names the channel: {e}"
    );
    let e = refused_at_load(&["orders.tv-2"]).await;
    assert!(e.contains("may not follow channel `orders.tv-2`"), "{e}");
    let e = refused_at_load(&["news"]).await;
    assert!(e.contains("channel `news` is not in the catalog"), "{e}");
    let e = refused_at_load(&["announcements.>"]).await;
    assert!(e.contains("devices.tv-2") && e.contains("wildcard"), "{e}");
    let too_many: Vec<&str> = ["announcements"; 17].to_vec();
    let e = refused_at_load(&too_many).await;
    assert!(e.contains("at most 16 channels"), "{e}");
}

#[tokio::test]
async fn the_admin_api_issues_devices_with_their_own_channels_only() {
    let gw = start(channels_config(), 100).await;
    let issue = |channels: Value| {
        gw.admin(
            reqwest::Method::POST,
            "/admin/devices",
            json!({"id": "kiosk-7", "channels": channels}),
        )
    };
    let a = issue(json!(["devices.tv-1.firmware"])).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "channel_not_allowed");
    let a = issue(json!(["news"])).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "invalid_channel");
    let a = issue(json!(["devices.kiosk-7.firmware"])).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let key = a.json()["key"].as_str().unwrap().to_owned();
    let c0 = cursor(&gw.poll("kiosk-7", &key, None, 0).await.json());
    gw.publish_channel("devices.kiosk-7.firmware", json!({"version": "3"}))
        .await;
    let v = gw.poll("kiosk-7", &key, Some(&c0), 0).await.json();
    assert_eq!(
        channel_data(&v, "devices.kiosk-7.firmware"),
        [json!({"version": "3"})],
        "{v}"
    );
}

/// Two instances on one real broker: a device's cursor taken on one continues on the other,
/// each event once, and a held poll on one wakes for an event published through the other.
async fn across_instances(kind: switchyard_core::bus::BusKind) {
    let bus = switchyard_core::bus::BusConfig {
        prefix: test_support::unique_name("t-devch"),
        ..switchyard_core::bus::BusConfig::of(kind)
    };
    let mut c = channels_config();
    c.bus = bus.clone();
    let a = common::start_on(c.clone(), &Broker::connect(&bus)).await;
    let b = Arc::new(common::start_on(c, &Broker::connect(&bus)).await);
    let c0 = cursor(&a.poll("box-1", BOX_KEY, None, 0).await.json());
    a.publish_channel("announcements", json!(1)).await;
    let v = a
        .poll_until("v1", "box-1", BOX_KEY, Some(&c0), |v| {
            v.get("channels").is_some()
        })
        .await;
    assert_eq!(channel_data(&v, "announcements"), [json!(1)], "{v}");
    let c1 = cursor(&v);
    a.publish_channel("announcements", json!(2)).await;
    let v = b
        .poll_until("v1", "box-1", BOX_KEY, Some(&c1), |v| {
            v.get("channels").is_some()
        })
        .await;
    assert_eq!(channel_data(&v, "announcements"), [json!(2)], "{v}");
    let c2 = cursor(&v);
    let g = b.clone();
    let held = tokio::spawn(async move { g.poll("box-1", BOX_KEY, Some(&c2), 30).await });
    b.holding(1).await;
    a.publish_channel("devices.box-1.firmware", json!({"version": "9"}))
        .await;
    let v = tokio::time::timeout(HANG, held)
        .await
        .unwrap()
        .unwrap()
        .json();
    assert_eq!(
        channel_data(&v, "devices.box-1.firmware"),
        [json!({"version": "9"})],
        "{v}"
    );
    assert!(channel_items(&v, "announcements").is_empty(), "{v}");
}

#[tokio::test]
async fn a_cursor_continues_on_another_instance_on_redis() {
    across_instances(switchyard_core::bus::BusKind::Redis).await;
}

#[tokio::test]
async fn a_cursor_continues_on_another_instance_on_nats() {
    across_instances(switchyard_core::bus::BusKind::Nats).await;
}

#[tokio::test]
async fn a_cursor_continues_on_another_instance_on_rabbitmq() {
    across_instances(switchyard_core::bus::BusKind::Rabbitmq).await;
}
