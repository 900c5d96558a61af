//! The `socketio` source against a real Socket.IO server: `tests/js/socketio-server.mjs`, the
//! npm `socket.io` package run with node on a free loopback port, a price service on namespace
//! `/market` that checks the auth token, counts joins and leaves per symbol, and emits `price`
//! events to joined symbols every 50 ms. Each test starts its own server and builds the source
//! with [`Source::start`] from the configuration documented in docs/sources.md, over a catalog
//! entry `prices.{symbol}` and a [`MemoryBus`], and watches the channel's topic on the bus.
//!
//! Needs node (>= 20) and the npm dependencies: `npm ci --prefix tests/js` (scripts/test runs
//! it). Without them the tests fail, saying so; they never skip.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, Delivery, StartAt, Subscription};
use switchyard_core::channels::{Catalog, ChannelName, ChannelsConfig};
use switchyard_core::sources::{Source, SourceConfig, SourceStats};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The configuration of docs/sources.md's socketio section, as written there; the tests replace
/// the address and, for the wrong-auth test, the token.
const CONFIG: &str = r#"[[channels.catalog]]
pattern = "prices.{symbol}"
class = "stream"
subscribe = { rule = "public" }

[sources.prices]
kind = "socketio"
url = "http://127.0.0.1:3000"
channels = "prices.{symbol}"
namespace = "/market"
auth = { token = "s3cret" }
join = { event = "subscribe", args = ["{symbol}"] }
leave = { event = "unsubscribe", args = ["{symbol}"] }
max_message_bytes = 65536
reconnect_max_ms = 2000

[[sources.prices.messages]]
event = "price"
capture = { "/0/symbol" = "{symbol}" }
payload = "/0"
"#;

const TOKEN: &str = "s3cret";

const SETUP_HINT: &str = "install the JavaScript test dependencies with \
    `npm ci --prefix tests/js` (scripts/test does it; it needs node >= 20 and npm)";

/// Longest wait for anything the tests expect to happen.
const WITHIN: Duration = Duration::from_secs(15);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js")
}

/// One run of the Socket.IO server.
struct Server {
    child: Child,
    port: u16,
    /// `http://127.0.0.1:PORT`, or `https://` when it serves TLS.
    base: String,
    http: reqwest::Client,
}

/// The server's certificate and key, and the CA the client trusts (PEM files).
struct Tls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Server {
    /// Starts the server on `port` (0: a free one) and waits for it to listen.
    async fn start(port: u16) -> Self {
        Self::start_with(port, None).await
    }

    /// Starts the server on `port`, over TLS when `tls` is given.
    async fn start_with(port: u16, tls: Option<&Tls>) -> Self {
        let script = js_dir().join("socketio-server.mjs");
        assert!(
            js_dir()
                .join("node_modules/socket.io/package.json")
                .is_file(),
            "the npm package socket.io is missing: {SETUP_HINT}"
        );
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--port", &port.to_string(), "--token", TOKEN])
            .args(["--ping-interval", "500", "--ping-timeout", "500"])
            .args(tls.iter().flat_map(|t| {
                [
                    "--tls-cert".as_ref(),
                    t.cert.as_os_str(),
                    "--tls-key".as_ref(),
                    t.key.as_os_str(),
                ]
            }))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): install node >= 20, then {SETUP_HINT}")
            });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(WITHIN, lines.next_line())
            .await
            .expect("the Socket.IO server did not start within 15 s")
            .expect("its stdout")
            .unwrap_or_else(|| panic!("the Socket.IO server exited: {SETUP_HINT}"));
        let listening: Value = serde_json::from_str(&line).expect("its first line is JSON");
        let port = u16::try_from(listening["listening"].as_u64().expect("a port")).expect("u16");
        // Whatever else it prints is read, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5));
        if let Some(t) = tls {
            let ca = std::fs::read(&t.ca).expect("the CA");
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM"));
        }
        let http = http.build().expect("an HTTP client");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://127.0.0.1:{port}");
        Self {
            child,
            port,
            base,
            http,
        }
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    async fn kill(&mut self) {
        self.child.kill().await.expect("kill the server");
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the server runs");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    /// The server's counters.
    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .expect("GET /stats")
            .json()
            .await
            .expect("JSON stats")
    }

    /// Upstream joins of `symbol` so far.
    async fn joins(&self, symbol: &str) -> u64 {
        self.stats().await["joins"][symbol].as_u64().unwrap_or(0)
    }

    /// Upstream leaves of `symbol` so far.
    async fn leaves(&self, symbol: &str) -> u64 {
        self.stats().await["leaves"][symbol].as_u64().unwrap_or(0)
    }

    async fn post(&self, path: &str) {
        let status = self
            .http
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .status();
        assert!(status.is_success(), "POST {path}: {status}");
    }
}

