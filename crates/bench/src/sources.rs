//! `sources`: upstream message → client delivery through each kind of source, against publishing
//! in-process on the same stack, in the same run (issue 12).
//!
//! The server is the `publish` benchmark's child ([`crate::publish_serve`], `serve-publish
//! --sources …`: the launcher's stack on the in-memory bus), pinned to its own core, with one
//! source per kind, each feeding its own channel of the catalog entry `src.{kind}`:
//!
//! - `json-ws` → `src.jsonws`: a WebSocket server in this process (tokio-tungstenite); the source
//!   sends `{"op":"sub"}` when the channel gets its first subscriber;
//! - `sse` → `src.sse`: an SSE endpoint in this process (axum), events of type `tick`;
//! - `redis-pubsub` → `src.redis`: the machine's Redis (127.0.0.1:6379), published on from this
//!   process on a channel unique to the run;
//! - `socketio` → `src.socketio`: the npm `socket.io` server of `tests/js` (needs `npm ci
//!   --prefix tests/js`), run by node (`crates/bench/js/socketio-upstream.mjs`); the source joins
//!   with an acknowledged `sub` emit;
//!
//! and the in-process mode on `announcements` (the server stamps and publishes on its own bus, as
//! in `publish`, on a `fire` command it does not answer: an answer written on the server's core
//! during the fan-out would slow the in-process events' own delivery, favouring the sources). This process holds `--clients` mobile subscribers (CBOR), each subscribed to
//! every channel measured. Each latency run publishes `--events` events one at a time at
//! `--rate`, rotating through the modes (the rotation's start moves every round), each carrying
//! its send time (µs, system clock, read by the upstream just before it writes the message; for
//! socketio, read here before the command goes to node, so its figure also holds the pipe to
//! node — node's clocks are not the system clock to the microsecond), subtracted by every
//! subscriber on receipt: p50/p99 per mode over all deliveries. Each source's path adds its upstream hop (a write, a read by the source, the
//! rules) before the same publish and fan-out as in-process. One unmeasured warm-up round;
//! medians of `--runs` rounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;

use crate::publish_serve::{CHANNEL, Server, clock_ticks, now_us, own_cpus, payload};
use crate::publish_subs::Subscribers;
use crate::stats::median;

/// Arguments of the sources benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Mobile subscribers (CBOR), each subscribed to every measured channel.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Events per latency run, spread over the modes.
    #[arg(long, default_value_t = 500)]
    events: usize,
    /// Events per second in the latency runs (one at a time: unsaturated).
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Measured rounds.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The source kinds measured.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "json-ws,sse,redis-pubsub,socketio"
    )]
    kinds: Vec<String>,
    /// The CPUs the server child is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Socket handshakes in progress at once while connecting the subscribers.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Redis for the `redis-pubsub` source.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// How long the deliveries of a latency run may trail its last publish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One way of getting an event to the subscribers.
enum Mode {
    InProcess,
    JsonWs(JsonWsUpstream),
    Sse(SseUpstream),
    Redis(RedisUpstream),
    SocketIo(Box<SocketIoUpstream>),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::InProcess => "in-process",
            Mode::JsonWs(_) => "json-ws",
            Mode::Sse(_) => "sse",
            Mode::Redis(_) => "redis-pubsub",
            Mode::SocketIo(_) => "socketio",
        }
    }

    /// The channel the subscribers follow for this mode.
    fn channel(&self) -> &'static str {
        match self {
            Mode::InProcess => CHANNEL,
            Mode::JsonWs(_) => "src.jsonws",
            Mode::Sse(_) => "src.sse",
            Mode::Redis(_) => "src.redis",
            Mode::SocketIo(_) => "src.socketio",
        }
    }

    /// Whether the source is connected and has asked for its channel (always, in-process).
    async fn subscribed(&mut self) -> anyhow::Result<bool> {
        Ok(match self {
            Mode::InProcess => true,
            Mode::JsonWs(u) => u.subscribed.load(Ordering::SeqCst) > 0,
            Mode::Sse(u) => u.streams.load(Ordering::SeqCst) > 0,
            Mode::Redis(u) => u.probe().await? > 0,
            Mode::SocketIo(u) => u.command("subs").await?.trim() != "0",
        })
    }

    /// Sends event `k` of run `run` (stamped just before it is written).
    async fn send(&mut self, server: &mut Server, run: u64, k: u64) -> anyhow::Result<()> {
        match self {
            // No answer: the server's core does nothing else while the event fans out.
            Mode::InProcess => server.fire(&format!("fire {run} {k}")).await?,
            Mode::JsonWs(u) => u.send(payload(run, k, now_us())).await,
            Mode::Sse(u) => {
                // No receiver yet is impossible: the run waits until the source is subscribed.
                let _ = u.events.send(payload(run, k, now_us()));
            }
            Mode::Redis(u) => u.publish(payload(run, k, now_us())).await?,
            Mode::SocketIo(u) => {
                let answer = u.command(&format!("emit {run} {k} {}", now_us())).await?;
                if answer.trim() != "ok" {
                    bail!("the socket.io upstream answered {answer}");
                }
            }
        }
        Ok(())
    }
}

