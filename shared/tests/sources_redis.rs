//! `redis-pubsub` sources against the real Redis at 127.0.0.1:6379 (started by
//! `scripts/services`; a Redis that is down fails these tests): messages PUBLISHed on channels
//! of the source's pattern reach the bus for wanted channels, the Redis channel name maps to a
//! catalog channel through an `@channel` capture, garbage is counted and never stops the source,
//! a killed connection is reopened and subscribes again, and the connection is open only while
//! a channel is wanted.
//!
//! Every test uses Redis channels under a prefix of its own, so tests (and other runs) never see
//! each other's messages. The source reaches Redis through a transparent TCP relay of the test's
//! own, which tells the test the address its connection has at Redis: the test kills exactly
//! that client (`CLIENT KILL ID`), never another test's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, Delivery, StartAt, Subscription};
use switchyard_core::channels::{Catalog, ChannelName, ChannelsConfig};
use switchyard_core::sources::{Source, SourceConfig};
use test_support::{eventually, unique_name};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const REDIS: &str = "redis://127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(5);

/// The catalog of these tests (as in docs/sources.md).
const CATALOG: &str = r#"
[[catalog]]
pattern = "tenants.{tenant}.orders"
class = "stream"
max_payload_bytes = 512
subscribe = { rule = "public" }
"#;

/// The source of these tests (as in docs/sources.md, where `PREFIX:` is empty); `PREFIX` is
/// replaced by the test's own, and the url by the relay's.
const SOURCE: &str = r#"
kind = "redis-pubsub"
url = "redis://127.0.0.1:6379"
channels = "tenants.{tenant}.orders"
patterns = ["PREFIX:shop:*:orders"]
max_message_bytes = 1024
reconnect_initial_ms = 50
reconnect_max_ms = 1000

[[messages]]
capture = { "@channel" = "PREFIX:shop:{tenant}:orders" }
"#;

/// A transparent TCP relay to Redis: the Redis-side addresses of its open connections.
struct Relay {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Relay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let open = Arc::new(Mutex::new(Vec::new()));
        let relayed = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect("127.0.0.1:6379").await else {
                    continue;
                };
                let Ok(local) = outbound.local_addr() else {
                    continue;
                };
                let open = relayed.clone();
                open.lock().unwrap().push(local);
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    open.lock().unwrap().retain(|a| *a != local);
                });
            }
        });
        Self { addr, open }
    }

    fn open(&self) -> Vec<SocketAddr> {
        self.open.lock().unwrap().clone()
    }
}

struct Kit {
    prefix: String,
    redis: redis::aio::MultiplexedConnection,
    bus: Arc<MemoryBus>,
    catalog: Arc<Catalog>,
    source: Source,
    relay: Relay,
}

impl Kit {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A kit whose source's configuration `change` adjusts first.
    async fn with(change: impl FnOnce(&mut SourceConfig)) -> Self {
        let prefix = unique_name("srcs");
        let client = redis::Client::open(REDIS).expect("redis url");
        let redis = timeout(WAIT, client.get_multiplexed_async_connection())
            .await
            .expect("redis answers in time")
            .expect("redis at 127.0.0.1:6379 (run scripts/services)");
        let catalog: ChannelsConfig = toml::from_str(CATALOG).expect("catalog");
        let catalog = Arc::new(Catalog::new(&catalog).expect("catalog"));
        let bus = Arc::new(MemoryBus::new(100));
        let relay = Relay::start().await;
        let mut config = config(&prefix);
        config.url = format!("redis://{}", relay.addr);
        change(&mut config);
        let source =
            Source::start("shop", &config, catalog.clone(), bus.clone()).expect("source starts");
        Self {
            prefix,
            redis,
            bus,
            catalog,
            source,
            relay,
        }
    }

    /// PUBLISHes `payload` on `PREFIX:channel`; how many subscribers received it.
    async fn publish(&mut self, channel: &str, payload: &str) -> i64 {
        redis::cmd("PUBLISH")
            .arg(format!("{}:{channel}", self.prefix))
            .arg(payload)
            .query_async(&mut self.redis)
            .await
            .expect("publish")
    }

    async fn subscribe(&self, channel: &str) -> Subscription {
        let topic = self.catalog.resolve(channel).expect("in catalog").topic();
        self.bus
            .subscribe(&topic, StartAt::Live)
            .await
            .expect("subscribe")
    }

    async fn connected(&self, connects: u64) {
        let source = self.source.clone();
        assert!(
            eventually(WAIT, || {
                let s = source.stats();
                async move { s.connected && s.connects_total == connects }
            })
            .await,
            "the source connects ({connects}): {:?}",
            self.source.stats()
        );
    }

