//! The soak (issue 16): thousands of sockets — graphql-transport-ws on bff-web and
//! switchyard-mobile.v1 (CBOR) on bff-mobile — and polling devices on bff-device, each following
//! one of `channels` public stream channels (`soak.{n}`), while a publisher publishes `rate`
//! events/s round-robin over the channels for `duration`. A third of the way in, the exchange
//! backend is restarted (stopped — listener and connections closed — for 2 s, then started
//! again on the same port; quotes are asked every second meanwhile); two thirds of the way in,
//! the bus, a private `redis-server` without persistence on a port of its own, is restarted
//! (killed and started again: history and epochs are lost). The server's RSS is reported every
//! `report` interval.
//!
//! Every client checks what it receives by position, as it goes, in O(1) memory: the next
//! offset of its epoch is delivered; an offset already passed is a **duplicate**; a jump, or
//! another epoch, that no explicit signal announced (mobile `gap`, graphql-ws `HISTORY_GAP`, a
//! device `gap` item or reset answer) is a **silent loss**. Any close reconnects and resumes
//! after the last position handled. At the end every client must have caught up with its
//! channel's last published position; one that has not is counted **behind**.
//!
//! The server is the launcher's `Stack` (gateways and demo services in one process) on the
//! private Redis: in a child process of the bench binary (`serve-soak`, pinned with taskset), or
//! in-process (the CI test, `tests/soak.rs`, which asserts counts only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use mobile_proto::{ClientMsg, Encoding, FrameKind, Position, ServerMsg};
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, BusConfig, BusKind, Retention};
use switchyard_core::channels::{ChannelConfig, SubscribeRule};
use switchyard_core::event::{Topic, TopicClass};
use switchyard_server::server::CancellationToken;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpSocket;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The catalog pattern of the soak's channels.
const PATTERN: &str = "soak.{n}";

/// Events kept per channel: at the default load (100 events/s over 20 channels) 200 s of it.
const HISTORY: u64 = 1_000;

/// Arguments of `switchyard-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// graphql-transport-ws sockets on bff-web.
    #[arg(long, default_value_t = 5_000)]
    pub web_sockets: usize,
    /// switchyard-mobile.v1 (CBOR) sockets on bff-mobile.
    #[arg(long, default_value_t = 5_000)]
    pub mobile_sockets: usize,
    /// Devices long-polling bff-device.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Events published per second, round-robin over the channels.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Channels (`soak.0` …); client `i` follows channel `i % channels`.
    #[arg(long, default_value_t = 20)]
    pub channels: usize,
    /// How long events are published, in seconds.
    #[arg(long, default_value_t = 600)]
    pub duration_s: u64,
    /// How often the server's RSS is reported, in seconds.
    #[arg(long, default_value_t = 30)]
    pub report_s: u64,
    /// CPUs the server child is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// The redis-server binary for the private bus.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Run the server in this process instead of a pinned child (what the CI test does).
    #[arg(long)]
    pub in_process: bool,
    /// Bus restarts, spread evenly over the last two thirds of the run (one: two thirds of the
    /// way in). A leak grows with each restart; an allocator's high-water mark does not.
    #[arg(long, default_value_t = 1)]
    pub bus_restarts: u32,
}

impl Args {
    /// The parameters of a small run: `web` + `mobile` sockets, `devices` devices, `secs` s.
    pub fn small(web: usize, mobile: usize, devices: usize, secs: u64) -> Self {
        Self {
            web_sockets: web,
            mobile_sockets: mobile,
            devices,
            rate: 100,
            channels: 20,
            duration_s: secs,
            report_s: 10,
            server_cpus: String::new(),
            redis_server: "redis-server".to_owned(),
            in_process: true,
            bus_restarts: 1,
        }
    }
}

/// What a soak counted.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Events published (acknowledged by the bus).
    pub published: u64,
    /// Publishes refused (the bus was down: the publisher knows they were not published).
    pub refused: u64,
    /// Events delivered to clients, in order, once.
    pub delivered: u64,
    /// Events delivered again.
    pub duplicates: u64,
    /// Jumps or epoch changes no signal announced.
    pub silent_losses: u64,
    /// Explicit gap or reset signals.
    pub gaps: u64,
    /// Clients that had not caught up with their channel at the end.
    pub behind: u64,
    /// Connections opened again after one ended (every kind of client).
    pub reconnects: u64,
    /// Quotes asked during the run, and those that failed.
    pub quotes: (u64, u64),
    /// The server's RSS (KiB) at each report, with the seconds since publishing started.
    pub rss: Vec<(u64, u64)>,
}

