//! Memory per idle subscribed socket: the resident memory (VmRSS in `/proc/<pid>/status`) a
//! server process gains when 10,000 clients sit on it, each initialised and subscribed, divided
//! by the number of sockets. `memory`: graphql-transport-ws clients, bff-web, target ≤ 16 KiB
//! per socket; `mobile-memory`: switchyard-mobile.v1 (CBOR) clients, bff-mobile, target ≤ 10 KiB
//! per socket (the baselines speak the same protocol as the gateway measured).
//!
//! Each server runs alone in a child process of the bench binary ([`crate::serve`]): bff-web (the
//! launcher's stack, whose other services are idle and cost the same at every stage), the
//! baseline broadcast server with tungstenite's default buffers (a minimal server), and the
//! baseline with bff-web's buffer sizes (4 KiB read buffer, no write buffer), which separates
//! what the buffers cost from what the gateway's own state costs. The bench process opens the
//! client sockets; their memory is not counted.
//!
//! For each server: a few warm-up sockets are opened, initialised and subscribed; the RSS is
//! read once it has settled. Then the sockets are added in stages, the RSS settling after each:
//! *open* (WebSocket handshake done, nothing sent — the gateway's `connection_init`/`auth`
//! timeout is raised for this, and bff-mobile's heartbeat), *init* (`connection_init`
//! acknowledged, or `auth` welcomed), *subscribed* (one subscription to the conversions,
//! confirmed by a `ping`/`pong` after it, or by `subbed`). The headline figure is
//! (subscribed − warm) / sockets; the stages show where it goes. Freed memory a process keeps in
//! its allocator is not a concern: every stage only adds.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::{self, Protocol};
use crate::stats::median;

/// Arguments of the memory benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Sockets measured per server.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Sockets opened (initialised and subscribed) before the first reading.
    #[arg(long, default_value_t = 100)]
    warmup_sockets: usize,
    /// Measured runs of each server, each in a fresh child process.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Socket steps (handshake, init, subscribe) in progress at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

/// Target of the issue: KiB per idle subscribed socket at the gateway of `protocol`.
fn target_kib(protocol: Protocol) -> f64 {
    match protocol {
        Protocol::Graphql => 16.0,
        Protocol::Mobile => 10.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gateway,
    Baseline,
    BaselineSmall,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Baseline => "baseline",
            Kind::BaselineSmall => "baseline-small-buffers",
        }
    }

    fn command(self, protocol: Protocol) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        match self {
            Kind::Gateway => command.arg("serve-gateway"),
            Kind::Baseline => command.args(["serve-baseline", "--buffers", "default"]),
            Kind::BaselineSmall => command.args(["serve-baseline", "--buffers", "small"]),
        };
        command.args(["--protocol", protocol.flag()]);
        Ok(command)
    }
}

/// RSS in KiB after the warm-up sockets and after each stage.
#[derive(Debug, Clone, Copy)]
struct Readings {
    warm: u64,
    open: u64,
    init: u64,
    subscribed: u64,
}

/// Raises the soft limit on open files to the hard limit and checks that `need` fit.
pub(crate) fn raise_nofile(need: u64) -> anyhow::Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if limit < need {
        bail!(
            "RLIMIT_NOFILE is {limit} (its hard limit) but this benchmark needs about {need} \
             open files; raise the hard limit (ulimit -Hn) or use fewer sockets"
        );
    }
    Ok(limit)
}

