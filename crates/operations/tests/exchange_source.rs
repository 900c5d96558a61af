//! The exchange as a `json-ws` source (configuration only: `operations::sources::exchange_source`)
//! against the real exchange service: however many local subscribers a rates channel has, the
//! exchange sees one connection and one watch per pair; the watch is released with the last
//! subscriber; and a restarted exchange is reconnected to and re-watched by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use demo_api::{ExchangeStats, Pair, Rate};
use demo_services::exchange;
use operations::sources::{exchange_source, rates_topic};
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, StartAt};
use switchyard_core::channels::Catalog;
use switchyard_core::event::Event;
use switchyard_core::hub::HubConfig;
use switchyard_core::hub::{Hub, Item, Subscriber};
use switchyard_core::sources::Source;
use switchyard_server::config::ServerConfig;
use switchyard_server::server::CancellationToken;
use test_support::eventually;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A real exchange service on a loopback port, ticking every 20 ms.
struct Exchange {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exchange {
    /// Starts on `addr` (port 0 for any), retrying the bind briefly: a port just released may
    /// take a moment to be free again.
    async fn start(addr: SocketAddr) -> Self {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("bind {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("bound address");
        let config = exchange::Config {
            server: ServerConfig {
                drain_timeout_ms: 2_000,
                ..ServerConfig::on(addr)
            },
            tick_interval_ms: 20,
            ..exchange::Config::default()
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(exchange::run(config, listener, stop.clone()));
        let task = tokio::spawn(async move {
            task.await.expect("exchange task").expect("exchange serves");
        });
        Self { addr, stop, task }
    }

    async fn stats(&self) -> ExchangeStats {
        reqwest::get(format!("http://{}/v1/stats", self.addr))
            .await
            .expect("stats answered")
            .json()
            .await
            .expect("stats decoded")
    }

    /// Whether the exchange reports exactly these connections and watchers.
    async fn reports(&self, connections: u64, watchers: &[(&str, u64)]) -> bool {
        let stats = self.stats().await;
        stats.connections == connections
            && stats.watchers
                == watchers
                    .iter()
                    .map(|(p, n)| ((*p).to_owned(), *n))
                    .collect()
    }

    /// Stops the service and waits until its port refuses connections.
    async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("exchange stops within the drain timeout")
            .expect("exchange task");
        let addr = self.addr;
        assert!(
            eventually(
                WAIT,
                || async move { TcpStream::connect(addr).await.is_err() }
            )
            .await,
            "the exchange's port is closed"
        );
    }
}

fn pair(p: &str) -> Pair {
    p.parse().expect("valid pair")
}

/// The demo catalog, which makes the rates channels state topics.
fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::new(&operations::channels::demo()).expect("the demo catalog"))
}

/// The shipped exchange source, pointed at `exchange`, reconnecting quickly.
fn source(exchange: &Exchange, bus: Arc<MemoryBus>) -> Source {
    let mut config = exchange_source(&format!("ws://{}/v1/ticks", exchange.addr));
    config.connect_timeout_ms = 1_000;
    config.reconnect_initial_ms = 20;
    config.reconnect_max_ms = 200;
    Source::start("exchange", &config, catalog(), bus).expect("the exchange source starts")
}

