//! The `channel` subscription over graphql-transport-ws, on /v1 and /v2, against a gateway with a
//! catalog: a public stream `announcements`, user channels `orders.{user}`, `ops.alerts` for
//! tokens whose `roles` hold `ops`, and a public state channel `prices.{symbol}`. Events are
//! published on the runtime's bus (`ch:` + name) as a backend's publish would.
//!
//! Checked: delivery exactly once with `data` equal to the published JSON and the position as
//! strings; resume with `after`; a gap ends with `HISTORY_GAP` and a resume position that works;
//! refusals (`FORBIDDEN`, `CHANNEL_NOT_FOUND`) under every spelling of another user's channel,
//! never an event, also while that user is subscribed with the very same document (shared
//! executions); claim rules; anonymous callers; a re-authentication dropping a role; sockets
//! resuming at one position sharing one execution.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, Bus};
use switchyard_core::channels::{ChannelConfig, ChannelsConfig, SubscribeRule};
use switchyard_core::event::{Event, Topic, TopicClass};
use switchyard_server::server::CancellationToken;
use test_support::graphql_ws::Client;

const SECRET: &str = "channels-test-secret-channels-test";
const DOC: &str = "subscription($name: String!, $after: ChannelPosition) { \
                   channel(name: $name, after: $after) { epoch offset data } }";
const QUIET: Duration = Duration::from_millis(300);

fn entry(pattern: &str, class: TopicClass, subscribe: SubscribeRule) -> ChannelConfig {
    ChannelConfig {
        pattern: pattern.into(),
        class,
        history_events: 100,
        max_payload_bytes: 4096,
        subscribe,
        publishers: vec!["demo".into()],
        idle_expiry_ms: None,
    }
}

