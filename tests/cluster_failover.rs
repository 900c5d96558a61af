//! One upstream watch for the cluster, against the real Redis and NATS of this machine
//! (fixtures in `common/cluster.rs`): two bff-mobile instances with clients on one pair make ONE
//! watch at the exchange (its `/v1/stats`); when its holder stops, ticks keep reaching the other
//! instance's client (it took the lease over). And the lease of a holder that died (took it,
//! never renews nor releases) expires: a live instance takes over.
//!
//! A broker that cannot be reached FAILS these tests (`scripts/services` starts both).

mod common;

use std::time::Duration;

use common::PATIENCE;
use common::cluster::{
    BROKERS, bus_client, bus_config, http, mobile_client, mobile_config, mobile_instance_with,
    start_exchange,
};
use mobile_client::Update;
use mobile_proto::Position;
use serde_json::{Value, json};
use switchyard_core::bus::BusKind;
use switchyard_core::event::Topic;

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
        let exchange = start_exchange().await;
        let ticks = format!("ws://{}/v1/ticks", exchange.addr);

        let config = bus_config(kind);
        let backend = bus_client(&config).await;
        let start = |ticks: String| {
            // The gateway's own bus section: its cluster lease is built from it.
            let mut c = mobile_config(&config);
            let mut source = operations::sources::exchange_source(&ticks);
            source.lease_ttl_ms = 600;
            source.reconnect_initial_ms = 50;
            source.reconnect_max_ms = 200;
            c.sources.insert("exchange".to_owned(), source);
            mobile_instance_with(&config, c)
        };
        let connect = |addr| mobile_client(addr, "carol");

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
        // The bus topic of the catalog channel `rates.EUR-USD`.
        let topic = Topic::new("ch:rates.EUR-USD").expect("topic");
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
        let exchange = start_exchange().await;

        // An instance took the pair's lease and died: it never renews nor releases it.
        let config = bus_config(kind);
        let lease = switchyard_core::bus::Broker::connect(&config).lease();
        let name = Topic::new("bridge:exchange:ch:rates.EUR-USD").expect("lease name");
        let ttl = Duration::from_millis(600);
        let taken = tokio::time::timeout(PATIENCE, lease.acquire(&name, "crashed-instance", ttl))
            .await
            .expect("acquire in time")
            .expect("the broker answers");
        assert!(taken, "{kind:?}: the dead instance held the lease");

        // A live instance with interest in the pair: its client gets ticks once the dead
        // holder's lease has expired and this instance has taken it.
        let mut c = mobile_config(&config);
        let mut source =
            operations::sources::exchange_source(&format!("ws://{}/v1/ticks", exchange.addr));
        source.lease_ttl_ms = 600;
        c.sources.insert("exchange".to_owned(), source);
        let live = mobile_instance_with(&config, c).await;
        let client = mobile_client(live.addr, "dave").await;
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
