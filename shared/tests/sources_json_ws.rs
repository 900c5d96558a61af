//! `json-ws` sources against a real WebSocket server speaking a toy JSON protocol: one
//! connection per source, one upstream watch per channel however many want it, released with
//! the last one; hub feeding; garbage from the upstream counted and survived; a restarted
//! upstream; configured headers and keep-alives; shutdown.
//!
//! The toy upstream: a client sends `{"op":"watch","topic":"a"}` to watch and
//! `{"op":"unwatch","topic":"a"}` to unwatch; the server answers a watch with
//! `{"kind":"event","topic":"a","data":{"text":"hello"}}`, answers `{"op":"ping"}` with
//! `{"kind":"pong"}`, and the test pushes any other frame it wants through it. The source feeds
//! catalog channels `toy.{name}` from its events' `/topic`, with their `/data` as the payload.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, Delivery, StartAt};
use switchyard_core::channels::{
    Catalog, ChannelConfig, ChannelName, ChannelsConfig, SubscribeRule,
};
use switchyard_core::event::{Topic, TopicClass};
use switchyard_core::hub::HubConfig;
use switchyard_core::hub::{Feeder, Hub, Item, Subscriber};
use switchyard_core::sources::{Source, SourceConfig, SourceStats};
use test_support::{TestServer, eventually};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

/// Largest upstream frame the test sources take.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest payload the catalog's `toy.{name}` channels take.
const MAX_PAYLOAD_BYTES: usize = 1024;

/// The source, as an operator would configure it (`@URL@` is the toy server's).
const CONFIG: &str = r#"
kind = "json-ws"
url = "@URL@"
channels = "toy.{name}"
subscribe = '{"op":"watch","topic":"{name}"}'
unsubscribe = '{"op":"unwatch","topic":"{name}"}'
headers = { authorization = "Bearer t0ken", x-tenant = "blue" }
connect_timeout_ms = 1000
reconnect_initial_ms = 10
reconnect_max_ms = 100
max_message_bytes = 65536

[[messages]]
when = { "/kind" = "event" }
capture = { "/topic" = "{name}" }
payload = "/data"

[[messages]]
when = { "/kind" = "pong" }
ignore = true
"#;

fn config(addr: SocketAddr) -> SourceConfig {
    let text = CONFIG.replace("@URL@", &format!("ws://{addr}/ws"));
    let config: SourceConfig = toml::from_str(&text).expect("the test's source configuration");
    assert_eq!(config.max_message_bytes, MAX_MESSAGE_BYTES);
    config
}

/// The catalog: `toy.{name}` of `class`, and `toy.{name}.local`, which the source's `channels`
/// template does not cover (another feeder's, say).
fn catalog(class: TopicClass) -> Arc<Catalog> {
    let entry = |pattern: &str| ChannelConfig {
        pattern: pattern.into(),
        class,
        history_events: 100,
        max_payload_bytes: MAX_PAYLOAD_BYTES,
        subscribe: SubscribeRule::Public,
        publishers: Vec::new(),
        idle_expiry_ms: None,
    };
    Arc::new(
        Catalog::new(&ChannelsConfig {
            catalog: vec![entry("toy.{name}"), entry("toy.{name}.local")],
        })
        .expect("catalog"),
    )
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("valid channel")
}

/// The bus topic of channel `name`.
fn topic(name: &str) -> Topic {
    channel(name).topic()
}

fn start(addr: SocketAddr, class: TopicClass, bus: Arc<dyn Bus>) -> Source {
    start_with(&config(addr), class, bus)
}

fn start_with(config: &SourceConfig, class: TopicClass, bus: Arc<dyn Bus>) -> Source {
    Source::start("toy", config, catalog(class), bus).expect("the source starts")
}

/// A hub over `bus` with the catalog of `class` and `source` feeding its channels.
fn hub(bus: Arc<dyn Bus>, class: TopicClass, source: &Source) -> Hub {
    Hub::new(bus, HubConfig::default())
        .with_catalog(catalog(class))
        .with_feeder(&source.topic_prefix(), Arc::new(source.clone()))
}

