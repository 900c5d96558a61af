//! Subscription fan-out: how many `next` messages per second bff-web delivers to 1,000
//! graphql-transport-ws clients sharing one subscription, and how long each takes from publish to
//! client, against the baseline ([`crate::baseline`]) under the same load and the same client
//! code, in alternating runs in one process. Target: gateway ≥ 0.5 × the baseline's deliveries/s.
//!
//! `mobile-fanout` is the same benchmark for bff-mobile: switchyard-mobile.v1 clients in CBOR
//! (`auth`, `sub` to `conversions`), the same bus events, and a baseline that speaks the mobile
//! protocol and broadcasts a CBOR `event` frame of the gateway's shape and size (same epoch, an
//! offset counting its own publications). Target: gateway ≥ 0.7 × the baseline's deliveries/s.
//! It also prints the bytes of a rate tick in both encodings ([`wire_sizes`]).
//!
//! The baseline runs twice, as two servers: with tungstenite's default buffers (`baseline`, a
//! minimal server) and with bff-web's buffer sizes (`baseline-small`). They differ in speed, not
//! only in memory: tungstenite zero-fills the free part of its read buffer before every read
//! attempt (128 KiB by default), and a server that selects over its socket and its channel
//! attempts a read on many of its wake-ups.
//!
//! The load is a closed loop. Events are published as fast as the server takes them, but with at
//! most `window` of them in flight: event k + window is published only once event k has reached
//! every client (each client receives in order, so events complete in order). The window stays
//! below bff-web's `websocket.send_queue_messages`, so a correct server never cuts a client off
//! (1013); any close or error frame makes the run invalid, and invalid runs are left out of the
//! medians. At a large window the latency is mostly queueing (Little's law: window × clients /
//! deliveries per second); `--window 1` measures it with one event in flight.
//!
//! At the gateway, events go on the in-process bus (`conversions.bench`, a `ConversionEvent` whose
//! conversion id carries the sequence number, `ev-<k>`), through the hub, one shared GraphQL
//! execution and one encoding, to every socket. The baseline publisher builds the same `next`
//! frame itself and broadcasts it. Publish instants are recorded by sequence number and each
//! client computes latency on receipt — one process, so the instants are comparable. Before each
//! measured run, probe events (`warm-<n>`) are published until every client has received one
//! (the shared execution is live), then a `sync` event drains them.
//!
//! Clients, server and publisher share the machine's two cores: deliveries/s is CPU per delivery
//! on both sides, which is why only the ratio is meaningful.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use demo_api::{Conversion, ConversionEvent, Currency, Decimal, UserId};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use switchyard::{Config, Stack};
use switchyard_core::event::Topic;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::baseline::{Baseline, Buffers};
use crate::client::{self, Protocol, Ws};
use crate::fanout_serve::{BusChoice, Remote};
use crate::stats::{median, ms_ns, percentile_ns};

/// Arguments of the fan-out benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Subscribed clients (all signed in as one user: one shared execution).
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Events published per measured run (each delivered to every client).
    #[arg(long, default_value_t = 2_000)]
    events: usize,
    /// Events in flight at most: event k + window is published once event k has reached every
    /// client. Must stay below bff-web's `websocket.send_queue_messages`.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Measured runs of each server (alternating baseline, baseline-small and gateway).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Socket handshakes in progress at once while connecting the clients.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// The CPUs the servers' child process is pinned to (`taskset -c`; run the bench itself
    /// under `taskset -c` on the others). Empty: the old form, servers and clients in one
    /// process sharing every core (deliveries/s only).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// The gateway's bus (pinned runs only).
    #[arg(long, value_enum, default_value = "memory")]
    bus: BusChoice,
    /// Measure only this server (`baseline`, `baseline-small` or `gateway`), for profiling it
    /// alone (`perf record -p <the server child>`); no ratios are printed.
    #[arg(long)]
    only: Option<String>,
    /// Publish at this many events per second (open loop, for latency) instead of the closed
    /// loop; 0: closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// How long the run may go without an event reaching every client before it is declared stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The WebSocket URL of the gateway that speaks `protocol`.