struct Gateway {
    app: bff_web::App,
    bus: Arc<dyn Bus>,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    _server: test_support::TestServer,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Gateway {
    /// A gateway whose bus keeps `history` events per topic.
    async fn start(history: usize) -> Self {
        Self::start_with(history, |_| {}).await
    }

    /// A gateway whose bus keeps `history` events per topic, its configuration `tune`d.
    async fn start_with(history: usize, tune: impl FnOnce(&mut bff_web::Config)) -> Self {
        let mut config = bff_web::Config::default();
        config.auth.hs256_secret = SECRET.into();
        config.sources.clear();
        config.channels = ChannelsConfig {
            catalog: vec![
                entry("announcements", TopicClass::Stream, SubscribeRule::Public),
                entry("orders.{user}", TopicClass::Stream, SubscribeRule::User),
                entry(
                    "ops.alerts",
                    TopicClass::Stream,
                    SubscribeRule::ClaimContains {
                        claim: "roles".into(),
                        value: "ops".into(),
                    },
                ),
                entry("prices.{symbol}", TopicClass::State, SubscribeRule::Public),
            ],
        };
        tune(&mut config);
        let broker = Broker::memory(history);
        let bus = broker.bus();
        let shutdown = CancellationToken::new();
        let app = bff_web::app(&config, &broker, shutdown.clone()).expect("app");
        let server = test_support::serve(app.router.clone()).await;
        Self {
            app,
            bus,
            addr: server.addr,
            shutdown,
            _server: server,
        }
    }

    fn url(&self, version: &str) -> String {
        format!("ws://{}/{version}/graphql", self.addr)
    }

    async fn publish(&self, channel: &str, data: &Value) -> Event {
        let topic = Topic::new(&format!("ch:{channel}")).expect("topic");
        self.bus
            .publish(&topic, Bytes::from(data.to_string()))
            .await
            .expect("publish")
    }

    /// Waits until `n` topics have local subscribers (the subscriptions reached the hub), and a
    /// little longer for other subscriptions to the same topics.
    async fn subscribed(&self, n: usize) {
        let ok = test_support::eventually(Duration::from_secs(5), || async {
            self.app.active_topics() >= n
        })
        .await;
        assert!(ok, "subscriptions did not reach the hub");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A token for `user` with extra claims.
fn token(user: &str, extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut claims = json!({"sub": user, "iat": now, "exp": now + 600});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

async fn client(gw: &Gateway, version: &str, user: Option<&str>) -> Client {
    let token = user.map(|u| token(u, json!({})));
    Client::connect(&gw.url(version), token.as_deref()).await
}

/// Subscribes `id` to channel `name` (after `after`).
async fn sub(c: &mut Client, id: &str, name: &str, after: Option<Value>) {
    c.subscribe(id, DOC, json!({"name": name, "after": after}))
        .await;
}

/// The next event of `id`, asserting it is one.
async fn event(c: &mut Client, id: &str) -> Value {
    let m = c.recv().await;
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(m["id"], id, "{m}");
    assert!(m["payload"].get("errors").is_none(), "{m}");
    m["payload"]["data"]["channel"].clone()
}

/// The error ending `id`, whether sent as an `error` message or a `next` with errors (then its
/// `complete` is read too); asserts no data came with it.
async fn refusal(c: &mut Client, id: &str) -> Value {
    let m = c.recv().await;
    assert_eq!(m["id"], id, "{m}");
    let error = match m["type"].as_str() {
        Some("error") => m["payload"][0].clone(),
        Some("next") => {
            assert!(m["payload"]["data"].is_null(), "{m}");
            // The operation is over: a `complete` follows.
            let end = c.recv().await;
            assert_eq!(end["type"], "complete", "{end}");
            assert_eq!(end["id"], id, "{end}");
            m["payload"]["errors"][0].clone()
        }
        _ => panic!("expected a refusal: {m}"),
    };
    assert!(!error["extensions"]["code"].is_null(), "{m}");
    error
}

fn position(e: &Value) -> Value {
    json!({"epoch": e["epoch"], "offset": e["offset"]})
}

fn strings(e: &Event) -> (String, String) {
    (e.epoch.to_string(), e.offset.to_string())
}

#[tokio::test]
async fn a_public_stream_delivers_each_event_once_as_published() {
    let gw = Gateway::start(100).await;
    for (i, version) in ["v1", "v2"].into_iter().enumerate() {
        let mut anon = client(&gw, version, None).await;
        let mut alice = client(&gw, version, Some("alice")).await;
        sub(&mut anon, "a", "announcements", None).await;
        sub(&mut alice, "b", "announcements", None).await;
        gw.subscribed(1).await;
        // Numbers beyond 2^53 and nesting come back as published.
        let data = json!({"title": "maintenance", "big": 18446744073709551615u64,
                          "list": [1, 2.5, null, {"x": "y"}], "ok": true, "n": i});
        let published = gw.publish("announcements", &data).await;
        for (c, id) in [(&mut anon, "a"), (&mut alice, "b")] {
            let e = event(c, id).await;
            assert_eq!(e["data"], data, "{e}");
            let (epoch, offset) = strings(&published);
            assert_eq!(e["epoch"], epoch);
            assert_eq!(e["offset"], offset);
            assert_eq!(c.recv_within(QUIET).await, None, "delivered once");
        }
        // A scalar payload is a JSON value too.
        gw.publish("announcements", &json!("plain")).await;
        assert_eq!(event(&mut anon, "a").await["data"], json!("plain"));
    }
}

#[tokio::test]
async fn resuming_after_a_position_gets_the_missed_events_in_order() {
    let gw = Gateway::start(100).await;
    for version in ["v1", "v2"] {
        let mut bob = client(&gw, version, Some("bob")).await;
        sub(&mut bob, "1", "orders.bob", None).await;
        gw.subscribed(1).await;
        gw.publish("orders.bob", &json!({"n": 0})).await;
        let first = event(&mut bob, "1").await;
        bob.complete("1").await;
        for n in 1..=3 {
            gw.publish("orders.bob", &json!({"n": n})).await;
        }
        sub(&mut bob, "2", "orders.bob", Some(position(&first))).await;
        // The completed "1" may still have been sent what was published before the server read
        // its `complete`: pass over its messages, and only those.
        let mut resumed = Vec::new();
        while resumed.len() < 3 {
            let m = bob.recv().await;
            if m["id"] == "1" {
                continue;
            }
            assert_eq!((&m["type"], &m["id"]), (&json!("next"), &json!("2")), "{m}");
            resumed.push(m["payload"]["data"]["channel"]["data"].clone());
        }
        assert_eq!(
            resumed,
            vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
        );
        gw.subscribed(1).await;
        gw.publish("orders.bob", &json!({"n": 4})).await;
        assert_eq!(event(&mut bob, "2").await["data"], json!({"n": 4}));
        assert_eq!(bob.recv_within(QUIET).await, None);
        // Two sockets resuming with the same document each get the whole backlog.
        let mut again = client(&gw, version, Some("bob")).await;
        sub(&mut again, "3", "orders.bob", Some(position(&first))).await;
        for n in 1..=4 {
            assert_eq!(event(&mut again, "3").await["data"], json!({"n": n}));
        }
        bob.complete("2").await;
    }
}

/// What a gap does to a shared live execution: all its sockets get the same resume position and
/// subscribe again after it. They must share one execution again — not run one each, which
/// held tens of KiB per socket for as long as it stayed (the soak's RSS after a bus restart) —
/// and each must still get every event after the position, joining early or late; once the
/// execution has emitted more than a send queue, a joiner gets one of its own. All of it is
/// released with the last socket.
#[tokio::test]
async fn sockets_resuming_at_one_position_share_one_execution_and_miss_nothing() {
    let gw = Gateway::start_with(100, |c| c.websocket.send_queue_messages = 4).await;
    let first = gw.publish("announcements", &json!({"n": 0})).await;
    let (epoch, offset) = strings(&first);
    let after = json!({"epoch": epoch, "offset": offset});
    let mut early = Vec::new();
    for _ in 0..5 {
        let mut c = client(&gw, "v1", None).await;
        sub(&mut c, "r", "announcements", Some(after.clone())).await;
        early.push(c);
    }
    gw.subscribed(1).await;
    assert_eq!(
        gw.app.v1_executions(),
        1,
        "five identical resumes share one execution"
    );
    for n in 1..=3 {
        gw.publish("announcements", &json!({"n": n})).await;
    }
    for c in &mut early {
        for n in 1..=3 {
            assert_eq!(event(c, "r").await["data"], json!({"n": n}));
        }
    }
    // A socket joining after three results still gets them, from the execution's window.
    let mut late = client(&gw, "v1", None).await;
    sub(&mut late, "r", "announcements", Some(after.clone())).await;
    for n in 1..=3 {
        assert_eq!(event(&mut late, "r").await["data"], json!({"n": n}));
    }
    assert_eq!(gw.app.v1_executions(), 1, "the late joiner shares it too");
    // Past a send queue (4) of results the window closes: a joiner gets an execution of its
    // own, which replays from history.
    for n in 4..=5 {
        gw.publish("announcements", &json!({"n": n})).await;
    }
    for c in early.iter_mut().chain([&mut late]) {
        for n in 4..=5 {
            assert_eq!(event(c, "r").await["data"], json!({"n": n}));
        }
    }
    let mut last = client(&gw, "v1", None).await;
    sub(&mut last, "r", "announcements", Some(after.clone())).await;
    for n in 1..=5 {
        assert_eq!(event(&mut last, "r").await["data"], json!({"n": n}));
    }
    assert_eq!(gw.app.v1_executions(), 2);
    // Another position is another execution; live delivery goes on for every one of them.
    let mut other = client(&gw, "v1", None).await;
    let third = json!({"epoch": epoch, "offset": (first.offset + 3).to_string()});
    sub(&mut other, "r", "announcements", Some(third)).await;
    for n in 4..=5 {
        assert_eq!(event(&mut other, "r").await["data"], json!({"n": n}));
    }
    assert_eq!(gw.app.v1_executions(), 3);
    gw.publish("announcements", &json!({"n": 6})).await;
    for c in early.iter_mut().chain([&mut late, &mut last, &mut other]) {
        assert_eq!(event(c, "r").await["data"], json!({"n": 6}));
        assert_eq!(c.recv_within(QUIET).await, None, "each event once");
    }
    drop((early, late, last, other));
    let released = test_support::eventually(Duration::from_secs(5), || async {
        gw.app.v1_executions() == 0 && gw.app.active_topics() == 0
    })
    .await;
    assert!(
        released,
        "executions {} and hub topics {} are released with the last socket",
        gw.app.v1_executions(),
        gw.app.active_topics()
    );
}

#[tokio::test]
async fn a_gap_ends_with_history_gap_and_a_resume_position_that_works() {
    // The bus keeps 3 events per topic.
    let gw = Gateway::start(3).await;
    for version in ["v1", "v2"] {
        let channel = format!("orders.{}", "carol");
        let first = gw.publish(&channel, &json!({"n": 0})).await;
        let mut last = first.clone();
        for n in 1..=6 {
            last = gw.publish(&channel, &json!({"n": n})).await;
        }
        let mut carol = client(&gw, version, Some("carol")).await;
        let (epoch, offset) = strings(&first);
        sub(
            &mut carol,
            "1",
            &channel,
            Some(json!({"epoch": epoch, "offset": offset})),
        )
        .await;
        let error = refusal(&mut carol, "1").await;
        assert_eq!(error["extensions"]["code"], "HISTORY_GAP", "{error}");
        let resume = error["extensions"]["resume"].clone();
        assert!(
            resume["epoch"].is_string() && resume["offset"].is_string(),
            "{error}"
        );
        assert_eq!(resume["epoch"], epoch);
        // The subscription ended: nothing else for it.
        assert_eq!(carol.recv_within(QUIET).await, None);
        // Resuming there gets what history still has, in order, up to the last event.
        sub(&mut carol, "2", &channel, Some(resume)).await;
        let mut seen = Vec::new();
        let last_offset = last.offset.to_string();
        loop {
            let e = event(&mut carol, "2").await;
            seen.push(e["data"]["n"].as_u64().expect("n"));
            if e["offset"] == last_offset {
                break;
            }
        }
        assert!(
            !seen.is_empty() && seen.windows(2).all(|w| w[1] == w[0] + 1),
            "{seen:?}"
        );
        assert_eq!(*seen.last().expect("one"), 6);
        // A position of another epoch is a gap too.
        sub(
            &mut carol,
            "3",
            &channel,
            Some(json!({"epoch": "12345", "offset": "1"})),
        )
        .await;
        let error = refusal(&mut carol, "3").await;
        assert_eq!(error["extensions"]["code"], "HISTORY_GAP", "{error}");
        carol.complete("2").await;
    }
}

/// Every way to spell bob's channel that alice might try, with the code each must get.
const SPELLINGS: &[(&str, &str)] = &[
    ("orders.bob", "FORBIDDEN"),
    ("orders.BOB", "FORBIDDEN"),
    ("orders.Bob", "FORBIDDEN"),
    ("orders.bob.", "CHANNEL_NOT_FOUND"),
    ("orders..bob", "CHANNEL_NOT_FOUND"),
    (".orders.bob", "CHANNEL_NOT_FOUND"),
    ("orders.b%6fb", "CHANNEL_NOT_FOUND"),
    ("orders.*", "CHANNEL_NOT_FOUND"),
    ("orders.>", "CHANNEL_NOT_FOUND"),
    ("orders.{user}", "CHANNEL_NOT_FOUND"),
    ("orders.ｂｏｂ", "CHANNEL_NOT_FOUND"),
    ("orders.bob\u{0}", "CHANNEL_NOT_FOUND"),
    ("orders.bob ", "CHANNEL_NOT_FOUND"),
    (" orders.bob", "CHANNEL_NOT_FOUND"),
    ("ch:orders.bob", "CHANNEL_NOT_FOUND"),
    ("orders.bob.extra", "CHANNEL_NOT_FOUND"),
    ("orders", "CHANNEL_NOT_FOUND"),
    ("", "CHANNEL_NOT_FOUND"),
];

#[tokio::test]
async fn another_users_channel_is_refused_under_every_spelling_even_while_they_read_it() {
    let gw = Gateway::start(100).await;
    for version in ["v1", "v2"] {
        let mut bob = client(&gw, version, Some("bob")).await;
        let mut alice = client(&gw, version, Some("alice")).await;
        let mut anon = client(&gw, version, None).await;
        // Bob first, so that the executions alice's identical documents could join are running.
        let literal = r#"subscription { channel(name: "orders.bob") { epoch offset data } }"#;
        bob.subscribe("lit", literal, json!({})).await;
        sub(&mut bob, "var", "orders.bob", None).await;
        gw.subscribed(1).await;
        for (i, (name, code)) in SPELLINGS.iter().enumerate() {
            let id = format!("s{i}");
            sub(&mut alice, &id, name, None).await;
            let error = refusal(&mut alice, &id).await;
            assert_eq!(error["extensions"]["code"], *code, "{name:?}: {error}");
        }
        alice.subscribe("lit", literal, json!({})).await;
        assert_eq!(
            refusal(&mut alice, "lit").await["extensions"]["code"],
            "FORBIDDEN"
        );
        anon.subscribe("lit", literal, json!({})).await;
        assert_eq!(
            refusal(&mut anon, "lit").await["extensions"]["code"],
            "FORBIDDEN"
        );
        sub(&mut anon, "var", "orders.bob", None).await;
        assert_eq!(
            refusal(&mut anon, "var").await["extensions"]["code"],
            "FORBIDDEN"
        );
        // Anything else but a refusal would be a leak, and the spellings that name a valid
        // channel (orders.BOB) get nothing either.
        gw.publish("orders.bob", &json!({"secret": version})).await;
        gw.publish("orders.BOB", &json!({"secret": version})).await;
        // Bob's two subscriptions each get it once, in whichever order.
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = bob.recv().await;
            assert_eq!(m["type"], "next", "{m}");
            got.push((
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["payload"]["data"]["channel"]["data"].clone(),
            ));
        }
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let secret = json!({"secret": version});
        assert_eq!(
            got,
            vec![
                ("lit".to_owned(), secret.clone()),
                ("var".to_owned(), secret)
            ]
        );
        assert_eq!(
            alice.recv_within(QUIET).await,
            None,
            "alice got bob's event"
        );
        assert_eq!(
            anon.recv_within(QUIET).await,
            None,
            "anonymous got bob's event"
        );
        // Alice's own channel works.
        sub(&mut alice, "own", "orders.alice", None).await;
        gw.subscribed(2).await;
        gw.publish("orders.alice", &json!({"mine": true})).await;
        assert_eq!(
            event(&mut alice, "own").await["data"],
            json!({"mine": true})
        );
        assert_eq!(bob.recv_within(QUIET).await, None, "bob got alice's event");
    }
}

#[tokio::test]
async fn a_claim_rule_admits_its_role_only_even_for_one_user_with_two_tokens() {
    let gw = Gateway::start(100).await;
    let literal = r#"subscription { channel(name: "ops.alerts") { epoch offset data } }"#;
    for version in ["v1", "v2"] {
        let url = gw.url(version);
        let ops = token("dana", json!({"roles": ["dev", "ops"]}));
        let dev = token("dana", json!({"roles": ["dev"]}));
        let single = token("erin", json!({"roles": "ops"}));
        let mut dana_ops = Client::connect(&url, Some(&ops)).await;
        let mut dana_dev = Client::connect(&url, Some(&dev)).await;
        let mut erin = Client::connect(&url, Some(&single)).await;
        let mut anon = client(&gw, version, None).await;
        dana_ops.subscribe("1", literal, json!({})).await;
        erin.subscribe("1", literal, json!({})).await;
        gw.subscribed(1).await;
        // Same user, same document, a running execution: the token without the role is refused.
        dana_dev.subscribe("1", literal, json!({})).await;
        assert_eq!(
            refusal(&mut dana_dev, "1").await["extensions"]["code"],
            "FORBIDDEN"
        );
        anon.subscribe("1", literal, json!({})).await;
        assert_eq!(
            refusal(&mut anon, "1").await["extensions"]["code"],
            "FORBIDDEN"
        );
        gw.publish("ops.alerts", &json!({"alert": version})).await;
        assert_eq!(
            event(&mut dana_ops, "1").await["data"],
            json!({"alert": version})
        );
        assert_eq!(
            event(&mut erin, "1").await["data"],
            json!({"alert": version})
        );
        assert_eq!(dana_dev.recv_within(QUIET).await, None);
        assert_eq!(anon.recv_within(QUIET).await, None);
        // Re-authenticating without the role ends the subscription; the socket stays open.
        dana_ops
            .send(json!({"type": "ping", "payload": {"token": dev}}))
            .await;
        let mut messages = vec![dana_ops.recv().await, dana_ops.recv().await];
        messages.sort_by_key(|m| m["type"].as_str().map(str::to_owned));
        assert_eq!(messages[0]["type"], "error", "{messages:?}");
        assert_eq!(messages[0]["id"], "1");
        assert_eq!(messages[0]["payload"][0]["extensions"]["code"], "FORBIDDEN");
        assert_eq!(messages[1]["type"], "pong", "{messages:?}");
        gw.publish("ops.alerts", &json!({"after": "reauth"})).await;
        assert_eq!(
            event(&mut erin, "1").await["data"],
            json!({"after": "reauth"})
        );
        assert_eq!(dana_ops.recv_within(QUIET).await, None);
        // And new subscriptions on that socket are judged by the new token.
        dana_ops.subscribe("2", literal, json!({})).await;
        assert_eq!(
            refusal(&mut dana_ops, "2").await["extensions"]["code"],
            "FORBIDDEN"
        );
        erin.complete("1").await;
    }
}

#[tokio::test]
async fn a_state_channel_gives_the_latest_value_to_every_joiner() {
    let gw = Gateway::start(100).await;
    for version in ["v1", "v2"] {
        let channel = format!("prices.{version}");
        gw.publish(&channel, &json!({"p": 1})).await;
        gw.publish(&channel, &json!({"p": 2})).await;
        let mut first = client(&gw, version, None).await;
        sub(&mut first, "1", &channel, None).await;
        assert_eq!(event(&mut first, "1").await["data"], json!({"p": 2}));
        // A late joiner of the same (shared) execution starts with the latest value too.
        let mut late = client(&gw, version, Some("alice")).await;
        sub(&mut late, "1", &channel, None).await;
        assert_eq!(event(&mut late, "1").await["data"], json!({"p": 2}));
        gw.publish(&channel, &json!({"p": 3})).await;
        assert_eq!(event(&mut first, "1").await["data"], json!({"p": 3}));
        assert_eq!(event(&mut late, "1").await["data"], json!({"p": 3}));
    }
}

#[tokio::test]
async fn unknown_and_malformed_names_and_positions_are_refused() {
    let gw = Gateway::start(100).await;
    let mut anon = client(&gw, "v1", None).await;
    sub(&mut anon, "1", "nothing.here", None).await;
    let error = refusal(&mut anon, "1").await;
    assert_eq!(error["extensions"]["code"], "CHANNEL_NOT_FOUND", "{error}");
    for (i, bad) in [
        json!({"epoch": "-1", "offset": "0"}),
        json!({"epoch": "1", "offset": "1e3"}),
        json!({"epoch": "18446744073709551616", "offset": "0"}),
        json!({"epoch": "", "offset": "0"}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("p{i}");
        sub(&mut anon, &id, "announcements", Some(bad.clone())).await;
        let error = refusal(&mut anon, &id).await;
        assert_eq!(
            error["extensions"]["code"], "BAD_USER_INPUT",
            "{bad}: {error}"
        );
    }
    assert_eq!(
        gw.app.active_topics(),
        0,
        "a refused subscription holds no topic"
    );
}
