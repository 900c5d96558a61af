//! The device benchmarks (bff-device, long-poll):
//!
//! - `device-hold`: 10,000 held polls. Memory per held poll: the server's resident memory
//!   (VmRSS) gained from a warm state (100 held polls) to 10,000 more held polls, split into what
//!   their idle keep-alive connections cost and what holding a poll adds — bff-device against a
//!   minimal axum long-poll server, each in a child process. Wake: one rate tick wakes every held
//!   poll; each poll's latency is publish → its answer read whole; against the baseline of the
//!   same connections sending polls that find the event already pending and answer at once, in
//!   the same run. Every answer is checked: exactly one, carrying exactly the new rate (none
//!   lost, none twice). Targets: ≤ 8 KiB per held poll; held p99 ≤ 1.5 × immediate p99.
//! - `device-soak`: 1,000 devices polling in a loop while a backend sends every device a command
//!   100 times a second for a minute; every device must receive every command, in order, once
//!   (a duplicate or a reset is reported), with the publish → delivery latency.
//!
//! The client is a minimal HTTP/1.1 client over keep-alive TCP connections (one per device), so
//! that its own cost stays small and the timing is the server's; connections come from rotating
//! loopback source addresses so that repeated runs do not exhaust ephemeral ports.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::device_serve::key;
use crate::stats::{median, ms_ns, percentile_ns};

/// The longest any single step may take.
const STEP: Duration = Duration::from_secs(60);

/// Target: KiB per held poll.
const TARGET_KIB: f64 = 8.0;

/// Target: held p99 / immediate p99.
const TARGET_RATIO: f64 = 1.5;

/// Arguments of `device-hold`.
#[derive(clap::Args)]
pub(crate) struct HoldArgs {
    /// Held polls measured.
    #[arg(long, default_value_t = 10_000)]
    polls: usize,
    /// Polls held before the first memory reading.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Measured runs, each with fresh child processes.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Wake rounds per run (each: held polls woken, then immediate polls).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

/// Arguments of `device-soak`.
#[derive(clap::Args)]
pub(crate) struct SoakArgs {
    /// Devices polling in a loop.
    #[arg(long, default_value_t = 1_000)]
    devices: usize,
    /// Commands a second, each sent to every device.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// How long commands are sent, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The `wait` of each poll, in seconds.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Commands of history the server's bus keeps per device (a device that falls further
    /// behind gets a reset, which this benchmark counts as a failure).
    #[arg(long, default_value_t = 1_000)]
    history: usize,
}

/// One device's keep-alive connection.
struct Conn {
    device: usize,
    stream: BufReader<TcpStream>,
    cursor: Option<String>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr, device: usize) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        // 127.0.0.2–127.0.0.201: a fresh ephemeral port space per source address.
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (device % 200) as u8);
        socket.bind((source, 0).into())?;
        let stream = tokio::time::timeout(STEP, socket.connect(addr))
            .await
            .map_err(|_| anyhow!("connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self {
            device,
            stream: BufReader::with_capacity(1024, stream),
            cursor: None,
        })
    }

    /// Sends a poll with the current cursor.
    async fn send(&mut self, wait: u64) -> anyhow::Result<()> {
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let req = format!(
            "GET /v1/devices/dev-{d}/events?wait={wait}{cursor} HTTP/1.1\r\nhost: bench\r\n\
             x-device-key: {k}\r\n\r\n",
            d = self.device,
            k = key(self.device),
        );
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        Ok(())
    }

    /// Reads one answer: status and body.
    async fn recv(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("device {}: bad status line {line:?}", self.device))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("device {}: connection closed in the headers", self.device);
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| anyhow!("device {}: no content-length", self.device))?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }

    /// Sends a poll and reads its answer, moving the cursor; returns the answer.
    async fn poll(&mut self, wait: u64) -> anyhow::Result<Answer> {
        self.send(wait).await?;
        let (status, body) = tokio::time::timeout(Duration::from_secs(wait) + STEP, self.recv())
            .await
            .map_err(|_| anyhow!("device {}: no answer", self.device))??;
        let a = Answer::parse(status, &body)?;
        self.cursor = Some(a.next.clone());
        Ok(a)
    }
}

