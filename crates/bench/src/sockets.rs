//! `sockets` (issue 15, the moonshot): as many idle, authenticated, subscribed bff-mobile sockets
//! as this machine holds — 100k, 250k, 500k, 1M by default — then ONE event published and the
//! time until every socket has verified it, at each step.
//!
//! One process may hold no more open files than its RLIMIT_NOFILE hard limit (raised here to the
//! hard limit; only CAP_SYS_RESOURCE raises the hard limit itself), so the server side is shards:
//! `serve-sockets` children ([`crate::sockets_child`]), each the launcher's stack with its own
//! bff-mobile holding up to `--per-shard` sockets, all on the same Redis bus — one publish
//! reaches every shard, as it reaches every instance of a deployment — and all pinned to CPU 0.
//! Each shard has one lean `sockets-client` child on CPU 1. Shards are started when the sockets
//! outgrow the ones running; they are filled one after the other in chunks.
//!
//! At each step the bench prints: the servers' RSS per socket (the sum of the shards' settled
//! VmRSS minus the sum of their RSS before their first socket, over the sockets; the shards'
//! fixed cost is printed beside it), the clients' RSS and CPU per socket, the kernel's share
//! (`Slab` in /proc/meminfo and TCP `mem` pages in /proc/net/sockstat, against the start), the
//! time from the publish to the first and the last socket's receipt (Unix clock, shared by every
//! process), the servers' CPU time for that one delivery, and TCP memory pressure events.
//!
//! It stops a step, and the run, when MemAvailable falls below `--min-free-gib` before a chunk,
//! when a socket cannot be opened (the error is printed: file limits, ports, memory) or when a
//! delivery misses a socket. It changes no sysctl: it prints the ones that bound it.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use demo_api::UserId;
use switchyard_core::event::Topic;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client;
use crate::sockets_child::{bus_config, unix_ns};

/// Arguments of `sockets`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Total sockets at each step (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100000,250000,500000,1000000"
    )]
    steps: Vec<usize>,
    /// Sockets per shard (default: the RLIMIT_NOFILE hard limit less 1,000).
    #[arg(long)]
    per_shard: Option<usize>,
    /// Sockets opened per command to a client (MemAvailable is checked before each).
    #[arg(long, default_value_t = 1_000)]
    chunk: usize,
    /// Stop opening sockets when MemAvailable is below this (GiB).
    #[arg(long, default_value_t = 2.0)]
    min_free_gib: f64,
    /// CPUs of the server shards (`taskset -c`).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs of the client children (`taskset -c`).
    #[arg(long, default_value = "1")]
    client_cpus: String,
    /// Sockets each client opens at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Longest wait for one event to reach every socket (s).
    #[arg(long, default_value_t = 300)]
    deliver_timeout_s: u64,
    /// The Redis of the shards' bus.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// A child speaking lines on its standard input and output.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl Proc {
    async fn spawn(cpus: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new("taskset")
            .args(["-c", cpus])
            .arg(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {args:?} under taskset"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("a child exited at once"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            pid,
        })
    }

    async fn line(&mut self, within: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(within, self.lines.next_line())
            .await
            .map_err(|_| anyhow!("child {} did not answer within {within:?}", self.pid))??
            .ok_or_else(|| anyhow!("child {} exited", self.pid))
    }

    async fn ask(&mut self, command: &str, within: Duration) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .with_context(|| format!("child {} is gone", self.pid))?;
        self.stdin.flush().await?;
        self.line(within).await
    }

    fn cpu_s(&self, ticks: f64) -> f64 {
        crate::stats::cpu_ticks(self.pid).unwrap_or(0.0) / ticks
    }
}

/// One server shard and its client.
struct Shard {
    server: Proc,
    client: Proc,
    sockets: usize,
    server_base_kib: u64,
    client_base_kib: u64,
    server_cpu_base: f64,
    client_cpu_base: f64,
}

/// A line of /proc/meminfo, in KiB.
fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A field of /proc/net/sockstat's `TCP:` line (`inuse`, `mem` in pages, …).
fn sockstat(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let Some(tcp) = text.lines().find_map(|l| l.strip_prefix("TCP:")) else {
        return 0;
    };
    let words: Vec<&str> = tcp.split_whitespace().collect();
    words
        .chunks(2)
        .find(|kv| kv[0] == field)
        .and_then(|kv| kv.get(1)?.parse().ok())
        .unwrap_or(0)
}