#[derive(Deserialize)]
struct Doc {
    channels: ChannelsConfig,
    sources: BTreeMap<String, SourceConfig>,
}

/// The documented source, on the server at `port`, authenticating with `token`.
fn source(port: u16, token: &str) -> (Source, Arc<MemoryBus>) {
    source_with(port, token, |_| {})
}

/// The documented source, on the server at `port`, authenticating with `token`, then `change`d.
fn source_with(
    port: u16,
    token: &str,
    change: impl FnOnce(&mut SourceConfig),
) -> (Source, Arc<MemoryBus>) {
    let text = CONFIG
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{port}"))
        .replace(
            &format!("token = \"{TOKEN}\""),
            &format!("token = \"{token}\""),
        );
    let mut doc: Doc = toml::from_str(&text).expect("the documented configuration reads");
    change(doc.sources.get_mut("prices").expect("the source"));
    let catalog = Arc::new(Catalog::new(&doc.channels).expect("the catalog"));
    let memory = Arc::new(MemoryBus::new(1_000));
    let bus: Arc<dyn Bus> = memory.clone();
    let source =
        Source::start("prices", &doc.sources["prices"], catalog, bus).expect("the source starts");
    (source, memory)
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("a channel name")
}

async fn watch(bus: &MemoryBus, name: &str) -> Subscription {
    bus.subscribe(&channel(name).topic(), StartAt::Live)
        .await
        .expect("subscribe on the bus")
}

/// The next event's payload on `sub`, as JSON.
async fn next_event(sub: &mut Subscription) -> Value {
    loop {
        let delivery = tokio::time::timeout(WITHIN, sub.next())
            .await
            .expect("an event within 15 s")
            .expect("the subscription is open");
        if let Delivery::Event(e) = delivery {
            return serde_json::from_slice(&e.payload).expect("a JSON payload");
        }
    }
}

/// Waits until `check` holds (polled every 50 ms), failing with `what` after [`WITHIN`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + WITHIN;
    while !check().await {
        assert!(tokio::time::Instant::now() < end, "not within 15 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_documented_configuration_is_the_tested_one() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sources.md"))
            .expect("docs/sources.md");
    assert!(
        docs.contains(CONFIG),
        "docs/sources.md's socketio section must show this test's configuration:\n{CONFIG}"
    );
}

#[tokio::test]
async fn events_of_a_wanted_channel_reach_the_bus_and_pings_are_answered() {
    let server = Server::start(0).await;
    let (source, bus) = source(server.port, TOKEN);
    let mut sub = watch(&bus, "prices.AAPL").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        source.stats().connects_total,
        0,
        "nothing is connected before a channel is wanted"
    );
    let _wanted = source
        .want(&channel("prices.AAPL"))
        .expect("the source feeds prices.*");
    let mut last_seq = 0;
    for _ in 0..3 {
        let event = next_event(&mut sub).await;
        assert_eq!(event["symbol"], "AAPL", "{event}");
        assert!(event["price"].is_number(), "{event}");
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "{event}");
        last_seq = seq;
    }
    assert_eq!(server.joins("AAPL").await, 1);
    // The server pings every 500 ms and drops a client silent for 500 ms more: after 2.5 s the
    // first connection still serves, so every ping was answered.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let event = next_event(&mut sub).await;
    assert!(event["seq"].as_u64().expect("seq") > last_seq);
    let stats = server.stats().await;
    assert_eq!(stats["connects_total"], 1, "{stats}");
    assert_eq!(stats["connections"], 1, "{stats}");
    let counted = source.stats();
    assert_eq!(
        SourceStats {
            events_total: 0,
            ..counted
        },
        SourceStats {
            connected: true,
            wanted_channels: 1,
            connects_total: 1,
            ..SourceStats::default()
        },
        "nothing but events is counted"
    );
    assert!(counted.events_total >= 4, "{counted:?}");
}

