//! The servers of the device benchmarks, each run alone in a child process of the bench binary
//! (hidden subcommand `serve-device`) so that its resident memory is the server's alone:
//!
//! - the gateway: bff-device over an in-memory bus with `--devices` devices `dev-{i}` (key
//!   [`key`]), each configured for EUR/USD; beside its routes, bench-only control routes
//!   publish on its bus (`POST /bench/rate`: one EUR/USD tick; `POST /bench/command`: one command
//!   for every device, `{"id": "s{seq}", "op": "bench", "args": {"ts": <unix ns>}}`;
//!   `POST /bench/commands?rate=&count=`: a backend inside the child sending `count` such commands
//!   at `rate` a second on a steady clock, `GET /bench/published` how many it has sent) and report
//!   its held polls (`GET /bench/holding`);
//! - `--baseline`: a minimal long-poll server (axum, one shared `watch`, no auth, no cursor
//!   decoding, no bus) with the same routes, to set the gateway's memory per held poll against.
//!
//! Both also answer `GET /bench/heap`: their live heap in bytes when the bench is built with
//! `--features dhat-heap` (which also writes a dhat profile of the child on exit), else 0.
//!
//! Like `serve-gateway`, a child prints `url http://…` once it accepts connections and runs until
//! its standard input closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use serde::Deserialize;
use switchyard_core::bus::{Broker, Bus};
use switchyard_core::event::Topic;
use switchyard_server::server::CancellationToken;
use tokio::sync::watch;

/// Arguments of `serve-device`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Devices configured (`dev-0` …).
    #[arg(long, default_value_t = 10_100)]
    devices: usize,
    /// Events of history the bus keeps per topic.
    #[arg(long, default_value_t = 1_000)]
    history: usize,
    /// Serve the minimal long-poll baseline instead of bff-device.
    #[arg(long)]
    baseline: bool,
}

/// The credential of device `i`.
pub(crate) fn key(i: usize) -> String {
    format!("dev-{i}-bench-key-000000")
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // With `--features dhat-heap`: a heap profile of this child, written to
    // `dhat-heap.json` (in the working directory) when it exits.
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::builder()
        .file_name(if args.baseline {
            "dhat-heap-baseline.json"
        } else {
            "dhat-heap.json"
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let router = if args.baseline {
        baseline()
    } else {
        gateway(&args, shutdown.clone())?
    };
    // Thousands of devices poll from this one address.
    let server_config = switchyard_server::config::ServerConfig {
        drain_timeout_ms: 5_000,
        max_connections_per_ip: 0,
        max_connections: 0,
        ..Default::default()
    };
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        switchyard_server::server::serve_with(listener, router, stop, &server_config).await
    });
    crate::serve::announce(&format!("http://{addr}"));
    crate::serve::until_stdin_closes().await;
    shutdown.cancel();
    server.await??;
    Ok(())
}

#[derive(Clone)]
struct Control {
    bus: Arc<dyn Bus>,
    app: Arc<bff_device::App>,
    commands: Arc<Vec<Topic>>,
    seq: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
}

fn gateway(args: &Args, shutdown: CancellationToken) -> anyhow::Result<Router> {
    let mut config = bff_device::Config::default();
    config.sources.clear();
    config.rate_limits = switchyard_core::ratelimit::RateLimitConfig::off();
    config.api.max_held_polls = args.devices * 2 + 1_000;
    config.api.max_devices = args.devices + 1_000;
    config.api.max_wait_s = 600;
    for i in 0..args.devices {
        config.devices.insert(
            format!("dev-{i}"),
            bff_device::DeviceConfig {
                key: key(i),
                rates: vec!["EUR/USD".to_owned()],
                settings: Default::default(),
                channels: Vec::new(),
            },
        );
    }
    let broker = Broker::memory(args.history);
    let bus = broker.bus();
    let app = Arc::new(bff_device::app(&config, &broker, shutdown)?);
    let commands = (0..args.devices)
        .map(|i| Topic::new(&format!("devices.dev-{i}.commands")))
        .collect::<Result<Vec<_>, _>>()?;
    let control = Control {
        bus,
        app: app.clone(),
        commands: Arc::new(commands),
        seq: Arc::new(AtomicU64::new(0)),
        published: Arc::new(AtomicU64::new(0)),
    };
    let bench = Router::new()
        .route("/bench/rate", post(rate))
        .route("/bench/command", post(command))
        .route("/bench/commands", post(schedule))
        .route("/bench/published", get(published))
        .route("/bench/holding", get(holding))
        .with_state(control);
    Ok(app
        .router
        .clone()
        .merge(bench)
        .route("/bench/heap", get(heap)))
}