async fn next_event(sub: &mut Subscriber) -> Event {
    match timeout(WAIT, sub.next())
        .await
        .expect("an event within the wait")
        .expect("subscription open")
    {
        Item::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn rate(e: &Event) -> Rate {
    serde_json::from_slice(&e.payload).expect("the payload is a demo_api::Rate")
}

async fn subscribe_n(hub: &Hub, pair: Pair, n: usize) -> Vec<Subscriber> {
    let topic = rates_topic(&pair);
    let mut subs = Vec::with_capacity(n);
    for _ in 0..n {
        subs.push(
            hub.subscribe(&topic, StartAt::Live)
                .await
                .expect("subscribe"),
        );
    }
    for sub in &mut subs {
        assert_eq!(rate(&next_event(sub).await).pair, pair);
    }
    subs
}

/// A hub as a gateway builds it with the demo catalog, fed by `source` for its channels.
fn demo_hub(bus: Arc<MemoryBus>, source: &Source) -> Hub {
    assert_eq!(source.topic_prefix(), operations::sources::RATES_PREFIX);
    Hub::new(bus, HubConfig::default())
        .with_catalog(catalog())
        .with_feeder(&source.topic_prefix(), Arc::new(source.clone()))
}

#[tokio::test]
async fn many_subscribers_share_one_upstream_watch_released_with_the_last() {
    let exchange = Exchange::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let bus = Arc::new(MemoryBus::new(64));
    let source = source(&exchange, bus.clone());
    let hub = demo_hub(bus, &source);
    let (eur, gbp) = (pair("EUR/USD"), pair("GBP/USD"));

    let mut eur_subs = subscribe_n(&hub, eur, 200).await;
    assert!(eventually(WAIT, || exchange.reports(1, &[("EUR/USD", 1)])).await);
    // Ticks keep coming, in order.
    let a = rate(&next_event(&mut eur_subs[0]).await);
    let b = rate(&next_event(&mut eur_subs[0]).await);
    assert!(b.seq > a.seq, "{} then {}", a.seq, b.seq);

    let gbp_subs = subscribe_n(&hub, gbp, 200).await;
    assert!(
        eventually(WAIT, || exchange
            .reports(1, &[("EUR/USD", 1), ("GBP/USD", 1)]))
        .await
    );
    assert_eq!(exchange.stats().await.connections_total, 1);
    let stats = source.stats();
    assert!(stats.connected);
    assert_eq!(stats.wanted_channels, 2);
    assert_eq!(stats.connects_total, 1);
    assert!(stats.events_total >= 2);
    assert_eq!(hub.active_topics(), 2);

    drop(eur_subs);
    assert!(eventually(WAIT, || exchange.reports(1, &[("GBP/USD", 1)])).await);
    drop(gbp_subs);
    assert!(eventually(WAIT, || exchange.reports(0, &[])).await);
    assert_eq!(hub.active_topics(), 0);
    assert_eq!(source.stats().wanted_channels, 0);
    assert!(eventually(WAIT, || async { !source.stats().connected }).await);
    assert_eq!(exchange.stats().await.connections_total, 1);

    // Interest again opens one new connection.
    let _again = subscribe_n(&hub, eur, 3).await;
    assert!(eventually(WAIT, || exchange.reports(1, &[("EUR/USD", 1)])).await);
    assert_eq!(exchange.stats().await.connections_total, 2);
}

#[tokio::test]
async fn a_restarted_exchange_is_reconnected_and_rewatched_by_itself() {
    let exchange = Exchange::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let addr = exchange.addr;
    let bus = Arc::new(MemoryBus::new(64));
    let source = source(&exchange, bus.clone());
    let hub = demo_hub(bus.clone(), &source);
    let eur = pair("EUR/USD");
    let topic = rates_topic(&eur);
    let mut sub = hub.subscribe(&topic, StartAt::Live).await.unwrap();
    assert_eq!(rate(&next_event(&mut sub).await).pair, eur);
    assert!(eventually(WAIT, || exchange.reports(1, &[("EUR/USD", 1)])).await);

    exchange.stop().await;
    assert!(eventually(WAIT, || async { !source.stats().connected }).await);
    // Nothing more comes from the old exchange: anything after this head is from the new one.
    let head = bus.head(&topic).await.unwrap();
    assert_eq!(
        source.stats().wanted_channels,
        1,
        "the subscriber still wants it"
    );

    let exchange = Exchange::start(addr).await;
    let resumed = loop {
        let e = next_event(&mut sub).await;
        if e.offset > head.offset {
            break rate(&e);
        }
    };
    assert_eq!(resumed.pair, eur);
    assert!(eventually(WAIT, || exchange.reports(1, &[("EUR/USD", 1)])).await);
    assert_eq!(exchange.stats().await.connections_total, 1);
    assert_eq!(source.stats().connects_total, 2);
    let later = rate(&next_event(&mut sub).await);
    assert!(
        later.seq > resumed.seq,
        "{} then {}",
        resumed.seq,
        later.seq
    );

    drop(sub);
    assert!(eventually(WAIT, || exchange.reports(0, &[])).await);
}