/// A v1 poll answer, as much of it as the benchmarks check.
struct Answer {
    next: String,
    reset: bool,
    /// `(kind, id or seq)` of each event; `ts` of commands in `stamps`.
    events: Vec<(String, String)>,
    stamps: Vec<u64>,
}

impl Answer {
    fn parse(status: u16, body: &[u8]) -> anyhow::Result<Self> {
        if status != 200 {
            bail!("status {status}: {}", String::from_utf8_lossy(body));
        }
        let v: serde_json::Value = serde_json::from_slice(body)?;
        let next = v["n"]
            .as_str()
            .ok_or_else(|| anyhow!("no cursor in {v}"))?
            .to_owned();
        let mut events = Vec::new();
        let mut stamps = Vec::new();
        for e in v["e"]
            .as_array()
            .ok_or_else(|| anyhow!("no events in {v}"))?
        {
            let t = e["t"].as_str().unwrap_or("?").to_owned();
            let id = match t.as_str() {
                "c" => {
                    stamps.push(e["a"]["ts"].as_u64().unwrap_or(0));
                    e["i"].as_str().unwrap_or("").to_owned()
                }
                "r" => e["s"].to_string(),
                _ => String::new(),
            };
            events.push((t, id));
        }
        Ok(Self {
            next,
            reset: v["rs"] == true,
            events,
            stamps,
        })
    }
}

/// A server child process (see [`crate::device_serve`]).
struct Server {
    child: Child,
    url: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
}