    /// The source's connection as Redis lists it (one pattern subscribed), if open.
    async fn source_client(&mut self) -> Option<RedisClient> {
        let open = self.relay.open();
        assert!(open.len() <= 1, "one connection at most: {open:?}");
        let addr = open.first()?.to_string();
        pubsub_clients(&mut self.redis)
            .await
            .into_iter()
            .find(|c| c.addr == addr && c.psub == 1)
    }
}

fn config(prefix: &str) -> SourceConfig {
    toml::from_str(&SOURCE.replace("PREFIX", prefix)).expect("source config")
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("channel name")
}

/// A line of `CLIENT LIST TYPE pubsub`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RedisClient {
    id: u64,
    addr: String,
    psub: u64,
}

async fn pubsub_clients(redis: &mut redis::aio::MultiplexedConnection) -> Vec<RedisClient> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(redis)
        .await
        .expect("client list");
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            Some(RedisClient {
                id: field("id")?.parse().ok()?,
                addr: field("addr")?.to_owned(),
                psub: field("psub")?.parse().ok()?,
            })
        })
        .collect()
}

async fn next(sub: &mut Subscription) -> (String, u64) {
    match timeout(WAIT, sub.next()).await {
        Ok(Some(Delivery::Event(e))) => (String::from_utf8(e.payload.to_vec()).unwrap(), e.offset),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn nothing_more(sub: &mut Subscription) {
    if let Ok(item) = timeout(Duration::from_millis(300), sub.next()).await {
        panic!("expected nothing more, got {item:?}");
    }
}

#[tokio::test]
async fn messages_reach_the_bus_for_wanted_channels() {
    let mut kit = Kit::new().await;
    let mut acme = kit.subscribe("tenants.acme.orders").await;
    let mut globex = kit.subscribe("tenants.globex.orders").await;
    // Nothing is wanted: nothing is subscribed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kit.source.stats().connects_total, 0);
    assert_eq!(kit.publish("shop:acme:orders", r#"{"id":0}"#).await, 0);
    assert_eq!(kit.source_client().await, None);

    let _want = kit
        .source
        .want(&channel("tenants.acme.orders"))
        .expect("fed");
    assert!(kit.source.want(&channel("tenants.acme.refunds")).is_none());
    kit.connected(1).await;
    assert!(kit.source_client().await.is_some());
    assert_eq!(kit.publish("shop:acme:orders", r#"{"id":1}"#).await, 1);
    kit.publish("shop:globex:orders", r#"{"id":2}"#).await;
    kit.publish("shop:acme:refunds", r#"{"id":3}"#).await;
    kit.publish("shop:acme:orders", r#"{"id":4,"lines":[{"sku":"A"}]}"#)
        .await;
    assert_eq!(next(&mut acme).await, (r#"{"id":1}"#.to_owned(), 1));
    assert_eq!(
        next(&mut acme).await,
        (r#"{"id":4,"lines":[{"sku":"A"}]}"#.to_owned(), 2)
    );
    nothing_more(&mut acme).await;
    nothing_more(&mut globex).await;
    let stats = kit.source.stats();
    assert_eq!(stats.events_total, 2, "{stats:?}");
    assert_eq!(stats.unwanted_total, 1, "{stats:?}");
    assert_eq!(stats.unmatched_total + stats.refused_total, 0, "{stats:?}");
}

/// A quiet upstream is pinged every `keepalive_ms`; a healthy Redis answers, and the source keeps
/// its one connection (and its subscription) across many pings: no message is lost to a needless
/// reconnect.
#[tokio::test]
async fn keep_alive_pings_keep_the_one_connection() {
    let mut kit = Kit::with(|c| c.keepalive_ms = 50).await;
    let mut acme = kit.subscribe("tenants.acme.orders").await;
    let _want = kit
        .source
        .want(&channel("tenants.acme.orders"))
        .expect("fed");
    kit.connected(1).await;
    for i in 0..20u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            kit.publish("shop:acme:orders", &format!(r#"{{"id":{i}}}"#))
                .await,
            1,
            "message {i} reached the source"
        );
    }
    for i in 0..20u64 {
        assert_eq!(next(&mut acme).await, (format!(r#"{{"id":{i}}}"#), i + 1));
    }
    let stats = kit.source.stats();
    assert_eq!(stats.connects_total, 1, "{stats:?}");
    assert!(stats.connected, "{stats:?}");
}

#[tokio::test]
async fn garbage_is_counted_and_the_source_keeps_running() {
    let mut kit = Kit::new().await;
    let mut acme = kit.subscribe("tenants.acme.orders").await;
    let _want = kit
        .source
        .want(&channel("tenants.acme.orders"))
        .expect("fed");
    kit.connected(1).await;
    kit.publish("shop:acme:orders", "not json").await;
    kit.publish("shop:acme:orders", "\u{0}\u{ff}").await;
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
    kit.publish("shop:acme:orders", &huge).await;
    kit.publish("shop:a.b:orders", r#"{"id":1}"#).await;
    kit.publish("shop:x:y:orders", r#"{"id":1}"#).await;
    kit.publish("shop:*:orders", r#"{"id":1}"#).await;
    let over_channel_limit = format!(r#"{{"pad":"{}"}}"#, "y".repeat(700));
    kit.publish("shop:acme:orders", &over_channel_limit).await;
    assert_eq!(kit.publish("shop:acme:orders", r#"{"ok":true}"#).await, 1);
    assert_eq!(next(&mut acme).await.0, r#"{"ok":true}"#);
    nothing_more(&mut acme).await;
    let stats = kit.source.stats();
    assert_eq!(stats.unparsable_total, 2, "{stats:?}");
    assert_eq!(stats.oversized_total, 1, "{stats:?}");
    // `a.b`, `x:y` and `*` are no channel segment; 700 bytes are over the channel's limit.
    assert_eq!(stats.refused_total, 4, "{stats:?}");
    assert_eq!(stats.events_total, 1, "{stats:?}");
    assert_eq!(stats.connects_total, 1, "never reconnected: {stats:?}");
}

#[tokio::test]
async fn a_killed_connection_is_reopened_and_subscribes_again() {
    let mut kit = Kit::new().await;
    let mut acme = kit.subscribe("tenants.acme.orders").await;
    let _want = kit
        .source
        .want(&channel("tenants.acme.orders"))
        .expect("fed");
    kit.connected(1).await;
    kit.publish("shop:acme:orders", r#"{"n":1}"#).await;
    assert_eq!(next(&mut acme).await.0, r#"{"n":1}"#);
    let id = kit
        .source_client()
        .await
        .expect("the source's connection")
        .id;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut kit.redis)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);
    kit.connected(2).await;
    let again = kit.source_client().await.expect("a new connection");
    assert_ne!(again.id, id);
    assert_eq!(kit.publish("shop:acme:orders", r#"{"n":2}"#).await, 1);
    assert_eq!(next(&mut acme).await, (r#"{"n":2}"#.to_owned(), 2));
    nothing_more(&mut acme).await;
}

#[tokio::test]
async fn the_connection_closes_when_the_last_guard_drops() {
    let mut kit = Kit::new().await;
    let first = kit
        .source
        .want(&channel("tenants.acme.orders"))
        .expect("fed");
    let second = kit
        .source
        .want(&channel("tenants.globex.orders"))
        .expect("fed");
    kit.connected(1).await;
    let client = kit.source_client().await.expect("the source's connection");
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        kit.source_client().await,
        Some(client.clone()),
        "one channel is still wanted"
    );
    drop(second);
    let id = client.id;
    let redis = kit.redis.clone();
    assert!(
        eventually(WAIT, || {
            let mut redis = redis.clone();
            async move { !pubsub_clients(&mut redis).await.iter().any(|c| c.id == id) }
        })
        .await,
        "the connection is closed"
    );
    assert!(kit.relay.open().is_empty());
    assert!(!kit.source.stats().connected);
    assert_eq!(kit.publish("shop:acme:orders", "{}").await, 0);
    // Wanted again: subscribed again.
    let _again = kit
        .source
        .want(&channel("tenants.acme.orders"))
        .expect("fed");
    kit.connected(2).await;
    assert_eq!(kit.publish("shop:acme:orders", "{}").await, 1);
}

#[tokio::test]
async fn rediss_and_tls_settings_are_refused_naming_the_key() {
    let catalog = Arc::new(Catalog::new(&ChannelsConfig::default()).expect("catalog"));
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(10));
    let mut c = config("p");
    c.url = "rediss://127.0.0.1:6380".into();
    let e = Source::start("shop", &c, catalog.clone(), bus.clone()).unwrap_err();
    assert!(
        e.starts_with("sources.shop.url:") && e.contains("rediss://"),
        "{e}"
    );
    let mut c = config("p");
    c.tls.ca_pem = "/ca.pem".into();
    let e = Source::start("shop", &c, catalog.clone(), bus.clone()).unwrap_err();
    assert!(e.starts_with("sources.shop.tls:"), "{e}");
    let mut c = config("p");
    c.patterns.push(String::new());
    let e = Source::start("shop", &c, catalog, bus).unwrap_err();
    assert!(e.starts_with("sources.shop.patterns[1]:"), "{e}");
}