pub(crate) fn gateway_url(stack: &Stack, protocol: Protocol) -> String {
    let (service, path) = match protocol {
        Protocol::Graphql => ("bff-web", "/v1/graphql"),
        Protocol::Mobile => ("bff-mobile", "/v1/ws"),
    };
    format!("{}{path}", stack.url(service).replacen("http", "ws", 1))
}

/// The deliveries/s ratio the gateway of `protocol` must reach against the baseline.
fn target_ratio(protocol: Protocol) -> f64 {
    match protocol {
        Protocol::Graphql => 0.5,
        Protocol::Mobile => 0.7,
    }
}

/// The servers of a fan-out run, in the order they are measured.
pub(crate) const SERVER_NAMES: [&str; 3] = ["baseline", "baseline-small", "gateway"];

/// Starts the stack (the gateways on `bus`) and the two baselines of `protocol`; the servers in
/// the order of [`SERVER_NAMES`].
pub(crate) async fn start_servers(
    protocol: Protocol,
    bus: switchyard_core::bus::BusConfig,
) -> anyhow::Result<(Stack, Vec<Server>)> {
    let mut config = Config::ephemeral();
    crate::serve::unlimited(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    config.bus = bus;
    // Idle subscribers send nothing: no heartbeat pings in the middle of a measurement.
    config.mobile.websocket.heartbeat_ms = 3_600_000;
    let queue = send_queue(&config, protocol);
    crate::serve::lift_connection_caps(&mut config);
    let stack = Stack::start(config).await?;
    let user = UserId::parse(client::USER).map_err(|e| anyhow::anyhow!("{e}"))?;
    let topic = Topic::new(&demo_api::conversions_topic(&user))?;
    // The baseline's mobile frames carry the bus's epoch, as the gateway's do.
    let epoch = stack.bus().head(&topic).await?.epoch;
    let gateway = Server::Gateway {
        url: gateway_url(&stack, protocol),
        bus: stack.bus().clone(),
        topic,
        template: template(user)?,
    };
    let frames = |name| Frames {
        name,
        protocol,
        epoch,
        published: AtomicU64::new(0),
    };
    // The same capacity as the gateway's per-subscriber queue.
    let servers = vec![
        Server::Baseline(
            Baseline::start(queue, Buffers::Default, protocol).await?,
            frames(SERVER_NAMES[0]),
        ),
        Server::Baseline(
            Baseline::start(queue, Buffers::Small, protocol).await?,
            frames(SERVER_NAMES[1]),
        ),
        gateway,
    ];
    Ok((stack, servers))
}

/// The send queue (messages) of the gateway of `protocol`.
fn send_queue(config: &Config, protocol: Protocol) -> usize {
    match protocol {
        Protocol::Graphql => config.web.websocket.send_queue_messages,
        Protocol::Mobile => config.mobile.websocket.send_queue_messages,
    }
}

pub(crate) async fn run(args: Args, protocol: Protocol) -> anyhow::Result<()> {
    let gateway_name = match protocol {
        Protocol::Graphql => "bff-web",
        Protocol::Mobile => "bff-mobile",
    };
    let queue = send_queue(&Config::ephemeral(), protocol);
    if args.window == 0 || args.window >= queue {
        bail!(
            "--window must be 1 to {} (below {gateway_name}'s websocket.send_queue_messages, \
             {queue}), or a correct gateway may cut clients off",
            queue - 1
        );
    }
    if args.clients == 0 || args.events == 0 || args.runs == 0 {
        bail!("--clients, --events and --runs must be at least 1");
    }
    if args.bus == BusChoice::Redis && args.server_cpus.is_empty() {
        bail!("--bus redis is measured pinned only (give --server-cpus)");
    }
    let pinned = !args.server_cpus.is_empty();
    // In one process, the client and server ends of every socket live here.
    crate::memory::raise_nofile(2 * args.clients as u64 + 1_024)?;
    let (remote, local) = if pinned {
        let remote = Remote::spawn(&args.server_cpus, protocol, args.bus).await?;
        let servers: Vec<Server> = SERVER_NAMES
            .iter()
            .enumerate()
            .map(|(index, name)| Server::Remote {
                name,
                url: remote.urls[index].clone(),
                index,
                remote: remote.clone(),
            })
            .collect();
        (Some(remote), (None, servers))
    } else {
        let (stack, servers) =
            start_servers(protocol, switchyard_core::bus::BusConfig::default()).await?;
        (None, (Some(stack), servers))
    };
    let (stack, mut servers) = local;
    if let Some(only) = &args.only {
        if !SERVER_NAMES.contains(&only.as_str()) {
            bail!("--only must be one of {SERVER_NAMES:?}");
        }
        servers.retain(|s| s.name() == only);
    }
    let token = client::token();

    let load = if args.rate > 0 {
        format!("open loop at {} events/s", args.rate)
    } else {
        format!("closed loop, window {} events", args.window)
    };
    let placement = match &remote {
        Some(_) => format!(
            "servers in a child process pinned to CPU {}, clients here on CPU {}; CPU per \
             delivery = the child's utime+stime during the measured phase ÷ deliveries",
            args.server_cpus,
            crate::publish_serve::own_cpus()
        ),
        None => {
            "servers and clients in one process, sharing every core (deliveries/s only)".to_owned()
        }
    };
    println!(
        "{}: {} clients ({}), {} events per run, {load}, {} runs per server (alternating \
         baseline, baseline-small, gateway = {gateway_name} on the {:?} bus; one unmeasured \
         warm-up run each); {placement}",
        match protocol {
            Protocol::Graphql => "fanout",
            Protocol::Mobile => "mobile-fanout",
        },
        args.clients,
        protocol.subprotocol(),
        args.events,
        args.runs,
        args.bus,
    );
    if protocol == Protocol::Mobile {
        wire_sizes()?;
    }
    let warmup = (args.events / 4).max(args.window);
    for server in &servers {
        let r = measure(server, &args, protocol, &token, warmup).await?;
        if let Some(failure) = r.failure {
            println!("warm-up {:<14}  INVALID: {failure}", server.name());
        }
        if let Some(frame) = r.sample {
            // graphql-transport-ws: the baseline sends the gateway's exact bytes. Mobile: the
            // same shape; the sizes printed show whether they match.
            let differs = protocol == Protocol::Graphql
                && !matches!(&frame, Message::Text(t) if t.as_str() == next_frame(0));
            println!(
                "{:<14} {}{}",
                server.name(),
                describe(&frame),
                if differs {
                    "  (DIFFERS from the baseline's)"
                } else {
                    ""
                }
            );
        }
    }

    let mut results: Vec<Vec<RunResult>> = servers.iter().map(|_| Vec::new()).collect();
    for run in 1..=args.runs {
        for (server, results) in servers.iter().zip(&mut results) {
            let r = measure(server, &args, protocol, &token, args.events).await?;
            match &r.failure {
                None => {
                    println!(
                        "run {run} {:<14}  deliveries/s {:>9.0}  CPU/delivery {}  p50 {} ms  p99 {} \
                     ms  ({:.2} s){}",
                        server.name(),
                        r.deliveries_per_s,
                        r.cpu_us.map_or("-".to_owned(), |c| format!("{c:.2} µs")),
                        ms_ns(r.p50_ns),
                        ms_ns(r.p99_ns),
                        r.elapsed.as_secs_f64(),
                        remote.as_ref().and_then(|r| r.rss_kib()).map_or(
                            String::new(),
                            |kib| format!("  server RSS {} MiB", kib / 1024)
                        )
                    )
                }
                Some(failure) => {
                    println!("run {run} {:<14}  INVALID: {failure}", server.name())
                }
            }
            results.push(r);
        }
    }

    let mut summaries = Vec::new();
    for (server, rs) in servers.iter().zip(&results) {
        let valid: Vec<&RunResult> = rs.iter().filter(|r| r.failure.is_none()).collect();
        if valid.is_empty() {
            bail!("no valid run of the {}: no figure to report", server.name());
        }
        let cpu: Vec<f64> = valid.iter().filter_map(|r| r.cpu_us).collect();
        let s = Summary {
            rate: median(valid.iter().map(|r| r.deliveries_per_s).collect()),
            p50: median(valid.iter().map(|r| r.p50_ns as f64).collect()),
            p99: median(valid.iter().map(|r| r.p99_ns as f64).collect()),
            cpu_us: (!cpu.is_empty()).then(|| median(cpu)),
        };
        println!(
            "median of {} {:<14} runs: deliveries/s {:.0}, CPU/delivery {}, p50 {} ms, p99 {} ms",
            valid.len(),
            server.name(),
            s.rate,
            s.cpu_us.map_or("-".to_owned(), |c| format!("{c:.2} µs")),
            ms_ns(s.p50 as u64),
            ms_ns(s.p99 as u64)
        );
        summaries.push(s);
    }
    let pairs = if servers.len() == SERVER_NAMES.len() {
        2
    } else {
        0
    };
    let gateway = &summaries[summaries.len() - 1];
    for ((server, base), base_runs) in servers.iter().zip(&summaries).zip(&results).take(pairs) {
        let ratio = gateway.rate / base.rate;
        // The ratio within each round of alternating runs, which drift on a busy machine
        // affects least.
        let paired = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            let ratios: Vec<f64> = base_runs
                .iter()
                .zip(&results[2])
                .filter(|(b, g)| b.failure.is_none() && g.failure.is_none())
                .filter_map(|(b, g)| Some(f(g)? / f(b)?))
                .collect();
            if ratios.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", median(ratios))
            }
        };
        let rate_paired = paired(&|r| Some(r.deliveries_per_s));
        if let (Some(g), Some(b)) = (gateway.cpu_us, base.cpu_us) {
            let target = cpu_target(protocol);
            let cpu_ratio = g / b;
            println!(
                "gateway/{:<14} CPU per delivery {cpu_ratio:.2}× (target ≤ {target:.1}×: {}; \
                 median of per-round ratios {}), deliveries/s {ratio:.2}× (per round {}), p50 \
                 {:.2}×, p99 {:.2}×",
                server.name(),
                if cpu_ratio <= target {
                    "met"
                } else {
                    "NOT met"
                },
                paired(&|r| r.cpu_us),
                rate_paired,
                gateway.p50 / base.p50,
                gateway.p99 / base.p99
            );
        } else {
            let target = target_ratio(protocol);
            println!(
                "gateway/{:<14} deliveries/s {ratio:.2} (target ≥ {target:.2}: {}; median of \
                 per-round ratios {rate_paired}), p50 {:.2}×, p99 {:.2}×",
                server.name(),
                if ratio >= target { "met" } else { "NOT met" },
                gateway.p50 / base.p50,
                gateway.p99 / base.p99
            );
        }
    }
    drop(servers);
    if let Some(remote) = remote {
        remote.stop().await;
    }
    if let Some(stack) = stack {
        stack.stop().await?;
    }
    Ok(())
}

