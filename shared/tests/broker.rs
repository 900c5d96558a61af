//! One broker, one set of connections: a [`Broker`]'s bus, its leases, the rate limiter and the
//! records built on it all use the same broker client. Counted on the broker's side, on a
//! Redis and a NATS server of the test's own (so nothing else connects to them): Redis's
//! `CLIENT LIST`, NATS's monitoring endpoint (`/connz`). A control step checks that the count
//! sees a second client: a second [`Broker`]'s lease service opens one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{Broker, BusConfig, BusKind, Delivery, Retention, StartAt};
use switchyard_core::event::Topic;
use switchyard_core::ratelimit::{Key, RateLimitConfig, RateLimiter, Rule, Scope};

/// A broker server of this test's own on free ports, killed when dropped.
struct Server {
    kind: BusKind,
    port: u16,
    /// NATS's monitoring port.
    monitor: u16,
    dir: PathBuf,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Server {
    fn start(kind: BusKind) -> Self {
        let (port, monitor) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("switchyard-broker-{port}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cmd = if kind == BusKind::Redis {
            let mut c = Command::new("redis-server");
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"]);
            c
        } else {
            let mut c = Command::new("nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string(), "-js", "-sd"])
                .arg(&dir);
            c
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server / nats-server (both must be installed)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{kind:?} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            kind,
            port,
            monitor,
            dir,
            child,
        }
    }

    fn config(&self) -> BusConfig {
        let scheme = if self.kind == BusKind::Redis {
            "redis"
        } else {
            "nats"
        };
        BusConfig {
            url: format!("{scheme}://127.0.0.1:{}", self.port),
            prefix: "broker-test".into(),
            ..BusConfig::of(self.kind)
        }
    }

    /// Client connections the server has now, the test's own inspection excluded.
    async fn connections(&self) -> usize {
        if self.kind == BusKind::Redis {
            let client = redis::Client::open(self.config().url).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("inspect");
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .expect("CLIENT LIST");
            list.lines()
                .filter(|l| !l.contains("cmd=client|list"))
                .count()
        } else {
            let url = format!("http://127.0.0.1:{}/connz", self.monitor);
            let connz: serde_json::Value = reqwest::get(url)
                .await
                .expect("connz")
                .json()
                .await
                .expect("connz json");
            let n = connz["num_connections"].as_u64().expect("num_connections");
            usize::try_from(n).expect("count")
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Uses every part of one broker, then counts its clients on the server: `expected` (Redis: the
/// command connection and the pub/sub connection; NATS: one client).
async fn everything_shares_one_client(kind: BusKind, expected: usize, grouped: bool) {
    let server = Server::start(kind);
    let config = server.config();
    let mut retention = Retention::new(config.history_events, None);
    if grouped {
        retention = retention.grouped("rates.{pair}");
    }
    let broker = Broker::connect_with(&config, retention);
    assert_eq!(broker.kind(), kind);

    let bus = broker.bus();
    let topic = Topic::new("rates.EUR/USD").expect("topic");
    let mut sub = bus
        .subscribe(&topic, StartAt::Live)
        .await
        .expect("subscribe");
    bus.publish(&topic, Bytes::from_static(b"1.08"))
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(
        matches!(got, Ok(Some(Delivery::Event(ref e))) if e.payload == Bytes::from_static(b"1.08")),
        "{got:?}"
    );

    let lease = broker.lease();
    let ttl = Duration::from_secs(30);
    assert!(lease.acquire(&topic, "a", ttl).await.expect("acquire"));

    let limiter = RateLimiter::new("gw", &RateLimitConfig::default(), &broker);
    let key = Key::ip(Scope::Request, "10.0.0.1".parse().expect("ip"));
    assert!(limiter.check(&key, Rule::per_second(5, 5)).await.is_ok());
    assert_eq!(limiter.fallbacks(), 0, "the check was made on the broker");

    let records = switchyard_core::records::on(&broker, "devices");
    let value = Bytes::from_static(b"hash");
    assert!(records.create("tv-1", value.clone()).await.expect("create"));
    assert_eq!(records.get("tv-1").await.expect("get"), Some(value));

    assert_eq!(server.connections().await, expected, "{kind:?}");

    // Control: the lease service of a second broker is one more client, and the count sees it.
    let own = Broker::connect(&config).lease();
    let other = Topic::new("rates.EUR/GBP").expect("topic");
    assert!(own.acquire(&other, "b", ttl).await.expect("acquire"));
    assert_eq!(server.connections().await, expected + 1, "{kind:?}");
}

#[tokio::test]
async fn on_redis_the_bus_leases_rate_limits_and_records_share_two_connections() {
    everything_shares_one_client(BusKind::Redis, 2, false).await;
}

#[tokio::test]
async fn on_nats_the_bus_leases_rate_limits_and_records_share_one_client() {
    everything_shares_one_client(BusKind::Nats, 1, false).await;
}

#[tokio::test]
async fn on_nats_channels_of_one_pattern_share_the_one_client_too() {
    everything_shares_one_client(BusKind::Nats, 1, true).await;
}