/// Counters every client adds to.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    silent: AtomicU64,
    gaps: AtomicU64,
    reconnects: AtomicU64,
    /// Reconnects by kind of client: web, mobile, device.
    by_kind: [AtomicU64; 3],
    /// Failed device polls and web reconnects by cause (the status, the close frame, the error
    /// answered, or the client error), printed with each report.
    device_failures: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn device_failed(&self, why: &str) {
        self.failed("device failures", why);
    }

    fn failed(&self, kind: &str, why: &str) {
        let key: String = format!("{kind}\t{}", why.chars().take(160).collect::<String>());
        *self
            .device_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    fn reconnected(&self, kind: usize) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.by_kind[kind].fetch_add(1, Ordering::Relaxed);
    }
}

/// One client's position in its channel, checked as events come.
#[derive(Default)]
struct Follow {
    last: Option<Position>,
}

impl Follow {
    fn event(&mut self, at: Position, c: &Counters) {
        match self.last {
            Some(last) if last.epoch == at.epoch && at.offset <= last.offset => {
                c.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(last) if last.epoch != at.epoch || at.offset != last.offset + 1 => {
                c.silent.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        c.delivered.fetch_add(1, Ordering::Relaxed);
        self.last = Some(at);
    }

    fn gap(&mut self, at: Option<Position>, c: &Counters) {
        c.gaps.fetch_add(1, Ordering::Relaxed);
        self.last = at;
    }
}

/// Each channel's last published position, and every client's position, for the end check.
type Positions = Arc<Vec<std::sync::Mutex<Option<Position>>>>;

fn positions(n: usize) -> Positions {
    Arc::new((0..n).map(|_| std::sync::Mutex::new(None)).collect())
}

fn set(p: &Positions, i: usize, at: Option<Position>) {
    *p[i].lock().unwrap_or_else(|e| e.into_inner()) = at;
}

fn get(p: &Positions, i: usize) -> Option<Position> {
    *p[i].lock().unwrap_or_else(|e| e.into_inner())
}

/// The soak's stack: the launcher's `Stack` on the private Redis, with the soak channels and
/// devices, and the exchange service it can restart.
pub struct SoakStack {
    stack: switchyard::Stack,
    exchange: demo_services::exchange::Config,
    restarted: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

/// The key of soak device `i` (`soak-dev-{i}`).
fn device_key(i: usize) -> String {
    format!("soak-key-{i:05}-0123456789")
}

impl SoakStack {
    /// Starts the stack on the Redis at `redis_url`, with `channels` channels and `devices`
    /// devices (device `i` follows channel `i % channels`).
    pub async fn start(redis_url: &str, channels: usize, devices: usize) -> anyhow::Result<Self> {
        let mut config = switchyard::Config::ephemeral();
        for server in [
            &mut config.limits.server,
            &mut config.exchange.server,
            &mut config.conversions.server,
            &mut config.web.server,
            &mut config.mobile.server,
            &mut config.device.server,
        ] {
            server.max_connections_per_ip = 0;
            server.max_connections = 0;
        }
        config.web.websocket.max_sockets_per_user = 0;
        config.mobile.websocket.max_sockets_per_user = 0;
        let off = switchyard_core::ratelimit::RateLimitConfig::off;
        config.web.rate_limits = off();
        config.mobile.rate_limits = off();
        config.device.rate_limits = off();
        config.log.filter = "warn".into();
        config.bus = bus_config(redis_url);
        config.channels.catalog.push(ChannelConfig {
            pattern: PATTERN.to_owned(),
            class: TopicClass::Stream,
            history_events: HISTORY,
            max_payload_bytes: 4096,
            subscribe: SubscribeRule::Public,
            publishers: Vec::new(),
            idle_expiry_ms: None,
        });
        for i in 0..devices {
            config.device.devices.insert(
                format!("soak-dev-{i}"),
                bff_device::DeviceConfig {
                    key: device_key(i),
                    rates: Vec::new(),
                    settings: BTreeMap::new(),
                    channels: vec![format!("soak.{}", i % channels)],
                },
            );
        }
        let exchange = config.exchange.clone();
        let stack = switchyard::Stack::start(config).await?;
        Ok(Self {
            stack,
            exchange,
            restarted: Vec::new(),
        })
    }

    /// bff-web's, bff-mobile's and bff-device's addresses.
    pub fn addrs(&self) -> [SocketAddr; 3] {
        ["bff-web", "bff-mobile", "bff-device"].map(|c| self.stack.addr(c))
    }

    /// Stops the exchange service (its listener and connections close), waits `down`, and
    /// starts it again on the same address.
    pub async fn restart_backend(&mut self, down: Duration) -> anyhow::Result<()> {
        let addr = self.stack.addr("exchange");
        if let Some((token, task)) = self.restarted.pop() {
            token.cancel();
            let _ = task.await;
        } else {
            self.stack.stop_component("exchange");
        }
        tokio::time::sleep(down).await;
        let end = Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > end => bail!("the exchange cannot listen again: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let token = CancellationToken::new();
        let config = self.exchange.clone();
        let t = token.clone();
        let task =
            tokio::spawn(async move { demo_services::exchange::run(config, listener, t).await });
        self.restarted.push((token, task));
        Ok(())
    }

    /// Stops everything.
    pub async fn stop(self) -> anyhow::Result<()> {
        for (token, task) in self.restarted {
            token.cancel();
            let _ = task.await;
        }
        // The exchange was stopped on purpose: its end is not an error of the stack.
        let _ = tokio::time::timeout(Duration::from_secs(30), self.stack.stop()).await;
        Ok(())
    }
}

/// The bus of the soak: the private Redis at `url`.
fn bus_config(url: &str) -> BusConfig {
    let mut bus = BusConfig::of(BusKind::Redis);
    bus.url = url.to_owned();
    bus.prefix = "soak".to_owned();
    bus.history_events = HISTORY as usize;
    bus.reconnect_initial_ms = 50;
    bus.reconnect_max_ms = 500;
    bus
}

/// Arguments of the hidden `serve-soak` (the server child).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The private Redis.
    #[arg(long)]
    redis_url: String,
    /// Channels.
    #[arg(long)]
    channels: usize,
    /// Devices.
    #[arg(long)]
    devices: usize,
}

/// The server child: prints `ready <web> <mobile> <device>`, then answers `restart-backend`
/// with `ok` until its standard input closes.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Warnings (a bus operation failing under a device poll names the operation) go to stderr,
    // which the bench inherits; stdout is the parent's control channel.
    let log = switchyard_server::config::LogConfig {
        filter: "warn".into(),
        ..Default::default()
    };
    let _telemetry = switchyard_server::telemetry::init(&log, "switchyard-soak")?;
    let mut stack = SoakStack::start(&args.redis_url, args.channels, args.devices).await?;
    let [w, m, d] = stack.addrs();
    reply(&format!("ready {w} {m} {d}"));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "restart-backend" => match stack.restart_backend(Duration::from_secs(2)).await {
                Ok(()) => reply("ok"),
                Err(e) => reply(&format!("err {e:#}")),
            },
            other => reply(&format!("err unknown command {other}")),
        }
    }
    stack.stop().await
}

fn reply(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // The parent reads this line; if stdout is gone there is nobody to answer.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The server: a pinned child, or the stack in this process.
enum Server {
    Child(Box<ChildServer>),
    InProcess(Box<SoakStack>),
}

/// The server child and its command channel.
struct ChildServer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl Server {
    async fn start(args: &Args, redis_url: &str) -> anyhow::Result<(Self, [SocketAddr; 3])> {
        if args.in_process {
            let stack = SoakStack::start(redis_url, args.channels, args.devices).await?;
            let addrs = stack.addrs();
            return Ok((Self::InProcess(Box::new(stack)), addrs));
        }
        let exe = std::env::current_exe()?;
        let mut command = if args.server_cpus.is_empty() {
            Command::new(exe)
        } else {
            let mut c = Command::new("taskset");
            c.args(["-c", &args.server_cpus]).arg(exe);
            c
        };
        command.args([
            "serve-soak",
            "--redis-url",
            redis_url,
            "--channels",
            &args.channels.to_string(),
            "--devices",
            &args.devices.to_string(),
        ]);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the server (serve-soak)")?;
        let pid = child.id().ok_or_else(|| anyhow!("the server exited"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .map_err(|_| anyhow!("the server was not ready within 120 s"))??
            .ok_or_else(|| anyhow!("the server exited before it was ready"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["ready", w, m, d] = words[..] else {
            bail!("unexpected line from the server: {line}");
        };
        let addrs = [w.parse()?, m.parse()?, d.parse()?];
        Ok((
            Self::Child(Box::new(ChildServer {
                child,
                stdin,
                lines,
                pid,
            })),
            addrs,
        ))
    }

    fn pid(&self) -> u32 {
        match self {
            Self::Child(c) => c.pid,
            Self::InProcess(_) => std::process::id(),
        }
    }

    async fn restart_backend(&mut self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(stack) => stack.restart_backend(Duration::from_secs(2)).await,
            Self::Child(c) => {
                let ChildServer { stdin, lines, .. } = &mut **c;
                stdin.write_all(b"restart-backend\n").await?;
                stdin.flush().await?;
                let answer = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                    .await
                    .map_err(|_| anyhow!("no answer to restart-backend"))??
                    .ok_or_else(|| anyhow!("the server exited"))?;
                if answer != "ok" {
                    bail!("restart-backend: {answer}");
                }
                Ok(())
            }
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::InProcess(stack) => stack.stop().await,
            Self::Child(c) => {
                let ChildServer {
                    mut child, stdin, ..
                } = *c;
                drop(stdin);
                if tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                Ok(())
            }
        }
    }
}

/// A private `redis-server` (no persistence) on a free port.
struct PrivateRedis {
    bin: String,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(bin: &str) -> anyhow::Result<Self> {
        let free = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = free.local_addr()?.port();
        drop(free);
        let mut redis = Self {
            bin: bin.to_owned(),
            port,
            child: None,
        };
        redis.up().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let child = Command::new(&self.bin)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--maxclients", "100000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {} (install redis-server)", self.bin))?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if Instant::now() > end {
                bail!("redis-server did not listen on {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        self.up().await
    }
}

/// The server's resident set, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A socket from a source address of its own among 127.0.0.2–127.0.0.201, so that no source
/// address runs out of ephemeral ports.
async fn tcp(addr: SocketAddr, i: usize) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8);
    socket.bind((source, 0).into())?;
    let stream = tokio::time::timeout(Duration::from_secs(20), socket.connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn websocket(addr: SocketAddr, path: &str, protocol: &str, i: usize) -> anyhow::Result<Ws> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse()?);
    let stream = tcp(addr, i).await?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .map_err(|_| anyhow!("handshake timed out"))??;
    Ok(ws)
}

fn position(v: &Value) -> Option<Position> {
    let n = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
    Some(Position {
        epoch: n("epoch")?,
        offset: n("offset")?,
    })
}

/// One graphql-transport-ws client, forever: connect, subscribe to `soak.{channel}` after its
/// last position, check what comes; a close reconnects. `ready` is told once subscribed.
async fn web_client(
    addr: SocketAddr,
    i: usize,
    channel: usize,
    c: Arc<Counters>,
    at: Positions,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let mut follow = Follow::default();
    let mut first = true;
    let query = format!(
        "subscription($after: ChannelPosition) {{ channel(name: \"soak.{channel}\", after: \
         $after) {{ epoch offset }} }}"
    );
    let mut n = 0u64;
    loop {
        if !first {
            c.reconnected(0);
            tokio::time::sleep(Duration::from_millis(200 + (i % 800) as u64)).await;
        }
        let Ok(mut ws) = websocket(addr, "/v1/graphql", "graphql-transport-ws", i).await else {
            first = false;
            continue;
        };
        let init = json!({"type": "connection_init"}).to_string();
        if ws.send(Message::Text(init.into())).await.is_err() {
            first = false;
            continue;
        }
        let mut why = String::from("the server ended the connection");
        loop {
            let msg = match ws.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    why = format!("socket error: {e}");
                    break;
                }
                None => break,
            };
            if let Message::Close(frame) = &msg {
                why = match frame {
                    Some(f) => format!("closed {} {}", u16::from(f.code), f.reason),
                    None => "closed without a code".into(),
                };
            }
            let Message::Text(text) = msg else { continue };
            let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            // A gap ends a stream channel's subscription: a `next` whose errors hold
            // `HISTORY_GAP` with `extensions.resume` (then `complete`); subscribe again after it.
            let errors = match msg["type"].as_str() {
                Some("next") => msg["payload"]["errors"].as_array(),
                Some("error") => msg["payload"].as_array(),
                _ => None,
            };
            let gap = errors.map(|errors| {
                errors
                    .iter()
                    .find(|e| e["extensions"]["code"] == "HISTORY_GAP")
                    .map(|e| position(&e["extensions"]["resume"]))
            });
            let mut subscribe = false;
            match (msg["type"].as_str(), gap) {
                (Some("connection_ack"), _) => subscribe = true,
                (Some("ping"), _) => {
                    let pong = json!({"type": "pong"}).to_string();
                    let _ = ws.send(Message::Text(pong.into())).await;
                }
                (_, Some(Some(resume))) => {
                    follow.gap(resume, &c);
                    set(&at, i, follow.last);
                    subscribe = true;
                }
                // Another error: reconnect and subscribe again.
                (_, Some(None)) => {
                    why = format!("error answered: {}", msg["payload"]);
                    break;
                }
                (Some("next"), None) => {
                    if let Some(p) = position(&msg["payload"]["data"]["channel"]) {
                        follow.event(p, &c);
                        set(&at, i, follow.last);
                        if first {
                            first = false;
                            let _ = ready.send(()).await;
                        }
                    }
                }
                _ => {}
            }
            if subscribe {
                n += 1;
                let after = follow
                    .last
                    .map(|p| json!({"epoch": p.epoch.to_string(), "offset": p.offset.to_string()}));
                let sub = json!({"id": n.to_string(), "type": "subscribe",
                    "payload": {"query": query, "variables": {"after": after}}});
                if ws
                    .send(Message::Text(sub.to_string().into()))
                    .await
                    .is_err()
                {
                    why = "the subscribe could not be sent".into();
                    break;
                }
            }
        }
        c.failed("web reconnects", &why);
        first = false;
    }
}

fn mobile_frame(msg: &ClientMsg) -> Message {
    Message::Binary(Encoding::Cbor.encode_client(msg).into_bytes().into())
}

/// One switchyard-mobile.v1 (CBOR) client, forever: connect, `auth`, `sub` to `soak.{channel}`
/// resuming after its last position, answer pings, check what comes; a close reconnects.
async fn mobile_client(
    addr: SocketAddr,
    i: usize,
    channel: usize,
    token: String,
    c: Arc<Counters>,
    at: Positions,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let mut follow = Follow::default();
    let mut first = true;
    let topic = format!("soak.{channel}");
    loop {
        if !first {
            c.reconnected(1);
            tokio::time::sleep(Duration::from_millis(200 + (i % 800) as u64)).await;
        }
        let Ok(mut ws) = websocket(addr, "/v1/ws", mobile_proto::SUBPROTOCOL_CBOR, i).await else {
            first = false;
            continue;
        };
        let auth = ClientMsg::Auth(mobile_proto::Auth {
            token: token.clone(),
            client: None,
        });
        if ws.send(mobile_frame(&auth)).await.is_err() {
            first = false;
            continue;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Binary(bytes) = msg else {
                continue;
            };
            let Ok(msg) = Encoding::Cbor.decode_server(FrameKind::Binary, &bytes, 1 << 20) else {
                continue;
            };
            let reply = match msg {
                ServerMsg::Welcome(_) => Some(ClientMsg::Sub(mobile_proto::Sub {
                    topic: topic.clone(),
                    resume: follow.last,
                })),
                ServerMsg::Ping(p) => Some(ClientMsg::Pong(mobile_proto::Pong { n: p.n })),
                ServerMsg::Event(e) => {
                    follow.event(
                        Position {
                            epoch: e.epoch,
                            offset: e.offset,
                        },
                        &c,
                    );
                    set(&at, i, follow.last);
                    None
                }
                ServerMsg::Gap(g) => {
                    let resume = Position {
                        epoch: g.epoch,
                        offset: g.offset,
                    };
                    follow.gap(Some(resume), &c);
                    set(&at, i, follow.last);
                    None
                }
                ServerMsg::Subbed(_) => {
                    if first {
                        first = false;
                        let _ = ready.send(()).await;
                    }
                    None
                }
                _ => None,
            };
            if let Some(reply) = reply
                && ws.send(mobile_frame(&reply)).await.is_err()
            {
                break;
            }
        }
        first = false;
    }
}

/// Device `i` (client `slot` of the run), forever: long-polls (held up to 10 s) with its cursor,
/// checks its channel's items; a failed poll is polled again (a reconnect).
async fn device_client(
    http: reqwest::Client,
    base: String,
    (i, slot): (usize, usize),
    channel: usize,
    c: Arc<Counters>,
    at: Positions,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let mut follow = Follow::default();
    let mut cursor: Option<String> = None;
    let name = format!("soak.{channel}");
    let key = device_key(i);
    let url = format!("{base}/v1/devices/soak-dev-{i}/events");
    let mut first = true;
    loop {
        let mut query = vec![("wait", "10".to_owned())];
        query.extend(cursor.clone().map(|c| ("cursor", c)));
        let answer = http
            .get(&url)
            .header("x-device-key", &key)
            .query(&query)
            .send()
            .await;
        let body = match answer {
            Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                Ok(v) => Some(v),
                Err(e) => {
                    c.device_failed(&format!("body: {e}"));
                    None
                }
            },
            Ok(r) => {
                c.device_failed(&format!("status {}", r.status()));
                None
            }
            Err(e) => {
                c.device_failed(&format!("error: {e:?}"));
                None
            }
        };
        let Some(body) = body else {
            c.reconnected(2);
            tokio::time::sleep(Duration::from_millis(200 + (i % 800) as u64)).await;
            continue;
        };
        if body.get("rs").is_some() {
            follow.gap(None, &c);
        }
        for item in body["channels"].as_array().into_iter().flatten() {
            if item["channel"] != name.as_str() {
                continue;
            }
            if item.get("gap").is_some() {
                follow.gap(position(item), &c);
            } else if let Some(p) = position(item) {
                follow.event(p, &c);
            }
        }
        set(&at, slot, follow.last);
        cursor = body["n"].as_str().map(str::to_owned);
        if first {
            first = false;
            let _ = ready.send(()).await;
        }
    }
}

/// Runs the soak with `args`, printing progress; the counts.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let sockets = args.web_sockets + args.mobile_sockets;
    let need = (sockets + args.devices) as u64 * if args.in_process { 2 } else { 1 } + 1_000;
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if limit < need {
        bail!("RLIMIT_NOFILE is {limit} (its hard limit); the soak needs about {need}");
    }
    let channels = args.channels.max(1);
    let mut redis = PrivateRedis::start(&args.redis_server).await?;
    let (mut server, [web, mobile, device]) = Server::start(&args, &redis.url()).await?;
    println!(
        "soak: {} web + {} mobile sockets, {} devices, {} events/s over {channels} channels for \
         {} s; server pid {} (cpus {})",
        args.web_sockets,
        args.mobile_sockets,
        args.devices,
        args.rate,
        args.duration_s,
        server.pid(),
        if args.in_process {
            "in-process"
        } else {
            &args.server_cpus
        }
    );