/// The most CPU per delivery the gateway of `protocol` may spend, as a multiple of the
/// baseline's (issue 15).
fn cpu_target(protocol: Protocol) -> f64 {
    match protocol {
        Protocol::Graphql => 2.0,
        Protocol::Mobile => 1.5,
    }
}

/// Medians of one server's valid runs.
struct Summary {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us: Option<f64>,
}

/// The server under test.
pub(crate) enum Server {
    Gateway {
        url: String,
        bus: Arc<dyn switchyard_core::bus::Bus>,
        topic: Topic,
        template: ConversionEvent,
    },
    /// A baseline server and how it builds its frames.
    Baseline(Baseline, Frames),
    /// Server `index` of [`SERVER_NAMES`] in the pinned child process.
    Remote {
        name: &'static str,
        url: String,
        index: usize,
        remote: Arc<Remote>,
    },
}

/// How a baseline builds the frame of an event: the gateway's `next` message, or a CBOR `event`
/// of the gateway's shape.
pub(crate) struct Frames {
    name: &'static str,
    protocol: Protocol,
    /// The bus's epoch, which the gateway's `event` frames carry.
    epoch: u64,
    /// Frames published so far: the next one's offset.
    published: AtomicU64,
}

impl Frames {
    fn frame(&self, id: &str) -> anyhow::Result<Message> {
        Ok(match self.protocol {
            Protocol::Graphql => Message::Text(Utf8Bytes::from(next_frame_for(id))),
            Protocol::Mobile => {
                let offset = self.published.fetch_add(1, Ordering::Relaxed) + 1;
                let position = mobile_proto::Position {
                    epoch: self.epoch,
                    offset,
                };
                let frame = client::MOBILE.encode_event(
                    mobile_proto::topic::CONVERSIONS,
                    position,
                    &mobile_conversion(id),
                )?;
                client::mobile_message(frame)
            }
        })
    }
}

