//! The deployment files under `deploy/`, checked and run.
//!
//! - `nginx -t` accepts the real `deploy/nginx/nginx.conf`, with the compose upstreams
//!   (docker DNS names) swapped for loopback addresses.
//! - nginx, run with that configuration in front of TWO in-process instances of each gateway,
//!   spreads HTTP requests and WebSockets over both bff-web instances, keeps answering when one
//!   instance stops, and upgrades graphql-transport-ws and mobile sockets; device requests pass
//!   and a device gets its rates. The instances run the shipped container configurations
//!   (deploy/k8s/config), with only the demo services' addresses pointed at loopback, so a
//!   missing backend or bridge in those files fails here.
//! - The Kubernetes manifests give every gateway a Deployment of at least two replicas with
//!   /readyz and /healthz probes, a Service and a PodDisruptionBudget; the compose file runs at
//!   least two instances of each gateway; no file asks for sticky sessions; the container
//!   configurations load with the binaries' own (strict) configuration types.
//!
//! nginx must be installed (`scripts/services` installs it): without it these tests FAIL.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize as _;
use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;
use switchyard::{Config as StackConfig, DEMO_SECRET, Stack};
use switchyard_core::config::{BridgeConfig, Source};
use switchyard_core::server::CancellationToken;
use test_support::eventually;
use test_support::graphql_ws::Client as GraphqlWs;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing).
const PATIENCE: Duration = Duration::from_secs(15);

/// One gateway as the deployment files name it.
struct Gateway {
    /// Binary, compose service prefix, Kubernetes Deployment/Service/PDB name.
    name: &'static str,
    /// nginx upstream block.
    upstream: &'static str,
    /// Port the gateway and its nginx server block listen on.
    port: u16,
    /// Environment prefix of its configuration.
    env_prefix: &'static str,
}

const GATEWAYS: [Gateway; 3] = [
    Gateway {
        name: "bff-web",
        upstream: "bff_web",
        port: 8080,
        env_prefix: bff_web::ENV_PREFIX,
    },
    Gateway {
        name: "bff-mobile",
        upstream: "bff_mobile",
        port: 8081,
        env_prefix: bff_mobile::ENV_PREFIX,
    },
    Gateway {
        name: "bff-device",
        upstream: "bff_device",
        port: 8082,
        env_prefix: bff_device::ENV_PREFIX,
    },
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// nginx: the real configuration in a scratch prefix, with loopback upstreams and listen ports.
// ---------------------------------------------------------------------------------------------

/// The nginx binary: on PATH, or where Debian and the official builds put it. Panics (the test
/// fails) when there is none: CI installs it through scripts/services.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"));
    let known = [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .into_iter()
    .map(PathBuf::from);
    on_path
        .chain(known)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed, so deploy/nginx/nginx.conf cannot be checked: run \
             scripts/services (it installs Debian's nginx-light)"
            )
        })
}

/// A scratch directory holding a copy of deploy/nginx; removed when dropped.
struct NginxDir {
    dir: PathBuf,
}

impl Drop for NginxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl NginxDir {
    /// Copies deploy/nginx/*.conf into a fresh directory. `upstreams.conf` is rewritten with the
    /// given loopback servers in place of the compose ones (every other directive kept), and
    /// each `listen PORT;` of nginx.conf moved to `listen 127.0.0.1:NEW;` per `listens`.
    fn new(upstreams: &HashMap<&str, Vec<SocketAddr>>, listens: &HashMap<u16, u16>) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-deploy-nginx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch prefix");
        let scratch = Self { dir };
        let source = deploy_dir().join("nginx");
        for entry in std::fs::read_dir(&source).expect("deploy/nginx exists") {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().expect("file name").to_string_lossy();
            if !name.ends_with(".conf") {
                continue;
            }
            let mut text = read(&path);
            if name == "upstreams.conf" {
                text = loopback_upstreams(&text, upstreams);
            } else if name == "nginx.conf" {
                for (from, to) in listens {
                    let old = format!("listen {from};");
                    assert_eq!(
                        text.matches(&old).count(),
                        1,
                        "nginx.conf should have exactly one `{old}`"
                    );
                    text = text.replace(&old, &format!("listen 127.0.0.1:{to};"));
                }
            }
            std::fs::write(scratch.dir.join(&*name), text).expect("write the copy");
        }
        scratch
    }

    /// Arguments that point nginx at this copy, with pid and logs inside it.
    fn args(&self, extra_globals: &str) -> Vec<String> {
        let d = self.dir.display();
        vec![
            "-c".into(),
            format!("{d}/nginx.conf"),
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-g".into(),
            format!("pid {d}/nginx.pid; {extra_globals}"),
        ]
    }

    /// What nginx logged: its startup log, then its stderr once running.
    fn error_log(&self) -> String {
        ["error.log", "stderr.log"]
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .join("\n")
    }
}

