//! The long-poll end to end over real sockets: answers at once, holds and wakes, times out
//! empty with the same cursor, redelivers until the cursor moves, conflates rates, resets when
//! history no longer covers the cursor, and answers held polls when the gateway drains.

mod common;

use std::sync::Arc;

use common::{HANG, TV1_KEY, TV2_KEY, config, kinds, of_kind, start};
use switchyard_core::bus::Broker;
use switchyard_server::server::CancellationToken;

/// A first poll of tv-1 (whose rates have no value yet): its configuration document only.
async fn first_cursor(gw: &common::Gateway) -> String {
    let a = gw.poll("tv-1", TV1_KEY, None, 0).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(kinds(&v), ["g"], "{v}");
    assert_eq!(v["e"][0]["v"], serde_json::json!({"volume": 7}));
    v["n"].as_str().expect("a cursor").to_owned()
}

#[tokio::test]
async fn a_poll_with_pending_events_answers_at_once() {
    let gw = start(config(), 100).await;
    let c0 = first_cursor(&gw).await;
    gw.command("tv-1", "cmd-1", "reboot").await;
    gw.command("tv-1", "cmd-2", "update").await;
    // wait=30 but the events are there: the answer comes at once (the client gives up far
    // earlier than 30 s only if it does not).
    let v = gw.poll("tv-1", TV1_KEY, Some(&c0), 30).await.json();
    let cmds = of_kind(&v, "c");
    assert_eq!(cmds.len(), 2, "{v}");
    assert_eq!(cmds[0]["i"], "cmd-1");
    assert_eq!(cmds[0]["o"], "reboot");
    assert_eq!(cmds[0]["a"], serde_json::json!({"n": 1}));
    assert_eq!(cmds[1]["i"], "cmd-2");
    assert_ne!(v["n"], c0.as_str());
    assert_eq!(gw.app.held_polls(), 0);
}

#[tokio::test]
async fn a_held_poll_wakes_when_an_event_arrives() {
    let gw = Arc::new(start(config(), 100).await);
    let c0 = first_cursor(&gw).await;
    let g = gw.clone();
    let c = c0.clone();
    let held = tokio::spawn(async move { g.poll("tv-1", TV1_KEY, Some(&c), 30).await });
    gw.holding(1).await;
    assert_eq!(
        gw.app.active_wakes(),
        2,
        "commands and config, one wake each"
    );
    gw.command("tv-1", "cmd-1", "reboot").await;
    let a = held.await.unwrap();
    let v = a.json();
    assert_eq!(kinds(&v), ["c"], "{v}");
    assert_eq!(v["e"][0]["i"], "cmd-1");
    // The last held poll released the wakes and their bus subscriptions.
    assert!(
        test_support::eventually(HANG, || {
            let app = gw.app.clone();
            async move { app.active_wakes() == 0 }
        })
        .await
    );
}

#[tokio::test]
async fn a_held_poll_wakes_for_a_rate_and_a_configuration_change() {
    let gw = Arc::new(start(config(), 100).await);
    let c0 = first_cursor(&gw).await;
    let g = gw.clone();
    let c = c0.clone();
    let held = tokio::spawn(async move { g.poll("tv-1", TV1_KEY, Some(&c), 30).await });
    gw.holding(1).await;
    gw.rate("EUR/USD", "1.0842", 1).await;
    let v = held.await.unwrap().json();
    assert_eq!(kinds(&v), ["r"], "{v}");
    assert_eq!(
        v["e"][0],
        serde_json::json!({"t": "r", "p": "EUR/USD", "r": "1.0842", "s": 1})
    );

    let c1 = v["n"].as_str().unwrap().to_owned();
    let g = gw.clone();
    let held = tokio::spawn(async move { g.poll("tv-1", TV1_KEY, Some(&c1), 30).await });
    gw.holding(1).await;
    let a = gw
        .admin(
            reqwest::Method::PUT,
            "/admin/devices/tv-1/config",
            serde_json::json!({"volume": 3}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = held.await.unwrap().json();
    assert_eq!(kinds(&v), ["g"], "{v}");
    assert_eq!(v["e"][0]["v"], serde_json::json!({"volume": 3}));
}

#[tokio::test]
async fn a_poll_times_out_empty_with_the_same_cursor() {
    let gw = start(config(), 100).await;
    let c0 = first_cursor(&gw).await;
    let a = gw.poll("tv-1", TV1_KEY, Some(&c0), 1).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), serde_json::json!({"n": c0, "e": []}));
    // wait=0 answers at once, also empty with the same cursor.
    let a = gw.poll("tv-1", TV1_KEY, Some(&c0), 0).await;
    assert_eq!(a.json(), serde_json::json!({"n": c0, "e": []}));
}