/// A received frame for the log: its size and its text (JSON) or CBOR diagnostic notation.
fn describe(frame: &Message) -> String {
    match frame {
        Message::Text(t) => format!("frame (text, {} bytes): {}", t.len(), t.as_str()),
        Message::Binary(b) => format!(
            "frame (binary, {} bytes): {}",
            b.len(),
            mobile_proto::diag::diagnostic(b).unwrap_or_else(|e| format!("undecodable: {e}"))
        ),
        other => format!("frame: {other:?}"),
    }
}

/// Prints the bytes of a rate tick (`rates:EUR/USD`) in CBOR and in the JSON twin, as
/// mobile-proto encodes it (the gateway's encoder).
fn wire_sizes() -> anyhow::Result<()> {
    let rate = mobile_proto::data::Rate {
        pair: "EUR/USD".into(),
        rate: "1.0842".into(),
        seq: 48213,
    };
    let position = mobile_proto::Position {
        epoch: 6_130_412_896_125_523_119,
        offset: 1289,
    };
    let [cbor, json] = mobile_proto::Encoding::ALL.map(|enc| {
        enc.encode_event("rates:EUR/USD", position, &rate)
            .map(|f| f.len())
    });
    let (cbor, json) = (cbor?, json?);
    println!(
        "rate tick on the wire (payload, as encoded by mobile-proto): CBOR {cbor} bytes, JSON twin \
         {json} bytes ({:.0} %); WebSocket framing adds 2 bytes server to client",
        100.0 * cbor as f64 / json as f64
    );
    let conversion = mobile_conversion("ev-0");
    let [cbor, json] = mobile_proto::Encoding::ALL.map(|enc| {
        enc.encode_event("conversions", position, &conversion)
            .map(|f| f.len())
    });
    let (cbor, json) = (cbor?, json?);
    println!(
        "this benchmark's conversion event: CBOR {cbor} bytes, JSON twin {json} bytes ({:.0} %)",
        100.0 * cbor as f64 / json as f64
    );
    Ok(())
}