#[tokio::test]
async fn two_hundred_subscribers_make_one_join_and_one_leave() {
    let server = Server::start(0).await;
    let (source, bus) = source(server.port, TOKEN);
    let mut sub = watch(&bus, "prices.MSFT").await;
    let msft = channel("prices.MSFT");
    let mut guards: Vec<_> = (0..200)
        .map(|_| source.want(&msft).expect("a guard"))
        .collect();
    assert_eq!(next_event(&mut sub).await["symbol"], "MSFT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.joins("MSFT").await, 1, "one upstream join for 200");
    guards.truncate(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.leaves("MSFT").await, 0, "one subscriber is left");
    assert_eq!(next_event(&mut sub).await["symbol"], "MSFT");
    drop(guards);
    eventually("the upstream leave", || async {
        server.leaves("MSFT").await == 1
    })
    .await;
    // Nothing is wanted: the connection is closed.
    eventually("the connection closed", || async {
        server.stats().await["connections"] == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = server.stats().await;
    assert_eq!(stats["joins"]["MSFT"], 1, "{stats}");
    assert_eq!(stats["leaves"]["MSFT"], 1, "{stats}");
    let counted = source.stats();
    assert!(
        !counted.connected && counted.wanted_channels == 0,
        "{counted:?}"
    );
    assert_eq!(counted.upstream_errors_total, 0, "{counted:?}");
}

#[tokio::test]
async fn a_restarted_server_is_joined_again_and_events_flow_again() {
    let mut server = Server::start(0).await;
    let port = server.port;
    let (source, bus) = source(port, TOKEN);
    let mut sub = watch(&bus, "prices.AAPL").await;
    let _wanted = source.want(&channel("prices.AAPL")).expect("a guard");
    let first_boot = next_event(&mut sub).await["boot"].clone();
    server.kill().await;
    eventually("the source sees the loss", || async {
        !source.stats().connected
    })
    .await;
    let server = Server::start(port).await;
    let second_boot = server.stats().await["boot"].clone();
    assert_ne!(first_boot, second_boot);
    // Events of the new server arrive (a few of the old one's may still be on the way), in
    // order, none twice.
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let event = next_event(&mut sub).await;
        if event["boot"] == second_boot {
            seqs.push(event["seq"].as_u64().expect("seq"));
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none missing or twice: {seqs:?}"
    );
    assert_eq!(server.joins("AAPL").await, 1, "joined again, once");
    let counted = source.stats();
    assert!(
        counted.connected && counted.connects_total >= 2,
        "{counted:?}"
    );
}

#[tokio::test]
async fn a_silent_server_is_left_after_ping_interval_and_timeout() {
    let server = Server::start(0).await;
    let (source, bus) = source(server.port, TOKEN);
    let mut sub = watch(&bus, "prices.AAPL").await;
    let _wanted = source.want(&channel("prices.AAPL")).expect("a guard");
    assert_eq!(next_event(&mut sub).await["symbol"], "AAPL");
    // Frozen, the server keeps its sockets open but sends nothing, pings included.
    server.signal("-STOP");
    let frozen = tokio::time::Instant::now();
    eventually("the silence noticed", || async {
        !source.stats().connected
    })
    .await;
    let noticed = frozen.elapsed();
    server.signal("-CONT");
    // pingInterval + pingTimeout is 1 s; the protocol checks every 250 ms.
    assert!(
        noticed >= Duration::from_millis(800) && noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    eventually("reconnected", || async {
        let s = source.stats();
        s.connected && s.connects_total >= 2
    })
    .await;
    eventually("joined again", || async { server.joins("AAPL").await == 2 }).await;
    assert_eq!(next_event(&mut sub).await["symbol"], "AAPL");
}

#[tokio::test]
async fn garbage_is_counted_and_the_source_keeps_running() {
    let server = Server::start(0).await;
    let (source, bus) = source(server.port, TOKEN);
    let mut sub = watch(&bus, "prices.AAPL").await;
    let _aapl = source.want(&channel("prices.AAPL")).expect("a guard");
    // The server refuses to join BAD: an upstream error; the channel stays wanted.
    let _bad = source.want(&channel("prices.BAD")).expect("a guard");
    assert_eq!(next_event(&mut sub).await["symbol"], "AAPL");
    eventually("the refused join counted", || async {
        source.stats().upstream_errors_total == 1
    })
    .await;
    assert_eq!(server.stats().await["refused_joins"], 1);
    assert_eq!(source.stats().wanted_channels, 2);

    server.post("/garbage").await;
    eventually("the garbage counted", || async {
        let s = source.stats();
        s.unmatched_total == 2
            && s.refused_total == 1
            && s.binary_total == 1
            && s.unparsable_total == 1
    })
    .await;
    // The unknown event that asked for an acknowledgement got one.
    eventually("the ack of the unknown event", || async {
        server.stats().await["acks_received"] == 1
    })
    .await;
    // Same connection, events still flow.
    let before = source.stats().events_total;
    eventually("more events", || async {
        source.stats().events_total >= before + 3
    })
    .await;
    assert_eq!(next_event(&mut sub).await["symbol"], "AAPL");
    let counted = source.stats();
    assert_eq!(counted.connects_total, 1, "{counted:?}");
    assert_eq!(counted.oversized_total, 0, "{counted:?}");

    // A message over max_message_bytes cannot be skipped on a WebSocket: counted, the
    // connection reopened, the channels joined again.
    server.post("/big?bytes=100000").await;
    eventually("the oversized message counted", || async {
        source.stats().oversized_total == 1
    })
    .await;
    eventually("joined again after the reconnect", || async {
        server.joins("AAPL").await == 2
    })
    .await;
    assert_eq!(next_event(&mut sub).await["symbol"], "AAPL");
    let counted = source.stats();
    assert!(
        counted.connected && counted.connects_total == 2,
        "{counted:?}"
    );
    // BAD was asked for again on the new connection, and refused again.
    eventually("the second refusal counted", || async {
        source.stats().upstream_errors_total == 2
    })
    .await;
}

#[tokio::test]
async fn a_wrong_auth_token_is_a_counted_connect_error_with_backoff() {
    let server = Server::start(0).await;
    let (source, bus) = source(server.port, "wrong");
    let mut sub = watch(&bus, "prices.AAPL").await;
    let _wanted = source.want(&channel("prices.AAPL")).expect("a guard");
    eventually("the CONNECT_ERROR counted", || async {
        source.stats().upstream_errors_total >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counted = source.stats();
    let stats = server.stats().await;
    assert!(stats["auth_failures"].as_u64().expect("n") >= 1, "{stats}");
    assert_eq!(stats["connects_total"], 0, "{stats}");
    assert_eq!(stats["joins"], serde_json::json!({}), "{stats}");
    assert_eq!(counted.events_total, 0, "{counted:?}");
    assert!(
        (counted.connects_total.saturating_sub(1)..=counted.connects_total)
            .contains(&counted.upstream_errors_total),
        "one CONNECT_ERROR per attempt: {counted:?}"
    );
    // Backoff applies (100 ms doubling, full jitter): without it, 2 s at 100 ms would be ~40
    // attempts.
    assert!(
        (2..=12).contains(&counted.connects_total),
        "attempts in ~2 s: {counted:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "no event"
    );
}

/// A CA and a server certificate for 127.0.0.1 it signed, in a directory removed on drop.
struct Pki {
    dir: PathBuf,
    tls: Tls,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("switchyard-socketio-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "socketio test CA");
    let ca_pem = ca.self_signed(&ca_key).expect("the CA").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("signed").pem();
    let tls = Tls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&tls.cert, cert).expect("write");
    std::fs::write(&tls.key, key.serialize_pem()).expect("write");
    std::fs::write(&tls.ca, ca_pem).expect("write");
    Pki { dir, tls }
}

#[tokio::test]
async fn an_https_url_connects_over_wss_with_the_configured_ca_and_headers() {
    let pki = pki();
    let server = Server::start_with(0, Some(&pki.tls)).await;
    let (source, bus) = source_with(server.port, TOKEN, |c| {
        c.url = c.url.replace("http://", "https://");
        c.tls.ca_pem = pki.tls.ca.to_string_lossy().into_owned();
        c.headers.insert("x-gateway".into(), "switchyard".into());
    });
    let mut sub = watch(&bus, "prices.AAPL").await;
    let _wanted = source.want(&channel("prices.AAPL")).expect("a guard");
    assert_eq!(next_event(&mut sub).await["symbol"], "AAPL");
    let stats = server.stats().await;
    assert_eq!(stats["x_gateway"], "switchyard", "{stats}");
    assert_eq!(stats["joins"]["AAPL"], 1, "{stats}");

    // Without the CA, the server's certificate is not trusted: no connection, no event.
    let (untrusting, _bus) = source_with(server.port, TOKEN, |c| {
        c.url = c.url.replace("http://", "https://");
    });
    let _wanted = untrusting.want(&channel("prices.AAPL")).expect("a guard");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counted = untrusting.stats();
    assert_eq!(counted.connects_total, 0, "{counted:?}");
    assert_eq!(server.stats().await["connects_total"], 1);
}
