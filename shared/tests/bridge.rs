//! Upstream WebSocket bridges against a real WebSocket server speaking a toy protocol: one
//! connection per bridge, one upstream watch per topic however many watchers, release with the
//! last one, hub feeders, bad upstream input, and shutdown.
//!
//! The toy upstream: a client sends `+topic` to watch and `-topic` to unwatch; the server answers
//! a watch with `topic hello`, and the test pushes any other frame it wants through it.

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use switchyard_core::bridge::BridgeConfig;
use switchyard_core::bridge::{Decoded, UpstreamBridge, UpstreamProtocol};
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, StartAt};
use switchyard_core::event::{Topic, TopicClass};
use switchyard_core::hub::HubConfig;
use switchyard_core::hub::{Feeder, Hub, Item, Subscriber};
use test_support::{TestServer, eventually};
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("valid topic")
}

/// The toy protocol. Topics containing `local` are not served by this upstream.
struct Toy;

impl UpstreamProtocol for Toy {
    fn watch(&self, topic: &Topic) -> Option<String> {
        (!topic.as_str().contains("local")).then(|| format!("+{topic}"))
    }
    fn unwatch(&self, topic: &Topic) -> Option<String> {
        Some(format!("-{topic}"))
    }
    fn decode(&self, frame: &str) -> Decoded {
        if frame.is_empty() {
            return Decoded::Ignore;
        }
        let Some((name, payload)) = frame.split_once(' ') else {
            return Decoded::Error(format!("no payload in `{frame}`"));
        };
        match Topic::new(name) {
            Ok(topic) => Decoded::Event {
                topic,
                payload: Bytes::copy_from_slice(payload.as_bytes()),
            },
            Err(e) => Decoded::Error(e.to_string()),
        }
    }
}

/// A frame the test makes the server send to every connection.
#[derive(Debug, Clone)]
enum Push {
    Text(String),
    Binary(Vec<u8>),
}

/// The toy upstream's state: what it was sent, and its connections.
struct ToyServer {
    connections: AtomicU64,
    connections_total: AtomicU64,
    received: Mutex<Vec<String>>,
    push: broadcast::Sender<Push>,
}

impl ToyServer {
    async fn start() -> (Arc<Self>, TestServer) {
        let toy = Arc::new(Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            push: broadcast::channel(16).0,
        });
        let app = Router::new()
            .route("/ws", get(upgrade))
            .with_state(toy.clone());
        (toy, test_support::serve(app).await)
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    fn count(&self, frame: &str) -> usize {
        self.received().iter().filter(|f| *f == frame).count()
    }
}

async fn upgrade(State(toy): State<Arc<ToyServer>>, up: WebSocketUpgrade) -> Response {
    up.on_upgrade(move |socket| serve(socket, toy))
}

/// Uncounts a connection however it ends.
struct Counted(Arc<ToyServer>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut socket: WebSocket, toy: Arc<ToyServer>) {
    let mut push = toy.push.subscribe();
    toy.connections.fetch_add(1, Ordering::SeqCst);
    toy.connections_total.fetch_add(1, Ordering::SeqCst);
    let _counted = Counted(toy.clone());
    loop {
        let out = tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    toy.received.lock().unwrap().push(text.to_string());
                    match text.strip_prefix('+') {
                        Some(t) => Message::Text(format!("{t} hello").into()),
                        None => continue,
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
        };
        if socket.send(out).await.is_err() {
            return;
        }
    }
}

fn config(server: &TestServer) -> BridgeConfig {
    BridgeConfig {
        url: format!("ws://{}/ws", server.addr),
        connect_timeout_ms: 1_000,
        reconnect_initial_ms: 10,
        reconnect_max_ms: 100,
        lease_ttl_ms: 3_000,
        tls: Default::default(),
    }
}

fn bridge(server: &TestServer, bus: Arc<dyn Bus>) -> UpstreamBridge {
    UpstreamBridge::start("toy", &config(server), Arc::new(Toy), bus)
}