/// A toy event frame.
fn event(name: &str, data: Value) -> String {
    json!({"kind": "event", "topic": name, "data": data}).to_string()
}

fn watch(name: &str) -> String {
    format!(r#"{{"op":"watch","topic":"{name}"}}"#)
}

fn unwatch(name: &str) -> String {
    format!(r#"{{"op":"unwatch","topic":"{name}"}}"#)
}

const PING: &str = r#"{"op":"ping"}"#;

/// A frame the test makes the server send to every connection.
#[derive(Debug, Clone)]
enum Push {
    Text(String),
    Binary(Vec<u8>),
}

/// The toy upstream's state: what it was sent and sent, and its connections. It outlives its
/// listeners: [`ToyServer::restart`] replaces the listener and drops every connection.
struct ToyServer {
    connections: AtomicU64,
    connections_total: AtomicU64,
    /// Every text frame received, with when.
    received: Mutex<Vec<(Instant, String)>>,
    /// The headers of every WebSocket handshake.
    handshakes: Mutex<Vec<HeaderMap>>,
    push: broadcast::Sender<Push>,
    /// Cancelled to drop every connection of the current generation.
    kill: Mutex<CancellationToken>,
    /// Bumped by every restart.
    generation: AtomicU64,
    /// Events each connection sends by itself, every 20 ms, once a topic is watched (0: none).
    stream_events: AtomicU64,
    /// The next streamed event's sequence number, across connections.
    seq: AtomicU64,
    /// Streamed events written to a connection: (generation, seq).
    streamed: Mutex<Vec<(u64, u64)>>,
}

impl ToyServer {
    async fn start() -> (Arc<Self>, TestServer) {
        let toy = Arc::new(Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            handshakes: Mutex::new(Vec::new()),
            push: broadcast::channel(64).0,
            kill: Mutex::new(CancellationToken::new()),
            generation: AtomicU64::new(0),
            stream_events: AtomicU64::new(0),
            seq: AtomicU64::new(1),
            streamed: Mutex::new(Vec::new()),
        });
        let server = test_support::serve(toy.router()).await;
        (toy, server)
    }

    fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ws", get(upgrade))
            .with_state(self.clone())
    }

    /// Stops `server`, listens again on its address, and then drops every open connection.
    async fn restart(self: &Arc<Self>, server: TestServer) -> TestServer {
        let addr = server.addr;
        drop(server);
        // The port is free again once the old listener is closed.
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("rebinding {addr}: {e}"),
            }
        };
        let server = test_support::serve_on(listener, self.router());
        self.generation.fetch_add(1, Ordering::SeqCst);
        let old = std::mem::replace(&mut *self.kill.lock().unwrap(), CancellationToken::new());
        old.cancel();
        server
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<String> {
        let received = self.received.lock().unwrap();
        received.iter().map(|(_, f)| f.clone()).collect()
    }

    fn count(&self, frame: &str) -> usize {
        self.received().iter().filter(|f| *f == frame).count()
    }

    fn push(&self, push: Push) {
        self.push.send(push).expect("a connection listens");
    }
}

async fn upgrade(
    State(toy): State<Arc<ToyServer>>,
    headers: HeaderMap,
    up: WebSocketUpgrade,
) -> Response {
    toy.handshakes.lock().unwrap().push(headers);
    up.on_upgrade(move |socket| serve(socket, toy))
}