/// `TcpExt: TCPMemoryPressures` from /proc/net/netstat.
fn memory_pressures() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPMemoryPressures")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn read_sys(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// Prints the limits and sysctls that bound the run (read, never changed).
fn print_environment(nofile: u64) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    println!("RLIMIT_NOFILE soft {soft} hard {hard} (raised to {nofile}; per process)");
    for path in [
        "/proc/sys/fs/nr_open",
        "/proc/sys/fs/file-max",
        "/proc/sys/fs/file-nr",
        "/proc/sys/net/ipv4/tcp_mem",
        "/proc/sys/net/ipv4/tcp_rmem",
        "/proc/sys/net/ipv4/tcp_wmem",
        "/proc/sys/net/ipv4/ip_local_port_range",
        "/proc/sys/net/core/somaxconn",
        "/proc/sys/net/netfilter/nf_conntrack_max",
        "/proc/sys/net/netfilter/nf_conntrack_count",
    ] {
        println!("{path}: {}", read_sys(path));
    }
    println!(
        "MemTotal {:.1} GiB, MemAvailable {:.1} GiB, Slab {:.2} GiB, TCP sockets in use {}",
        gib(meminfo_kib("MemTotal")),
        gib(meminfo_kib("MemAvailable")),
        gib(meminfo_kib("Slab")),
        sockstat("inuse"),
    );
}

fn gib(kib: u64) -> f64 {
    kib as f64 / (1024.0 * 1024.0)
}

/// What stopped the run, if anything.
enum Stop {
    Memory(String),
    Open(String),
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.steps.is_empty() || args.steps.contains(&0) || args.chunk == 0 {
        bail!("--steps must be positive socket counts and --chunk at least 1");
    }
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let per_shard = args
        .per_shard
        .unwrap_or_else(|| nofile.saturating_sub(1_000) as usize);
    if per_shard == 0 || per_shard as u64 + 500 > nofile {
        bail!(
            "--per-shard {per_shard} does not fit RLIMIT_NOFILE {nofile} (less 500 for the stack)"
        );
    }
    print_environment(nofile);
    println!(
        "sockets: steps {:?}, {per_shard} sockets per shard (server shard on CPU {}, its \
         client on CPU {}), chunks of {}, stop below {} GiB available",
        args.steps, args.server_cpus, args.client_cpus, args.chunk, args.min_free_gib
    );
    let ticks = crate::publish_serve::clock_ticks()?;
    let prefix = format!("moonshot-{}", std::process::id());
    let bus = switchyard_core::bus::Broker::connect(&bus_config(&args.redis_url, &prefix)).bus();
    let user = UserId::parse(client::USER).map_err(|e| anyhow!("{e}"))?;
    let publisher = Publisher {
        bus,
        topic: Topic::new(&demo_api::conversions_topic(&user))?,
        template: crate::fanout::template(user)?,
    };
    let (avail0, slab0, tcp_mem0) = (
        meminfo_kib("MemAvailable"),
        meminfo_kib("Slab"),
        sockstat("mem"),
    );

    let mut shards: Vec<Shard> = Vec::new();
    let mut total = 0usize;
    let mut stop = None;
    println!(
        "| sockets | shards | server RSS/socket | shards' fixed RSS | client RSS/socket | client CPU/socket | server CPU/socket (open) | kernel slab/socket | machine/socket | first / last delivery | server CPU (delivery) | every socket verified |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (step, &target) in args.steps.iter().enumerate() {
        while total < target && stop.is_none() {
            let avail = meminfo_kib("MemAvailable");
            if gib(avail) < args.min_free_gib {
                stop = Some(Stop::Memory(format!(
                    "MemAvailable {:.2} GiB < {} GiB at {total} sockets",
                    gib(avail),
                    args.min_free_gib
                )));
                break;
            }
            if shards.last().is_none_or(|s| s.sockets >= per_shard) {
                shards.push(start_shard(&args, &prefix, total).await?);
            }
            let shard = shards
                .last_mut()
                .ok_or_else(|| anyhow!("no shard running"))?;
            let n = args
                .chunk
                .min(target - total)
                .min(per_shard - shard.sockets);
            let answer = shard
                .client
                .ask(&format!("open {n}"), Duration::from_secs(600))
                .await?;
            let now = match answer.strip_prefix("opened ") {
                Some(count) => count.parse::<usize>()?,
                None => {
                    let opened = answer
                        .strip_prefix("error after ")
                        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
                        .unwrap_or(shard.sockets);
                    total += opened - shard.sockets;
                    shard.sockets = opened;
                    stop = Some(Stop::Open(format!("at {total} sockets: {answer}")));
                    break;
                }
            };
            total += now - shard.sockets;
            shard.sockets = now;
        }
        if total == 0 {
            break;
        }
        let start = (avail0, slab0, tcp_mem0);
        measure_step(
            &args,
            &mut shards,
            total,
            step as u64,
            &publisher,
            ticks,
            start,
        )
        .await?;
        if stop.is_some() {
            break;
        }
    }
    match stop {
        Some(Stop::Memory(why)) => println!("stopped: memory: {why}"),
        Some(Stop::Open(why)) => println!("stopped: a socket could not be opened {why}"),
        None => println!("every step reached"),
    }
    // The clients first (their exit closes their ends), then the shards, killed: a drain of
    // thousands of sockets each says nothing here.
    for shard in &mut shards {
        let _ = shard.client.child.kill().await;
    }
    for shard in &mut shards {
        let _ = shard.server.child.kill().await;
    }
    Ok(())
}

