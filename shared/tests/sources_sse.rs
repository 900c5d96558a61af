//! `sse` sources against a real Server-Sent Events endpoint on a loopback port: events reach the
//! bus for wanted channels only, event types map to channels through the rules, a closed stream
//! resumes from `Last-Event-ID` (after the server's `retry:`) with nothing lost or duplicated,
//! garbage is counted and never stops the source, failed and silent connections are retried,
//! and the connection is open only while a channel is wanted.
//!
//! The endpoint keeps a log of event blocks; block `i` (from 1) carries `id: i`. A request with
//! `Last-Event-ID: n` gets every block after the n-th, then live ones; one without gets live
//! ones only. The test appends blocks, kicks every open stream (the server ends them), and makes
//! the next requests fail.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, Delivery, StartAt, Subscription};
use switchyard_core::channels::{Catalog, ChannelName, ChannelsConfig};
use switchyard_core::sources::{Source, SourceConfig};
use test_support::{TestServer, eventually};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(5);

/// The catalog of these tests (as in docs/sources.md).
const CATALOG: &str = r#"
[[catalog]]
pattern = "orders.{user}"
class = "stream"
max_payload_bytes = 512
subscribe = { rule = "public" }
"#;

/// The source of these tests (as in docs/sources.md); `URL` is replaced by the endpoint's.
const SOURCE: &str = r#"
kind = "sse"
url = "URL"
channels = "orders.{user}"
headers = { authorization = "Bearer upstream-token" }
max_message_bytes = 1024
reconnect_initial_ms = 50
reconnect_max_ms = 1000

[[messages]]
event = "order"
capture = { "/user" = "{user}" }

[[messages]]
event = "cancel"
capture = { "/user" = "{user}" }
fields = { cancelled = "/id" }

[[messages]]
event = "heartbeat"
ignore = true
"#;

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    last_event_id: Option<String>,
    authorization: Option<String>,
    accept: Option<String>,
}