/// Uncounts a connection however it ends (before its socket is closed).
struct Counted(Arc<ToyServer>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut socket: WebSocket, toy: Arc<ToyServer>) {
    let mut push = toy.push.subscribe();
    let kill = toy.kill.lock().unwrap().clone();
    let generation = toy.generation.load(Ordering::SeqCst);
    toy.connections.fetch_add(1, Ordering::SeqCst);
    toy.connections_total.fetch_add(1, Ordering::SeqCst);
    let _counted = Counted(toy.clone());
    let mut streaming: Option<String> = None;
    let mut left = toy.stream_events.load(Ordering::SeqCst);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let out = tokio::select! {
            biased;
            () = kill.cancelled() => return,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    toy.received.lock().unwrap().push((Instant::now(), text.to_string()));
                    let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    match (frame["op"].as_str(), frame["topic"].as_str()) {
                        (Some("watch"), Some(t)) => {
                            streaming = Some(t.to_owned());
                            Message::Text(event(t, json!({"text": "hello"})).into())
                        }
                        (Some("ping"), _) => Message::Text(r#"{"kind":"pong"}"#.into()),
                        _ => continue,
                    }
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return,
            },
            p = push.recv() => match p {
                Ok(Push::Text(s)) => Message::Text(s.into()),
                Ok(Push::Binary(b)) => Message::Binary(b.into()),
                Err(_) => continue,
            },
            _ = tick.tick(), if streaming.is_some() && left > 0 => {
                left -= 1;
                let seq = toy.seq.fetch_add(1, Ordering::SeqCst);
                let name = streaming.as_deref().unwrap_or_default();
                if socket.send(Message::Text(event(name, json!({"seq": seq})).into())).await.is_err() {
                    return;
                }
                toy.streamed.lock().unwrap().push((generation, seq));
                continue;
            }
        };
        if socket.send(out).await.is_err() {
            return;
        }
    }
}

/// The next item's payload, as JSON.
async fn data(sub: &mut Subscriber) -> Value {
    match timeout(WAIT, sub.next())
        .await
        .expect("an item within 5 s")
        .expect("subscription open")
    {
        Item::Event(e) => serde_json::from_slice(&e.payload).expect("a JSON payload"),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The next item's `text`.
async fn text(sub: &mut Subscriber) -> String {
    let data = data(sub).await;
    data["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a text payload, got {data}"))
        .to_owned()
}

#[tokio::test]
async fn one_connection_carries_one_watch_per_channel_and_closes_when_idle() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let source = start(server.addr, TopicClass::State, bus.clone());
    assert_eq!(source.stats().connects_total, 0, "connects lazily");

    let (a, b) = (channel("toy.a"), channel("toy.b"));
    let mut events = bus.subscribe(&a.topic(), StartAt::Live).await.unwrap();
    let a1 = source.want(&a).expect("the source feeds toy.a");
    let a2 = source.want(&a).expect("the source feeds toy.a");
    let b1 = source.want(&b).expect("the source feeds toy.b");
    assert!(eventually(WAIT, || async { toy.count(&watch("b")) == 1 }).await);
    assert!(eventually(WAIT, || async { toy.count(&watch("a")) == 1 }).await);
    let first = timeout(WAIT, futures::StreamExt::next(&mut events))
        .await
        .expect("the watch's answer is published on the bus")
        .expect("bus subscription open");
    assert!(
        matches!(&first, Delivery::Event(e) if e.payload == r#"{"text":"hello"}"#),
        "{first:?}"
    );
    assert_eq!(toy.connections(), 1);
    let stats = source.stats();
    assert!(stats.connected);
    assert_eq!(stats.wanted_channels, 2);
    assert_eq!(stats.connects_total, 1);
    assert!(eventually(WAIT, || async { source.stats().events_total == 2 }).await);

    drop(a1);
    drop(b1);
    assert!(eventually(WAIT, || async { toy.count(&unwatch("b")) == 1 }).await);
    assert_eq!(toy.count(&unwatch("a")), 0, "a is still wanted once");
    drop(a2);
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert_eq!(toy.count(&unwatch("a")), 1);
    assert!(eventually(WAIT, || async { !source.stats().connected }).await);
    assert_eq!(source.stats().wanted_channels, 0);

    // Interest again: a new connection, the watch sent again.
    let _a3 = source.want(&a).expect("the source feeds toy.a");
    assert!(eventually(WAIT, || async { toy.count(&watch("a")) == 2 }).await);
    assert_eq!(toy.connections_total(), 2);
    assert_eq!(toy.connections(), 1);
    // Nothing the upstream sent was refused or lost along the way.
    let stats = source.stats();
    assert_eq!(
        SourceStats {
            connected: true,
            wanted_channels: 1,
            connects_total: 2,
            events_total: stats.events_total,
            ..SourceStats::default()
        },
        stats
    );
}

#[tokio::test]
async fn the_hub_feeds_a_channel_from_its_first_subscriber_to_its_last() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    // State channels, like rates: a subscriber that joins after the watch was answered still
    // gets the answer, as the latest value.
    let source = start(server.addr, TopicClass::State, bus.clone());
    let hub = hub(bus, TopicClass::State, &source);

    let a = topic("toy.a");
    let mut subs = Vec::new();
    for _ in 0..200 {
        subs.push(hub.subscribe(&a, StartAt::Live).await.unwrap());
    }
    for sub in &mut subs {
        assert_eq!(text(sub).await, "hello");
    }
    assert_eq!(toy.count(&watch("a")), 1);
    assert_eq!(toy.connections(), 1);

    // A catalog channel under the source's prefix that its template does not cover opens no
    // watch.
    let local = hub.subscribe(&topic("toy.a.local"), StartAt::Live).await;
    assert!(local.is_ok());
    assert_eq!(source.stats().wanted_channels, 1);
    assert!(source.want(&channel("toy.a.local")).is_none());

    // The upstream pushes: every subscriber gets it.
    toy.push(Push::Text(event("a", json!({"text": "tick"}))));
    for sub in &mut subs {
        assert_eq!(text(sub).await, "tick");
    }

    subs.truncate(1);
    tokio::task::yield_now().await;
    assert_eq!(toy.count(&unwatch("a")), 0, "one subscriber is left");
    drop(subs);
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert_eq!(toy.count(&unwatch("a")), 1);
    assert_eq!(toy.count(&watch("a")), 1);
    assert_eq!(source.stats().wanted_channels, 0);
}