/// Starts a server shard and its client; reads their settled RSS before any socket.
async fn start_shard(args: &Args, prefix: &str, first: usize) -> anyhow::Result<Shard> {
    let mut server = Proc::spawn(
        &args.server_cpus,
        &[
            "serve-sockets".into(),
            "--redis-url".into(),
            args.redis_url.clone(),
            "--prefix".into(),
            prefix.into(),
        ],
    )
    .await?;
    let line = server.line(Duration::from_secs(60)).await?;
    let url = line
        .strip_prefix("url ")
        .ok_or_else(|| anyhow!("unexpected line from a shard: {line}"))?
        .to_owned();
    let client = Proc::spawn(
        &args.client_cpus,
        &[
            "sockets-client".into(),
            "--url".into(),
            url,
            "--first".into(),
            first.to_string(),
            "--concurrency".into(),
            args.concurrency.to_string(),
        ],
    )
    .await?;
    let (server_base_kib, client_base_kib) = tokio::try_join!(
        crate::memory::settled_rss(server.pid),
        crate::memory::settled_rss(client.pid)
    )?;
    let ticks = crate::publish_serve::clock_ticks()?;
    Ok(Shard {
        server_cpu_base: server.cpu_s(ticks),
        client_cpu_base: client.cpu_s(ticks),
        server,
        client,
        sockets: 0,
        server_base_kib,
        client_base_kib,
    })
}

