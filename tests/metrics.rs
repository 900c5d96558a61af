//! `/metrics` of a running stack (docs/operations.md): after a scripted workload against
//! bff-device — requests per API version from known, unknown and unnamed clients, a backend
//! taken down — the gateway's metrics listener shows exactly those counts; and a real Prometheus
//! (Debian's `prometheus`, installed by `scripts/services`) scraping it answers the documented
//! "who still uses bff-device /v1?" query with the expected series. `metrics/workload.rs`: a
//! scripted workload against all three gateways (versions, clients named by socket handshakes
//! and device headers, deliveries, a slow consumer cut off) and exactly its counts.

#[path = "metrics/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::json;
use switchyard::{Config, DEMO_DEVICE, DEMO_DEVICE_KEY, DEMO_PUBLISHER_KEY, Stack};
use test_support::graphql_ws::Client;

/// The query of docs/operations.md ("who still uses bff-device /v1?"), with a window short
/// enough for a test.
const WHO_USES_DEVICE_V1: &str = r#"sum by (client) (increase(switchyard_requests_total{gateway="bff-device",version="v1"}[5m])) > 0"#;

/// A free loopback port: bound, read, released (the metrics listener binds it right after).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A stack whose bff-device serves `/metrics` on a free port and knows the client `tv-app`.
async fn stack() -> (Stack, SocketAddr) {
    let (stack, device, _) = stack_with_web().await;
    (stack, device)
}

/// [`stack`], and bff-web's `/metrics` on a free port too.
async fn stack_with_web() -> (Stack, SocketAddr, SocketAddr) {
    let mut config = Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    let device = free_addr();
    config.device.metrics.listen = device.to_string();
    config.device.metrics.known_clients = vec!["tv-app".to_owned()];
    let web = free_addr();
    config.web.metrics.listen = web.to_string();
    (
        Stack::start(config).await.expect("stack starts"),
        device,
        web,
    )
}

/// The samples of the text format, by `name{labels}` exactly as written.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    // The listener is bound once the gateway serves, just after the stack started.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(answer) => break answer,
            Err(e) => assert!(Instant::now() < deadline, "scrape {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.status(), 200);
    let kind = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = answer.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    samples(&text)
}

async fn get(url: &str, client: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .get(url)
        .header("X-Device-Key", DEMO_DEVICE_KEY);
    if let Some(client) = client {
        request = request.header("X-Client-App", client);
    }
    request.send().await.expect("request").status().as_u16()
}

fn requests(gateway: &str, version: &str, client: &str) -> String {
    format!(
        r#"switchyard_requests_total{{gateway="{gateway}",version="{version}",client="{client}"}}"#
    )
}