/// A source table as JSON (what `[sources.NAME]` holds).
fn source(kind: &str, url: &str, channel: &str, extra: Value, messages: Value) -> Value {
    let mut s = json!({
        "kind": kind,
        "url": url,
        "channels": channel,
        "reconnect_initial_ms": 50,
        "reconnect_max_ms": 500,
        "messages": messages,
    });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    s
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.clients == 0 || args.events == 0 || args.runs == 0 || args.rate == 0 {
        bail!("--clients, --events, --runs and --rate must be at least 1");
    }
    crate::memory::raise_nofile(args.clients as u64 + 1_024)?;
    let clk_tck = clock_ticks()?;
    let mut modes = vec![Mode::InProcess];
    let mut sources = serde_json::Map::new();
    for kind in &args.kinds {
        let (mode, config) = match kind.as_str() {
            "json-ws" => {
                let up = JsonWsUpstream::start().await?;
                let config = source(
                    "json-ws",
                    &format!("ws://{}/", up.addr),
                    "src.jsonws",
                    json!({"subscribe": r#"{"op":"sub"}"#, "unsubscribe": r#"{"op":"unsub"}"#}),
                    json!([{}]),
                );
                (Mode::JsonWs(up), config)
            }
            "sse" => {
                let up = SseUpstream::start().await?;
                let config = source(
                    "sse",
                    &format!("http://{}/events", up.addr),
                    "src.sse",
                    json!({}),
                    json!([{"event": "tick"}]),
                );
                (Mode::Sse(up), config)
            }
            "redis-pubsub" => {
                let up = RedisUpstream::start(&args.redis_url).await?;
                let config = source(
                    "redis-pubsub",
                    &args.redis_url,
                    "src.redis",
                    json!({"patterns": [format!("{}*", up.prefix)]}),
                    json!([{"when": {"/probe": "1"}, "ignore": true}, {}]),
                );
                (Mode::Redis(up), config)
            }
            "socketio" => {
                let up = SocketIoUpstream::start().await?;
                let config = source(
                    "socketio",
                    &format!("http://127.0.0.1:{}", up.port),
                    "src.socketio",
                    json!({"join": {"event": "sub"}, "leave": {"event": "unsub"}}),
                    json!([{"event": "tick", "payload": "/0"}]),
                );
                (Mode::SocketIo(Box::new(up)), config)
            }
            other => bail!("unknown kind `{other}` (json-ws, sse, redis-pubsub, socketio)"),
        };
        sources.insert(format!("bench-{kind}"), config);
        modes.push(mode);
    }
    let sources = Value::Object(sources).to_string();
    let mut server = Server::spawn_with(&args.server_cpus, Some(&sources)).await?;
    let channels: Vec<&str> = modes.iter().map(Mode::channel).collect();
    let subscribers = Subscribers::connect(
        &server.mobile_url,
        args.clients,
        args.connect_concurrency,
        &channels,
    )
    .await
    .with_context(|| format!("connecting {} subscribers", args.clients))?;
    // Every source connected and subscribed upstream before anything is measured.
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    for mode in &mut modes {
        while !mode.subscribed().await? {
            if tokio::time::Instant::now() > end {
                bail!("the {} source did not subscribe within 30 s", mode.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "sources: {} mobile subscribers (CBOR), each of {} channels ({}); latency: {} events at \
         {}/s per run, rotating through the modes; {} rounds (one unmeasured warm-up round); \
         server pid {} on CPUs {}, bench on CPUs {}",
        args.clients,
        channels.len(),
        channels.join(", "),
        args.events,
        args.rate,
        args.runs,
        server.pid,
        if args.server_cpus.is_empty() {
            "any"
        } else {
            &args.server_cpus
        },
        own_cpus()
    );
    let mut next_run = 0;
    let mut rounds: Vec<Vec<Option<(f64, f64)>>> = Vec::new();
    for round in 0..=args.runs {
        next_run += 1;
        let events = if round == 0 {
            (args.events / 4).max(modes.len())
        } else {
            args.events
        };
        let cpu = server.cpu_ticks()?;
        let figures = latency_run(
            &mut server,
            &subscribers,
            &mut modes,
            next_run,
            round,
            events,
            args.rate,
        )
        .await;
        let cpu_us = (server.cpu_ticks()? - cpu) / clk_tck * 1e6 / events as f64;
        let label = if round == 0 {
            "warm-up".to_owned()
        } else {
            format!("run {round}")
        };
        match figures {
            Err(e) => println!("{label} INVALID: {e:#}"),
            Ok(figures) => {
                let line: Vec<String> = modes
                    .iter()
                    .zip(&figures)
                    .map(|(m, f)| match f {
                        Some((p50, p99)) => format!(
                            "{} p50 {:.3} ms p99 {:.3} ms",
                            m.name(),
                            p50 / 1e3,
                            p99 / 1e3
                        ),
                        None => format!("{} -", m.name()),
                    })
                    .collect();
                println!(
                    "{label}: {} | server CPU {cpu_us:.0} µs/event",
                    line.join(" | ")
                );
                if round > 0 {
                    rounds.push(figures);
                }
            }
        }
    }
    drop(subscribers);
    server.stop().await;
    summary(&modes, &rounds);
    Ok(())
}

/// One latency run: `events` events at `rate`, event `k` sent by mode `(k + round) % modes`;
/// returns each mode's p50 and p99 in µs.
async fn latency_run(
    server: &mut Server,
    subscribers: &Subscribers,
    modes: &mut [Mode],
    run: u64,
    round: usize,
    events: usize,
    rate: u64,
) -> anyhow::Result<Vec<Option<(f64, f64)>>> {
    let n = modes.len();
    let phase = subscribers.begin(run, events, n);
    let start = tokio::time::Instant::now();
    for k in 0..events as u64 {
        let at = start + Duration::from_secs_f64(k as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        let mode = (k as usize + round) % n;
        modes[mode].send(server, run, k).await?;
    }
    let by_residue = subscribers
        .finish(&phase, DRAIN_TIMEOUT)
        .await
        .map_err(|e| anyhow!(e))?;
    // Residue r = k % n holds the events of mode (r + round) % n.
    let mut figures = vec![None; n];
    for (residue, samples) in by_residue.into_iter().enumerate() {
        if !samples.is_empty() {
            figures[(residue + round) % n] =
                Some((percentile(&samples, 0.5), percentile(&samples, 0.99)));
        }
    }
    Ok(figures)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

fn summary(modes: &[Mode], rounds: &[Vec<Option<(f64, f64)>>]) {
    println!();
    println!("medians of {} rounds:", rounds.len());
    println!(
        "{:<13} {:>9} {:>9} {:>18}",
        "mode", "p50 ms", "p99 ms", "− in-process p50"
    );
    let med = |i: usize, f: fn(&(f64, f64)) -> f64| -> Option<f64> {
        let v: Vec<f64> = rounds.iter().filter_map(|r| r[i].as_ref().map(f)).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let base = med(0, |f| f.0);
    for (i, mode) in modes.iter().enumerate() {
        let p50 = med(i, |f| f.0);
        let p99 = med(i, |f| f.1);
        let show = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{:.3}", x / 1e3));
        let diff = match (p50, base) {
            (Some(p), Some(b)) if i > 0 => format!("{:+.3} ms", (p - b) / 1e3),
            _ => String::new(),
        };
        println!(
            "{:<13} {:>9} {:>9} {:>18}",
            mode.name(),
            show(p50),
            show(p99),
            diff
        );
    }
}

/// The json-ws upstream: a WebSocket server whose connections that sent `{"op":"sub"}` get every
/// message sent.
struct JsonWsUpstream {
    addr: SocketAddr,
    subscribed: Arc<AtomicUsize>,
    senders: Arc<Mutex<Vec<mpsc::Sender<String>>>>,
}

impl JsonWsUpstream {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let subscribed = Arc::new(AtomicUsize::new(0));
        let senders: Arc<Mutex<Vec<mpsc::Sender<String>>>> = Arc::default();
        let (count, list) = (subscribed.clone(), senders.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (count, list) = (count.clone(), list.clone());
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let (mut write, mut read) = ws.split();
                    let (tx, mut rx) = mpsc::channel::<String>(1024);
                    loop {
                        tokio::select! {
                            msg = read.next() => match msg {
                                Some(Ok(Message::Text(t))) if t.as_str().contains("\"sub\"") => {
                                    count.fetch_add(1, Ordering::SeqCst);
                                    list.lock().await.push(tx.clone());
                                }
                                Some(Ok(Message::Ping(p))) => {
                                    if write.send(Message::Pong(p)).await.is_err() {
                                        break;
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => break,
                            },
                            Some(text) = rx.recv() => {
                                if write.send(Message::text(text)).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            subscribed,
            senders,
        })
    }

    async fn send(&self, text: String) {
        for tx in self.senders.lock().await.iter() {
            let _ = tx.send(text.clone()).await;
        }
    }
}

/// The SSE upstream: `GET /events` streams every message sent, as events of type `tick`.
struct SseUpstream {
    addr: SocketAddr,
    streams: Arc<AtomicUsize>,
    events: broadcast::Sender<String>,
}

/// Counts an open SSE stream while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SseUpstream {
    async fn start() -> anyhow::Result<Self> {
        use axum::response::sse::{Event, KeepAlive, Sse};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let streams = Arc::new(AtomicUsize::new(0));
        let (events, _) = broadcast::channel::<String>(1024);
        let (count, tx) = (streams.clone(), events.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::get(move || {
                let (count, rx) = (count.clone(), tx.subscribe());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let open = Open(count);
                    let stream = futures::stream::unfold((rx, open), |(mut rx, open)| async move {
                        loop {
                            match rx.recv().await {
                                Ok(data) => {
                                    let event = Event::default().event("tick").data(data);
                                    return Some((
                                        Ok::<_, std::convert::Infallible>(event),
                                        (rx, open),
                                    ));
                                }
                                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                                Err(broadcast::error::RecvError::Closed) => return None,
                            }
                        }
                    });
                    Sse::new(stream).keep_alive(KeepAlive::default())
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            streams,
            events,
        })
    }
}

/// The Redis upstream: PUBLISH on a channel unique to this run.
struct RedisUpstream {
    prefix: String,
    conn: redis::aio::MultiplexedConnection,
}

impl RedisUpstream {
    async fn start(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("redis at {url}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to redis at {url}"))?;
        Ok(Self {
            prefix: format!("switchyard-bench:{}:{}:", std::process::id(), now_us()),
            conn,
        })
    }

    async fn publish(&mut self, text: String) -> anyhow::Result<()> {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(format!("{}tick", self.prefix))
            .arg(text)
            .query_async(&mut self.conn)
            .await?;
        if receivers != 1 {
            bail!("a PUBLISH reached {receivers} subscribers, not the one source");
        }
        Ok(())
    }

    /// Publishes a probe the source ignores; how many subscribers received it.
    async fn probe(&mut self) -> anyhow::Result<i64> {
        Ok(redis::cmd("PUBLISH")
            .arg(format!("{}probe", self.prefix))
            .arg(r#"{"probe":1}"#)
            .query_async(&mut self.conn)
            .await?)
    }
}

/// The Socket.IO upstream: node running `crates/bench/js/socketio-upstream.mjs`.
struct SocketIoUpstream {
    port: u16,
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

impl SocketIoUpstream {
    async fn start() -> anyhow::Result<Self> {
        let package = repo("tests/js/node_modules/socket.io/package.json");
        if !package.is_file() {
            bail!(
                "{} is missing: run `npm ci --prefix tests/js`",
                package.display()
            );
        }
        let mut child = Command::new("node")
            .arg(repo("crates/bench/js/socketio-upstream.mjs"))
            .env("SOCKETIO_FROM", repo("tests/js/package.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running node (>= 20)")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let mut lines =
            BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow!("the socket.io upstream did not start within 30 s"))??
            .ok_or_else(|| anyhow!("the socket.io upstream exited"))?;
        let port = serde_json::from_str::<Value>(&first)?["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("unexpected first line: {first}"))?;
        Ok(Self {
            port,
            _child: child,
            stdin,
            lines,
        })
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("no answer to `{line}`"))??
            .ok_or_else(|| anyhow!("the socket.io upstream exited"))
    }
}