    // The publisher: a bus client of its own on the private Redis.
    let catalog =
        switchyard_core::channels::Catalog::new(&switchyard_core::channels::ChannelsConfig {
            catalog: vec![ChannelConfig {
                pattern: PATTERN.to_owned(),
                class: TopicClass::Stream,
                history_events: HISTORY,
                max_payload_bytes: 4096,
                subscribe: SubscribeRule::Public,
                publishers: Vec::new(),
                idle_expiry_ms: None,
            }],
        })?;
    let broker = Broker::connect_with(
        &bus_config(&redis.url()),
        Retention::new(HISTORY as usize, Some(Arc::new(catalog))),
    );
    let bus = broker.bus();
    let topics: Vec<Topic> = (0..channels)
        .map(|n| Topic::new(&format!("ch:soak.{n}")))
        .collect::<Result<_, _>>()?;

    // The clients, opened with bounded concurrency; each tells once it follows its channel.
    let counters = Arc::new(Counters::default());
    let clients = sockets + args.devices;
    let at = positions(clients);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients.max(1));
    let secret = switchyard::DEMO_SECRET;
    let ttl = Duration::from_secs(args.duration_s + 3_600);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(args.devices + 10)
        .build()?;
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..clients {
        // Opened at about 2,000 a second: a gentle ramp, not a connection storm.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (c, at, ready) = (counters.clone(), at.clone(), ready_tx.clone());
        let channel = i % channels;
        if i < args.web_sockets {
            tasks.spawn(async move {
                web_client(web, i, channel, c, at, ready).await;
            });
        } else if i < sockets {
            let token = bff_web::auth::hs256_token(secret, &format!("soak{i}"), ttl);
            tasks.spawn(async move {
                mobile_client(mobile, i, channel, token, c, at, ready).await;
            });
        } else {
            let (http, base) = (http.clone(), format!("http://{device}"));
            let d = i - sockets;
            tasks.spawn(async move {
                device_client(http, base, (d, i), d % channels, c, at, ready).await;
            });
        }
    }
    drop(ready_tx);
    // Web clients tell once they receive an event (graphql-ws has no "subscribed"), devices
    // once they have a first answer: publish slowly until every client is in.
    let mut ready = 0;
    let mut k = 0u64;
    let published_at = positions(channels);
    let report = Arc::new(Mutex::new(Report::default()));
    let publish = |k: u64| {
        let (bus, topic) = (bus.clone(), topics[(k as usize) % channels].clone());
        let (published_at, report) = (published_at.clone(), report.clone());
        async move {
            let data = format!(r#"{{"k":{k}}}"#);
            let out = tokio::time::timeout(
                Duration::from_secs(5),
                bus.publish(&topic, bytes::Bytes::from(data)),
            )
            .await;
            let mut r = report.lock().await;
            match out {
                Ok(Ok(event)) => {
                    r.published += 1;
                    let p = event.position();
                    let channel = (k as usize) % published_at.len();
                    let mut last = published_at[channel]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    // Publishes run one after another per channel, but keep the newest anyway.
                    if last.is_none_or(|l| l.epoch != p.epoch || l.offset < p.offset) {
                        *last = Some(Position {
                            epoch: p.epoch,
                            offset: p.offset,
                        });
                    }
                }
                _ => r.refused += 1,
            }
        }
    };
    let warm_end = Instant::now() + Duration::from_secs(600);
    while ready < clients {
        if Instant::now() > warm_end {
            bail!("only {ready} of {clients} clients were following after 600 s");
        }
        for _ in 0..channels {
            publish(k).await;
            k += 1;
        }
        let tick = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                got = ready_rx.recv() => match got {
                    Some(()) => ready += 1,
                    None => bail!("the clients ended"),
                },
                () = &mut tick => break,
            }
        }
    }
    println!(
        "soak: {clients} clients following after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The run: paced publishes, the quote every second, the restarts, RSS reports.
    let duration = Duration::from_secs(args.duration_s);
    let backend_at = duration / 3;
    let mut backend_done = false;
    // Bus restart k of n at 1/3 + (k + 1)/(n + 1) · 2/3 of the run: one restart at 2/3.
    let restarts = args.bus_restarts;
    let mut broker_at: std::collections::VecDeque<Duration> = (0..restarts)
        .map(|k| duration / 3 + duration * 2 * (k + 1) / (3 * (restarts + 1)))
        .collect();
    let begin = tokio::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_report = Duration::from_secs(args.report_s.max(1));
    let mut next_quote = Duration::ZERO;
    let quotes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut rss = vec![(0, rss_kib(server.pid()).unwrap_or(0))];
    println!("soak: rss t=0 s {} KiB", rss[0].1);
    let pid = server.pid();
    while begin.elapsed() < duration {
        pace.tick().await;
        // Publishes are spawned so that one stuck on a down bus does not stall the pace.
        tokio::spawn(publish(k));
        k += 1;
        let now = begin.elapsed();
        if now >= next_quote {
            next_quote += Duration::from_secs(1);
            let (http, quotes) = (http.clone(), quotes.clone());
            let url = format!("http://{device}/v1/quote?user=soak&from=EUR&to=USD&amount=5");
            tokio::spawn(async move {
                let ok = http
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                quotes.0.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    quotes.1.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if now >= next_report {
            next_report += Duration::from_secs(args.report_s.max(1));
            let kib = rss_kib(pid).unwrap_or(0);
            rss.push((now.as_secs(), kib));
            let r = report.lock().await;
            println!(
                "soak: rss t={} s {kib} KiB; published {} refused {}; delivered {} duplicates {} \
                 silent losses {} gaps {} reconnects {} (web {} mobile {} device {})",
                now.as_secs(),
                r.published,
                r.refused,
                counters.delivered.load(Ordering::Relaxed),
                counters.duplicates.load(Ordering::Relaxed),
                counters.silent.load(Ordering::Relaxed),
                counters.gaps.load(Ordering::Relaxed),
                counters.reconnects.load(Ordering::Relaxed),
                counters.by_kind[0].load(Ordering::Relaxed),
                counters.by_kind[1].load(Ordering::Relaxed),
                counters.by_kind[2].load(Ordering::Relaxed),
            );
            for (why, n) in counters
                .device_failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                let (kind, why) = why.split_once('\t').unwrap_or(("failures", why));
                println!("soak:   {kind} {n}: {why}");
            }
        }
        if !backend_done && now >= backend_at {
            backend_done = true;
            println!(
                "soak: restarting the exchange backend at t={} s",
                now.as_secs()
            );
            server.restart_backend().await?;
        }
        if broker_at.front().is_some_and(|at| now >= *at) {
            broker_at.pop_front();
            println!(
                "soak: restarting the bus (redis-server) at t={} s",
                now.as_secs()
            );
            redis.restart().await?;
        }
    }
    // Let the last publishes land (each bounded by 5 s), then wait for every client to reach
    // its channel's last published position.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let end = Instant::now() + Duration::from_secs(120);
    let caught_up = |i: usize, channel: usize| {
        let want = get(&published_at, channel);
        want.is_none() || get(&at, i) == want
    };
    let channel_of = |i: usize| {
        if i < sockets {
            i % channels
        } else {
            (i - sockets) % channels
        }
    };
    let behind = loop {
        let behind = (0..clients)
            .filter(|&i| !caught_up(i, channel_of(i)))
            .count() as u64;
        if behind == 0 || Instant::now() > end {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tasks.abort_all();
    let mut report = report.lock().await.clone();
    report.delivered = counters.delivered.load(Ordering::Relaxed);
    report.duplicates = counters.duplicates.load(Ordering::Relaxed);
    report.silent_losses = counters.silent.load(Ordering::Relaxed);
    report.gaps = counters.gaps.load(Ordering::Relaxed);
    report.reconnects = counters.reconnects.load(Ordering::Relaxed);
    report.behind = behind;
    report.quotes = (
        quotes.0.load(Ordering::Relaxed),
        quotes.1.load(Ordering::Relaxed),
    );
    report.rss = rss;
    server.stop().await?;
    print(&report);
    Ok(report)
}

/// Prints the closing figures.
fn print(r: &Report) {
    println!(
        "soak: published {} (refused while the bus was down: {}); delivered {}; duplicates {}; \
         lost without a signal {}; gaps signalled {}; clients behind at the end {}; reconnects \
         {}; quotes {} ({} failed)",
        r.published,
        r.refused,
        r.delivered,
        r.duplicates,
        r.silent_losses,
        r.gaps,
        r.behind,
        r.reconnects,
        r.quotes.0,
        r.quotes.1
    );
    // The first reading after warm-up: the second report (the first full interval under load).
    if let (Some(first), Some(last)) = (r.rss.get(1), r.rss.last()) {
        let change = (last.1 as f64 - first.1 as f64) / first.1.max(1) as f64 * 100.0;
        println!(
            "soak: rss after warm-up {} KiB (t={} s), last {} KiB (t={} s): {change:+.1}% \
             (target: within ±5%) {}",
            first.1,
            first.0,
            last.1,
            last.0,
            if change.abs() <= 5.0 { "PASS" } else { "FAIL" }
        );
    }
    let ok = r.duplicates == 0 && r.silent_losses == 0 && r.behind == 0;
    println!(
        "soak: no event lost without a signal, no duplicate: {}",
        if ok { "PASS" } else { "FAIL" }
    );
}