#[tokio::test]
async fn events_come_again_until_the_cursor_moves_past_them() {
    let gw = start(config(), 100).await;
    let c0 = first_cursor(&gw).await;
    gw.command("tv-1", "cmd-1", "reboot").await;
    let first = gw.poll("tv-1", TV1_KEY, Some(&c0), 0).await.json();
    let again = gw.poll("tv-1", TV1_KEY, Some(&c0), 0).await.json();
    assert_eq!(first, again, "the same cursor gets the same events");
    assert_eq!(of_kind(&first, "c").len(), 1);
    let c1 = first["n"].as_str().unwrap();
    let after = gw.poll("tv-1", TV1_KEY, Some(c1), 0).await.json();
    assert_eq!(after, serde_json::json!({"n": c1, "e": []}));
    // A later command comes once, after the first.
    gw.command("tv-1", "cmd-2", "reboot").await;
    let v = gw.poll("tv-1", TV1_KEY, Some(c1), 0).await.json();
    let ids: Vec<_> = of_kind(&v, "c").iter().map(|c| c["i"].clone()).collect();
    assert_eq!(ids, [serde_json::json!("cmd-2")]);
}

#[tokio::test]
async fn rates_are_conflated_to_the_newest_value_per_pair() {
    let gw = start(config(), 100).await;
    let c0 = first_cursor(&gw).await;
    for seq in 1..=5 {
        gw.rate("EUR/USD", &format!("1.08{seq}"), seq).await;
    }
    gw.rate("USD/JPY", "150.1", 1).await;
    gw.rate("USD/JPY", "150.2", 2).await;
    // A pair tv-1 is not configured for never reaches it.
    gw.rate("GBP/USD", "1.27", 1).await;
    // The rate watch delivers asynchronously: poll until both pairs show their newest value.
    let v = gw
        .poll_until("v1", "tv-1", TV1_KEY, Some(&c0), |v| {
            let rates = of_kind(v, "r");
            rates.len() == 2 && rates[0]["s"] == 5 && rates[1]["s"] == 2
        })
        .await;
    let rates = of_kind(&v, "r");
    assert_eq!(
        rates[0],
        serde_json::json!({"t": "r", "p": "EUR/USD", "r": "1.085", "s": 5})
    );
    assert_eq!(
        rates[1],
        serde_json::json!({"t": "r", "p": "USD/JPY", "r": "150.2", "s": 2})
    );
    // Delivered: the next cursor has them, until a newer value.
    let c1 = v["n"].as_str().unwrap();
    assert_eq!(
        kinds(&gw.poll("tv-1", TV1_KEY, Some(c1), 0).await.json()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_cursor_history_no_longer_covers_gets_a_reset() {
    let gw = start(config(), 3).await;
    let c0 = first_cursor(&gw).await;
    for i in 1..=5 {
        gw.command("tv-1", &format!("cmd-{i}"), "reboot").await;
    }
    // The reset answer carries what history still has: the retained commands, the
    // configuration again, with a fresh cursor.
    let v = gw.poll("tv-1", TV1_KEY, Some(&c0), 30).await.json();
    assert_eq!(v["rs"], true, "{v}");
    let ids: Vec<_> = of_kind(&v, "c").iter().map(|c| c["i"].clone()).collect();
    assert_eq!(ids, ["cmd-3", "cmd-4", "cmd-5"]);
    assert_eq!(of_kind(&v, "g").len(), 1);
    // From the fresh cursor: nothing new, no reset.
    let c1 = v["n"].as_str().unwrap();
    let v = gw.poll("tv-1", TV1_KEY, Some(c1), 0).await.json();
    assert_eq!(v, serde_json::json!({"n": c1, "e": []}));

    // A cursor from another gateway's history (another epoch: a restarted in-memory bus).
    let other = start(config(), 100).await;
    let foreign = first_cursor(&other).await;
    let v = gw.poll("tv-1", TV1_KEY, Some(&foreign), 0).await.json();
    assert_eq!(v["rs"], true, "{v}");
}

#[tokio::test]
async fn a_held_poll_is_answered_when_the_gateway_drains() {
    // Served as `bff_device::run` serves it: the shared server with its bounded drain.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let config = config();
    let app = bff_device::app(&config, &Broker::memory(100), shutdown.clone()).unwrap();
    let holding = Arc::new(app);
    let server = tokio::spawn(switchyard_server::server::serve(
        listener,
        holding.router.clone(),
        shutdown.clone(),
        config.server.drain_timeout(),
    ));
    let http = reqwest::Client::builder().timeout(HANG).build().unwrap();
    let url = format!("http://{addr}/v1/devices/tv-1/events");
    let first: serde_json::Value = http
        .get(&url)
        .header("x-device-key", TV1_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c0 = first["n"].as_str().unwrap().to_owned();
    let held = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        let c0 = c0.clone();
        async move {
            http.get(&url)
                .header("x-device-key", TV1_KEY)
                .query(&[("cursor", c0.as_str()), ("wait", "30")])
                .send()
                .await
        }
    });
    assert!(
        test_support::eventually(HANG, || {
            let app = holding.clone();
            async move { app.holding_polls() == 1 }
        })
        .await
    );
    shutdown.cancel();
    let res = held
        .await
        .unwrap()
        .expect("an answer, not a reset connection");
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"n": c0, "e": []}));
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_device_holds_a_bounded_number_of_polls() {
    let mut c = config();
    c.api.max_held_polls_per_device = 1;
    let gw = Arc::new(start(c, 100).await);
    let c0 = first_cursor(&gw).await;
    let g = gw.clone();
    let c = c0.clone();
    let held = tokio::spawn(async move { g.poll("tv-1", TV1_KEY, Some(&c), 30).await });
    gw.holding(1).await;
    let a = gw.poll("tv-1", TV1_KEY, Some(&c0), 30).await;
    assert_eq!((a.status, a.code()), (429, "too_many_polls".to_owned()));
    // Another device is not affected, and wait=0 never holds.
    assert_eq!(gw.poll("tv-2", TV2_KEY, None, 1).await.status, 200);
    assert_eq!(gw.poll("tv-1", TV1_KEY, Some(&c0), 0).await.status, 200);
    gw.shutdown.cancel();
    assert_eq!(held.await.unwrap().status, 200);
}