/// The conversion the gateway sends for the [`template`] event with id `id`.
fn mobile_conversion(id: &str) -> mobile_proto::data::Conversion {
    mobile_proto::data::Conversion {
        id: id.to_owned(),
        from: "EUR".into(),
        to: "USD".into(),
        amount: "100.00".into(),
        rate: "1.0850".into(),
        converted: "108.50".into(),
        at: "2026-01-01T00:00:00Z".into(),
    }
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Gateway { .. } => "gateway",
            Server::Baseline(_, frames) => frames.name,
            Server::Remote { name, .. } => name,
        }
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Server::Gateway { url, .. } | Server::Remote { url, .. } => url.clone(),
            Server::Baseline(b, _) => b.url(),
        }
    }

    /// The child process the server runs in, when pinned.
    fn remote(&self) -> Option<&Remote> {
        match self {
            Server::Remote { remote, .. } => Some(remote),
            _ => None,
        }
    }

    /// Publishes the event whose conversion id is `id`.
    pub(crate) async fn publish(&self, id: String) -> anyhow::Result<()> {
        match self {
            Server::Gateway {
                bus,
                topic,
                template,
                ..
            } => {
                let mut event = template.clone();
                event.conversion.id = id;
                let payload = Bytes::from(serde_json::to_vec(&event)?);
                bus.publish(topic, payload).await?;
            }
            Server::Baseline(b, frames) => b.publish(frames.frame(&id)?),
            Server::Remote { index, remote, .. } => remote.publish(*index, &id).await?,
        }
        Ok(())
    }
}

/// The conversion event the gateway is fed; only its id changes.
pub(crate) fn template(user: UserId) -> anyhow::Result<ConversionEvent> {
    let currency = |c| Currency::parse(c).map_err(|e| anyhow::anyhow!("{e}"));
    Ok(ConversionEvent {
        kind: demo_api::CONVERSION_COMPLETED.to_owned(),
        conversion: Conversion {
            id: String::new(),
            user,
            from: currency("EUR")?,
            to: currency("USD")?,
            amount: Decimal::new(10_000, 2),
            rate: Decimal::new(10_850, 4),
            converted: Decimal::new(10_850, 2),
            at: "2026-01-01T00:00:00Z".to_owned(),
        },
    })
}