pub(crate) async fn run(args: Args, protocol: Protocol) -> anyhow::Result<()> {
    if args.sockets == 0 || args.runs == 0 {
        bail!("--sockets and --runs must be at least 1");
    }
    // Both the bench (client ends) and the child (server ends, which inherits the limit) hold
    // one descriptor per socket, plus some for the runtime and the stack.
    let limit = raise_nofile((args.sockets + args.warmup_sockets) as u64 + 1_024)?;
    println!(
        "{}memory ({}): {} sockets per server after {} warm-up sockets, {} runs per server \
         (each a fresh child process), RLIMIT_NOFILE {limit}",
        if protocol == Protocol::Mobile {
            "mobile-"
        } else {
            ""
        },
        protocol.subprotocol(),
        args.sockets,
        args.warmup_sockets,
        args.runs
    );
    let kinds = [Kind::Gateway, Kind::Baseline, Kind::BaselineSmall];
    let mut results: Vec<(Kind, Vec<Readings>)> = kinds.iter().map(|&k| (k, vec![])).collect();
    for run in 1..=args.runs {
        for (kind, readings) in &mut results {
            let r = measure(*kind, &args, protocol)
                .await
                .with_context(|| format!("run {run}, {}", kind.name()))?;
            let per = |from: u64, to: u64| per_socket(from, to, args.sockets);
            println!(
                "run {run} {:<22}  RSS {} → {} KiB  per socket {:.1} KiB \
                 (open {:.1} + init {:.1} + subscribe {:.1})",
                kind.name(),
                r.warm,
                r.subscribed,
                per(r.warm, r.subscribed) / 1024.0,
                per(r.warm, r.open) / 1024.0,
                per(r.open, r.init) / 1024.0,
                per(r.init, r.subscribed) / 1024.0,
            );
            readings.push(r);
        }
    }

    let mut medians = Vec::new();
    for (kind, readings) in &results {
        let med = |f: fn(&Readings) -> (u64, u64)| {
            median(
                readings
                    .iter()
                    .map(|r| {
                        let (from, to) = f(r);
                        per_socket(from, to, args.sockets)
                    })
                    .collect(),
            )
        };
        let total = med(|r| (r.warm, r.subscribed));
        println!(
            "median of {} runs, {:<22}  {:.1} KiB per subscribed socket \
             (open {:.1} + init {:.1} + subscribe {:.1})",
            readings.len(),
            kind.name(),
            total / 1024.0,
            med(|r| (r.warm, r.open)) / 1024.0,
            med(|r| (r.open, r.init)) / 1024.0,
            med(|r| (r.init, r.subscribed)) / 1024.0,
        );
        medians.push(total);
    }
    let (gateway, baseline, small) = (medians[0], medians[1], medians[2]);
    let target = target_kib(protocol);
    println!(
        "gateway/baseline: {:.2}× per socket (gateway/baseline-small-buffers {:.2}×); \
         target ≤ {target} KiB per socket: {}",
        gateway / baseline,
        gateway / small,
        if gateway <= target * 1024.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

/// Bytes per socket between two readings in KiB (negative when memory was returned).
fn per_socket(from_kib: u64, to_kib: u64, sockets: usize) -> f64 {
    (to_kib as f64 - from_kib as f64) * 1024.0 / sockets as f64
}

/// One server, one child process: the readings after warm-up and after each stage.
async fn measure(kind: Kind, args: &Args, protocol: Protocol) -> anyhow::Result<Readings> {
    let (mut child, url) = spawn(kind, protocol).await?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the child exited at once"))?;
    let token = client::token();
    let token = token.as_str();
    let conc = args.connect_concurrency;

    let warm = client::connect_subscribed(&url, protocol, token, args.warmup_sockets, conc)
        .await
        .context("warm-up sockets")?;
    let warm_kib = settled_rss(pid).await?;

    let mut sockets = client::open_many(&url, protocol, args.sockets, conc)
        .await
        .context("opening the sockets")?;
    let open_kib = settled_rss(pid).await?;

    client::each(&mut sockets, conc, |ws| client::init(ws, protocol, token))
        .await
        .context("connection_init")?;
    let init_kib = settled_rss(pid).await?;

    client::each(&mut sockets, conc, |ws| client::subscribe(ws, protocol))
        .await
        .context("subscribing")?;
    let subscribed_kib = settled_rss(pid).await?;

    drop(sockets);
    drop(warm);
    stop(&mut child).await;
    Ok(Readings {
        warm: warm_kib,
        open: open_kib,
        init: init_kib,
        subscribed: subscribed_kib,
    })
}

/// Spawns the server and reads the URL it announces.
async fn spawn(kind: Kind, protocol: Protocol) -> anyhow::Result<(Child, String)> {
    let mut child = kind
        .command(protocol)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning the {} server", kind.name()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| anyhow!("the {} server announced no URL within 60 s", kind.name()))??
        .ok_or_else(|| anyhow!("the {} server exited before announcing", kind.name()))?;
    let url = line
        .strip_prefix("url ")
        .ok_or_else(|| anyhow!("unexpected line from the {} server: {line}", kind.name()))?
        .to_owned();
    Ok((child, url))
}

/// Closes the child's standard input (it exits) and waits for it, killing it after 10 s.
async fn stop(child: &mut Child) {
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        eprintln!("warning: a server child did not exit within 10 s; killing it");
        let _ = child.kill().await;
    }
}

/// The process's resident memory in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Reads the RSS every 250 ms until it has stayed within 0.5 % (at least 256 KiB) for a second,
/// or 20 s have passed (then warns and returns the last reading).
pub(crate) async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut window = VecDeque::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let rss = rss_kib(pid)?;
        window.push_back(rss);
        if window.len() > 5 {
            window.pop_front();
        }
        let (lo, hi) = (
            window.iter().copied().min().unwrap_or(rss),
            window.iter().copied().max().unwrap_or(rss),
        );
        if window.len() == 5 && hi - lo <= (hi / 200).max(256) {
            return Ok(rss);
        }
        if tokio::time::Instant::now() > end {
            eprintln!("warning: RSS of {pid} still moving after 20 s ({lo}–{hi} KiB)");
            return Ok(rss);
        }
    }
}