#[tokio::test]
async fn v2_groups_events_by_kind() {
    let gw = start(config(), 100).await;
    gw.command("tv-1", "cmd-1", "reboot").await;
    gw.rate("EUR/USD", "1.0842", 9).await;
    let v = gw
        .poll_until("v2", "tv-1", TV1_KEY, None, |v| {
            v["r"].as_object().is_some_and(|r| !r.is_empty())
        })
        .await;
    assert_eq!(v["rs"], false);
    assert!(v.get("e").is_none(), "no v1 event list: {v}");
    assert_eq!(
        v["c"],
        serde_json::json!([{"i": "cmd-1", "o": "reboot", "a": {"n": 1}}])
    );
    assert_eq!(v["g"]["v"], serde_json::json!({"volume": 7}));
    assert_eq!(
        v["r"],
        serde_json::json!({"EUR/USD": {"r": "1.0842", "s": 9}})
    );
    // The cursor is the same format in both versions.
    let n = v["n"].as_str().unwrap();
    assert_eq!(
        gw.poll("tv-1", TV1_KEY, Some(n), 0).await.json()["e"],
        serde_json::json!([])
    );
}

/// What the soak's devices do, over and over: poll, get an answer, poll again at once — or give
/// up in the middle of a hold (the connection dropped). While a device keeps polling, its
/// topics keep one bus subscription each (a wake lingers a few seconds after its poll), not one
/// per answer; and once it stops, nothing of its polls is left: no held or holding poll, no
/// open wake.
#[tokio::test]
async fn polls_in_a_row_share_their_wakes_and_abandoned_polls_leave_nothing_behind() {
    let gw = Arc::new(start(config(), 100).await);
    let mut cursor = first_cursor(&gw).await;
    for round in 0..20 {
        let (g, c) = (gw.clone(), cursor.clone());
        let held = tokio::spawn(async move { g.poll("tv-1", TV1_KEY, Some(&c), 30).await });
        gw.holding(1).await;
        gw.command("tv-1", &format!("cmd-{round}"), "reboot").await;
        let v = held.await.unwrap().json();
        assert_eq!(of_kind(&v, "c").len(), 1, "round {round}: {v}");
        cursor = v["n"].as_str().expect("a cursor").to_owned();
    }
    assert_eq!(
        gw.app.wakes_opened(),
        2,
        "commands and config: one subscription each for twenty polls in a row"
    );
    for round in 0..20 {
        let (g, c) = (gw.clone(), cursor.clone());
        let held = tokio::spawn(async move { g.poll("tv-1", TV1_KEY, Some(&c), 30).await });
        gw.holding(1).await;
        // The client goes away in the middle of the hold: its connection closes.
        held.abort();
        let app = gw.app.clone();
        assert!(
            test_support::eventually(HANG, || {
                let app = app.clone();
                async move { app.held_polls() == 0 && app.holding_polls() == 0 }
            })
            .await,
            "round {round}: the abandoned poll is still held"
        );
    }
    assert_eq!(gw.app.wakes_opened(), 2);
    // The device stopped polling: its wakes and their subscriptions go.
    let app = gw.app.clone();
    assert!(
        test_support::eventually(HANG, || {
            let app = app.clone();
            async move { app.active_wakes() == 0 }
        })
        .await,
        "wakes still open: {}",
        gw.app.active_wakes()
    );
}
