//! Catalog channels on the `/v1/ws` socket end to end: a `sub` to any channel of `[channels]`
//! the signed-in user may access delivers the published JSON as `d` (as CBOR on CBOR); the
//! subscribe rules (public, user, claim) and every misspelling of a name are refused without an
//! event; a re-authentication whose claims no longer admit a channel ends its subscription;
//! resume and gap work as for the demo's topics; and one channel's bytes never reach another's.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Client, Gateway, SECRET, config, start, token};
use mobile_proto::{ClientMsg, Encoding, ServerMsg, code};
use serde_json::{Value, json};
use switchyard_core::channels::{ChannelConfig, SubscribeRule};
use switchyard_core::event::{Event, Topic, TopicClass};

const QUIET: Duration = Duration::from_millis(200);

fn channel(pattern: &str, class: TopicClass, subscribe: SubscribeRule) -> ChannelConfig {
    ChannelConfig {
        pattern: pattern.to_owned(),
        class,
        history_events: 100,
        max_payload_bytes: 64 * 1024,
        subscribe,
        publishers: vec!["demo".to_owned()],
        idle_expiry_ms: None,
    }
}

/// A gateway whose catalog has a public stream, a per-user stream, a claim-guarded stream and a
/// public state channel, over a memory bus keeping `history` events per topic.
async fn gateway(history: usize) -> Gateway {
    let mut c = config();
    c.channels.catalog = vec![
        channel("announcements", TopicClass::Stream, SubscribeRule::Public),
        channel("orders.{user}", TopicClass::Stream, SubscribeRule::User),
        channel(
            "ops.alerts",
            TopicClass::Stream,
            SubscribeRule::ClaimContains {
                claim: "roles".into(),
                value: "ops".into(),
            },
        ),
        channel("status", TopicClass::State, SubscribeRule::Public),
    ];
    start(c, history).await
}

/// Publishes `data` on channel `name` as a backend would: on its bus topic, `ch:` + the name.
async fn publish(gw: &Gateway, name: &str, data: &Value) -> Event {
    publish_raw(gw, name, Bytes::from(data.to_string())).await
}

async fn publish_raw(gw: &Gateway, name: &str, payload: Bytes) -> Event {
    let topic = Topic::new(&format!("ch:{name}")).unwrap();
    gw.bus.publish(&topic, payload).await.expect("publish")
}

fn ops_token(user: &str, roles: Value) -> String {
    test_support::hostile::hs256_token_with_claims(SECRET, user, &json!({ "roles": roles }))
}