/// Settles every RSS, then publishes one event and waits for every socket; prints one row.
async fn measure_step(
    args: &Args,
    shards: &mut [Shard],
    total: usize,
    k: u64,
    publisher: &Publisher,
    ticks: f64,
    (avail0, slab0, tcp_mem0): (u64, u64, u64),
) -> anyhow::Result<()> {
    let rss = futures::future::try_join_all(shards.iter().map(|s| async {
        tokio::try_join!(
            crate::memory::settled_rss(s.server.pid),
            crate::memory::settled_rss(s.client.pid)
        )
    }))
    .await?;
    let server_kib: u64 = rss.iter().map(|r| r.0).sum();
    let client_kib: u64 = rss.iter().map(|r| r.1).sum();
    let server_base: u64 = shards.iter().map(|s| s.server_base_kib).sum();
    let client_base: u64 = shards.iter().map(|s| s.client_base_kib).sum();
    let server_cpu: f64 = shards
        .iter()
        .map(|s| s.server.cpu_s(ticks) - s.server_cpu_base)
        .sum();
    let client_cpu: f64 = shards
        .iter()
        .map(|s| s.client.cpu_s(ticks) - s.client_cpu_base)
        .sum();
    let per = |kib: u64, base: u64| kib.saturating_sub(base) as f64 * 1024.0 / total as f64;
    let (avail, slab, tcp_mem) = (
        meminfo_kib("MemAvailable"),
        meminfo_kib("Slab"),
        sockstat("mem"),
    );
    println!(
        "step {k}: {total} sockets on {} shards; servers RSS {:.2} GiB (fixed {:.2} GiB), \
         clients {:.2} GiB (fixed {:.2} GiB); MemAvailable {:.2} GiB (was {:.2}); Slab {:.2} \
         GiB (was {:.2}); TCP mem {tcp_mem} pages (was {tcp_mem0}); TCP in use {}",
        shards.len(),
        gib(server_kib),
        gib(server_base),
        gib(client_kib),
        gib(client_base),
        gib(avail),
        gib(avail0),
        gib(slab),
        gib(slab0),
        sockstat("inuse"),
    );

    let server_cpu_now =
        |shards: &[Shard]| shards.iter().map(|s| s.server.cpu_s(ticks)).sum::<f64>();
    let cpu_before = server_cpu_now(shards);
    let pressures_before = memory_pressures();
    let d = deliver(shards, k, publisher, args.deliver_timeout_s).await?;
    let delivery_cpu = server_cpu_now(shards) - cpu_before;
    let pressures = memory_pressures().saturating_sub(pressures_before);
    println!(
        "| {total} | {} | {:.2} KiB | {:.0} MiB | {:.2} KiB | {:.1} µs | {:.1} µs | {:.2} KiB | \
         {:.2} KiB | {:.0} / {:.0} ms | {:.2} s | {} |",
        shards.len(),
        per(server_kib, server_base) / 1024.0,
        server_base as f64 / 1024.0,
        per(client_kib, client_base) / 1024.0,
        client_cpu * 1e6 / total as f64,
        server_cpu * 1e6 / total as f64,
        slab.saturating_sub(slab0) as f64 / total as f64,
        avail0.saturating_sub(avail) as f64 / total as f64,
        d.first_ms,
        d.last_ms,
        delivery_cpu,
        if d.received == total && d.wrong == 0 {
            "yes".to_owned()
        } else {
            format!(
                "NO: {} of {total} received, {} closed, {} unexpected",
                d.received, d.lost, d.wrong
            )
        },
    );
    if pressures > 0 {
        println!("TCP memory pressure entered {pressures} times during the delivery");
    }
    Ok(())
}

/// Publishes the benchmark's event on the shards' bus.
struct Publisher {
    bus: std::sync::Arc<dyn switchyard_core::bus::Bus>,
    topic: Topic,
    template: demo_api::ConversionEvent,
}

impl Publisher {
    async fn publish(&self, k: u64) -> anyhow::Result<()> {
        let mut event = self.template.clone();
        event.conversion.id = format!("moon-{k}");
        let payload = Bytes::from(serde_json::to_vec(&event)?);
        self.bus.publish(&self.topic, payload).await?;
        Ok(())
    }
}

/// One delivery to every socket.
struct Delivery {
    /// From the publish to the first and to the last socket's receipt.
    first_ms: f64,
    last_ms: f64,
    received: usize,
    lost: usize,
    wrong: usize,
}

/// Sends `command` to every client at once; their answers in shard order.
async fn ask_all(
    shards: &mut [Shard],
    command: &str,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    futures::future::try_join_all(shards.iter_mut().map(|s| s.client.ask(command, within))).await
}

/// Arms every client, publishes event `moon-k` once, and waits for every socket.
async fn deliver(
    shards: &mut [Shard],
    k: u64,
    publisher: &Publisher,
    timeout_s: u64,
) -> anyhow::Result<Delivery> {
    for answer in ask_all(shards, &format!("expect {k}"), Duration::from_secs(30)).await? {
        if answer != "armed" {
            bail!("a client answered {answer:?} to expect");
        }
    }
    let t0 = unix_ns();
    publisher.publish(k).await?;
    let answers = ask_all(
        shards,
        &format!("wait {timeout_s}"),
        Duration::from_secs(timeout_s + 30),
    )
    .await?;
    let mut d = Delivery {
        first_ms: f64::MAX,
        last_ms: 0.0,
        received: 0,
        lost: 0,
        wrong: 0,
    };
    for answer in answers {
        let numbers: Vec<u64> = answer
            .strip_prefix("got ")
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let [received, _sockets, lost, wrong, first, last] = numbers[..] else {
            bail!("a client answered {answer:?} to wait");
        };
        d.received += received as usize;
        d.lost += lost as usize;
        d.wrong += wrong as usize;
        if received > 0 {
            let ms = |ns: u64| ns.saturating_sub(t0) as f64 / 1e6;
            d.first_ms = d.first_ms.min(ms(first));
            d.last_ms = d.last_ms.max(ms(last));
        }
    }
    Ok(d)
}