#[tokio::test]
async fn two_hundred_guards_make_one_upstream_watch_and_one_unwatch() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let source = start(server.addr, TopicClass::State, bus);
    let a = channel("toy.a");
    let mut guards: Vec<_> = (0..200)
        .map(|_| source.want(&a).expect("the source feeds toy.a"))
        .collect();
    assert_eq!(
        source.stats().wanted_channels,
        1,
        "guards count per channel"
    );
    assert!(eventually(WAIT, || async { toy.count(&watch("a")) == 1 }).await);

    // Another channel is counted apart; a channel outside the template, or a topic that is no
    // channel, is not fed at all.
    let b = source
        .want(&channel("toy.b"))
        .expect("the source feeds toy.b");
    assert_eq!(source.stats().wanted_channels, 2);
    assert!(source.want(&channel("other.a")).is_none());
    assert!(source.want(&channel("toy.a.b")).is_none());
    assert!(source.feed(&Topic::new("toy.a").expect("topic")).is_none());
    let fed = source.feed(&topic("toy.c")).expect("the hub's way in");
    assert_eq!(source.stats().wanted_channels, 3);
    assert!(eventually(WAIT, || async { toy.count(&watch("c")) == 1 }).await);
    assert_eq!(toy.count(&watch("b")), 1);
    drop((b, fed));
    assert_eq!(source.stats().wanted_channels, 1);
    assert!(eventually(WAIT, || async { toy.count(&unwatch("c")) == 1 }).await);
    assert!(eventually(WAIT, || async { toy.count(&unwatch("b")) == 1 }).await);

    // Every guard but one dropped: still watched.
    guards.truncate(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(toy.count(&unwatch("a")), 0, "one guard is left");
    assert_eq!(source.stats().wanted_channels, 1);

    // The last one released and the channel wanted again before the source's task looked (no
    // await in between, on this single-threaded runtime): no frames at all.
    drop(guards);
    assert_eq!(source.stats().wanted_channels, 0);
    let again = source.want(&a).expect("the source feeds toy.a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        toy.count(&unwatch("a")),
        0,
        "released and wanted again: no frames"
    );
    assert_eq!(toy.count(&watch("a")), 1);

    drop(again);
    assert!(eventually(WAIT, || async { toy.count(&unwatch("a")) == 1 }).await);
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert_eq!(
        toy.count(&watch("a")),
        1,
        "one upstream watch for 200 guards"
    );
    assert_eq!(toy.count(&unwatch("a")), 1);
    assert_eq!(toy.connections_total(), 1);
    assert_eq!(source.stats().wanted_channels, 0);
}

