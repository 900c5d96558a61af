//! Issue 6 across instances, against the REAL brokers of this machine: Redis (127.0.0.1:6379)
//! and NATS JetStream (127.0.0.1:4222).
//!
//! Each test starts two in-process instances of a gateway (A and B), each over its OWN bus
//! client (its own connections to the broker), plus a third bus client standing for a backend
//! that publishes. Every test uses a fresh random bus `prefix`, so runs never see each other's
//! keys, streams or subjects.
//!
//! - Delivery: an event published through one bus client reaches a client connected to the
//!   other instance — a mobile `conversions` subscription, a graphql-transport-ws `conversions`
//!   subscription, a device poll (a command sent through instance A's admin API is answered to a
//!   poll held on instance B).
//! - Resume elsewhere: a mobile client that saw some events on A, A stopped, more events
//!   published, a new socket on B resuming from the last position seen gets exactly the missed
//!   events, in order, no duplicates; a device cursor from a poll on A, given to B, brings exactly
//!   the commands after it.
//! - One upstream watch for the cluster (the exchange's `/v1/stats`): two bff-mobile instances
//!   with clients on one pair make ONE watch at the exchange; when its holder stops, ticks keep
//!   reaching the other instance's client (it took the lease over). And the lease of a holder that
//!   died (took it, never renews nor releases) expires: a live instance takes over.
//!
//! A broker that cannot be reached FAILS these tests (`scripts/services` starts both).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mobile_client::{Client as MobileClient, Config as MobileConfig, Update};
use mobile_proto::{ClientMsg, Encoding, FrameKind, Position, ServerMsg};
use serde_json::{Value, json};
use switchyard_core::bus::{self, Bus};
use switchyard_core::config::{BusConfig, BusKind};
use switchyard_core::event::Topic;
use switchyard_core::server::CancellationToken;
use test_support::graphql_ws::Client as GraphqlWs;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing).
const PATIENCE: Duration = Duration::from_secs(15);

/// The HS256 secret of the test gateways.
const SECRET: &str = "a-cluster-test-secret-of-32-bytes!!";

/// bff-device's admin token, the test device and its key.
const ADMIN: &str = "cluster-admin-token-0123456789";
const DEVICE: &str = "tv-1";
const DEVICE_KEY: &str = "tv-1-key-0123456789";

/// Both broker buses.
const BROKERS: [BusKind; 2] = [BusKind::Redis, BusKind::Nats];