/// The SSE endpoint.
struct Endpoint {
    log: Mutex<Vec<String>>,
    appended: watch::Sender<usize>,
    kicks: watch::Sender<u64>,
    requests: Mutex<Vec<Request>>,
    /// Streams open now.
    open: AtomicUsize,
    /// Sent at the start of every stream.
    preamble: Mutex<String>,
    /// Answers for the next requests instead of a stream: status and content type.
    failures: Mutex<VecDeque<(StatusCode, &'static str)>>,
}

/// Counts a stream as open until the response body is dropped (the client went away or the
/// stream ended).
struct OpenGuard(Arc<Endpoint>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Endpoint {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            log: Mutex::new(Vec::new()),
            appended: watch::channel(0).0,
            kicks: watch::channel(0).0,
            requests: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            preamble: Mutex::new(": welcome\n\n".into()),
            failures: Mutex::new(VecDeque::new()),
        })
    }

    async fn serve(self: &Arc<Self>) -> TestServer {
        let router = Router::new()
            .route("/events", get(stream))
            .with_state(self.clone());
        test_support::serve(router).await
    }

    /// Appends event `event` with `data` as block `id`; returns the id.
    fn send(&self, event: &str, data: &str) -> usize {
        let mut log = self.log.lock().unwrap();
        let id = log.len() + 1;
        log.push(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"));
        drop(log);
        self.appended.send_replace(id);
        id
    }

    /// Appends raw text as a block.
    fn send_raw(&self, text: &str) {
        let mut log = self.log.lock().unwrap();
        log.push(text.to_owned());
        let n = log.len();
        drop(log);
        self.appended.send_replace(n);
    }

    /// Ends every open stream.
    fn kick(&self) {
        self.kicks.send_modify(|k| *k += 1);
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn stream(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let last_event_id = text(header::HeaderName::from_static("last-event-id"));
    endpoint.requests.lock().unwrap().push(Request {
        at: Instant::now(),
        last_event_id: last_event_id.clone(),
        authorization: text(header::AUTHORIZATION),
        accept: text(header::ACCEPT),
    });
    if let Some((status, content_type)) = endpoint.failures.lock().unwrap().pop_front() {
        return (status, [(header::CONTENT_TYPE, content_type)], "no").into_response();
    }
    let start = match last_event_id.and_then(|id| id.parse::<usize>().ok()) {
        Some(n) => n,
        None => endpoint.log.lock().unwrap().len(),
    };
    endpoint.open.fetch_add(1, Ordering::SeqCst);
    let guard = OpenGuard(endpoint.clone());
    let preamble = Bytes::from(endpoint.preamble.lock().unwrap().clone());
    let appended = endpoint.appended.subscribe();
    let mut kicks = endpoint.kicks.subscribe();
    kicks.mark_unchanged();
    let blocks = futures::stream::unfold((guard, start), move |(guard, next)| {
        let (mut kicks, mut appended) = (kicks.clone(), appended.clone());
        async move {
            loop {
                if kicks.has_changed().unwrap_or(true) {
                    return None;
                }
                let block = guard.0.log.lock().unwrap().get(next).cloned();
                if let Some(block) = block {
                    let item: Result<Bytes, Infallible> = Ok(Bytes::from(block));
                    return Some((item, (guard, next + 1)));
                }
                // Seen from here on: a block appended after the check below wakes the wait.
                appended.mark_unchanged();
                if guard.0.log.lock().unwrap().len() > next {
                    continue;
                }
                tokio::select! {
                    _ = appended.changed() => {}
                    _ = kicks.changed() => return None,
                }
            }
        }
    });
    let body = futures::stream::once(async move { Ok::<_, Infallible>(preamble) }).chain(blocks);
    (
        [(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

struct Kit {
    endpoint: Arc<Endpoint>,
    _server: TestServer,
    bus: Arc<MemoryBus>,
    catalog: Arc<Catalog>,
    source: Source,
}

impl Kit {
    async fn new(change: impl FnOnce(&mut SourceConfig)) -> Self {
        let endpoint = Endpoint::new();
        let server = endpoint.serve().await;
        let catalog: ChannelsConfig = toml::from_str(CATALOG).expect("catalog");
        let catalog = Arc::new(Catalog::new(&catalog).expect("catalog"));
        let mut config = source_config(&format!("{}/events", server.url()));
        change(&mut config);
        let bus = Arc::new(MemoryBus::new(100));
        let source =
            Source::start("shop", &config, catalog.clone(), bus.clone()).expect("source starts");
        Self {
            endpoint,
            _server: server,
            bus,
            catalog,
            source,
        }
    }

    async fn subscribe(&self, channel: &str) -> Subscription {
        let topic = self.catalog.resolve(channel).expect("in catalog").topic();
        self.bus
            .subscribe(&topic, StartAt::Live)
            .await
            .expect("subscribe")
    }

    async fn connected(&self) {
        let source = self.source.clone();
        assert!(
            eventually(WAIT, || {
                let s = source.stats();
                async move { s.connected }
            })
            .await,
            "the source connects: {:?}",
            self.source.stats()
        );
    }
}

fn source_config(url: &str) -> SourceConfig {
    toml::from_str(&SOURCE.replace("URL", url)).expect("source config")
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("channel name")
}

/// The next event's payload and offset.
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
async fn events_reach_the_bus_for_wanted_channels_only() {
    let kit = Kit::new(|_| {}).await;
    let mut alice = kit.subscribe("orders.alice").await;
    let mut bob = kit.subscribe("orders.bob").await;
    // Nothing is wanted: nothing is opened.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(kit.endpoint.requests().is_empty());
    assert!(!kit.source.stats().connected);

    let _want = kit.source.want(&channel("orders.alice")).expect("fed");
    assert!(kit.source.want(&channel("prices.x")).is_none());
    kit.connected().await;
    let requests = kit.endpoint.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer upstream-token")
    );
    assert_eq!(requests[0].accept.as_deref(), Some("text/event-stream"));
    assert_eq!(requests[0].last_event_id, None);

    kit.endpoint
        .send("order", r#"{"user":"alice","id":1,"total":"9.50"}"#);
    kit.endpoint.send("order", r#"{"user":"bob","id":2}"#);
    kit.endpoint.send("heartbeat", "{}");
    kit.endpoint.send("cancel", r#"{"user":"alice","id":1}"#);
    assert_eq!(
        next(&mut alice).await,
        (r#"{"id":1,"total":"9.50","user":"alice"}"#.to_owned(), 1)
    );
    assert_eq!(next(&mut alice).await, (r#"{"cancelled":1}"#.to_owned(), 2));
    nothing_more(&mut bob).await;
    let stats = kit.source.stats();
    assert_eq!(stats.events_total, 2, "{stats:?}");
    assert_eq!(stats.unwanted_total, 1, "{stats:?}");
    assert_eq!(stats.connects_total, 1, "{stats:?}");
    assert_eq!(stats.unmatched_total + stats.refused_total, 0, "{stats:?}");
}

#[tokio::test]
async fn a_closed_stream_resumes_from_the_last_event_id() {
    let kit = Kit::new(|_| {}).await;
    *kit.endpoint.preamble.lock().unwrap() = ": welcome\nretry: 400\n\n".into();
    let mut alice = kit.subscribe("orders.alice").await;
    let _want = kit.source.want(&channel("orders.alice")).expect("fed");
    kit.connected().await;
    for n in 1..=3 {
        kit.endpoint
            .send("order", &format!(r#"{{"user":"alice","n":{n}}}"#));
    }
    for n in 1..=3 {
        assert_eq!(
            next(&mut alice).await.0,
            format!(r#"{{"n":{n},"user":"alice"}}"#)
        );
    }
    // The server ends the stream; events 4 and 5 are published before the source is back.
    let kicked = Instant::now();
    kit.endpoint.kick();
    for n in 4..=5 {
        kit.endpoint
            .send("order", &format!(r#"{{"user":"alice","n":{n}}}"#));
    }
    for n in 4..=5 {
        let (payload, offset) = next(&mut alice).await;
        assert_eq!(payload, format!(r#"{{"n":{n},"user":"alice"}}"#));
        assert_eq!(offset, n);
    }
    kit.endpoint.send("order", r#"{"user":"alice","n":6}"#);
    assert_eq!(
        next(&mut alice).await,
        (r#"{"n":6,"user":"alice"}"#.to_owned(), 6)
    );
    nothing_more(&mut alice).await;
    let requests = kit.endpoint.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].last_event_id.as_deref(), Some("3"));
    // The backoff alone (50 ms at first) would be sooner: the server's `retry: 400` held it.
    let waited = requests[1].at - kicked;
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    let stats = kit.source.stats();
    assert_eq!(
        (stats.connects_total, stats.events_total),
        (2, 6),
        "{stats:?}"
    );
}

#[tokio::test]
async fn garbage_is_counted_and_the_source_keeps_running() {
    let kit = Kit::new(|_| {}).await;
    let mut alice = kit.subscribe("orders.alice").await;
    let _want = kit.source.want(&channel("orders.alice")).expect("fed");
    kit.connected().await;
    let e = &kit.endpoint;
    e.send("order", "not json {");
    e.send("mystery", r#"{"user":"alice"}"#);
    e.send(
        "order",
        &format!(r#"{{"user":"alice","pad":"{}"}}"#, "x".repeat(5000)),
    );
    e.send_raw(&format!(
        "event: order\ndata: {{\"user\":\"alice\",\n:{}\ndata: \"x\":1}}\n\n",
        "c".repeat(3000)
    ));
    e.send_raw(&format!("data: {}\n", "y".repeat(700)).repeat(4));
    e.send_raw("\n");
    e.send("order", r#"{"user":"a.b"}"#);
    e.send("order", r#"{"user":"*"}"#);
    e.send("order", r#"[1,2,3]"#);
    e.send(
        "order",
        &format!(r#"{{"user":"alice","pad":"{}"}}"#, "z".repeat(700)),
    );
    e.send_raw("\u{0}\u{1}\r\r\r::\n\n");
    e.send("order", r#"{"user":"alice","ok":true}"#);
    // The over-long comment line inside the event was skipped, not the event.
    assert_eq!(next(&mut alice).await.0, r#"{"user":"alice","x":1}"#);
    assert_eq!(next(&mut alice).await.0, r#"{"ok":true,"user":"alice"}"#);
    nothing_more(&mut alice).await;
    let stats = kit.source.stats();
    assert_eq!(stats.unparsable_total, 1, "{stats:?}");
    assert_eq!(stats.unmatched_total, 1, "{stats:?}");
    // One line over max_message_bytes, and data lines over it together.
    assert_eq!(stats.oversized_total, 2, "{stats:?}");
    // `a.b` and `*` are no channel segment, an array has no /user, 700 bytes are over the
    // channel's max_payload_bytes.
    assert_eq!(stats.refused_total, 4, "{stats:?}");
    assert_eq!(stats.events_total, 2, "{stats:?}");
    assert_eq!(stats.connects_total, 1, "never reconnected: {stats:?}");
    assert!(stats.connected);
}

#[tokio::test]
async fn the_connection_closes_when_the_last_guard_drops() {
    let kit = Kit::new(|_| {}).await;
    let mut alice = kit.subscribe("orders.alice").await;
    let first = kit.source.want(&channel("orders.alice")).expect("fed");
    let second = kit.source.want(&channel("orders.bob")).expect("fed");
    let third = kit.source.want(&channel("orders.alice")).expect("fed");
    kit.connected().await;
    assert_eq!(kit.endpoint.open(), 1);
    kit.endpoint.send("order", r#"{"user":"alice"}"#);
    next(&mut alice).await;
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kit.endpoint.open(), 1, "one channel is still wanted");
    drop(third);
    let endpoint = kit.endpoint.clone();
    assert!(
        eventually(WAIT, || {
            let open = endpoint.open();
            async move { open == 0 }
        })
        .await,
        "the stream is closed"
    );
    assert!(!kit.source.stats().connected);
    assert_eq!(kit.source.stats().wanted_channels, 0);
    // Wanted again: a fresh stream, not a resumption (what was missed was for nobody).
    kit.endpoint
        .send("order", r#"{"user":"alice","missed":true}"#);
    let _again = kit.source.want(&channel("orders.alice")).expect("fed");
    kit.connected().await;
    let requests = kit.endpoint.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].last_event_id, None);
    kit.endpoint
        .send("order", r#"{"user":"alice","live":true}"#);
    assert_eq!(next(&mut alice).await.0, r#"{"live":true,"user":"alice"}"#);
    nothing_more(&mut alice).await;
}

#[tokio::test]
async fn failed_and_silent_connections_are_retried() {
    let kit = Kit::new(|c| c.keepalive_ms = 150).await;
    kit.endpoint.failures.lock().unwrap().extend([
        (StatusCode::SERVICE_UNAVAILABLE, "text/event-stream"),
        (StatusCode::OK, "text/html"),
    ]);
    let mut alice = kit.subscribe("orders.alice").await;
    let _want = kit.source.want(&channel("orders.alice")).expect("fed");
    kit.connected().await;
    assert_eq!(
        kit.endpoint.requests().len(),
        3,
        "two refused answers, then a stream"
    );
    assert_eq!(kit.source.stats().connects_total, 1);
    kit.endpoint.send("order", r#"{"user":"alice","n":1}"#);
    assert_eq!(next(&mut alice).await.0, r#"{"n":1,"user":"alice"}"#);
    // The stream then says nothing for two keepalive_ms: it counts as stalled and is reopened,
    // resuming after the last event.
    let endpoint = kit.endpoint.clone();
    assert!(
        eventually(WAIT, || {
            let n = endpoint.requests().len();
            async move { n >= 4 }
        })
        .await
    );
    assert_eq!(
        kit.endpoint.requests()[3].last_event_id.as_deref(),
        Some("1")
    );
    assert!(kit.source.stats().connects_total >= 2);
}

#[tokio::test]
async fn bad_settings_are_refused_at_start_naming_the_key() {
    let catalog = Arc::new(Catalog::new(&ChannelsConfig::default()).expect("catalog"));
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(10));
    let mut c = source_config("http://127.0.0.1:1/events");
    c.tls.ca_pem = "/nonexistent.pem".into();
    let e = Source::start("shop", &c, catalog.clone(), bus.clone()).unwrap_err();
    assert!(e.starts_with("sources.shop.tls:"), "{e}");
    let mut c = source_config("https://127.0.0.1:1/events");
    c.tls.ca_pem = "/nonexistent.pem".into();
    let e = Source::start("shop", &c, catalog.clone(), bus.clone()).unwrap_err();
    assert!(
        e.starts_with("sources.shop.tls:") && e.contains("nonexistent"),
        "{e}"
    );
    let e = Source::start("shop", &source_config("http://[::1/x"), catalog, bus).unwrap_err();
    assert!(e.starts_with("sources.shop.url:"), "{e}");
}