/// `upstreams.conf` with each upstream's `server HOST:PORT ...` lines pointed, in order, at the
/// given addresses; every other parameter and directive stays as written.
fn loopback_upstreams(text: &str, addrs: &HashMap<&str, Vec<SocketAddr>>) -> String {
    let mut current: Option<String> = None;
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut out = String::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("").trim();
        let mut words = code.split_whitespace();
        match (words.next(), words.next()) {
            (Some("upstream"), Some(name)) => current = Some(name.to_owned()),
            (Some("}"), _) => current = None,
            (Some("server"), Some(host)) => {
                let upstream = current
                    .clone()
                    .expect("server lines sit in an upstream block");
                let list = addrs
                    .get(upstream.as_str())
                    .unwrap_or_else(|| panic!("no loopback servers given for {upstream}"));
                let n = used.entry(upstream.clone()).or_default();
                let addr = list.get(*n).unwrap_or_else(|| {
                    panic!("{upstream} has more servers than the {} given", list.len())
                });
                *n += 1;
                out.push_str(&line.replacen(host, &addr.to_string(), 1));
                out.push('\n');
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    for (upstream, list) in addrs {
        assert_eq!(
            used.get(*upstream).copied().unwrap_or(0),
            list.len(),
            "upstreams.conf should list {} servers in {upstream}",
            list.len()
        );
    }
    out
}

/// A running nginx (master in the foreground, as a child); stopped when dropped.
struct Nginx {
    child: Child,
    bin: PathBuf,
    dir: NginxDir,
}

impl Nginx {
    fn start(dir: NginxDir) -> Self {
        let bin = nginx_binary();
        // nginx.conf logs errors to stderr once it has read it: keep them for a failure report.
        let stderr = std::fs::File::create(dir.dir.join("stderr.log")).expect("stderr file");
        let child = Command::new(&bin)
            .args(dir.args("daemon off;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Self { child, bin, dir }
    }

    /// Waits (bounded) until nginx answers its own health location on `port`.
    async fn wait_ready(&mut self, port: u16) {
        let url = format!("http://127.0.0.1:{port}/nginx-healthz");
        let client = http_client();
        let ready = eventually(PATIENCE, || {
            let req = client.get(&url).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        if !ready {
            let exited = self.child.try_wait().ok().flatten();
            panic!(
                "nginx did not come up on port {port} (exit: {exited:?}); error log:\n{}",
                self.dir.error_log()
            );
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A fast shutdown through the master, so its workers go too (killing only the master
        // would leave them behind).
        let _ = Command::new(&self.bin)
            .args(self.dir.args(""))
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each gateway's compose port mapped to a free loopback port for nginx to take. The listeners
/// are held until every port is chosen: released one by one, the kernel could hand the same port
/// out twice, and nginx would then serve two gateways' server blocks on one port (a mobile
/// socket answered 404 by bff-web).
fn nginx_listens() -> HashMap<u16, u16> {
    let held: Vec<(u16, std::net::TcpListener)> = GATEWAYS
        .iter()
        .map(|g| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            (g.port, l)
        })
        .collect();
    held.iter()
        .map(|(from, l)| (*from, l.local_addr().expect("bound").port()))
        .collect()
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[test]
fn nginx_t_accepts_the_real_configuration() {
    let fake = |n: u16| -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([127, 0, 0, 1], n)),
            SocketAddr::from(([127, 0, 0, 1], n + 1)),
        ]
    };
    let upstreams = HashMap::from([
        ("bff_web", fake(18080)),
        ("bff_mobile", fake(18081)),
        ("bff_device", fake(18082)),
    ]);
    let listens = nginx_listens();
    let dir = NginxDir::new(&upstreams, &listens);
    let out = Command::new(nginx_binary())
        .args(dir.args(""))
        .arg("-t")
        .output()
        .expect("run nginx -t");
    assert!(
        out.status.success(),
        "nginx -t rejected deploy/nginx/nginx.conf:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dir.error_log()
    );
}

// ---------------------------------------------------------------------------------------------
// nginx in front of two instances of each gateway.
// ---------------------------------------------------------------------------------------------

/// Requests one bff-web instance has served: all of them, and WebSocket upgrades.
#[derive(Default)]
struct Served {
    requests: AtomicUsize,
    upgrades: AtomicUsize,
}

/// One in-process gateway instance: its address and how to stop it.
struct Instance {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Instance {
    /// Stops the instance and waits (bounded) until it has closed.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the instance drains in time")
            .expect("the instance task ends cleanly");
    }
}

/// The demo services the container configurations reach by DNS name, and their ports.
const SERVICES: [(&str, u16); 3] = [("limits", 9101), ("exchange", 9102), ("conversions", 9103)];

/// A gateway's shipped container configuration (`deploy/k8s/config/{gateway}.toml`, what compose
/// and Kubernetes run), loaded with its own type. Only the services' addresses change: their DNS
/// names (`http://limits:9101`, `ws://exchange:9102/v1/ticks`, …) become the stack's loopback
/// addresses. Backends, bridges and limits are the file's, so a table missing from the file is
/// missing here too.
fn shipped_config<C: serde::de::DeserializeOwned + serde::Serialize + Default>(
    stack: &Stack,
    gateway: &str,
    env_prefix: &str,
) -> C {
    let path = deploy_dir()
        .join("k8s/config")
        .join(format!("{gateway}.toml"));
    let mut text = read(&path);
    for (service, port) in SERVICES {
        text = text.replace(
            &format!("://{service}:{port}"),
            &format!("://{}", stack.addr(service)),
        );
        assert!(
            !text.contains(&format!("://{service}:")),
            "{}: {service} on a port other than {port}",
            path.display()
        );
    }
    Source::new(Some((path.clone(), text)), Vec::new())
        .load(env_prefix)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that a gateway's shipped configuration bridges the stack's exchange ticker (the
/// `rates.` topics are fed from it): a container configuration without `[bridges.exchange]`
/// keeps the default, the exchange on the container's own loopback, and its clients get no
/// rates.
fn assert_bridges_the_exchange(
    stack: &Stack,
    gateway: &str,
    bridges: &BTreeMap<String, BridgeConfig>,
) {
    let ticks = format!("ws://{}/v1/ticks", stack.addr("exchange"));
    assert_eq!(
        bridges.get("exchange").map(|b| b.url.as_str()),
        Some(ticks.as_str()),
        "deploy/k8s/config/{gateway}.toml: [bridges.exchange] must name the exchange service"
    );
}

/// A bff-web instance on the stack's bus, from its shipped configuration, counting what it
/// serves.
async fn web_instance(stack: &Stack) -> (Instance, Arc<Served>) {
    let mut config: bff_web::Config = shipped_config(stack, "bff-web", bff_web::ENV_PREFIX);
    assert_bridges_the_exchange(stack, "bff-web", &config.bridges);
    // Compose and Kubernetes set the secret in the environment.
    config.auth.hs256_secret = DEMO_SECRET.to_owned();
    let stop = CancellationToken::new();
    let app = bff_web::app(&config, stack.bus().clone(), stop.clone()).expect("bff-web app");
    let served = Arc::new(Served::default());
    let counter = served.clone();
    let router = app.router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let counter = counter.clone();
            async move {
                counter.requests.fetch_add(1, Ordering::SeqCst);
                if req.headers().contains_key(axum::http::header::UPGRADE) {
                    counter.upgrades.fetch_add(1, Ordering::SeqCst);
                }
                next.run(req).await
            }
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = stop.clone();
    let task = tokio::spawn(async move {
        switchyard_core::server::serve(listener, router, token, Duration::from_secs(5))
            .await
            .expect("bff-web serves");
    });
    (Instance { addr, stop, task }, served)
}

/// A bff-mobile instance on the stack's bus, from its shipped configuration.
async fn mobile_instance(stack: &Stack) -> Instance {
    let mut config: bff_mobile::Config =
        shipped_config(stack, "bff-mobile", bff_mobile::ENV_PREFIX);
    assert_bridges_the_exchange(stack, "bff-mobile", &config.bridges);
    // Compose and Kubernetes set the secret in the environment.
    config.auth.hs256_secret = DEMO_SECRET.to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let (bus, token) = (stack.bus().clone(), stop.clone());
    let task = tokio::spawn(async move {
        bff_mobile::run(config, bus, listener, token)
            .await
            .expect("bff-mobile runs");
    });
    Instance { addr, stop, task }
}

/// A device both bff-device instances know (the registry of an in-memory bus is per instance,
/// so it is configured in each, as a deployment's configured devices are).
const EDGE_TV: &str = "edge-tv";

/// Its key.
const EDGE_TV_KEY: &str = "edge-tv-key-0123456789";

/// The pair it watches: one nothing else in the test watches, so only the device instances'
/// own exchange bridges can feed it.
const EDGE_TV_PAIR: &str = "CHF/CAD";

/// A bff-device instance on the stack's bus, from its shipped configuration, with [`EDGE_TV`].
async fn device_instance(stack: &Stack) -> Instance {
    let mut config: bff_device::Config =
        shipped_config(stack, "bff-device", bff_device::ENV_PREFIX);
    assert_bridges_the_exchange(stack, "bff-device", &config.bridges);
    config.devices.insert(
        EDGE_TV.to_owned(),
        bff_device::DeviceConfig {
            key: EDGE_TV_KEY.to_owned(),
            rates: vec![EDGE_TV_PAIR.to_owned()],
            settings: BTreeMap::new(),
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let (bus, token) = (stack.bus().clone(), stop.clone());
    let task = tokio::spawn(async move {
        bff_device::run(config, bus, listener, token)
            .await
            .expect("bff-device runs");
    });
    Instance { addr, stop, task }
}

const QUOTE: &str =
    r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "100") { pair rate converted } }"#;

/// A GraphQL quote through nginx; asserts it answered with data.
async fn quote_through(client: &reqwest::Client, port: u16) {
    let r = client
        .post(format!("http://127.0.0.1:{port}/v1/graphql"))
        .json(&json!({ "query": QUOTE }))
        .send()
        .await
        .expect("a quote through nginx");
    let status = r.status().as_u16();
    let body: Json = r.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["quote"]["pair"], "EUR/USD", "{body}");
}

/// Requests each instance has served.
fn requests(served: &[Arc<Served>; 2]) -> [usize; 2] {
    served.each_ref().map(|s| s.requests.load(Ordering::SeqCst))
}

/// WebSocket upgrades each instance has served.
fn upgrades(served: &[Arc<Served>; 2]) -> [usize; 2] {
    served.each_ref().map(|s| s.upgrades.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_requests_and_sockets_over_two_instances_of_each_gateway() {
    let mut config = StackConfig::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    let stack = Stack::start(config).await.expect("stack starts");

    let (web_a, served_a) = web_instance(&stack).await;
    let (web_b, served_b) = web_instance(&stack).await;
    let served = [served_a, served_b];
    let mobile = [mobile_instance(&stack).await, mobile_instance(&stack).await];
    let device = [device_instance(&stack).await, device_instance(&stack).await];

    let upstreams = HashMap::from([
        ("bff_web", vec![web_a.addr, web_b.addr]),
        ("bff_mobile", mobile.iter().map(|i| i.addr).collect()),
        ("bff_device", device.iter().map(|i| i.addr).collect()),
    ]);
    let listens = nginx_listens();
    let (web, mobile_port, device_port) = (listens[&8080], listens[&8081], listens[&8082]);
    let mut nginx = Nginx::start(NginxDir::new(&upstreams, &listens));
    for port in [web, mobile_port, device_port] {
        nginx.wait_ready(port).await;
    }
    let client = http_client();

    // HTTP: one request after another goes to one instance, then the other (least_conn with
    // nothing in flight is round-robin): both serve, neither serves them all.
    for _ in 0..10 {
        quote_through(&client, web).await;
    }
    let [a, b] = requests(&served);
    assert_eq!(a + b, 10, "every request reached an instance");
    assert!(
        a >= 3 && b >= 3,
        "requests spread over both instances: {a} / {b}"
    );

    // WebSockets: graphql-transport-ws through nginx (upgrade, connection_ack, an operation
    // answered over the socket). Two sockets held open land on different instances: nginx
    // sends the second to the instance with fewer connections, never back to the first.
    let url = format!("ws://127.0.0.1:{web}/v1/graphql");
    let alice = bff_web::auth::hs256_token(DEMO_SECRET, "alice", Duration::from_secs(600));
    let mut first = GraphqlWs::connect(&url, Some(&alice)).await;
    let mut second = GraphqlWs::connect(&url, None).await;
    assert_eq!(upgrades(&served), [1, 1], "one socket each");
    for socket in [&mut first, &mut second] {
        socket.subscribe("q", QUOTE, json!({})).await;
        let next = socket.recv().await;
        assert_eq!(next["type"], "next", "{next}");
        assert_eq!(
            next["payload"]["data"]["quote"]["pair"], "EUR/USD",
            "{next}"
        );
        let done = socket.recv().await;
        assert_eq!(done["type"], "complete", "{done}");
    }
    first.close().await;
    second.close().await;

    // One instance goes away: every request still gets an answer, from the other one.
    web_a.stop().await;
    let before = requests(&served)[1];
    for _ in 0..6 {
        quote_through(&client, web).await;
    }
    assert_eq!(
        requests(&served)[1],
        before + 6,
        "the remaining instance served every request"
    );

    // bff-mobile: the binary protocol's WebSocket upgrade (subprotocol included) and a call.
    let mobile_url = format!("ws://127.0.0.1:{mobile_port}/v1/ws");
    let token = bff_web::auth::hs256_token(DEMO_SECRET, "bob", Duration::from_secs(600));
    let app = tokio::time::timeout(
        PATIENCE,
        mobile_client::Client::connect(mobile_client::Config::new(mobile_url, token)),
    )
    .await
    .expect("connect in time")
    .expect("a mobile socket through nginx");
    let quote = tokio::time::timeout(
        PATIENCE,
        app.call(
            "quote",
            json!({"from": "EUR", "to": "USD", "amount": "10.00"}),
        ),
    )
    .await
    .expect("an answer in time")
    .expect("quote answers");
    assert_eq!(quote["pair"], "EUR/USD", "{quote}");
    app.close().await;

    // bff-device: plain HTTP through its server block, on both instances in turn; rates reach
    // a device; the edge keeps the admin API to the inside.
    for _ in 0..4 {
        let r = client
            .get(format!(
                "http://127.0.0.1:{device_port}/v1/quote?user=carol&from=EUR&to=USD&amount=5"
            ))
            .send()
            .await
            .expect("a device quote through nginx");
        assert_eq!(r.status().as_u16(), 200);
        let body: Json = r.json().await.expect("JSON");
        assert_eq!(body["p"], "EUR/USD", "{body}");
    }

    // A device behind nginx gets its rates: each instance's hub feeds the pair from the exchange
    // bridge of its shipped configuration. Long-polls (held up to a second, so that both
    // instances are asked) until a rate of the device's pair comes.
    let rate = tokio::time::timeout(PATIENCE, async {
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("wait", "1".to_owned())];
            query.extend(cursor.clone().map(|c| ("cursor", c)));
            let r = client
                .get(format!(
                    "http://127.0.0.1:{device_port}/v1/devices/{EDGE_TV}/events"
                ))
                .header("x-device-key", EDGE_TV_KEY)
                .query(&query)
                .send()
                .await
                .expect("a device poll through nginx");
            assert_eq!(r.status().as_u16(), 200);
            let body: Json = r.json().await.expect("JSON");
            let events = body["e"].as_array().expect("events");
            if let Some(rate) = events.iter().find(|e| e["t"] == "r") {
                break rate.clone();
            }
            cursor = Some(body["n"].as_str().expect("a cursor").to_owned());
        }
    })
    .await
    .expect("a rate reaches the device through nginx in time");
    assert_eq!(rate["p"], EDGE_TV_PAIR, "{rate}");
    assert!(
        rate["r"]
            .as_str()
            .is_some_and(|r| r.parse::<f64>().is_ok_and(|r| r > 0.0)),
        "{rate}"
    );

    let admin = client
        .post(format!("http://127.0.0.1:{device_port}/admin/devices"))
        .send()
        .await
        .expect("an answer from the edge");
    assert_eq!(admin.status().as_u16(), 404);

    drop(nginx);
    web_b.stop().await;
    for i in mobile.into_iter().chain(device) {
        i.stop().await;
    }
    stack.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------------------------------------
// Manifests: Kubernetes, compose, nginx.
// ---------------------------------------------------------------------------------------------

/// Every document of every YAML file in deploy/k8s, by (kind, name).
fn k8s_objects() -> HashMap<(String, String), Yaml> {
    let mut objects = HashMap::new();
    let dir = deploy_dir().join("k8s");
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.file_name().is_some_and(|n| n == "kustomization.yaml")
        {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(&read(&path)) {
            let doc = Yaml::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            if doc.is_null() {
                continue;
            }
            let kind = str_at(&doc, &["kind"]).to_owned();
            let name = str_at(&doc, &["metadata", "name"]).to_owned();
            assert!(
                get(&doc, &["metadata", "namespace"]).is_none(),
                "{kind}/{name}: the manifests are namespace-agnostic"
            );
            let prev = objects.insert((kind.clone(), name.clone()), doc);
            assert!(prev.is_none(), "{kind}/{name} is defined twice");
        }
    }
    objects
}

fn get<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> &'a str {
    get(v, path)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("no string at {}", path.join(".")))
}

/// The drain timeout (ms) of a gateway's container configuration, loaded with its own type.
fn container_config_drain_ms(gateway: &str) -> u64 {
    let path = deploy_dir()
        .join("k8s/config")
        .join(format!("{gateway}.toml"));
    let source = Source::new(Some((path.clone(), read(&path))), Vec::new());
    let server = match gateway {
        "bff-web" => source
            .load::<bff_web::Config>(bff_web::ENV_PREFIX)
            .map(|c| c.server),
        "bff-mobile" => source
            .load::<bff_mobile::Config>(bff_mobile::ENV_PREFIX)
            .map(|c| c.server),
        "bff-device" => source
            .load::<bff_device::Config>(bff_device::ENV_PREFIX)
            .map(|c| c.server),
        other => panic!("unknown gateway {other}"),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let port = GATEWAYS.iter().find(|g| g.name == gateway).map(|g| g.port);
    assert_eq!(
        server.listen,
        SocketAddr::from(([0, 0, 0, 0], port.expect("known gateway"))),
        "{gateway} listens on every interface, on its port"
    );
    server.drain_timeout_ms
}

#[test]
fn container_configurations_load_with_the_binaries_own_types() {
    for g in &GATEWAYS {
        container_config_drain_ms(g.name);
    }
    let dir = deploy_dir().join("k8s/config");
    let load = |name: &str| {
        let path = dir.join(format!("{name}.toml"));
        Source::new(Some((path.clone(), read(&path))), Vec::new())
    };
    let listens = [
        (
            "limits",
            load("limits")
                .load::<demo_services::limits::Config>("SWITCHYARD_LIMITS")
                .expect("limits.toml")
                .server
                .listen,
        ),
        (
            "exchange",
            load("exchange")
                .load::<demo_services::exchange::Config>("SWITCHYARD_EXCHANGE")
                .expect("exchange.toml")
                .server
                .listen,
        ),
        (
            "conversions",
            load("conversions")
                .load::<demo_services::conversions::Config>("SWITCHYARD_CONVERSIONS")
                .expect("conversions.toml")
                .server
                .listen,
        ),
    ];
    // The gateways' container configurations (and `shipped_config`) reach them on these ports.
    for ((service, listen), (name, port)) in listens.into_iter().zip(SERVICES) {
        assert_eq!((service, listen.port()), (name, port));
    }
}

/// The bus variables of a container's env list (k8s `- {name, value}` entries).
fn k8s_env(container: &Yaml) -> HashMap<String, String> {
    get(container, &["env"])
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.get("name")?.as_str()?.to_owned(),
                e.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Asserts `KIND`/`URL` bus variables name Redis or NATS consistently.
fn assert_bus_env(what: &str, prefix: &str, env: &HashMap<String, String>) {
    let kind = env
        .get(&format!("{prefix}__BUS__KIND"))
        .unwrap_or_else(|| panic!("{what}: no {prefix}__BUS__KIND"));
    let url = env
        .get(&format!("{prefix}__BUS__URL"))
        .unwrap_or_else(|| panic!("{what}: no {prefix}__BUS__URL"));
    let resolved = |s: &str| {
        // compose's ${VAR:-default}: the default is what runs unless overridden.
        s.strip_prefix("${")
            .and_then(|s| s.split_once(":-"))
            .map_or(s.to_owned(), |(_, d)| d.trim_end_matches('}').to_owned())
    };
    let (kind, url) = (resolved(kind), resolved(url));
    assert!(
        (kind == "redis" && url.starts_with("redis://"))
            || (kind == "nats" && url.starts_with("nats://")),
        "{what}: bus kind {kind} with url {url}"
    );
}

#[test]
fn k8s_runs_every_gateway_twice_with_probes_a_service_and_a_disruption_budget() {
    let objects = k8s_objects();
    let object = |kind: &str, name: &str| {
        objects
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/k8s"))
    };
    for g in &GATEWAYS {
        let d = object("Deployment", g.name);
        let replicas = get(d, &["spec", "replicas"]).and_then(Yaml::as_u64);
        assert!(replicas >= Some(2), "{}: replicas {replicas:?}", g.name);
        let pod = get(d, &["spec", "template", "spec"]).expect("pod spec");
        let labels = get(d, &["spec", "template", "metadata", "labels"]).expect("pod labels");
        let container = get(pod, &["containers"])
            .and_then(|c| c.get(0))
            .expect("a container");
        assert_eq!(
            str_at(container, &["readinessProbe", "httpGet", "path"]),
            "/readyz"
        );
        assert_eq!(
            str_at(container, &["livenessProbe", "httpGet", "path"]),
            "/healthz"
        );
        let command: Vec<&str> = get(container, &["command"])
            .and_then(Yaml::as_sequence)
            .expect("a command")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            command.first(),
            Some(&g.name),
            "{}: runs its own binary",
            g.name
        );
        assert!(
            get(container, &["ports"])
                .and_then(Yaml::as_sequence)
                .is_some_and(|ps| ps
                    .iter()
                    .any(|p| p.get("containerPort").and_then(Yaml::as_u64) == Some(g.port.into()))),
            "{}: container port {}",
            g.name,
            g.port
        );
        assert_bus_env(g.name, g.env_prefix, &k8s_env(container));
        assert_eq!(
            get(pod, &["securityContext", "runAsNonRoot"]).and_then(Yaml::as_bool),
            Some(true),
            "{}: non-root",
            g.name
        );
        // The grace period covers the preStop sleep and the whole drain.
        let sleep_s: u64 = get(container, &["lifecycle", "preStop", "exec", "command"])
            .and_then(Yaml::as_sequence)
            .and_then(|c| c.get(1))
            .and_then(Yaml::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: a preStop `sleep N`", g.name));
        let grace = get(pod, &["terminationGracePeriodSeconds"])
            .and_then(Yaml::as_u64)
            .expect("terminationGracePeriodSeconds");
        let drain_s = container_config_drain_ms(g.name).div_ceil(1000);
        assert!(
            grace > sleep_s + drain_s,
            "{}: grace {grace} s must exceed preStop {sleep_s} s + drain {drain_s} s",
            g.name
        );

        let selects_pods = |selector: &Yaml| {
            selector
                .as_mapping()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        let svc = object("Service", g.name);
        assert!(
            selects_pods(get(svc, &["spec", "selector"]).expect("selector")),
            "Service {} selects the Deployment's pods",
            g.name
        );
        assert_ne!(
            get(svc, &["spec", "sessionAffinity"]).and_then(Yaml::as_str),
            Some("ClientIP"),
            "Service {}: no session affinity",
            g.name
        );
        let pdb = object("PodDisruptionBudget", g.name);
        assert!(
            selects_pods(get(pdb, &["spec", "selector", "matchLabels"]).expect("selector")),
            "PodDisruptionBudget {} selects the Deployment's pods",
            g.name
        );
        assert_eq!(
            get(pdb, &["spec", "minAvailable"]).and_then(Yaml::as_u64),
            Some(1),
            "{}",
            g.name
        );
    }
    let conversions = object("Deployment", "conversions");
    let container = get(conversions, &["spec", "template", "spec", "containers"])
        .and_then(|c| c.get(0))
        .expect("a container");
    assert_bus_env("conversions", "SWITCHYARD_CONVERSIONS", &k8s_env(container));
    assert!(object("Service", "redis").is_mapping());
    assert!(object("StatefulSet", "nats").is_mapping());

    for ((kind, name), o) in &objects {
        if kind != "Ingress" {
            continue;
        }
        let annotations = get(o, &["metadata", "annotations"])
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flatten();
        for (key, _) in annotations {
            let key = key.as_str().unwrap_or_default();
            assert!(
                !["affinity", "session-cookie", "upstream-hash-by"]
                    .iter()
                    .any(|s| key.contains(s)),
                "Ingress {name}: {key} would make sessions sticky"
            );
        }
    }

    // kustomization.yaml lists every manifest, and its generated ConfigMap every config file.
    let kustomization: Yaml =
        serde_yaml::from_str(&read(&deploy_dir().join("k8s/kustomization.yaml"))).expect("YAML");
    let listed: Vec<&str> = get(&kustomization, &["resources"])
        .and_then(Yaml::as_sequence)
        .expect("resources")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for entry in std::fs::read_dir(deploy_dir().join("k8s")).expect("deploy/k8s") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name.as_str()),
                "kustomization.yaml misses {name}"
            );
        }
    }
    for g in &GATEWAYS {
        let file = format!("config/{}.toml", g.name);
        let generated = get(&kustomization, &["configMapGenerator"])
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|generator| generator.get("files").and_then(Yaml::as_sequence))
            .flatten()
            .any(|f| f.as_str() == Some(file.as_str()));
        assert!(generated, "the ConfigMap holds {file}");
    }
}

#[test]
fn compose_runs_two_instances_of_each_gateway_behind_nginx() {
    let compose: Yaml =
        serde_yaml::from_str(&read(&deploy_dir().join("compose.yaml"))).expect("compose YAML");
    let services = get(&compose, &["services"])
        .and_then(Yaml::as_mapping)
        .expect("services");
    let upstreams = read(&deploy_dir().join("nginx/upstreams.conf"));
    for g in &GATEWAYS {
        let instances: Vec<(&str, &Yaml)> = services
            .iter()
            .filter_map(|(name, s)| Some((name.as_str()?, s)))
            .filter(|(_, s)| {
                get(s, &["command"])
                    .and_then(|c| c.get(0))
                    .and_then(Yaml::as_str)
                    == Some(g.name)
            })
            .collect();
        assert!(
            instances.len() >= 2,
            "{}: {} instance(s) in compose",
            g.name,
            instances.len()
        );
        for (name, s) in instances {
            let env: HashMap<String, String> = get(s, &["environment"])
                .and_then(Yaml::as_mapping)
                .expect("environment")
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect();
            assert_bus_env(name, g.env_prefix, &env);
            assert!(
                get(s, &["healthcheck", "test"]).is_some(),
                "{name}: a healthcheck"
            );
            assert!(
                upstreams.contains(&format!("server {name}:{} ", g.port)),
                "nginx's upstreams.conf balances {name}:{}",
                g.port
            );
        }
    }
    let nginx = services
        .get("nginx")
        .expect("an nginx service in front of the gateways");
    let mounts: Vec<&str> = get(nginx, &["volumes"])
        .and_then(Yaml::as_sequence)
        .expect("nginx volumes")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for file in ["nginx.conf", "upstreams.conf", "edge-common.conf"] {
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("./nginx/{file}:"))),
            "nginx mounts deploy/nginx/{file}"
        );
    }
    for bus in ["redis", "nats"] {
        assert!(services.get(bus).is_some(), "compose runs {bus}");
    }
    assert!(
        get(&compose, &["services", "nats", "command"])
            .and_then(Yaml::as_sequence)
            .is_some_and(|c| c.iter().any(|a| a.as_str() == Some("-js"))),
        "NATS runs with JetStream"
    );
}

#[test]
fn nginx_configuration_balances_without_stickiness_and_upgrades_sockets() {
    let dir = deploy_dir().join("nginx");
    let mut all = String::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/nginx") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("conf") {
            // Directives only: comments may explain what is not used.
            for line in read(&path).lines() {
                all.push_str(line.split('#').next().unwrap_or(""));
                all.push('\n');
            }
        }
    }
    let directives: Vec<&str> = all
        .split([';', '{', '}'])
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    fn directives_named<'a>(directives: &[&'a str], name: &str) -> Vec<&'a str> {
        directives
            .iter()
            .copied()
            .filter(|d| d.split_whitespace().next() == Some(name))
            .collect()
    }
    let named = |name: &str| directives_named(&directives, name);
    for sticky in ["ip_hash", "hash", "sticky", "sticky_cookie_insert"] {
        assert!(named(sticky).is_empty(), "nginx must not use `{sticky}`");
    }
    assert!(
        named("proxy_http_version")
            .iter()
            .all(|d| d.ends_with("1.1"))
    );
    assert!(
        !named("proxy_http_version").is_empty(),
        "HTTP/1.1 to the gateways"
    );
    assert!(
        named("map")
            .iter()
            .any(|d| d.contains("$http_upgrade $connection_upgrade")),
        "Connection follows Upgrade"
    );
    let headers = named("proxy_set_header");
    assert!(headers.iter().any(|d| d.contains("Upgrade $http_upgrade")));
    assert!(
        headers
            .iter()
            .any(|d| d.contains("Connection $connection_upgrade"))
    );
    for d in named("proxy_next_upstream") {
        assert!(!d.contains("non_idempotent"), "POST is never replayed: {d}");
    }
    for g in &GATEWAYS {
        let block = all
            .split(&format!("upstream {} {{", g.upstream))
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_else(|| panic!("no upstream {}", g.upstream));
        let servers = block
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .count();
        assert!(servers >= 2, "upstream {}: {servers} server(s)", g.upstream);
        assert!(
            block
                .lines()
                .filter(|l| l.trim_start().starts_with("server "))
                .all(|l| l.contains("max_fails=")),
            "upstream {}: passive health on every server",
            g.upstream
        );
    }
}