/// The `error` answering a `sub` of `topic`.
async fn refused(c: &mut Client, topic: &str) -> String {
    c.sub(topic, None).await;
    match c.recv().await {
        ServerMsg::Error(e) => {
            assert_eq!(e.topic.as_deref(), Some(topic));
            assert_eq!(e.id, None);
            e.code
        }
        other => panic!("{topic:?}: expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_channel_delivers_the_published_json_in_both_encodings() {
    let gw = gateway(100).await;
    let data = json!({
        "text": "maintenance at 22:00 UTC",
        "level": 3,
        "ratio": 0.25,
        "neg": -7,
        "big": u64::MAX,
        "tags": ["ops", null, true, {"deep": [[]]}],
        "none": {}
    });
    let mut subs = Vec::new();
    for enc in Encoding::ALL {
        let mut c = gw.signed_in(enc, "alice").await;
        let subbed = c.subbed("announcements", None).await;
        subs.push((c, subbed));
    }
    let published = publish(&gw, "announcements", &data).await;
    for (c, subbed) in &mut subs {
        let ev = c.event().await;
        assert_eq!(ev.topic, "announcements");
        assert_eq!((ev.epoch, ev.offset), (published.epoch, published.offset));
        assert_eq!(ev.offset, subbed.offset + 1);
        assert_eq!(ev.data, data, "in {:?}", c.enc);
    }
    // A payload that is not JSON is skipped (logged), never a crash; the next one arrives.
    publish_raw(&gw, "announcements", Bytes::from_static(b"\xffnot json")).await;
    // Nested deeper than the protocol allows: skipped too, clients would refuse it.
    let deep = (0..40).fold(json!(1), |v, _| json!([v]));
    publish(&gw, "announcements", &deep).await;
    let next = publish(&gw, "announcements", &json!("plain string")).await;
    for (c, _) in &mut subs {
        let ev = c.event().await;
        assert_eq!((ev.offset, &ev.data), (next.offset, &json!("plain string")));
    }
}

#[tokio::test]
async fn a_state_channel_gives_the_latest_value_on_sub() {
    let gw = gateway(100).await;
    for i in 1..=3 {
        publish(&gw, "status", &json!({"up": i})).await;
    }
    let mut latest = json!({"up": 3});
    for (i, enc) in Encoding::ALL.into_iter().enumerate() {
        let mut c = gw.signed_in(enc, "alice").await;
        c.subbed("status", None).await;
        assert_eq!(c.event().await.data, latest, "the latest only, in {enc:?}");
        let next = json!({"up": "again", "round": i});
        let live = publish(&gw, "status", &next).await;
        let ev = c.event().await;
        assert_eq!((ev.offset, &ev.data), (live.offset, &next));
        latest = next;
    }
}

#[tokio::test]
async fn a_user_channel_reaches_its_user_only_and_bytes_never_cross_channels() {
    let gw = gateway(100).await;
    for enc in Encoding::ALL {
        let mut alice = gw.signed_in(enc, "alice").await;
        let mut bob = gw.signed_in(enc, "bob").await;
        alice.subbed("orders.alice", None).await;
        bob.subbed("orders.bob", None).await;
        // Same epoch, often the same offset on both topics: the encode-once cache is per channel.
        let a = publish(&gw, "orders.alice", &json!({"for": "alice"})).await;
        let b = publish(&gw, "orders.bob", &json!({"for": "bob"})).await;
        let ev = alice.event().await;
        assert_eq!((ev.topic.as_str(), ev.offset), ("orders.alice", a.offset));
        assert_eq!(ev.data, json!({"for": "alice"}));
        let ev = bob.event().await;
        assert_eq!((ev.topic.as_str(), ev.offset), ("orders.bob", b.offset));
        assert_eq!(ev.data, json!({"for": "bob"}));
        alice.quiet(QUIET).await;
        bob.quiet(QUIET).await;
    }
}

#[tokio::test]
async fn other_users_channels_and_every_misspelling_are_refused_without_an_event() {
    let gw = gateway(100).await;
    for enc in Encoding::ALL {
        let mut alice = gw.signed_in(enc, "alice").await;
        assert_eq!(refused(&mut alice, "orders.bob").await, code::FORBIDDEN);
        assert_eq!(refused(&mut alice, "nope").await, code::UNKNOWN_TOPIC);
        assert_eq!(refused(&mut alice, "orders").await, code::UNKNOWN_TOPIC);
        for spelling in [
            "orders.BOB",
            "orders.Bob",
            "orders.bob.",
            "orders..bob",
            "orders.b%6fb",
            "orders.*",
            "orders.>",
            "orders.{user}",
            "orders.\u{ff42}\u{ff4f}\u{ff42}",
            "orders.bob\u{0}",
            "orders.bob ",
            " orders.bob",
            "ORDERS.bob",
            "ch:orders.bob",
            "orders.bob.x",
            ".orders.bob",
        ] {
            let got = refused(&mut alice, spelling).await;
            assert!(
                got == code::UNKNOWN_TOPIC || got == code::FORBIDDEN,
                "{spelling:?}: {got}"
            );
        }
        // Alice's own channel, misspelt, is not hers either.
        assert_eq!(
            refused(&mut alice, "orders.alice.").await,
            code::UNKNOWN_TOPIC
        );
        assert_eq!(refused(&mut alice, "orders.ALICE").await, code::FORBIDDEN);
        // Nothing published for bob (under any spelling a bus topic could have) reaches alice.
        publish(&gw, "orders.bob", &json!({"secret": 1})).await;
        publish(&gw, "orders.BOB", &json!({"secret": 2})).await;
        alice.quiet(QUIET).await;
    }
}

#[tokio::test]
async fn a_claim_rule_admits_the_tokens_that_carry_the_claim() {
    let gw = gateway(100).await;
    let url = gw.ws_url();
    for enc in Encoding::ALL {
        let mut ops =
            Client::signed_in(&url, enc, ops_token("olga", json!(["dev", "ops"])), "olga").await;
        ops.subbed("ops.alerts", None).await;
        let mut single =
            Client::signed_in(&url, enc, ops_token("omar", json!("ops")), "omar").await;
        single.subbed("ops.alerts", None).await;
        for (user, roles) in [
            ("dan", json!(["dev"])),
            ("eve", json!("OPS")),
            ("fay", json!(["op", "opsx"])),
        ] {
            let mut c = Client::signed_in(&url, enc, ops_token(user, roles), user).await;
            assert_eq!(refused(&mut c, "ops.alerts").await, code::FORBIDDEN);
        }
        let mut plain = gw.signed_in(enc, "paul").await;
        assert_eq!(refused(&mut plain, "ops.alerts").await, code::FORBIDDEN);
        let alert = json!({"alert": "disk full"});
        publish(&gw, "ops.alerts", &alert).await;
        assert_eq!(ops.event().await.data, alert);
        assert_eq!(single.event().await.data, alert);
        plain.quiet(QUIET).await;
    }
}

#[tokio::test]
async fn reauthentication_without_the_claim_ends_the_channels_it_no_longer_admits() {
    let gw = gateway(100).await;
    for enc in Encoding::ALL {
        let mut c =
            Client::signed_in(&gw.ws_url(), enc, ops_token("olga", json!(["ops"])), "olga").await;
        c.subbed("ops.alerts", None).await;
        c.subbed("announcements", None).await;
        c.subbed("orders.olga", None).await;
        // Still an ops token: nothing ends.
        c.sign_in(ops_token("olga", json!(["ops", "dev"])), "olga")
            .await;
        c.quiet(QUIET).await;
        // Without the role: `ops.alerts` ends with `forbidden`, the others go on.
        c.sign_in(token("olga"), "olga").await;
        match c.recv().await {
            ServerMsg::Error(e) => {
                assert_eq!(
                    (e.topic.as_deref(), e.code.as_str()),
                    (Some("ops.alerts"), code::FORBIDDEN)
                );
            }
            other => panic!("expected the subscription to end, got {other:?}"),
        }
        publish(&gw, "ops.alerts", &json!({"alert": "after"})).await;
        let ann = publish(&gw, "announcements", &json!("still here")).await;
        let ev = c.event().await;
        assert_eq!(
            (ev.topic.as_str(), ev.offset),
            ("announcements", ann.offset)
        );
        c.quiet(QUIET).await;
        // And it cannot subscribe again without the claim.
        assert_eq!(refused(&mut c, "ops.alerts").await, code::FORBIDDEN);
        // Re-authentication as another user is refused outright (4403), as for every topic.
        c.send(&ClientMsg::Auth(mobile_proto::Auth {
            token: token("bob"),
            client: None,
        }))
        .await;
        assert_eq!(c.closed().await, mobile_proto::close::FORBIDDEN);
    }
}

#[tokio::test]
async fn resume_delivers_the_missed_events_of_a_channel() {
    let gw = gateway(100).await;
    for enc in Encoding::ALL {
        let mut c = gw.signed_in(enc, "carol").await;
        c.subbed("orders.carol", None).await;
        publish(&gw, "orders.carol", &json!({"n": "first"})).await;
        let last = c.event().await.position();
        drop(c);
        let mut missed = Vec::new();
        for i in 0..5 {
            missed.push(publish(&gw, "orders.carol", &json!({ "n": i })).await);
        }
        let mut c = gw.signed_in(enc, "carol").await;
        assert_eq!(c.subbed("orders.carol", Some(last)).await.position(), last);
        for (i, want) in missed.iter().enumerate() {
            let ev = c.event().await;
            assert_eq!((ev.epoch, ev.offset), (want.epoch, want.offset));
            assert_eq!(ev.data, json!({ "n": i }));
        }
        c.quiet(QUIET).await;
        let live = publish(&gw, "orders.carol", &json!("live")).await;
        assert_eq!(c.event().await.offset, live.offset);
    }
}

#[tokio::test]
async fn resume_below_a_channels_history_gets_a_gap() {
    let gw = gateway(3).await;
    let mut c = gw.signed_in(Encoding::Cbor, "dave").await;
    let from = c.subbed("announcements", None).await.position();
    drop(c);
    let mut published = Vec::new();
    for i in 0..6 {
        published.push(publish(&gw, "announcements", &json!({ "i": i })).await);
    }
    let mut c = gw.signed_in(Encoding::Cbor, "dave").await;
    c.subbed("announcements", Some(from)).await;
    let ServerMsg::Gap(gap) = c.recv().await else {
        panic!("expected a gap")
    };
    assert_eq!(gap.topic, "announcements");
    let mut last = gap.position();
    while last.offset < published[5].offset {
        let ev = c.event().await;
        assert_eq!(ev.offset, last.offset + 1);
        last = ev.position();
    }
    c.quiet(QUIET).await;
}
