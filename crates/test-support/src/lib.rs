//! Fixtures shared by Switchyard's tests: real HTTP servers on loopback port 0, scripted
//! backends whose behaviour a test changes while they run, and polling helpers; servers run
//! in-process with a bounded stop ([`instance`]); clients of each gateway's protocol
//! ([`graphql_ws`], [`mobile`], [`device`]) and of plain HTTP ([`http`]); the streamed file
//! routes' scenarios ([`files`]).
//!
//! Nothing here mocks HTTP: every fixture is a real axum server on a real socket. This crate does
//! not depend on the core nor on the gateways, so their own tests can use it without a dependency
//! cycle: where a fixture needs a gateway (starting one, publishing on its bus), the caller passes
//! it in, or a thin adapter in that crate's `tests/common` holds it.

pub mod device;
pub mod files;
pub mod graphql_ws;
pub mod hostile;
pub mod http;
pub mod instance;
pub mod mobile;
pub mod process;
pub mod raw_ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A server running on a loopback port; it stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl TestServer {
    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server now (it also stops when dropped).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `router` on 127.0.0.1:0.
pub async fn serve(router: Router) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    serve_on(listener, router)
}

/// Serves `router` on an already bound listener.
pub fn serve_on(listener: TcpListener, router: Router) -> TestServer {
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
    });
    TestServer { addr, stop }
}

/// What a scripted backend does with the next request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer this status and JSON body after this delay.
    Reply {
        /// Delay before answering.
        delay: Duration,
        /// Status.
        status: u16,
        /// JSON body.
        body: String,
    },
}

/// A backend answering every path per a script a test can change, counting what it sees.
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    state: Arc<ScriptedState>,
}

#[derive(Debug, Default)]
struct ScriptedState {
    script: std::sync::Mutex<Option<Script>>,
    /// Requests received.
    received: AtomicUsize,
    /// Requests whose handler was dropped before it answered (the caller went away).
    abandoned: AtomicUsize,
    /// Requests answered.
    completed: AtomicUsize,
    /// Requests by method: GET, POST.
    gets: AtomicU64,
    posts: AtomicU64,
    /// The `traceparent` header of each request, in order (`None` without one); the last
    /// [`Scripted::TRACEPARENTS_KEPT`] only.
    traceparents: std::sync::Mutex<std::collections::VecDeque<Option<String>>>,
}

impl Scripted {
    /// A backend answering 200 `{"ok":true}` at once.
    pub fn new() -> Self {
        let s = Self::default();
        s.set(Script::Reply {
            delay: Duration::ZERO,
            status: 200,
            body: r#"{"ok":true}"#.into(),
        });
        s
    }

    /// A backend answering `status` with the JSON `body` at once.
    pub fn replying(status: u16, body: &str) -> Self {
        let s = Self::default();
        s.reply(Duration::ZERO, status, body);
        s
    }

    /// Changes what the next requests get.
    pub fn set(&self, script: Script) {
        *self.state.script.lock().expect("script lock") = Some(script);
    }

    /// Answers `status` with `body` after `delay`.
    pub fn reply(&self, delay: Duration, status: u16, body: &str) {
        self.set(Script::Reply {
            delay,
            status,
            body: body.into(),
        });
    }

    /// Requests received so far.
    pub fn received(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Requests abandoned by the caller before the answer.
    pub fn abandoned(&self) -> usize {
        self.state.abandoned.load(Ordering::SeqCst)
    }

    /// Requests answered.
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// POST requests received.
    pub fn posts(&self) -> u64 {
        self.state.posts.load(Ordering::SeqCst)
    }

    /// GET requests received.
    pub fn gets(&self) -> u64 {
        self.state.gets.load(Ordering::SeqCst)
    }

    /// How many requests' `traceparent` headers are kept.
    pub const TRACEPARENTS_KEPT: usize = 256;

    /// The `traceparent` header of each request received (`None` for a request without one,
    /// or with a value that is not text), oldest first.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        let kept = self.state.traceparents.lock().expect("traceparents lock");
        kept.iter().cloned().collect()
    }