impl Server {
    async fn spawn(devices: usize, baseline: bool, history: usize) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["serve-device", "--devices", &devices.to_string()]);
        cmd.args(["--history", &history.to_string()]);
        if baseline {
            cmd.arg("--baseline");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning serve-device")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let line = tokio::time::timeout(STEP, BufReader::new(stdout).lines().next_line())
            .await
            .map_err(|_| anyhow!("the server announced no URL"))??
            .ok_or_else(|| anyhow!("the server exited before announcing"))?;
        let url = line
            .strip_prefix("url ")
            .ok_or_else(|| anyhow!("unexpected line {line}"))?
            .to_owned();
        let addr = url.trim_start_matches("http://").parse()?;
        Ok(Self {
            child,
            url,
            addr,
            http: reqwest::Client::new(),
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().ok_or_else(|| anyhow!("the server exited"))
    }

    async fn control(&self, path: &str) -> anyhow::Result<u64> {
        let req = if matches!(path, "/bench/holding" | "/bench/published" | "/bench/heap") {
            self.http.get(format!("{}{path}", self.url))
        } else {
            self.http.post(format!("{}{path}", self.url))
        };
        let text = req.send().await?.error_for_status()?.text().await?;
        text.trim()
            .parse()
            .map_err(|_| anyhow!("{path} answered {text}"))
    }

    /// Waits until `n` polls are held at the server.
    async fn holding(&self, n: usize) -> anyhow::Result<()> {
        let end = Instant::now() + STEP;
        loop {
            let h = self.control("/bench/holding").await? as usize;
            if h == n {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("{h} polls held, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Opens connections for devices `range` and makes each one's first poll (wait=0).
async fn open(
    server: &Server,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<Vec<Conn>> {
    let addr = server.addr;
    let conns: Vec<anyhow::Result<Conn>> = futures::stream::iter(range)
        .map(|d| async move {
            let mut c = Conn::open(addr, d).await?;
            c.poll(0)
                .await
                .with_context(|| format!("device {d}: first poll"))?;
            anyhow::Ok(c)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    conns.into_iter().collect()
}

/// Sends a held poll (wait=600) on every connection, without reading.
async fn send_held(conns: &mut [Conn]) -> anyhow::Result<()> {
    for c in conns.iter_mut() {
        c.send(600).await?;
    }
    Ok(())
}

/// One answer read on every connection by a task each; the tasks are all parked (reading, or
/// waiting for the start signal before sending) before the clock starts.
/// What a round's task returns: its index, its connection, the raw answer and when it was read.
type Read = (usize, Conn, anyhow::Result<(u16, Vec<u8>)>, Instant);

struct Round {
    set: JoinSet<Read>,
    ready: Arc<AtomicU64>,
    start: tokio::sync::watch::Sender<bool>,
    n: usize,
}

impl Round {
    /// `send`: each task sends a held poll on the start signal, then reads; otherwise each
    /// reads at once (its poll was sent before).
    fn spawn(conns: Vec<Conn>, send: bool) -> Self {
        let ready = Arc::new(AtomicU64::new(0));
        let (start, go) = tokio::sync::watch::channel(false);
        let mut set = JoinSet::new();
        let n = conns.len();
        for (i, mut c) in conns.into_iter().enumerate() {
            let ready = ready.clone();
            let mut go = go.clone();
            set.spawn(async move {
                ready.fetch_add(1, Ordering::AcqRel);
                let r = async {
                    if send {
                        let _ = go.wait_for(|g| *g).await;
                        c.send(600).await?;
                    }
                    tokio::time::timeout(STEP, c.recv())
                        .await
                        .map_err(|_| anyhow!("device {}: no answer", c.device))?
                }
                .await;
                (i, c, r, Instant::now())
            });
        }
        Self {
            set,
            ready,
            start,
            n,
        }
    }

    /// Waits until every task is parked.
    async fn ready(&self) {
        while self.ready.load(Ordering::Acquire) < self.n as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Parked tasks have reached their first await once they yield; give them the chance.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn start(&self) {
        self.start.send_replace(true);
    }

    async fn finish(mut self) -> anyhow::Result<Vec<(Conn, Answer, Instant)>> {
        let mut out = Vec::with_capacity(self.n);
        while let Some(done) = self.set.join_next().await {
            let (i, mut c, r, at) = done?;
            let (status, body) = r?;
            let a = Answer::parse(status, &body).with_context(|| format!("device {}", c.device))?;
            c.cursor = Some(a.next.clone());
            out.push((i, c, a, at));
        }
        out.sort_by_key(|(i, ..)| *i);
        Ok(out.into_iter().map(|(_, c, a, at)| (c, a, at)).collect())
    }
}

/// Checks that every answer carries exactly the rate `seq`, and nothing else.
fn check_rate(answers: &[(Conn, Answer, Instant)], seq: u64) -> anyhow::Result<()> {
    let want = [("r".to_owned(), seq.to_string())];
    for (c, a, _) in answers {
        if a.events != want || a.reset {
            bail!(
                "device {}: expected exactly rate {seq}, got {:?} (reset {})",
                c.device,
                a.events,
                a.reset
            );
        }
    }
    Ok(())
}

fn latencies(answers: &[(Conn, Answer, Instant)], t0: Instant) -> Vec<u64> {
    let mut ns: Vec<u64> = answers
        .iter()
        .map(|(_, _, at)| at.saturating_duration_since(t0).as_nanos() as u64)
        .collect();
    ns.sort_unstable();
    ns
}

struct MemReading {
    warm: u64,
    open: u64,
    held: u64,
    /// The child's live heap in bytes at the same three moments (`--features dhat-heap`).
    heap: Option<[u64; 3]>,
}

impl MemReading {
    /// With `--features dhat-heap`: heap bytes per idle connection and per held poll.
    fn heap_line(&self, polls: usize) -> String {
        match self.heap {
            Some([w, o, h]) => format!(
                "; live heap per held poll {:.0} B (idle connection {:.0} + held poll {:.0})",
                (h as f64 - w as f64) / polls as f64,
                (o as f64 - w as f64) / polls as f64,
                (h as f64 - o as f64) / polls as f64,
            ),
            None => String::new(),
        }
    }
}

/// Memory: warm-up polls held, then `polls` more connections (idle), then their polls held.
async fn memory(server: &Server, args: &HoldArgs) -> anyhow::Result<(MemReading, Vec<Conn>)> {
    let pid = server.pid()?;
    let mut warm = open(server, 0..args.warmup, args.concurrency).await?;
    send_held(&mut warm).await?;
    server.holding(args.warmup).await?;
    let warm_kib = crate::memory::settled_rss(pid).await?;
    let heap = cfg!(feature = "dhat-heap");
    let warm_heap = if heap {
        server.control("/bench/heap").await?
    } else {
        0
    };
    let mut conns = open(
        server,
        args.warmup..args.warmup + args.polls,
        args.concurrency,
    )
    .await?;
    let open_kib = crate::memory::settled_rss(pid).await?;
    let open_heap = if heap {
        server.control("/bench/heap").await?
    } else {
        0
    };
    send_held(&mut conns).await?;
    server.holding(args.warmup + args.polls).await?;
    let held_kib = crate::memory::settled_rss(pid).await?;
    let held_heap = if heap {
        server.control("/bench/heap").await?
    } else {
        0
    };
    warm.extend(conns);
    Ok((
        MemReading {
            warm: warm_kib,
            open: open_kib,
            held: held_kib,
            heap: heap.then_some([warm_heap, open_heap, held_heap]),
        },
        warm,
    ))
}

fn kib_per(from: u64, to: u64, n: usize) -> f64 {
    (to as f64 - from as f64) / n as f64
}

pub(crate) async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    if args.polls == 0 || args.runs == 0 || args.rounds == 0 {
        bail!("--polls, --runs and --rounds must be at least 1");
    }
    let total = args.polls + args.warmup;
    let limit = crate::memory::raise_nofile(total as u64 + 1_024)?;
    println!(
        "device-hold: {} held polls after {} warm-up ones, {} runs (fresh child processes), \
         {} wake rounds per run, RLIMIT_NOFILE {limit}",
        args.polls, args.warmup, args.runs, args.rounds
    );
    let mut mem_gw = Vec::new();
    let mut mem_base = Vec::new();
    let mut ratios = Vec::new();
    let (mut held_p99s, mut imm_p99s) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        // The minimal baseline: memory only.
        let base = Server::spawn(total, true, 1_000).await?;
        let (m, conns) = memory(&base, &args).await.context("baseline memory")?;
        println!(
            "run {run} baseline (minimal long-poll)  RSS {} → {} KiB  per held poll {:.2} KiB \
             (idle connection {:.2} + held poll {:.2}){}",
            m.warm,
            m.held,
            kib_per(m.warm, m.held, args.polls),
            kib_per(m.warm, m.open, args.polls),
            kib_per(m.open, m.held, args.polls),
            m.heap_line(args.polls),
        );
        mem_base.push(kib_per(m.warm, m.held, args.polls));
        drop(conns);
        base.stop().await;

        let gw = Server::spawn(total, false, 1_000).await?;
        // A first rate, so that every cursor has one and a wake carries exactly the next.
        gw.control("/bench/rate").await?;
        let (m, mut conns) = memory(&gw, &args).await.context("gateway memory")?;
        println!(
            "run {run} bff-device                RSS {} → {} KiB  per held poll {:.2} KiB \
             (idle connection {:.2} + held poll {:.2}){}",
            m.warm,
            m.held,
            kib_per(m.warm, m.held, args.polls),
            kib_per(m.warm, m.open, args.polls),
            kib_per(m.open, m.held, args.polls),
            m.heap_line(args.polls),
        );
        mem_gw.push(kib_per(m.warm, m.held, args.polls));

        for round in 1..=args.rounds {
            // Held: every connection has a held poll; one tick wakes them all.
            let before: Vec<Option<String>> = conns.iter().map(|c| c.cursor.clone()).collect();
            let woken = Round::spawn(std::mem::take(&mut conns), false);
            woken.ready().await;
            let t0 = Instant::now();
            let seq = gw.control("/bench/rate").await?;
            let answers = woken.finish().await?;
            check_rate(&answers, seq).context("held polls")?;
            let held = latencies(&answers, t0);

            // Immediate: the same connections poll with the cursor from before the tick, so
            // the tick is pending and each answers at once.
            let mut back: Vec<Conn> = answers.into_iter().map(|(c, ..)| c).collect();
            for (c, cur) in back.iter_mut().zip(&before) {
                c.cursor.clone_from(cur);
            }
            let immediate = Round::spawn(back, true);
            immediate.ready().await;
            let t0 = Instant::now();
            immediate.start();
            let answers = immediate.finish().await?;
            check_rate(&answers, seq).context("immediate polls")?;
            let imm = latencies(&answers, t0);
            conns = answers.into_iter().map(|(c, ..)| c).collect();

            let (hp99, ip99) = (percentile_ns(&held, 0.99), percentile_ns(&imm, 0.99));
            let ratio = hp99 as f64 / ip99.max(1) as f64;
            println!(
                "run {run} round {round}: {} polls  held: p50 {} p99 {} all {} ms | immediate: \
                 p50 {} p99 {} all {} ms | held/immediate p99 {:.2}×",
                held.len(),
                ms_ns(percentile_ns(&held, 0.5)),
                ms_ns(hp99),
                ms_ns(*held.last().unwrap_or(&0)),
                ms_ns(percentile_ns(&imm, 0.5)),
                ms_ns(ip99),
                ms_ns(*imm.last().unwrap_or(&0)),
                ratio
            );
            held_p99s.push(hp99 as f64);
            imm_p99s.push(ip99 as f64);
            ratios.push(ratio);
            // Hold them all again for the next round.
            send_held(&mut conns).await?;
            gw.holding(total).await?;
        }
        drop(conns);
        gw.stop().await;
    }
    let (gw_kib, base_kib) = (median(mem_gw), median(mem_base));
    let ratio = median(ratios.clone());
    println!(
        "median of {} runs: bff-device {:.2} KiB per held poll, minimal long-poll baseline {:.2} KiB \
         ({:.2}×); target ≤ {TARGET_KIB} KiB: {}",
        args.runs,
        gw_kib,
        base_kib,
        gw_kib / base_kib,
        if gw_kib <= TARGET_KIB {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "median of {} rounds: held p99 {} ms, immediate p99 {} ms, held/immediate {:.2}× \
         (worst round {:.2}×); target ≤ {TARGET_RATIO}×: {}; every answer checked: one per \
         poll, exactly the new rate",
        ratios.len(),
        ms_ns(median(held_p99s) as u64),
        ms_ns(median(imm_p99s) as u64),
        ratio,
        ratios.iter().copied().fold(0.0, f64::max),
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

pub(crate) async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.rate == 0 || args.seconds == 0 {
        bail!("--devices, --rate and --seconds must be at least 1");
    }
    crate::memory::raise_nofile(args.devices as u64 + 1_024)?;
    let events = args.rate * args.seconds;
    println!(
        "device-soak: {} devices polling in a loop (wait={} s), {} commands/s to every device \
         for {} s ({events} commands per device), bus history {} per device",
        args.devices, args.wait, args.rate, args.seconds, args.history
    );
    let server = Server::spawn(args.devices, false, args.history).await?;
    let conns = open(&server, 0..args.devices, 200).await?;
    let polls = Arc::new(AtomicU64::new(0));
    // Commands each device has received in order so far, for the progress line.
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.devices).map(|_| AtomicU64::new(0)).collect());
    let mut set = JoinSet::new();
    for mut c in conns {
        let polls = polls.clone();
        let received = received.clone();
        let wait = args.wait;
        set.spawn(async move {
            // seq → seen; the commands must come in order, each once.
            let mut next = 1u64;
            let (mut dups, mut resets, mut out_of_order) = (0u64, 0u64, 0u64);
            let mut lat = Vec::with_capacity(events as usize);
            while next <= events {
                let a = c.poll(wait).await?;
                polls.fetch_add(1, Ordering::Relaxed);
                let now = unix_ns();
                resets += u64::from(a.reset);
                let mut stamps = a.stamps.iter();
                for (t, id) in &a.events {
                    if t != "c" {
                        continue;
                    }
                    let ts = stamps.next().copied().unwrap_or(0);
                    let seq: u64 = id.trim_start_matches('s').parse().unwrap_or(0);
                    match seq.cmp(&next) {
                        std::cmp::Ordering::Equal => {
                            next += 1;
                            lat.push(now.saturating_sub(ts));
                            received[c.device].store(seq, Ordering::Relaxed);
                        }
                        std::cmp::Ordering::Less => dups += 1,
                        std::cmp::Ordering::Greater => {
                            out_of_order += 1;
                            next = seq + 1;
                        }
                    }
                }
            }
            anyhow::Ok((c.device, next - 1, dups, resets, out_of_order, lat))
        });
    }
    // The backend runs inside the server's process, on its own steady clock.
    let started = Instant::now();
    server
        .control(&format!(
            "/bench/commands?rate={}&count={events}",
            args.rate
        ))
        .await?;
    let progress = tokio::spawn({
        let (received, polls) = (received.clone(), polls.clone());
        let (url, http) = (server.url.clone(), server.http.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let published = match http.get(format!("{url}/bench/published")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => "?".to_owned(),
                };
                let mut got: Vec<u64> =
                    received.iter().map(|r| r.load(Ordering::Relaxed)).collect();
                got.sort_unstable();
                println!(
                    "  {:>4.0} s: published {published}, received by every device {}, median {}; \
                     {} polls",
                    started.elapsed().as_secs_f64(),
                    got.first().copied().unwrap_or(0),
                    got[got.len() / 2],
                    polls.load(Ordering::Relaxed)
                );
            }
        }
    });
    while server.control("/bench/published").await? < events {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            out.push(done??);
        }
        anyhow::Ok(out)
    })
    .await
    .map_err(|_| anyhow!("not every device had every command 60 s after the last one"))??;
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let complete = all.iter().filter(|r| r.1 == events && r.4 == 0).count();
    let dups: u64 = all.iter().map(|r| r.2).sum();
    let resets: u64 = all.iter().map(|r| r.3).sum();
    let gaps: u64 = all.iter().map(|r| r.4).sum();
    let mut lat: Vec<u64> = all.into_iter().flat_map(|r| r.5).collect();
    lat.sort_unstable();
    let polls = polls.load(Ordering::Relaxed);
    println!(
        "published {events} commands × {} devices in {publish_s:.1} s; {complete}/{} devices \
         received every command in order (missing/out of order {gaps}, duplicates {dups}, \
         resets {resets}); {polls} polls ({:.0}/s, {:.1} commands per answer); publish → \
         delivery p50 {} ms p99 {} ms max {} ms",
        args.devices,
        args.devices,
        polls as f64 / elapsed,
        (events * args.devices as u64) as f64 / polls.max(1) as f64,
        ms_ns(percentile_ns(&lat, 0.5)),
        ms_ns(percentile_ns(&lat, 0.99)),
        ms_ns(*lat.last().unwrap_or(&0)),
    );
    server.stop().await;
    if complete != args.devices {
        bail!("not every device received every command");
    }
    Ok(())
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