async fn payload(sub: &mut Subscriber) -> String {
    match timeout(WAIT, sub.next())
        .await
        .expect("an item within 5 s")
        .expect("subscription open")
    {
        Item::Event(e) => String::from_utf8(e.payload.to_vec()).expect("utf-8 payload"),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn one_connection_carries_one_watch_per_topic_and_closes_when_idle() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let bridge = bridge(&server, bus.clone());
    assert_eq!(bridge.stats().connects_total, 0, "connects lazily");

    let (a, b) = (topic("toy.a"), topic("toy.b"));
    let mut events = bus.subscribe(&a, StartAt::Live).await.unwrap();
    let a1 = bridge.watch(&a);
    let a2 = bridge.watch(&a);
    let b1 = bridge.watch(&b);
    assert!(eventually(WAIT, || async { toy.count("+toy.b") == 1 }).await);
    assert!(eventually(WAIT, || async { toy.count("+toy.a") == 1 }).await);
    let first = timeout(WAIT, futures::StreamExt::next(&mut events))
        .await
        .expect("the watch's answer is published on the bus")
        .expect("bus subscription open");
    assert!(matches!(first, switchyard_core::bus::Delivery::Event(e) if e.payload == "hello"));
    assert_eq!(toy.connections(), 1);
    let stats = bridge.stats();
    assert!(stats.connected);
    assert_eq!(stats.watched_topics, 2);
    assert_eq!(stats.connects_total, 1);
    assert!(eventually(WAIT, || async { bridge.stats().events_total == 2 }).await);

    drop(a1);
    drop(b1);
    assert!(eventually(WAIT, || async { toy.count("-toy.b") == 1 }).await);
    assert_eq!(toy.count("-toy.a"), 0, "a is still watched once");
    drop(a2);
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert_eq!(toy.count("-toy.a"), 1);
    assert!(eventually(WAIT, || async { !bridge.stats().connected }).await);
    assert_eq!(bridge.stats().watched_topics, 0);

    // Interest again: a new connection, the watch sent again.
    let _a3 = bridge.watch(&a);
    assert!(eventually(WAIT, || async { toy.count("+toy.a") == 2 }).await);
    assert_eq!(toy.connections_total(), 2);
    assert_eq!(toy.connections(), 1);
}

#[tokio::test]
async fn the_hub_feeds_a_topic_from_its_first_subscriber_to_its_last() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let bridge = bridge(&server, bus.clone());
    // State topics, like rates: a subscriber that joins after the watch was answered still
    // gets the answer, as the latest value.
    let mut config = HubConfig::default();
    config.topics.insert("toy.".into(), TopicClass::State);
    let hub = Hub::new(bus, config).with_feeder("toy.", Arc::new(bridge.clone()));

    let a = topic("toy.a");
    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(hub.subscribe(&a, StartAt::Live).await.unwrap());
    }
    for sub in &mut subs {
        assert_eq!(payload(sub).await, "hello");
    }
    assert_eq!(toy.count("+toy.a"), 1);
    assert_eq!(toy.connections(), 1);

    // A topic under the prefix that the upstream does not serve opens no watch.
    let local = hub.subscribe(&topic("toy.local"), StartAt::Live).await;
    assert!(local.is_ok());
    assert_eq!(bridge.stats().watched_topics, 1);

    // The upstream pushes: every subscriber gets it.
    toy.push.send(Push::Text("toy.a tick".into())).unwrap();
    for sub in &mut subs {
        assert_eq!(payload(sub).await, "tick");
    }

    subs.truncate(1);
    tokio::task::yield_now().await;
    assert_eq!(toy.count("-toy.a"), 0, "one subscriber is left");
    drop(subs);
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert_eq!(toy.count("-toy.a"), 1);
    assert_eq!(toy.count("+toy.a"), 1);
    assert_eq!(bridge.stats().watched_topics, 0);
}

#[tokio::test]
async fn bad_upstream_input_never_breaks_the_bridge() {
    let (toy, server) = ToyServer::start().await;
    let bus = Arc::new(MemoryBus::new(16));
    let bridge = bridge(&server, bus.clone());
    let hub = Hub::new(bus, HubConfig::default()).with_feeder("toy.", Arc::new(bridge.clone()));
    let mut sub = hub.subscribe(&topic("toy.a"), StartAt::Live).await.unwrap();
    assert_eq!(payload(&mut sub).await, "hello");

    // Ignored or refused: binary, garbage, an invalid topic, an unwatched topic, empty.
    for push in [
        Push::Binary(vec![0, 159, 146, 150]),
        Push::Text("garbage".into()),
        Push::Text("bad topic! x".into()),
        Push::Text("toy.other nobody-asked".into()),
        Push::Text(String::new()),
        Push::Text("toy.a still-here".into()),
    ] {
        toy.push.send(push).unwrap();
    }
    assert_eq!(payload(&mut sub).await, "still-here");
    assert_eq!(bridge.stats().connects_total, 1);

    // Over the message cap: the connection is dropped, reopened and the watch restored.
    let huge = format!("toy.a {}", "x".repeat(2 << 20));
    toy.push.send(Push::Text(huge)).unwrap();
    assert_eq!(payload(&mut sub).await, "hello", "resubscribed by itself");
    assert_eq!(toy.count("+toy.a"), 2);
    assert_eq!(toy.connections_total(), 2);
    assert!(eventually(WAIT, || async { toy.connections() == 1 }).await);
    assert_eq!(bridge.stats().connects_total, 2);
}

#[tokio::test]
async fn shutdown_or_dropping_every_handle_closes_the_upstream() {
    let (toy, server) = ToyServer::start().await;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(16));

    let first = bridge(&server, bus.clone());
    let _guard = first.watch(&topic("toy.a"));
    assert!(eventually(WAIT, || async { toy.connections() == 1 }).await);
    first.shutdown();
    assert!(eventually(WAIT, || async { toy.connections() == 0 }).await);
    assert!(eventually(WAIT, || async { !first.stats().connected }).await);

    let second = bridge(&server, bus);
    let copy = second.clone();
    let _guard = second.watch(&topic("toy.b"));
    assert!(eventually(WAIT, || async { toy.connections() == 1 }).await);
    drop(second);
    tokio::task::yield_now().await;
    assert_eq!(toy.connections(), 1, "a clone still holds the bridge");
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

    let t = topic("a.b.c");
    let s1 = hub.subscribe(&t, StartAt::Live).await.unwrap();
    let s2 = hub.subscribe(&t, StartAt::Live).await.unwrap();
    assert_eq!(long.fed.load(Ordering::SeqCst), 1, "one feed per topic");
    assert_eq!(short.fed.load(Ordering::SeqCst), 0);

    let other = hub.subscribe(&topic("a.x"), StartAt::Live).await.unwrap();
    let none = hub
        .subscribe(&topic("a.b.none"), StartAt::Live)
        .await
        .unwrap();
    let unfed = hub.subscribe(&topic("z"), StartAt::Live).await.unwrap();
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