/// The live heap in bytes (with `--features dhat-heap`; 0 without).
async fn heap() -> String {
    #[cfg(feature = "dhat-heap")]
    return dhat::HeapStats::get().curr_bytes.to_string();
    #[cfg(not(feature = "dhat-heap"))]
    "0".to_owned()
}

async fn rate(State(c): State<Control>) -> Result<String, String> {
    let seq = c.seq.fetch_add(1, Ordering::Relaxed) + 1;
    // The bus topic of the demo catalog's channel `rates.EUR-USD`, which the exchange source feeds.
    let topic = Topic::new("ch:rates.EUR-USD").map_err(|e| e.to_string())?;
    let payload = format!(r#"{{"pair":"EUR/USD","rate":"1.{seq:04}","seq":{seq}}}"#);
    c.bus
        .publish(&topic, payload.into())
        .await
        .map_err(|e| e.to_string())?;
    Ok(seq.to_string())
}

#[derive(Deserialize)]
struct Schedule {
    rate: u64,
    count: u64,
}

/// Starts a backend sending `count` commands to every device at `rate` a second.
async fn schedule(State(c): State<Control>, Query(s): Query<Schedule>) -> String {
    let period = Duration::from_nanos(1_000_000_000 / s.rate.max(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..s.count {
            tick.tick().await;
            if let Err(e) = command(State(c.clone())).await {
                eprintln!("bench backend: {e}");
                return;
            }
            c.published.fetch_add(1, Ordering::Relaxed);
        }
    });
    "0".to_owned()
}

async fn published(State(c): State<Control>) -> String {
    c.published.load(Ordering::Relaxed).to_string()
}

async fn command(State(c): State<Control>) -> Result<String, String> {
    let seq = c.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let payload = bytes::Bytes::from(format!(
        r#"{{"id":"s{seq}","op":"bench","args":{{"ts":{}}}}}"#,
        unix_ns()
    ));
    for topic in c.commands.iter() {
        c.bus
            .publish(topic, payload.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(seq.to_string())
}

async fn holding(State(c): State<Control>) -> String {
    c.app.holding_polls().to_string()
}

/// The minimal long-poll server: one shared version counter; a poll whose cursor is behind it
/// answers at once, otherwise it waits for the counter to move (or `wait` to pass).
#[derive(Clone)]
struct Minimal {
    version: Arc<watch::Sender<u64>>,
    holding: Arc<AtomicUsize>,
}

#[derive(Deserialize)]
struct PollParams {
    cursor: Option<String>,
    wait: Option<u64>,
}

fn baseline() -> Router {
    let state = Minimal {
        version: Arc::new(watch::channel(0).0),
        holding: Arc::new(AtomicUsize::new(0)),
    };
    Router::new()
        .route("/v1/devices/{id}/events", get(minimal_poll))
        .route("/bench/rate", post(minimal_publish))
        .route("/bench/holding", get(minimal_holding))
        .with_state(state)
        .route("/bench/heap", get(heap))
}

async fn minimal_poll(State(s): State<Minimal>, Query(p): Query<PollParams>) -> String {
    let seen: u64 = p.cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut rx = s.version.subscribe();
    let answer = |v: u64| {
        if v > seen {
            format!(r#"{{"n":"{v}","e":[{{"t":"r","p":"EUR/USD","r":"1.{v:04}","s":{v}}}]}}"#)
        } else {
            format!(r#"{{"n":"{v}","e":[]}}"#)
        }
    };
    let now = *rx.borrow_and_update();
    if now > seen {
        return answer(now);
    }
    s.holding.fetch_add(1, Ordering::AcqRel);
    let wait = Duration::from_secs(p.wait.unwrap_or(0));
    let _ = tokio::time::timeout(wait, rx.changed()).await;
    s.holding.fetch_sub(1, Ordering::AcqRel);
    let now = *rx.borrow();
    answer(now)
}

async fn minimal_publish(State(s): State<Minimal>) -> String {
    let mut next = 0;
    s.version.send_modify(|v| {
        *v += 1;
        next = *v;
    });
    next.to_string()
}

async fn minimal_holding(State(s): State<Minimal>) -> String {
    s.holding.load(Ordering::Acquire).to_string()
}