#[tokio::test]
async fn garbage_from_the_upstream_is_counted_and_never_stops_the_source() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let source = start(server.addr, TopicClass::Stream, bus.clone());
    let hub = hub(bus, TopicClass::Stream, &source);
    let mut sub = hub.subscribe(&topic("toy.a"), StartAt::Live).await.unwrap();
    assert_eq!(text(&mut sub).await, "hello");

    let too_large = "x".repeat(MAX_PAYLOAD_BYTES + 1);
    for push in [
        // Binary: refused.
        Push::Binary(vec![0, 159, 146, 150]),
        // Not JSON: unparsable.
        Push::Text("garbage".into()),
        Push::Text(String::new()),
        Push::Text(r#"{"kind":"event","topic":"a""#.into()),
        // No rule: unmatched.
        Push::Text(r#"{"kind":"surprise","topic":"a"}"#.into()),
        Push::Text("[1,2]".into()),
        Push::Text("null".into()),
        // A rule, but no event can be made: refused.
        Push::Text(event("a.b", json!({"text": "dot"}))),
        Push::Text(event("*", json!({"text": "star"}))),
        Push::Text(event(">", json!({"text": "tail"}))),
        Push::Text(r#"{"kind":"event","topic":"a"}"#.into()),
        Push::Text(r#"{"kind":"event","topic":7,"data":{}}"#.into()),
        Push::Text(event("a", json!({"text": too_large}))),
        // A channel nobody here wants: dropped.
        Push::Text(event("other", json!({"text": "nobody-asked"}))),
        // Understood and ignored.
        Push::Text(r#"{"kind":"pong"}"#.into()),
        Push::Text(event("a", json!({"text": "still-here"}))),
    ] {
        toy.push(push);
    }
    assert_eq!(text(&mut sub).await, "still-here");
    // The frames arrive in order on one connection: all of them were handled before the last.
    let stats = source.stats();
    assert_eq!(
        stats,
        SourceStats {
            connected: true,
            wanted_channels: 1,
            connects_total: 1,
            events_total: 2,
            unparsable_total: 3,
            unmatched_total: 3,
            refused_total: 6,
            unwanted_total: 1,
            oversized_total: 0,
            binary_total: 1,
            upstream_errors_total: 0,
            over_capacity_total: 0,
        }
    );

    // Over max_message_bytes: the frame cannot be skipped, so the connection is dropped,
    // reopened and the watch restored.
    let huge = event("a", json!({"text": "x".repeat(MAX_MESSAGE_BYTES + 1)}));
    toy.push(Push::Text(huge));
    assert_eq!(text(&mut sub).await, "hello", "watched again by itself");
    assert_eq!(toy.count(&watch("a")), 2);
    assert_eq!(toy.connections_total(), 2);
    assert!(eventually(WAIT, || async { toy.connections() == 1 }).await);
    let stats = source.stats();
    assert_eq!(stats.oversized_total, 1);
    assert_eq!(stats.connects_total, 2);
    assert!(stats.connected);

    // And it keeps delivering.
    toy.push(Push::Text(event("a", json!({"text": "after"}))));
    assert_eq!(text(&mut sub).await, "after");
    assert_eq!(source.stats().events_total, 4);
}

#[tokio::test]
async fn a_restarted_upstream_is_watched_again_and_nothing_is_duplicated() {
    let (toy, server) = ToyServer::start().await;
    toy.stream_events.store(10, Ordering::SeqCst);
    let bus = Arc::new(MemoryBus::new(64));
    let source = start(server.addr, TopicClass::Stream, bus.clone());
    let hub = hub(bus, TopicClass::Stream, &source);
    let mut sub = hub.subscribe(&topic("toy.a"), StartAt::Live).await.unwrap();

    let mut hellos = 0;
    let mut seqs: Vec<u64> = Vec::new();
    fn take(data: Value, seqs: &mut Vec<u64>, hellos: &mut usize) {
        match data["seq"].as_u64() {
            Some(seq) => seqs.push(seq),
            None => {
                assert_eq!(data, json!({"text": "hello"}));
                *hellos += 1;
            }
        }
    }
    // Mid-stream: a few of the first connection's events are through.
    while toy.streamed.lock().unwrap().len() < 3 {
        let d = data(&mut sub).await;
        take(d, &mut seqs, &mut hellos);
    }
    let server = toy.restart(server).await;
    // Everything the second connection streams arrives, once.
    let second = || -> Vec<u64> {
        let streamed = toy.streamed.lock().unwrap();
        streamed
            .iter()
            .filter(|(g, _)| *g == 1)
            .map(|(_, s)| *s)
            .collect()
    };
    let end = Instant::now() + WAIT;
    loop {
        let sent = second();
        if sent.len() == 10 && sent.iter().all(|s| seqs.contains(s)) {
            break;
        }
        assert!(Instant::now() < end, "sent {sent:?}, got {seqs:?}");
        if let Ok(Some(item)) = timeout(Duration::from_millis(50), sub.next()).await {
            match item {
                Item::Event(e) => take(
                    serde_json::from_slice(&e.payload).expect("JSON"),
                    &mut seqs,
                    &mut hellos,
                ),
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }
    // Nothing more comes.
    assert!(
        timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err()
    );

    let streamed: Vec<u64> = toy
        .streamed
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| *s)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {seqs:?}"
    );
    assert!(
        seqs.iter().all(|s| streamed.contains(s)),
        "only what was sent: {seqs:?} of {streamed:?}"
    );
    assert_eq!(hellos, 2, "one watch answer per connection");
    assert_eq!(toy.count(&watch("a")), 2, "watched again after the restart");
    assert_eq!(toy.connections_total(), 2);
    let stats = source.stats();
    assert!(stats.connected);
    assert_eq!(stats.connects_total, 2);
    // Every handshake carried the configured headers, the second one too.
    let handshakes = toy.handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 2);
    for h in &handshakes {
        assert_eq!(h["authorization"], "Bearer t0ken");
    }
    drop(server);
}

#[tokio::test]
async fn configured_headers_reach_the_upstream_handshake() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let source = start(server.addr, TopicClass::State, bus);
    let _a = source
        .want(&channel("toy.a"))
        .expect("the source feeds toy.a");
    assert!(eventually(WAIT, || async { toy.count(&watch("a")) == 1 }).await);
    let handshakes = toy.handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 1);
    assert_eq!(handshakes[0]["authorization"], "Bearer t0ken");
    assert_eq!(handshakes[0]["x-tenant"], "blue");
    assert_eq!(handshakes[0]["upgrade"], "websocket");

    // Without headers configured, none is sent.
    let mut plain = config(server.addr);
    plain.headers.clear();
    let source = start_with(&plain, TopicClass::State, Arc::new(MemoryBus::new(16)));
    let _b = source
        .want(&channel("toy.b"))
        .expect("the source feeds toy.b");
    assert!(eventually(WAIT, || async { toy.count(&watch("b")) == 1 }).await);
    let handshakes = toy.handshakes.lock().unwrap().clone();
    assert_eq!(handshakes.len(), 2);
    assert!(handshakes[1].get("authorization").is_none());
}

#[tokio::test]
async fn the_keepalive_text_is_sent_every_keepalive_ms() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let mut c = config(server.addr);
    c.keepalive = Some(PING.into());
    c.keepalive_ms = 100;
    let source = start_with(&c, TopicClass::State, bus);
    let _a = source
        .want(&channel("toy.a"))
        .expect("the source feeds toy.a");
    assert!(eventually(WAIT, || async { toy.count(PING) >= 6 }).await);
    let pings: Vec<Instant> = {
        let received = toy.received.lock().unwrap();
        received
            .iter()
            .filter(|(_, f)| f == PING)
            .map(|(at, _)| *at)
            .collect()
    };
    let first_watch = {
        let received = toy.received.lock().unwrap();
        received
            .iter()
            .find(|(_, f)| *f == watch("a"))
            .map(|(at, _)| *at)
            .expect("watched")
    };
    assert!(
        pings[0] >= first_watch + Duration::from_millis(50),
        "the first keep-alive waits an interval"
    );
    let n = pings.len().min(6);
    let mean = (pings[n - 1] - pings[0]) / (n as u32 - 1);
    assert!(
        mean >= Duration::from_millis(50) && mean <= Duration::from_millis(400),
        "a keep-alive every {mean:?}, configured 100 ms"
    );
    // The upstream answers (text and WebSocket pongs): the connection is never taken for silent.
    let stats = source.stats();
    assert!(stats.connected);
    assert_eq!(stats.connects_total, 1);
    assert_eq!(stats.unmatched_total, 0, "pongs are ignored by a rule");
    assert_eq!(toy.count(&watch("a")), 1);
}

