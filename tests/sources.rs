//! Hide a backend's own push API behind Switchyard by configuration, end to end through the
//! launcher, for every source kind: a service's events reach a graphql-ws client (the npm
//! reference client), a mobile client (CBOR) and a device poll, each exactly once and in order,
//! through ONE upstream subscription however many clients, released with the last subscriber;
//! an event the service sends before anyone subscribed is ingested nowhere, and garbage from the
//! service changes nothing.
//!
//! One scenario ([`every_client_once_through_one_upstream_subscription`]) drives each kind of
//! service through the [`Upstream`] trait, which says only what differs: how the service is
//! started, its configuration (the blocks of docs/sources.md), how to make it send events and
//! garbage, and how it counts its subscriptions.
//!
//! - `json-ws`: `tests/js/rooms-server.mjs` (npm `ws`), a chat service with a JSON protocol of
//!   its own (follow/unfollow a room); its follows and unfollows are counted by the service.
//! - `socketio`: `tests/js/socketio-server.mjs` (npm `socket.io`), the price service of the
//!   core's tests, emitting on request only; its joins and leaves are counted by the service.
//! - `sse`: an SSE endpoint run by the test (axum); its requests and open streams are counted.
//! - `redis-pubsub`: the real Redis at 127.0.0.1:6379, under a channel prefix of this run's own;
//!   the subscriptions are observed by what `PUBLISH` answers (the clients that received the
//!   message: the source's one `PSUBSCRIBE`, then none).
//!
//! Needs node (>= 20), `npm ci --prefix tests/js` and Redis with `redis-cli` (`scripts/test`
//! runs `scripts/services` and npm). Without them these tests fail, saying so; they never skip.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::launcher::token;
use mobile_proto::Encoding;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard::{Config, DEMO_DEVICE, DEMO_DEVICE_KEY, Stack};
use switchyard_core::channels::ChannelsConfig;
use switchyard_core::sources::SourceConfig;
use test_support::device::{DeviceApi, channel_data};
use test_support::mobile::Client as MobileClient;
use test_support::{TestServer, unique_name};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::broadcast;

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing):
/// every wait ends as soon as its condition holds.
const PATIENCE: Duration = Duration::from_secs(30);

const SETUP_HINT: &str = "run `npm ci --prefix tests/js` (scripts/test does; it needs node >= 20)";

fn js(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js").join(name)
}

/// A service's subscriptions for the tested channel, as observed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscriptions {
    /// Open now.
    open: u64,
    /// Made since the service started, where the service can count them.
    made: Option<u64>,
}

/// What differs between kinds of upstream service; the scenario is the same for all.
trait Upstream {
    /// The channel the clients subscribe to.
    const CHANNEL: &'static str;

    /// The configuration, as docs/sources.md shows it for the kind: the `[[channels.catalog]]`
    /// entry and the `[sources.NAME]` block, pointing at this service.
    fn config(&self) -> String;

    /// Makes the service send its next `n` events for the channel.
    async fn send(&mut self, n: u64);

    /// The payload the clients receive for the service's `i`-th event (from 0).
    fn payload(&self, i: u64) -> Value;

    /// Makes the service send garbage: unreadable messages, unknown events, hostile channel
    /// values, events for channels nobody wants.
    async fn garbage(&mut self);

    /// The service's subscriptions for the channel.
    async fn subscriptions(&mut self) -> Subscriptions;