fn calls(backend: &str, outcome: &str) -> String {
    format!(
        r#"switchyard_backend_calls_total{{gateway="bff-device",backend="{backend}",outcome="{outcome}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_shows_exactly_its_counts() {
    let (stack, metrics) = stack().await;
    let device = stack.url("bff-device");
    let quote = format!("{device}/v1/quote?user=alice&from=EUR&to=USD&amount=100");
    let config_v1 = format!("{device}/v1/devices/{DEMO_DEVICE}/config");
    let config_v2 = format!("{device}/v2/devices/{DEMO_DEVICE}/config");

    // The clients' port does not serve the metrics.
    assert_eq!(get(&format!("{device}/metrics"), None).await, 404);
    let before = scrape(metrics).await;
    assert_eq!(before[&requests("bff-device", "v1", "tv-app")], 0.0);

    for _ in 0..3 {
        assert_eq!(get(&quote, Some("tv-app/1.4.2")).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&config_v2, Some("kiosk/9")).await, 200);
    }
    assert_eq!(get(&config_v1, None).await, 200);
    assert_eq!(
        get(&format!("{device}/healthz"), Some("tv-app/1")).await,
        200
    );

    // The exchange goes down: each quote is one failed call (its attempts and retries inside).
    stack.stop_component("exchange");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        assert_ne!(get(&quote, Some("tv-app/1.5.0")).await, 200);
    }

    let m = scrape(metrics).await;
    assert_eq!(m[&requests("bff-device", "v1", "tv-app")], 5.0);
    assert_eq!(m[&requests("bff-device", "v2", "other")], 2.0);
    assert_eq!(m[&requests("bff-device", "v1", "none")], 1.0);
    assert_eq!(m[&requests("bff-device", "v2", "tv-app")], 0.0);
    assert_eq!(
        m[&requests("bff-device", "other", "tv-app")],
        0.0,
        "/healthz is not counted"
    );
    assert_eq!(m[&calls("exchange", "ok")], 3.0);
    let failed: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with(
                r#"switchyard_backend_calls_total{gateway="bff-device",backend="exchange""#,
            ) && !k.ends_with(r#"outcome="ok"}"#)
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failed, 2.0, "{m:#?}");
    assert!(m[&calls("exchange", "connect")] + m[&calls("exchange", "transport")] >= 1.0);
    assert!(
        m[r#"switchyard_backend_retries_total{gateway="bff-device",backend="exchange"}"#] >= 1.0
    );
    assert_eq!(
        m[r#"switchyard_backend_call_duration_seconds_count{gateway="bff-device",backend="exchange"}"#],
        5.0
    );
    assert_eq!(
        m[calls("limits", "ok").as_str()],
        0.0,
        "a device's quote withholds the limit"
    );
    assert_eq!(
        m[r#"switchyard_held_polls{gateway="bff-device",version="v1",client="tv-app"}"#],
        0.0
    );
    assert!(m.contains_key(r#"switchyard_leases_held{gateway="bff-device"}"#));
    stack.stop().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_deliveries_are_counted_by_pattern() {
    let (stack, _, metrics) = stack_with_web().await;
    let url = format!("ws://{}/v1/graphql", stack.addr("bff-web"));
    let mut client = Client::connect(&url, None).await;
    client
        .subscribe(
            "1",
            "subscription ($name: String!) { channel(name: $name) { epoch offset data } }",
            json!({"name": "announcements"}),
        )
        .await;
    // Subscribed once the hub counts it.
    let live = r#"switchyard_hub_subscriptions{gateway="bff-web",pattern="announcements"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while scrape(metrics).await[live] < 1.0 {
        assert!(Instant::now() < deadline, "no hub subscription");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publish = format!(
        "http://{}/v1/publish",
        stack.publish_addr().expect("publish API")
    );
    const M: usize = 4;
    for i in 0..M {
        let answer = reqwest::Client::new()
            .post(&publish)
            .bearer_auth(DEMO_PUBLISHER_KEY)
            .json(&json!({"channel": "announcements", "data": {"n": i}}))
            .send()
            .await
            .expect("publish");
        assert_eq!(answer.status(), 200);
    }
    for i in 0..M {
        let next = client.recv().await;
        assert_eq!(next["payload"]["data"]["channel"]["data"]["n"], i, "{next}");
    }
    let m = scrape(metrics).await;
    let at = |name: &str, pattern: &str| {
        m[&format!(r#"{name}{{gateway="bff-web",pattern="{pattern}"}}"#)]
    };
    assert_eq!(
        at("switchyard_hub_deliveries_total", "announcements"),
        M as f64
    );
    assert_eq!(at("switchyard_hub_subscriptions", "announcements"), 1.0);
    assert_eq!(
        at("switchyard_hub_subscriptions_opened_total", "announcements"),
        1.0
    );
    assert_eq!(at("switchyard_hub_gaps_total", "announcements"), 0.0);
    assert_eq!(
        at("switchyard_hub_deliveries_total", "conversions.{user}"),
        0.0
    );
    // The socket's upgrade was a /v1 request from a client that sent no X-Client-App.
    assert_eq!(m[&requests("bff-web", "v1", "none")], 1.0);
    let open = r#"switchyard_connections{gateway="bff-web",version="v1",client="none"}"#;
    let opened =
        r#"switchyard_connections_opened_total{gateway="bff-web",version="v1",client="none"}"#;
    assert_eq!((m[open], m[opened]), (1.0, 1.0));
    client.close().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(metrics).await;
        if m[open] == 0.0 {
            assert_eq!(m[opened], 1.0);
            assert_eq!(m[live], 0.0, "the hub subscription ended with the socket");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the socket is still counted as open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.stop().await.ok();
}

/// A Prometheus server on a free port scraping `target` every second, in a temporary directory.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let binary = "/usr/bin/prometheus";
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is missing: run scripts/services (it installs Debian's prometheus)"
        );
        let dir =
            std::env::temp_dir().join(format!("switchyard-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: switchyard-gateways\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let addr = free_addr();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self { child, addr, dir }
    }

    /// The result vector of an instant query.
    async fn query(&self, query: &str) -> Option<Vec<Value>> {
        let answer = reqwest::Client::new()
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = answer.json().await.ok()?;
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"].as_array().cloned()
    }

    /// Polls `query` until `done` accepts its result (or 60 s pass: the test fails).
    async fn until(&self, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(query).await;
            if let Some(r) = &result
                && done(r)
            {
                return r.clone();
            }
            assert!(Instant::now() < deadline, "{query}: last answer {result:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_who_still_uses_device_v1() {
    let (stack, metrics) = stack().await;
    let prometheus = Prometheus::start(metrics);
    // One scrape before the workload, so that `increase` sees the counters rise.
    prometheus
        .until(r#"up{job="switchyard-gateways"}"#, |r| {
            r.iter().any(|s| s["value"][1] == "1")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let device = stack.url("bff-device");
    for _ in 0..4 {
        let url = format!("{device}/v1/devices/{DEMO_DEVICE}/config");
        assert_eq!(get(&url, Some("tv-app/1.0")).await, 200);
    }
    for _ in 0..3 {
        let url = format!("{device}/v2/devices/{DEMO_DEVICE}/config");
        assert_eq!(get(&url, Some("kiosk/2.0")).await, 200);
    }

    let result = prometheus
        .until(WHO_USES_DEVICE_V1, |r| !r.is_empty())
        .await;
    let clients: Vec<&str> = result
        .iter()
        .map(|s| s["metric"]["client"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(clients, ["tv-app"], "{result:?}");
    let v2 = prometheus
        .until(
            r#"sum by (client) (switchyard_requests_total{gateway="bff-device",version="v2"}) > 0"#,
            // Scraped after the last of the three requests.
            |r| r.iter().any(|s| s["value"][1] == "3"),
        )
        .await;
    assert_eq!(v2.len(), 1, "{v2:?}");
    assert_eq!(v2[0]["metric"]["client"], "other", "{v2:?}");
    stack.stop().await.ok();
}

#[test]
fn the_documented_query_is_the_one_tested() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let documented = WHO_USES_DEVICE_V1.replace("[5m]", "[7d]");
    assert!(
        docs.contains(&documented),
        "docs/operations.md must show {documented}"
    );
}

/// deploy/prometheus/prometheus.yml passes `promtool check config` and scrapes, on port 9464,
/// every gateway instance of deploy/compose.yaml, whose container configurations listen there.
#[test]
fn the_shipped_scrape_configuration_covers_every_gateway_instance() {
    let deploy = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"));
    let scrape = deploy.join("prometheus/prometheus.yml");
    let check = Command::new("/usr/bin/promtool")
        .args(["check", "config"])
        .arg(&scrape)
        .output()
        .expect("promtool (Debian's prometheus package; run scripts/services)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&scrape).expect("scrape config");
    let compose = std::fs::read_to_string(deploy.join("compose.yaml")).expect("compose");
    for gateway in ["bff-web", "bff-mobile", "bff-device"] {
        let config = std::fs::read_to_string(deploy.join(format!("k8s/config/{gateway}.toml")))
            .expect("container config");
        assert!(
            config.contains("[metrics]\n") && config.contains("listen = \"0.0.0.0:9464\""),
            "{gateway}'s container configuration serves /metrics on 9464"
        );
        for instance in 1..=2 {
            let name = format!("{gateway}-{instance}");
            assert!(
                compose.contains(&format!("  {name}: *{gateway}")),
                "{name} in compose"
            );
            assert!(text.contains(&format!("\"{name}:9464\"")), "{name} scraped");
        }
    }
}