    /// The router serving the script on every path.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        Router::new().fallback(any(move |req: axum::extract::Request| {
            let state = state.clone();
            async move { handle(state, req).await }
        }))
    }

    /// Serves it on a loopback port.
    pub async fn serve(&self) -> TestServer {
        serve(self.router()).await
    }
}

struct AbandonGuard {
    state: Arc<ScriptedState>,
    done: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.state.completed
        } else {
            &self.state.abandoned
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

async fn handle(state: Arc<ScriptedState>, req: axum::extract::Request) -> Response {
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    {
        let mut kept = state.traceparents.lock().expect("traceparents lock");
        if kept.len() == Scripted::TRACEPARENTS_KEPT {
            kept.pop_front();
        }
        kept.push_back(traceparent);
    }
    state.received.fetch_add(1, Ordering::SeqCst);
    match *req.method() {
        axum::http::Method::GET => state.gets.fetch_add(1, Ordering::SeqCst),
        axum::http::Method::POST => state.posts.fetch_add(1, Ordering::SeqCst),
        _ => 0,
    };
    let script = state.script.lock().expect("script lock").clone();
    let mut guard = AbandonGuard {
        state: state.clone(),
        done: false,
    };
    let Some(Script::Reply {
        delay,
        status,
        body,
    }) = script
    else {
        guard.done = true;
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    tokio::time::sleep(delay).await;
    guard.done = true;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Polls `check` every 10 ms until it is true or `timeout` passes; says whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A name no other test, in this run or another, uses: `{label}-{pid}-{time}-{n}`, for bus
/// prefixes and scratch directories (so that runs never see each other's keys or files).
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{label}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The demo backends a quote needs, scripted: an exchange answering EUR/USD at 1.5 and a limits
/// service answering bob's limit (990 left), each counting its calls; conversions points
/// nowhere. The servers stop when this is dropped.
#[derive(Debug)]
pub struct QuoteBackends {
    /// The exchange's script and counters.
    pub exchange: Scripted,
    /// The limits service's script and counters.
    pub limits: Scripted,
    servers: (TestServer, TestServer),
}

impl QuoteBackends {
    /// Starts both on loopback ports.
    pub async fn start() -> Self {
        let exchange = Scripted::replying(200, r#"{"pair":"EUR/USD","rate":"1.5","seq":7}"#);
        let limits = Scripted::replying(
            200,
            r#"{"user":"bob","daily_limit":"1000","used":"10","remaining":"990"}"#,
        );
        let servers = (exchange.serve().await, limits.serve().await);
        Self {
            exchange,
            limits,
            servers,
        }
    }

    /// A configuration of each backend, by the name the operations call it, made from its base
    /// URL by `make` (the gateway's own backend configuration type, which this crate does not
    /// know): `config.backends = backends.configs(BackendConfig::new)`.
    pub fn configs<T, C: FromIterator<(String, T)>>(&self, make: impl Fn(String) -> T) -> C {
        [
            ("exchange", self.servers.0.url()),
            ("limits", self.servers.1.url()),
            ("conversions", "http://127.0.0.1:9".to_owned()),
            // The file routes' backend, which bff-web and bff-mobile need configured.
            ("statements", "http://127.0.0.1:9".to_owned()),
        ]
        .into_iter()
        .map(|(name, url)| (name.to_owned(), make(url)))
        .collect()
    }
}

/// The one error of a quote answer whose limit was withheld (`errors`, a list of exactly one),
/// whose message says why in words; the caller checks the fields its wire format gives it.
#[track_caller]
pub fn withheld_error(body: &serde_json::Value) -> &serde_json::Value {
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{body}");
    assert!(
        errors[0]["message"]
            .as_str()
            .expect("message")
            .contains("only shown to its own user"),
        "{body}"
    );
    &errors[0]
}