    /// Waits, for at most [`PATIENCE`], until `done` holds for the subscriptions.
    async fn until(&mut self, what: &str, done: impl Fn(Subscriptions) -> bool) -> Subscriptions {
        let end = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.subscriptions().await;
            if done(now) {
                return now;
            }
            assert!(tokio::time::Instant::now() < end, "{what}: {now:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A configuration document: `[channels]` and `[sources]`, as in a gateway's file.
#[derive(Deserialize)]
struct Doc {
    channels: ChannelsConfig,
    sources: BTreeMap<String, SourceConfig>,
}

/// The scenario, for any kind of service.
async fn every_client_once_through_one_upstream_subscription<U: Upstream>(mut up: U) {
    let channel = U::CHANNEL;
    let doc: Doc = toml::from_str(&up.config()).expect("the documented configuration reads");
    let mut config = Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    config.channels.catalog.extend(doc.channels.catalog);
    config.sources.extend(doc.sources);
    config
        .device
        .devices
        .get_mut(DEMO_DEVICE)
        .expect("the demo device")
        .channels = vec![channel.to_owned()];
    let stack = Stack::start(config).await.expect("stack starts");

    // Nobody subscribed: nothing is asked upstream, and the service's event 0 reaches nobody.
    let none = up.subscriptions().await;
    assert_eq!(none.open, 0, "{none:?}");
    assert_eq!(none.made.unwrap_or(0), 0, "{none:?}");
    up.send(1).await;

    // A mobile client subscribes: the source subscribes upstream, once.
    let mobile_url = format!("ws://{}/v1/ws", stack.addr("bff-mobile"));
    let mut mobile =
        MobileClient::connect_within(&mobile_url, &[Encoding::Cbor.subprotocol()], PATIENCE).await;
    mobile.sign_in(token("alice"), "alice").await;
    let mut mobile = mobile.skipping_pings();
    mobile.subbed(channel, None).await;
    up.until("the service sees one subscription", |s| s.open == 1)
        .await;

    // Event 1; its position is where the web client starts.
    up.send(1).await;
    let first = mobile.event().await;
    assert_eq!(first.topic, channel);
    assert_eq!(serde_json::to_value(&first.data).unwrap(), up.payload(1));

    let ws = format!("ws://{}/v1/graphql", stack.addr("bff-web"));
    let (epoch, offset) = (first.epoch.to_string(), first.offset.to_string());
    let web = {
        let (epoch, offset) = (epoch.clone(), offset.clone());
        tokio::spawn(async move {
            let out = Command::new("node")
                .arg(js("channel-client.mjs"))
                .args([&ws, channel, "2"])
                .env("AFTER_EPOCH", &epoch)
                .env("AFTER_OFFSET", &offset)
                .env("TIMEOUT_MS", PATIENCE.as_millis().to_string())
                .kill_on_drop(true)
                .output()
                .await
                .expect("node runs");
            assert!(
                out.status.success(),
                "channel-client failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default())
                .expect("the client's JSON line")
        })
    };

    // Garbage from the service changes nothing; then events 2 and 3.
    up.garbage().await;
    up.send(2).await;

    for k in [1, 2] {
        let event = mobile.event().await;
        assert_eq!(event.topic, channel);
        assert_eq!((event.epoch, event.offset), (first.epoch, first.offset + k));
        assert_eq!(
            serde_json::to_value(&event.data).unwrap(),
            up.payload(1 + k)
        );
    }
    mobile.quiet(Duration::from_millis(300)).await;

    let web = tokio::time::timeout(PATIENCE + Duration::from_secs(5), web)
        .await
        .expect("the web client finishes")
        .expect("the web client's task");
    let got: Vec<(String, String, Value)> = web["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["epoch"].as_str().unwrap_or_default().to_owned(),
                e["offset"].as_str().unwrap_or_default().to_owned(),
                e["data"].clone(),
            )
        })
        .collect();
    let at = |k: u64| (first.offset + k).to_string();
    assert_eq!(
        got,
        vec![
            (epoch.clone(), at(1), up.payload(2)),
            (epoch.clone(), at(2), up.payload(3)),
        ],
        "{web}"
    );

    // The device: every retained event once across polls with cursors, in order; event 0,
    // sent before anyone subscribed, was never ingested.
    let devices = DeviceApi::new(stack.url("bff-device"), "", PATIENCE);
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let answer = devices
            .poll(DEMO_DEVICE, DEMO_DEVICE_KEY, cursor.as_deref(), 0)
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer = answer.json();
        let data = channel_data(&answer, channel);
        if data.is_empty() && !seen.is_empty() {
            break;
        }
        seen.extend(data);
        cursor = answer["n"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, vec![up.payload(1), up.payload(2), up.payload(3)]);

    // Still one upstream subscription for all of them; garbage did not break it.
    let one = up.subscriptions().await;
    assert_eq!(one.open, 1, "{one:?}");
    assert_eq!(one.made.unwrap_or(1), 1, "{one:?}");

    // The last subscriber gone: the subscription is released upstream, and none is made again.
    drop(mobile);
    let released = up
        .until("the last subscriber's departure releases it", |s| {
            s.open == 0
        })
        .await;
    assert_eq!(released.made.unwrap_or(1), 1, "{released:?}");
}

/// A node service speaking JSON lines on stdio: commands in, one JSON answer each.
struct NodeService {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl NodeService {
    /// Starts `node tests/js/<script> <args>`; its first line must be JSON with the port at
    /// `port_key`.
    async fn start(script: &str, args: &[&str], port_key: &str) -> Self {
        let mut child = Command::new("node")
            .arg(js(script))
            .args(args)
            .current_dir(js(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install node >= 20"));
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = Self::line(&mut lines).await;
        let port = first[port_key]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{script} did not print its port: {first}"));
        Self {
            _child: child,
            stdin,
            lines,
            port,
        }
    }

    async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the service answers in time")
            .expect("the service's stdout")
            .unwrap_or_else(|| panic!("the service exited: {SETUP_HINT}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    async fn command(&mut self, line: &str) -> Value {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the service's stdin");
        Self::line(&mut self.lines).await
    }
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `json-ws`: the rooms service, a JSON protocol of its own (docs/sources.md, `[sources.rooms]`).
struct Rooms(NodeService);

impl Rooms {
    async fn start() -> Self {
        assert!(
            js("node_modules/ws/package.json").is_file(),
            "the npm package ws is missing: {SETUP_HINT}"
        );
        Self(NodeService::start("rooms-server.mjs", &[], "port").await)
    }
}

impl Upstream for Rooms {
    const CHANNEL: &'static str = "rooms.lobby";

    fn config(&self) -> String {
        let port = self.0.port;
        format!(
            r#"
[[channels.catalog]]
pattern = "rooms.{{room}}"
class = "stream"
history_events = 100
max_payload_bytes = 4096
subscribe = {{ rule = "public" }}

[sources.rooms]
kind = "json-ws"
url = "ws://127.0.0.1:{port}/"
channels = "rooms.{{room}}"
headers = {{ authorization = "Bearer rooms-secret" }}
subscribe = '{{"action":"follow","room":"{{room}}"}}'
unsubscribe = '{{"action":"unfollow","room":"{{room}}"}}'

[[sources.rooms.messages]]
when = {{ "/type" = "message" }}
capture = {{ "/room" = "{{room}}" }}
fields = {{ seq = "/seq", text = "/text" }}

[[sources.rooms.messages]]
when = {{ "/type" = "following" }}
ignore = true

[[sources.rooms.messages]]
when = {{ "/type" = "unfollowed" }}
ignore = true
"#
        )
    }

    async fn send(&mut self, n: u64) {
        let answer = self.0.command(&format!("say lobby {n}")).await;
        assert_eq!(answer["sent"], n, "{answer}");
    }

    fn payload(&self, i: u64) -> Value {
        json!({"seq": i, "text": format!("hello {i} ✓")})
    }

    async fn garbage(&mut self) {
        // Invalid JSON, an unknown type, the hostile room `a.b`, a binary frame.
        let answer = self.0.command("garbage lobby").await;
        assert_eq!(answer["sent"], 4, "{answer}");
    }

    async fn subscriptions(&mut self) -> Subscriptions {
        let stats = self.0.command("stats").await;
        let (follows, unfollows) = (
            count(&stats["follows"]["lobby"]),
            count(&stats["unfollows"]["lobby"]),
        );
        assert_eq!(stats["refused"], 0, "the bearer token is sent: {stats}");
        Subscriptions {
            open: follows.saturating_sub(unfollows),
            made: Some(follows),
        }
    }
}

#[tokio::test]
async fn a_json_ws_service_reaches_every_kind_of_client_through_one_upstream_follow() {
    every_client_once_through_one_upstream_subscription(Rooms::start().await).await;
}

/// `socketio`: the npm `socket.io` price service, emitting on request only (docs/sources.md,
/// `[sources.prices]`).
struct Prices {
    _child: Child,
    base: String,
    http: reqwest::Client,
    boot: String,
}

impl Prices {
    async fn start() -> Self {
        assert!(
            js("node_modules/socket.io/package.json").is_file(),
            "the npm package socket.io is missing: {SETUP_HINT}"
        );
        let mut child = Command::new("node")
            .arg(js("socketio-server.mjs"))
            .args(["--port", "0", "--token", "s3cret", "--tick-ms", "0"])
            .current_dir(js(""))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install node >= 20"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = NodeService::line(&mut lines).await;
        let port = first["listening"]
            .as_u64()
            .unwrap_or_else(|| panic!("socketio-server.mjs did not print its port: {first}"));
        // Whatever else it prints is read, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PATIENCE)
            .build()
            .expect("an HTTP client");
        let mut prices = Self {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            http,
            boot: String::new(),
        };
        prices.boot = prices.stats().await["boot"]
            .as_str()
            .expect("the server's boot id")
            .to_owned();
        prices
    }

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

    async fn post(&self, path: &str) -> Value {
        let answer = self
            .http
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert!(answer.status().is_success(), "POST {path}: {answer:?}");
        answer.json().await.expect("JSON answer")
    }
}

impl Upstream for Prices {
    const CHANNEL: &'static str = "prices.AAPL";

    fn config(&self) -> String {
        let base = &self.base;
        format!(
            r#"
[[channels.catalog]]
pattern = "prices.{{symbol}}"
class = "stream"
subscribe = {{ rule = "public" }}

[sources.prices]
kind = "socketio"
url = "{base}"
channels = "prices.{{symbol}}"
namespace = "/market"
auth = {{ token = "s3cret" }}
join = {{ event = "subscribe", args = ["{{symbol}}"] }}
leave = {{ event = "unsubscribe", args = ["{{symbol}}"] }}
max_message_bytes = 65536
reconnect_max_ms = 2000

[[sources.prices.messages]]
event = "price"
capture = {{ "/0/symbol" = "{{symbol}}" }}
payload = "/0"
"#
        )
    }

    async fn send(&mut self, n: u64) {
        let answer = self.post(&format!("/emit?symbol=AAPL&n={n}")).await;
        assert_eq!(answer["sent"], n, "{answer}");
    }

    fn payload(&self, i: u64) -> Value {
        // The server counts a symbol's prices from 1.
        let seq = i + 1;
        json!({"symbol": "AAPL", "price": 100 + seq % 10, "seq": seq, "boot": self.boot})
    }

    async fn garbage(&mut self) {
        // An unknown event (twice, once asking for an ack), a price for the hostile symbol
        // `X.Y`, a binary attachment, a truncated Socket.IO packet.
        let answer = self.post("/garbage").await;
        assert_eq!(answer["sent_to"], 1, "{answer}");
    }

    async fn subscriptions(&mut self) -> Subscriptions {
        let stats = self.stats().await;
        let (joins, leaves) = (
            count(&stats["joins"]["AAPL"]),
            count(&stats["leaves"]["AAPL"]),
        );
        assert_eq!(
            stats["auth_failures"], 0,
            "the auth payload is sent: {stats}"
        );
        assert!(
            count(&stats["connects_total"]) <= 1,
            "one connection, never reopened: {stats}"
        );
        Subscriptions {
            open: joins.saturating_sub(leaves),
            made: Some(joins),
        }
    }
}

#[tokio::test]
async fn a_socketio_service_reaches_every_kind_of_client_through_one_upstream_join() {
    every_client_once_through_one_upstream_subscription(Prices::start().await).await;
}

/// `sse`: a Server-Sent Events endpoint run by the test (docs/sources.md, `[sources.shop]`):
/// every event to every open stream, live only (no `id:`, so no `Last-Event-ID` flow), a
/// comment now and then so that a stream the source closed is noticed.
struct Shop {
    endpoint: Arc<Endpoint>,
    server: TestServer,
    sent: u64,
}

struct Endpoint {
    events: broadcast::Sender<String>,
    requests: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
}

/// Counts a stream as open until its response body is dropped.
struct OpenStream(Arc<Endpoint>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn event_stream(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == "Bearer upstream-token");
    if !authorized || headers.contains_key("last-event-id") {
        endpoint.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Subscribed before it is counted: an event sent once the test sees the stream reaches it.
    let events = endpoint.events.subscribe();
    endpoint.requests.fetch_add(1, Ordering::SeqCst);
    endpoint.open.fetch_add(1, Ordering::SeqCst);
    let open = OpenStream(endpoint.clone());
    let comments = tokio::time::interval(Duration::from_millis(200));
    let body = futures::stream::unfold(
        (open, events, comments),
        |(open, mut events, mut comments)| async move {
            let text = tokio::select! {
                event = events.recv() => match event {
                    Ok(text) => text,
                    // Lagging ends the stream: the source reconnects, which the test sees.
                    Err(_) => return None,
                },
                _ = comments.tick() => ": still here\n\n".to_owned(),
            };
            Some((Ok::<_, Infallible>(text), (open, events, comments)))
        },
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

impl Shop {
    async fn start() -> Self {
        let endpoint = Arc::new(Endpoint {
            events: broadcast::channel(256).0,
            requests: AtomicU64::new(0),
            open: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/events", get(event_stream))
            .with_state(endpoint.clone());
        let server = test_support::serve(router).await;
        Self {
            endpoint,
            server,
            sent: 0,
        }
    }

    /// Sends an event block to every open stream (none: it is lost, as SSE's are).
    fn block(&self, event: &str, data: &str) {
        let _ = self
            .endpoint
            .events
            .send(format!("event: {event}\ndata: {data}\n\n"));
    }
}

impl Upstream for Shop {
    const CHANNEL: &'static str = "orders.alice";

    fn config(&self) -> String {
        let url = format!("{}/events", self.server.url());
        format!(
            r#"
[[channels.catalog]]
pattern = "orders.{{user}}"
class = "stream"
max_payload_bytes = 512
subscribe = {{ rule = "public" }}

[sources.shop]
kind = "sse"
url = "{url}"
channels = "orders.{{user}}"
headers = {{ authorization = "Bearer upstream-token" }}
max_message_bytes = 1024
reconnect_initial_ms = 50
reconnect_max_ms = 1000

[[sources.shop.messages]]
event = "order"
capture = {{ "/user" = "{{user}}" }}

[[sources.shop.messages]]
event = "cancel"
capture = {{ "/user" = "{{user}}" }}
fields = {{ cancelled = "/id" }}

[[sources.shop.messages]]
event = "heartbeat"
ignore = true
"#
        )
    }

    async fn send(&mut self, n: u64) {
        for _ in 0..n {
            self.block("order", &self.payload(self.sent).to_string());
            self.sent += 1;
        }
    }

    fn payload(&self, i: u64) -> Value {
        json!({"user": "alice", "id": i, "total": format!("{i}.50")})
    }

    async fn garbage(&mut self) {
        let big = "x".repeat(2000);
        for (event, data) in [
            ("order", "{not json".to_owned()),
            ("weather", r#"{"user":"alice","celsius":21}"#.to_owned()),
            ("order", r#"{"user":"a.b","id":99}"#.to_owned()),
            ("order", r#"{"user":"*","id":99}"#.to_owned()),
            ("order", r#"{"id":99}"#.to_owned()),
            ("order", r#"{"user":"bob","id":99}"#.to_owned()),
            (
                "order",
                format!(r#"{{"user":"alice","id":99,"pad":"{big}"}}"#),
            ),
            ("heartbeat", "{}".to_owned()),
        ] {
            self.block(event, &data);
        }
    }

    async fn subscriptions(&mut self) -> Subscriptions {
        let refused = self.endpoint.refused.load(Ordering::SeqCst);
        assert_eq!(
            refused, 0,
            "every request has the token and no Last-Event-ID"
        );
        Subscriptions {
            open: self.endpoint.open.load(Ordering::SeqCst),
            made: Some(self.endpoint.requests.load(Ordering::SeqCst)),
        }
    }
}

#[tokio::test]
async fn an_sse_endpoint_reaches_every_kind_of_client_through_one_upstream_stream() {
    every_client_once_through_one_upstream_subscription(Shop::start().await).await;
}

/// `redis-pubsub`: a backend PUBLISHing on the real Redis (docs/sources.md, `[sources.shop]`),
/// with `redis-cli`, on channels under this run's own prefix.
struct Publisher {
    prefix: String,
    sent: u64,
}

impl Publisher {
    fn new() -> Self {
        Self {
            prefix: unique_name("e2e-sources"),
            sent: 0,
        }
    }

    /// PUBLISHes `payload` on `PREFIX:channel`; how many subscribers received it.
    async fn publish(&self, channel: &str, payload: &str) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "PUBLISH"])
            .arg(format!("{}:{channel}", self.prefix))
            .arg(payload)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PATIENCE, out)
            .await
            .expect("redis-cli answers in time")
            .unwrap_or_else(|e| panic!("cannot run `redis-cli` ({e}): run scripts/services"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "redis-cli PUBLISH failed (is Redis up? run scripts/services): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("PUBLISH answers a count, not {text:?} (Redis down?)"))
    }
}

impl Upstream for Publisher {
    const CHANNEL: &'static str = "tenants.acme.orders";

    fn config(&self) -> String {
        let prefix = &self.prefix;
        format!(
            r#"
[[channels.catalog]]
pattern = "tenants.{{tenant}}.orders"
class = "stream"
max_payload_bytes = 512
subscribe = {{ rule = "public" }}

[sources.shop]
kind = "redis-pubsub"
url = "redis://127.0.0.1:6379"
channels = "tenants.{{tenant}}.orders"
patterns = ["{prefix}:shop:*:orders"]
max_message_bytes = 1024
reconnect_initial_ms = 50
reconnect_max_ms = 1000

[[sources.shop.messages]]
capture = {{ "@channel" = "{prefix}:shop:{{tenant}}:orders" }}
"#
        )
    }

    async fn send(&mut self, n: u64) {
        for _ in 0..n {
            let received = self
                .publish("shop:acme:orders", &self.payload(self.sent).to_string())
                .await;
            // Zero before anyone subscribed; one, the source, after: never one per client.
            assert!(
                received <= 1,
                "{received} subscribers received event {}",
                self.sent
            );
            self.sent += 1;
        }
    }

    fn payload(&self, i: u64) -> Value {
        json!({"id": i, "total": format!("{i}.50")})
    }

    async fn garbage(&mut self) {
        let big = format!(r#"{{"id":99,"pad":"{}"}}"#, "x".repeat(2000));
        for (channel, payload) in [
            ("shop:acme:orders", "{not json"),
            ("shop:acme:orders", big.as_str()),
            ("shop:a.b:orders", r#"{"id":99}"#),
            ("shop:x:y:orders", r#"{"id":99}"#),
            ("shop:*:orders", r#"{"id":99}"#),
            ("shop:bob:orders", r#"{"id":99}"#),
        ] {
            assert_eq!(self.publish(channel, payload).await, 1, "{channel}");
        }
    }

    /// Redis counts pattern subscriptions only globally (`PUBSUB NUMPAT`, which other tests
    /// change too), but PUBLISH answers how many subscribers received the message: a probe on a
    /// channel of this run's pattern that no client wants (counted `unwanted` by the source,
    /// never ingested) reaches the source's subscription and nothing else.
    async fn subscriptions(&mut self) -> Subscriptions {
        let open = self
            .publish("shop:nobody:orders", r#"{"probe":true}"#)
            .await;
        Subscriptions { open, made: None }
    }
}

#[tokio::test]
async fn a_redis_publisher_reaches_every_kind_of_client_through_one_upstream_psubscribe() {
    every_client_once_through_one_upstream_subscription(Publisher::new()).await;
}