/// The `next` message of measured event `k`, exactly as bff-web sends it.
fn next_frame(k: usize) -> String {
    next_frame_for(&format!("ev-{k}"))
}

fn next_frame_for(id: &str) -> String {
    format!(r#"{{"id":"1","type":"next","payload":{{"data":{{"conversions":{{"id":"{id}"}}}}}}}}"#)
}

/// What one run measured.
struct RunResult {
    deliveries_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    elapsed: Duration,
    /// The server's CPU time per delivery in the measured phase, in µs (pinned runs).
    cpu_us: Option<f64>,
    /// Why the run is invalid (a close, an error frame, a lost or reordered event, a stall).
    failure: Option<String>,
    /// The first measured frame one client received.
    sample: Option<Message>,
}

/// The state one run's publisher and clients share.
struct RunState {
    clients: usize,
    events: usize,
    base: Instant,
    /// When each event was published, in ns since `base`.
    published_ns: Vec<AtomicU64>,
    /// Clients each event has yet to reach.
    remaining: Vec<AtomicU32>,
    /// One permit per event that may still be published; returned when an event is complete.
    window: Semaphore,
    completed: AtomicUsize,
    finished_ns: AtomicU64,
    warm_clients: AtomicUsize,
    synced_clients: AtomicUsize,
    failed: AtomicBool,
    failure: Mutex<Vec<String>>,
    sample: Mutex<Option<Message>>,
    /// The server's CPU seconds when the measured phase began and when it ended.
    cpu_s: Mutex<(f64, f64)>,
}

impl RunState {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn fail(&self, why: String) {
        self.failed.store(true, Ordering::Release);
        self.window.close();
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.len() < 1_000 {
            failure.push(why);
        }
    }

    fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let failures = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let closes = failures.iter().filter(|f| f.starts_with("closed")).count();
        Some(format!(
            "{} client(s) failed before the run stopped ({closes} closed by the server); \
             first: {}",
            failures.len(),
            failures.first().map_or("-", String::as_str)
        ))
    }

    /// Polls `done` every millisecond until it holds, the run fails, or `timeout` passes.
    async fn wait(&self, what: &str, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if self.failed.load(Ordering::Acquire) {
                return false;
            }
            if Instant::now() > end {
                self.fail(format!("{what}: not within {timeout:?}"));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Connects the clients, makes sure the subscription is live, publishes `events` events in a
/// closed loop and gathers every client's latencies.
async fn measure(
    server: &Server,
    args: &Args,
    protocol: Protocol,
    token: &str,
    events: usize,
) -> anyhow::Result<RunResult> {
    let sockets = client::connect_subscribed(
        &server.url(),
        protocol,
        token,
        args.clients,
        args.connect_concurrency,
    )
    .await
    .with_context(|| {
        format!(
            "connecting {} clients to the {}",
            args.clients,
            server.name()
        )
    })?;
    let run = Arc::new(RunState {
        clients: args.clients,
        events,
        base: Instant::now(),
        published_ns: (0..events).map(|_| AtomicU64::new(0)).collect(),
        remaining: (0..events)
            .map(|_| AtomicU32::new(args.clients as u32))
            .collect(),
        window: Semaphore::new(args.window),
        completed: AtomicUsize::new(0),
        finished_ns: AtomicU64::new(0),
        warm_clients: AtomicUsize::new(0),
        synced_clients: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        failure: Mutex::new(Vec::new()),
        sample: Mutex::new(None),
        cpu_s: Mutex::new((0.0, 0.0)),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(receive(ws, protocol, run.clone(), stop_rx.clone(), i == 0)))
        .collect();

    let started_ns = publish_all(server, &run, args.rate).await?;

    let _ = stop_tx.send(true);
    let mut latencies = Vec::with_capacity(args.clients * events);
    for r in receivers {
        latencies.extend(r.await.context("a client task panicked")?);
    }
    let elapsed = Duration::from_nanos(
        run.finished_ns
            .load(Ordering::Acquire)
            .saturating_sub(started_ns),
    );
    latencies.sort_unstable();
    let failure = run.failure().or_else(|| {
        (latencies.len() != args.clients * events).then(|| {
            format!(
                "{} deliveries recorded, {} expected",
                latencies.len(),
                args.clients * events
            )
        })
    });
    let sample = run.sample.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (cpu_start, cpu_end) = *run.cpu_s.lock().unwrap_or_else(|e| e.into_inner());
    let deliveries = (args.clients * events) as f64;
    let cpu_us = server
        .remote()
        .map(|_| (cpu_end - cpu_start) * 1e6 / deliveries);
    Ok(RunResult {
        cpu_us,
        deliveries_per_s: (args.clients * events) as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ns: percentile_ns(&latencies, 0.5),
        p99_ns: percentile_ns(&latencies, 0.99),
        elapsed,
        failure,
        sample,
    })
}

/// The publisher: probes until every client receives events, drains the probes, then publishes
/// the measured events within the window. Returns when the measured phase began (ns since the
/// run's base); a failure is recorded in `run`, not returned.
async fn publish_all(server: &Server, run: &RunState, rate: u64) -> anyhow::Result<u64> {
    // Probe until every client has received an event: the subscription is live everywhere.
    let probing = Instant::now();
    let mut n = 0;
    while run.warm_clients.load(Ordering::Acquire) < run.clients {
        if run.failed.load(Ordering::Acquire) {
            return Ok(0);
        }
        if probing.elapsed() > STALL_TIMEOUT {
            run.fail(format!(
                "only {} of {} clients received probe events within {STALL_TIMEOUT:?}",
                run.warm_clients.load(Ordering::Acquire),
                run.clients
            ));
            return Ok(0);
        }
        server.publish(format!("warm-{n}")).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each client reads in order: once it has the sync event, no probe is left in flight.
    server.publish("sync-0".to_owned()).await?;
    let synced = run
        .wait(
            "the sync event reaching every client",
            STALL_TIMEOUT,
            || run.synced_clients.load(Ordering::Acquire) == run.clients,
        )
        .await;
    if !synced {
        return Ok(0);
    }

    let cpu = || server.remote().map_or(Ok(0.0), Remote::cpu_s);
    let cpu_start = cpu()?;
    let started_ns = run.now_ns();
    let started = tokio::time::Instant::now();
    for k in 0..run.events {
        if rate > 0 {
            // Open loop: event k at k / rate seconds, whatever the clients have received.
            let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
            run.published_ns[k].store(run.now_ns(), Ordering::Release);
            server.publish(format!("ev-{k}")).await?;
            continue;
        }
        match tokio::time::timeout(STALL_TIMEOUT, run.window.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            // Closed: a client failed and the run is invalid.
            Ok(Err(_)) => return Ok(started_ns),
            Err(_) => {
                run.fail(format!(
                    "stalled: {} of {k} published events reached every client within \
                     {STALL_TIMEOUT:?}",
                    run.completed.load(Ordering::Acquire)
                ));
                return Ok(started_ns);
            }
        }
        run.published_ns[k].store(run.now_ns(), Ordering::Release);
        server.publish(format!("ev-{k}")).await?;
    }
    run.wait("every event reaching every client", STALL_TIMEOUT, || {
        run.completed.load(Ordering::Acquire) == run.events
    })
    .await;
    *run.cpu_s.lock().unwrap_or_else(|e| e.into_inner()) = (cpu_start, cpu()?);
    Ok(started_ns)
}

/// The parts of a server message the client reads.
#[derive(Deserialize)]
struct ServerMessage<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(borrow, default)]
    payload: Option<Payload<'a>>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    conversions: Option<ConversionId<'a>>,
}

#[derive(Deserialize)]
struct ConversionId<'a> {
    id: &'a str,
}

/// The parts of a mobile server message the client reads (CBOR; other keys are skipped).
#[derive(Deserialize)]
struct MobileMessage {
    t: String,
    #[serde(default)]
    d: Option<MobileConversion>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Deserialize)]
struct MobileConversion {
    id: String,
}

/// What a client made of a message.
enum Seen {
    /// Measured event k.
    Event(usize),
    /// A probe event.
    Warm,
    /// The sync event after the probes.
    Sync,
    /// Nothing to count (a control frame).
    Skip,
    /// A server ping: this pong goes back.
    Reply(Message),
    /// Anything else: the run is invalid.
    Unexpected(String),
}

/// Reads a conversion id: `ev-<k>`, `warm-<n>` or `sync-<n>`.
fn classify(id: &str) -> Seen {
    if let Some(k) = id.strip_prefix("ev-").and_then(|k| k.parse::<usize>().ok()) {
        Seen::Event(k)
    } else if id.starts_with("warm-") {
        Seen::Warm
    } else if id.starts_with("sync-") {
        Seen::Sync
    } else {
        Seen::Unexpected(format!("unexpected conversion id {id}"))
    }
}

/// Reads a server message of `protocol` (not a close).
fn read(protocol: Protocol, msg: &Message) -> Seen {
    match (protocol, msg) {
        (Protocol::Graphql, Message::Text(text)) => {
            match serde_json::from_str::<ServerMessage<'_>>(text.as_str()) {
                Ok(ServerMessage {
                    ty: "next",
                    payload:
                        Some(Payload {
                            data:
                                Some(Data {
                                    conversions: Some(ConversionId { id }),
                                }),
                        }),
                }) => classify(id),
                _ => Seen::Unexpected(format!("unexpected message: {}", text.as_str())),
            }
        }
        (Protocol::Mobile, Message::Binary(bytes)) => {
            match ciborium::from_reader::<MobileMessage, _>(bytes.as_ref()) {
                Ok(MobileMessage { t, d: Some(d), .. }) if t == "event" => classify(&d.id),
                Ok(MobileMessage { t, n: Some(n), .. }) if t == "ping" => {
                    let pong = mobile_proto::ClientMsg::Pong(mobile_proto::Pong { n });
                    Seen::Reply(client::mobile_message(client::MOBILE.encode_client(&pong)))
                }
                _ => Seen::Unexpected(format!("unexpected message: {}", describe(msg))),
            }
        }
        (Protocol::Graphql, Message::Binary(_)) | (Protocol::Mobile, Message::Text(_)) => {
            Seen::Unexpected(format!("unexpected message: {}", describe(msg)))
        }
        _ => Seen::Skip,
    }
}