/// A bus configuration of `kind` with a prefix no other run uses.
fn bus_config(kind: BusKind) -> BusConfig {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let mut config = BusConfig::of(kind);
    config.prefix = format!(
        "cluster-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    config
}

/// A new bus client (its own broker connections) for `config`, once the broker answers.
/// Panics — the test fails — when it does not answer in time.
async fn bus_client(config: &BusConfig) -> Arc<dyn Bus> {
    let bus = bus::from_config(config);
    let reachable = tokio::time::timeout(PATIENCE, async {
        loop {
            if bus.check().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reachable.is_ok(),
        "{:?} broker at {} unreachable: run scripts/services",
        config.kind,
        config.broker_url()
    );
    bus
}

fn token(user: &str) -> String {
    bff_web::auth::hs256_token(SECRET, user, Duration::from_secs(600))
}

/// One in-process gateway instance: its address and how to stop it.
struct Instance {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Instance {
    /// Starts `run` on a loopback port.
    async fn start<F, Fut, E>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let running = run(listener, stop.clone());
        let task = tokio::spawn(async move {
            running
                .await
                .unwrap_or_else(|e| panic!("{name} failed: {e:#}"));
        });
        Self { addr, stop, task }
    }

    /// Stops the instance and waits (bounded) until it has closed.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the instance drains in time")
            .expect("the instance task ends cleanly");
    }
}

async fn mobile_instance(config: &BusConfig) -> Instance {
    let bus = bus_client(config).await;
    let mut c = bff_mobile::Config {
        bus: config.clone(),
        ..Default::default()
    };
    c.auth.hs256_secret = SECRET.to_owned();
    c.server.drain_timeout_ms = 2_000;
    Instance::start("bff-mobile", move |l, t| bff_mobile::run(c, bus, l, t)).await
}

async fn web_instance(config: &BusConfig) -> Instance {
    let bus = bus_client(config).await;
    let mut c = bff_web::Config {
        bus: config.clone(),
        ..Default::default()
    };
    c.auth.hs256_secret = SECRET.to_owned();
    c.server.drain_timeout_ms = 2_000;
    Instance::start("bff-web", move |l, t| bff_web::run(c, bus, l, t)).await
}

async fn device_instance(config: &BusConfig) -> Instance {
    let bus = bus_client(config).await;
    let mut c = bff_device::Config {
        bus: config.clone(),
        ..Default::default()
    };
    c.bridges.clear();
    c.server.drain_timeout_ms = 2_000;
    c.admin.token = ADMIN.to_owned();
    c.devices.insert(
        DEVICE.to_owned(),
        bff_device::DeviceConfig {
            key: DEVICE_KEY.to_owned(),
            rates: Vec::new(),
            settings: [("volume".to_owned(), json!(7))].into_iter().collect(),
        },
    );
    Instance::start("bff-device", move |l, t| bff_device::run(c, bus, l, t)).await
}

/// The `conversions.{user}` event a backend publishes, with id `id`.
fn conversion_payload(user: &str, id: &str) -> Vec<u8> {
    let event = json!({
        "type": demo_api::CONVERSION_COMPLETED,
        "conversion": {
            "id": id, "user": user, "from": "EUR", "to": "USD",
            "amount": "10.00", "rate": "1.1", "converted": "11.00",
            "at": "2026-01-01T00:00:00Z",
        },
    });
    // Checked against the real type, so the test publishes exactly what conversions does.
    let typed: demo_api::ConversionEvent =
        serde_json::from_value(event).expect("a valid ConversionEvent");
    serde_json::to_vec(&typed).expect("encodes")
}

/// Publishes a conversion event for `user` through `bus` (as the conversions service would).
async fn publish_conversion(bus: &Arc<dyn Bus>, user: &str, id: &str) -> Position {
    let topic = Topic::new(&demo_api::conversions_topic(
        &demo_api::UserId::parse(user).expect("a valid user id"),
    ))
    .expect("a valid topic");
    let event = tokio::time::timeout(
        PATIENCE,
        bus.publish(&topic, conversion_payload(user, id).into()),
    )
    .await
    .expect("publish in time")
    .expect("published");
    Position {
        epoch: event.position().epoch,
        offset: event.position().offset,
    }
}

// ---------------------------------------------------------------------------------------------
// A small mobile-proto client (JSON encoding), for resuming from a position of our choosing.
// ---------------------------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct RawMobile {
    ws: Ws,
}

impl RawMobile {
    /// Opens a JSON socket on `addr` and signs in as `user`.
    async fn signed_in(addr: std::net::SocketAddr, user: &str) -> Self {
        let mut req = format!("ws://{addr}/v1/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(Encoding::Json.subprotocol()),
        );
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut c = Self { ws };
        c.send(&ClientMsg::Auth(mobile_proto::Auth { token: token(user) }))
            .await;
        match c.recv().await {
            Some(ServerMsg::Welcome(w)) => assert_eq!(w.user, user),
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, msg: &ClientMsg) {
        let frame = Encoding::Json.encode_client(msg);
        let text = String::from_utf8(frame.into_bytes()).expect("JSON is text");
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next message other than a ping, within `wait`; `None` when none came.
    async fn recv_within(&mut self, wait: Duration) -> Option<ServerMsg> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Close(f))) => panic!("socket closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket failed: {e}"),
                None => panic!("socket ended"),
            };
            let msg = Encoding::Json
                .decode_server(FrameKind::Text, &text, 1 << 20)
                .expect("the server sends valid messages");
            if matches!(msg, ServerMsg::Ping(_)) {
                continue;
            }
            return Some(msg);
        }
    }

    async fn recv(&mut self) -> Option<ServerMsg> {
        self.recv_within(PATIENCE).await
    }

    /// Subscribes to `topic` (resuming after `resume` if given); the `subbed` answer.
    async fn subbed(&mut self, topic: &str, resume: Option<Position>) -> mobile_proto::Subbed {
        self.send(&ClientMsg::Sub(mobile_proto::Sub {
            topic: topic.to_owned(),
            resume,
        }))
        .await;
        match self.recv().await {
            Some(ServerMsg::Subbed(s)) => s,
            other => panic!("expected subbed, got {other:?}"),
        }
    }

    /// The next message, which must be an event.
    async fn event(&mut self) -> mobile_proto::Event {
        match self.recv().await {
            Some(ServerMsg::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bff-device over HTTP.
// ---------------------------------------------------------------------------------------------

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE * 2)
        .build()
        .expect("client")
}

/// Sends command `id` through the admin API of the instance at `addr`.
async fn send_command(http: &reqwest::Client, addr: std::net::SocketAddr, id: &str) {
    let r = http
        .post(format!("http://{addr}/admin/devices/{DEVICE}/commands"))
        .bearer_auth(ADMIN)
        .json(&json!({"op": "reboot", "args": {"n": 1}, "id": id}))
        .send()
        .await
        .expect("admin answers");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(status, 202, "{body}");
}

/// Polls the instance at `addr`: the answer's next cursor and the ids of its commands.
async fn poll(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    cursor: Option<&str>,
    wait_s: u64,
) -> (String, Vec<String>) {
    let mut query = vec![("wait", wait_s.to_string())];
    if let Some(c) = cursor {
        query.push(("cursor", c.to_owned()));
    }
    let r = http
        .get(format!("http://{addr}/v1/devices/{DEVICE}/events"))
        .header("x-device-key", DEVICE_KEY)
        .query(&query)
        .send()
        .await
        .expect("poll answers");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert!(body.get("rs").is_none(), "no reset expected: {body}");
    let commands = body["e"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["t"] == "c")
        .map(|e| e["i"].as_str().expect("command id").to_owned())
        .collect();
    (body["n"].as_str().expect("cursor").to_owned(), commands)
}

// ---------------------------------------------------------------------------------------------
// 1. Cross-instance delivery.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobile_events_published_anywhere_reach_a_client_on_another_instance() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let backend = bus_client(&config).await;
        let a = mobile_instance(&config).await;
        let b = mobile_instance(&config).await;

        // Alice is connected to both instances; each socket gets every event of hers.
        let connect = |addr: std::net::SocketAddr| async move {
            let config = MobileConfig::new(format!("ws://{addr}/v1/ws"), token("alice"));
            tokio::time::timeout(PATIENCE, MobileClient::connect(config))
                .await
                .expect("connect in time")
                .expect("connects")
        };
        let on_a = connect(a.addr).await;
        let on_b = connect(b.addr).await;
        let mut sub_a = on_a.subscribe("conversions").await.expect("subscribed");
        let mut sub_b = on_b.subscribe("conversions").await.expect("subscribed");

        let mut published = Vec::new();
        for i in 0..3 {
            let id = format!("m{i}");
            published.push((id.clone(), publish_conversion(&backend, "alice", &id).await));
        }
        for (instance, sub) in [("A", &mut sub_a), ("B", &mut sub_b)] {
            for (id, position) in &published {
                let update = tokio::time::timeout(PATIENCE, sub.next())
                    .await
                    .unwrap_or_else(|_| panic!("{kind:?}: an update on {instance} in time"))
                    .expect("subscription open");
                let Update::Event {
                    position: p, data, ..
                } = update
                else {
                    panic!("{kind:?}: expected an event on {instance}, got {update:?}");
                };
                assert_eq!(data["id"], id.as_str(), "{kind:?} on {instance}: {data}");
                assert_eq!(p, *position, "{kind:?}: the broker's offsets on {instance}");
            }
        }
        on_a.close().await;
        on_b.close().await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_subscriptions_on_one_instance_get_events_published_through_another() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let a = web_instance(&config).await;
        let b = web_instance(&config).await;
        // The publisher has its own bus client, as a backend process would.
        let backend = bus_client(&config).await;

        let mut socket = GraphqlWs::connect(
            &format!("ws://{}/v1/graphql", b.addr),
            Some(&token("alice")),
        )
        .await;
        socket
            .subscribe(
                "s",
                "subscription { conversions { id from to amount converted } }",
                json!({}),
            )
            .await;
        // graphql-transport-ws has no "subscribed" answer: publish until one arrives (each with
        // its own id), then two more that must arrive in order.
        let mut first = None;
        for i in 0..30 {
            let id = format!("w{i}");
            publish_conversion(&backend, "alice", &id).await;
            if let Some(msg) = socket.recv_within(Duration::from_millis(500)).await {
                first = Some(msg);
                break;
            }
        }
        let first = first.unwrap_or_else(|| panic!("{kind:?}: no event reached B"));
        assert_eq!(first["type"], "next", "{kind:?}: {first}");
        let got = &first["payload"]["data"]["conversions"];
        assert!(
            got["id"].as_str().is_some_and(|id| id.starts_with('w')),
            "{kind:?}: {first}"
        );
        assert_eq!(got["amount"], "10.00", "{kind:?}: {first}");
        // Anything published before the first one arrived may still come; skip to ours.
        for id in ["last-1", "last-2"] {
            publish_conversion(&backend, "alice", id).await;
        }
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let msg = tokio::time::timeout(PATIENCE, socket.recv())
                .await
                .unwrap_or_else(|_| panic!("{kind:?}: events in time"));
            assert_eq!(msg["type"], "next", "{kind:?}: {msg}");
            let id = msg["payload"]["data"]["conversions"]["id"]
                .as_str()
                .expect("id")
                .to_owned();
            if id.starts_with("last-") {
                seen.push(id);
            }
        }
        assert_eq!(seen, ["last-1", "last-2"], "{kind:?}: in order");
        socket.close().await;
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_through_one_device_instance_answers_a_poll_held_on_another() {
    let http = http();
    for kind in BROKERS {
        let config = bus_config(kind);
        let a = device_instance(&config).await;
        let b = device_instance(&config).await;

        // The first poll (on B) brings the configuration and no command.
        let (cursor, commands) = poll(&http, b.addr, None, 0).await;
        assert!(commands.is_empty(), "{kind:?}: {commands:?}");

        // A poll held on B, woken by a command sent through A's admin API.
        let held = {
            let (http, cursor) = (http.clone(), cursor.clone());
            let addr = b.addr;
            tokio::spawn(async move { poll(&http, addr, Some(&cursor), 10).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_command(&http, a.addr, "cmd-1").await;
        let (next, commands) = tokio::time::timeout(PATIENCE, held)
            .await
            .expect("the held poll answers in time")
            .expect("poll task");
        assert_eq!(commands, ["cmd-1"], "{kind:?}");

        // And the same cursor on A brings the same command: one history for both.
        let (next_a, commands) = poll(&http, a.addr, Some(&cursor), 0).await;
        assert_eq!(commands, ["cmd-1"], "{kind:?}");
        assert_eq!(
            next_a, next,
            "{kind:?}: both instances give the same cursor"
        );
        a.stop().await;
        b.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Resume elsewhere.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mobile_client_resumes_on_another_instance_with_exactly_what_it_missed() {
    for kind in BROKERS {
        let config = bus_config(kind);
        let backend = bus_client(&config).await;
        let a = mobile_instance(&config).await;
        let b = mobile_instance(&config).await;

        let mut on_a = RawMobile::signed_in(a.addr, "alice").await;
        on_a.subbed("conversions", None).await;
        let mut last = None;
        for i in 0..3 {
            let id = format!("seen-{i}");
            let position = publish_conversion(&backend, "alice", &id).await;
            let event = on_a.event().await;
            assert_eq!(event.data["id"], id.as_str(), "{kind:?}");
            assert_eq!(event.position(), position, "{kind:?}");
            last = Some(event.position());
        }
        let last = last.expect("three events seen");

        // A goes away; the backend keeps publishing.
        a.stop().await;
        drop(on_a);
        let mut missed = Vec::new();
        for i in 0..4 {
            let id = format!("missed-{i}");
            missed.push((id.clone(), publish_conversion(&backend, "alice", &id).await));
        }

        // A new socket on B resumes after the last position seen on A.
        let mut on_b = RawMobile::signed_in(b.addr, "alice").await;
        let subbed = on_b.subbed("conversions", Some(last)).await;
        assert_eq!(subbed.epoch, last.epoch, "{kind:?}: the same epoch on B");
        for (id, position) in &missed {
            let event = on_b.event().await;
            assert_eq!(event.data["id"], id.as_str(), "{kind:?}: in order");
            assert_eq!(event.position(), *position, "{kind:?}");
        }
        // Nothing else: no duplicate of what A delivered or of the missed ones.
        let extra = on_b.recv_within(Duration::from_millis(500)).await;
        assert!(extra.is_none(), "{kind:?}: unexpected {extra:?}");
        // And live delivery goes on after the resumed ones.
        let next = publish_conversion(&backend, "alice", "live").await;
        let event = on_b.event().await;
        assert_eq!(event.data["id"], "live", "{kind:?}");
        assert_eq!(event.position(), next, "{kind:?}");
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cursor_from_one_instance_brings_exactly_the_newer_commands_on_another() {
    let http = http();
    for kind in BROKERS {
        let config = bus_config(kind);
        let a = device_instance(&config).await;
        let b = device_instance(&config).await;

        let (start, _) = poll(&http, a.addr, None, 0).await;
        for id in ["c1", "c2"] {
            send_command(&http, a.addr, id).await;
        }
        let (acked, commands) = poll(&http, a.addr, Some(&start), 0).await;
        assert_eq!(commands, ["c1", "c2"], "{kind:?}");

        // A stops; commands keep coming (through B's admin API now).
        a.stop().await;
        for id in ["c3", "c4"] {
            send_command(&http, b.addr, id).await;
        }
        let (_, commands) = poll(&http, b.addr, Some(&acked), 0).await;
        assert_eq!(
            commands,
            ["c3", "c4"],
            "{kind:?}: exactly the unacknowledged ones"
        );
        // A device that lost A's answer polls B with its older cursor: everything after it.
        let (_, commands) = poll(&http, b.addr, Some(&start), 0).await;
        assert_eq!(commands, ["c1", "c2", "c3", "c4"], "{kind:?}");
        b.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Upstream failover: one exchange watch for the cluster, taken over when its holder stops.
// ---------------------------------------------------------------------------------------------

/// The exchange's `/v1/stats`.
async fn exchange_stats(http: &reqwest::Client, addr: std::net::SocketAddr) -> Value {
    http.get(format!("http://{addr}/v1/stats"))
        .send()
        .await
        .expect("stats answer")
        .json()
        .await
        .expect("JSON")
}

/// The next rates event of `sub` (a state topic has no gaps).
async fn next_rate(kind: BusKind, sub: &mut mobile_client::Subscription) -> Position {
    let update = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{kind:?}: a tick in time"))
        .expect("subscription open");
    let Update::Event { position, data, .. } = update else {
        panic!("{kind:?}: expected a rate, got {update:?}");
    };
    assert_eq!(data["pair"], "EUR/USD", "{kind:?}: {data}");
    position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_watch_for_the_cluster_taken_over_when_its_holder_stops() {
    let http = http();
    for kind in BROKERS {
        let exchange_config = demo_services::exchange::Config {
            tick_interval_ms: 20,
            ..Default::default()
        };
        let exchange = Instance::start("exchange", move |l, t| {
            demo_services::exchange::run(exchange_config, l, t)
        })
        .await;
        let ticks = format!("ws://{}/v1/ticks", exchange.addr);

        let config = bus_config(kind);
        let backend = bus_client(&config).await;
        let start = |ticks: String| {
            let config = config.clone();
            async move {
                let bus = bus_client(&config).await;
                // The gateway's own bus section: its cluster lease is built from it.
                let mut c = bff_mobile::Config {
                    bus: config.clone(),
                    ..Default::default()
                };
                c.auth.hs256_secret = SECRET.to_owned();
                c.server.drain_timeout_ms = 2_000;
                let mut bridge = switchyard_core::config::BridgeConfig::new(ticks);
                bridge.lease_ttl_ms = 600;
                bridge.reconnect_initial_ms = 50;
                bridge.reconnect_max_ms = 200;
                c.bridges.insert("exchange".to_owned(), bridge);
                Instance::start("bff-mobile", move |l, t| bff_mobile::run(c, bus, l, t)).await
            }
        };
        let connect = |addr: std::net::SocketAddr| async move {
            let config = MobileConfig::new(format!("ws://{addr}/v1/ws"), token("carol"));
            tokio::time::timeout(PATIENCE, MobileClient::connect(config))
                .await
                .expect("connect in time")
                .expect("connects")
        };

        // A first: its client's interest makes A take the lease and watch the pair upstream.
        let a = start(ticks.clone()).await;
        let on_a = connect(a.addr).await;
        let mut rates_a = on_a.subscribe("rates:EUR/USD").await.expect("subscribed");
        next_rate(kind, &mut rates_a).await;
        // Then B, with a client of its own on the same pair: ticks reach it, through A's watch.
        let b = start(ticks).await;
        let on_b = connect(b.addr).await;
        let mut rates_b = on_b.subscribe("rates:EUR/USD").await.expect("subscribed");
        next_rate(kind, &mut rates_b).await;
        next_rate(kind, &mut rates_a).await;
        let stats = exchange_stats(&http, exchange.addr).await;
        assert_eq!(
            (&stats["watchers"], &stats["connections_total"]),
            (&json!({"EUR/USD": 1}), &json!(1)),
            "{kind:?}: one upstream connection and watch for both instances: {stats}"
        );

        // A (the lease holder) stops, and its upstream connection with it.
        on_a.close().await;
        drop(rates_a);
        a.stop().await;
        // B takes the lease over and opens the one upstream watch: a second connection in all,
        // the first one closed.
        let taken_over = test_support::eventually(PATIENCE, || {
            let http = http.clone();
            async move {
                let stats = exchange_stats(&http, exchange.addr).await;
                stats["connections_total"] == 2
                    && stats["connections"] == 1
                    && stats["watchers"] == json!({"EUR/USD": 1})
            }
        })
        .await;
        assert!(
            taken_over,
            "{kind:?}: B did not take the watch over: {}",
            exchange_stats(&http, exchange.addr).await
        );
        // From now on only B publishes the pair: its client gets ticks newer than the head.
        let topic = Topic::new("rates.EUR/USD").expect("topic");
        let head = backend.head(&topic).await.expect("head");
        let newer = tokio::time::timeout(PATIENCE, async {
            loop {
                let p = next_rate(kind, &mut rates_b).await;
                if p.epoch != head.epoch || p.offset > head.offset {
                    return p;
                }
            }
        })
        .await;
        assert!(
            newer.is_ok(),
            "{kind:?}: B's client got no tick after the take-over (head {head:?})"
        );

        on_b.close().await;
        b.stop().await;
        exchange.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_holder_that_died_expires_and_a_live_instance_takes_over() {
    let http = http();
    for kind in BROKERS {
        let exchange_config = demo_services::exchange::Config {
            tick_interval_ms: 20,
            ..Default::default()
        };
        let exchange = Instance::start("exchange", move |l, t| {
            demo_services::exchange::run(exchange_config, l, t)
        })
        .await;

        // An instance took the pair's lease and died: it never renews nor releases it.
        let config = bus_config(kind);
        let lease = switchyard_core::bus::lease::from_config(&config);
        let name = Topic::new("bridge:exchange:rates.EUR/USD").expect("lease name");
        let ttl = Duration::from_millis(600);
        let taken = tokio::time::timeout(PATIENCE, lease.acquire(&name, "crashed-instance", ttl))
            .await
            .expect("acquire in time")
            .expect("the broker answers");
        assert!(taken, "{kind:?}: the dead instance held the lease");

        // A live instance with interest in the pair: its client gets ticks once the dead
        // holder's lease has expired and this instance has taken it.
        let bus = bus_client(&config).await;
        let mut c = bff_mobile::Config {
            bus: config.clone(),
            ..Default::default()
        };
        c.auth.hs256_secret = SECRET.to_owned();
        c.server.drain_timeout_ms = 2_000;
        let mut bridge =
            switchyard_core::config::BridgeConfig::new(format!("ws://{}/v1/ticks", exchange.addr));
        bridge.lease_ttl_ms = 600;
        c.bridges.insert("exchange".to_owned(), bridge);
        let live = Instance::start("bff-mobile", move |l, t| bff_mobile::run(c, bus, l, t)).await;
        let client_config = MobileConfig::new(format!("ws://{}/v1/ws", live.addr), token("dave"));
        let client = tokio::time::timeout(PATIENCE, MobileClient::connect(client_config))
            .await
            .expect("connect in time")
            .expect("connects");
        let mut rates = client.subscribe("rates:EUR/USD").await.expect("subscribed");
        next_rate(kind, &mut rates).await;
        next_rate(kind, &mut rates).await;
        let stats = exchange_stats(&http, exchange.addr).await;
        assert_eq!(
            stats["watchers"],
            json!({"EUR/USD": 1}),
            "{kind:?}: {stats}"
        );
        // The lease is the live instance's now: the dead holder cannot renew it.
        let renewed = lease
            .renew(&name, "crashed-instance", ttl)
            .await
            .expect("the broker answers");
        assert!(!renewed, "{kind:?}: the dead holder's lease was taken over");

        client.close().await;
        live.stop().await;
        exchange.stop().await;
    }
}