#[tokio::test]
async fn shutdown_or_dropping_every_handle_closes_the_upstream() {
    let (toy, server) = ToyServer::start().await;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(16));

    let first = start(server.addr, TopicClass::State, bus.clone());
    let _guard = first.want(&channel("toy.a"));
    assert!(eventually(WAIT, || async { toy.connections() == 1 }).await);
    first.shutdown();
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert!(eventually(WAIT, || async { !first.stats().connected }).await);

    let second = start(server.addr, TopicClass::State, bus);
    let copy = second.clone();
    let _guard = second.want(&channel("toy.b"));
    assert!(eventually(WAIT, || async { toy.connections() == 1 }).await);
    drop(second);
    tokio::task::yield_now().await;
    assert_eq!(toy.connections(), 1, "a clone still holds the source");
    drop(copy);
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert_eq!(toy.connections_total(), 2);
}

/// A feeder that counts the feeds it started and the guards dropped.
#[derive(Default)]
struct Counting {
    fed: AtomicUsize,
    released: Arc<AtomicUsize>,
}

struct Release(Arc<AtomicUsize>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Feeder for Counting {
    fn feed(&self, topic: &Topic) -> Option<Box<dyn Any + Send>> {
        if topic.as_str().ends_with(".none") {
            return None;
        }
        self.fed.fetch_add(1, Ordering::SeqCst);
        Some(Box::new(Release(self.released.clone())))
    }
}

#[tokio::test]
async fn the_longest_feeder_prefix_wins_and_its_guard_lives_as_long_as_the_topic() {
    let bus = Arc::new(MemoryBus::new(16));
    let (short, long) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    let hub = Hub::new(bus, HubConfig::default())
        .with_feeder("a.", short.clone())
        .with_feeder("a.b.", long.clone());

    let t = Topic::new("a.b.c").expect("topic");
    let s1 = hub.subscribe(&t, StartAt::Live).await.unwrap();
    let s2 = hub.subscribe(&t, StartAt::Live).await.unwrap();
    assert_eq!(long.fed.load(Ordering::SeqCst), 1, "one feed per topic");
    assert_eq!(short.fed.load(Ordering::SeqCst), 0);

    let other = hub
        .subscribe(&Topic::new("a.x").expect("topic"), StartAt::Live)
        .await
        .unwrap();
    let none = hub
        .subscribe(&Topic::new("a.b.none").expect("topic"), StartAt::Live)
        .await
        .unwrap();
    let unfed = hub
        .subscribe(&Topic::new("z").expect("topic"), StartAt::Live)
        .await
        .unwrap();
    assert_eq!(short.fed.load(Ordering::SeqCst), 1);
    assert_eq!(hub.active_topics(), 4);

    drop(s1);
    assert_eq!(long.released.load(Ordering::SeqCst), 0);
    drop(s2);
    assert_eq!(long.released.load(Ordering::SeqCst), 1);
    drop((other, none, unfed));
    assert_eq!(short.released.load(Ordering::SeqCst), 1);
    assert_eq!(hub.active_topics(), 0);
}