/// One client: reads until told to stop, checks every event arrives once and in order, and
/// returns the latency of each measured event in ns.
async fn receive(
    mut ws: Ws,
    protocol: Protocol,
    run: Arc<RunState>,
    mut stop: watch::Receiver<bool>,
    keep_sample: bool,
) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(run.events);
    let mut next = 0;
    let mut warm = false;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            msg = ws.next() => msg,
        };
        let msg = match msg {
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or("none".to_owned(), |f| u16::from(f.code).to_string());
                run.fail(format!("closed by the server with code {code}"));
                break;
            }
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                run.fail(format!("socket error: {e}"));
                break;
            }
            None => {
                run.fail("connection ended without a close frame".to_owned());
                break;
            }
        };
        match read(protocol, &msg) {
            Seen::Event(k) => {
                if k != next || k >= run.events {
                    run.fail(format!("expected event {next}, received event {k}"));
                    break;
                }
                next += 1;
                let now = run.now_ns();
                latencies.push(now.saturating_sub(run.published_ns[k].load(Ordering::Acquire)));
                if keep_sample && k == 0 {
                    *run.sample.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                }
                if run.remaining[k].fetch_sub(1, Ordering::AcqRel) == 1 {
                    if run.completed.fetch_add(1, Ordering::AcqRel) + 1 == run.events {
                        run.finished_ns.store(now, Ordering::Release);
                    }
                    run.window.add_permits(1);
                }
            }
            Seen::Warm => {
                if !warm {
                    warm = true;
                    run.warm_clients.fetch_add(1, Ordering::AcqRel);
                }
            }
            Seen::Sync => {
                run.synced_clients.fetch_add(1, Ordering::AcqRel);
            }
            Seen::Skip => {}
            Seen::Reply(pong) => {
                if let Err(e) = ws.send(pong).await {
                    run.fail(format!("socket error: {e}"));
                    break;
                }
            }
            Seen::Unexpected(why) => {
                run.fail(why);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    latencies
}
