//! `files`: download throughput of a large statement through each gateway's streamed file route
//! (`/v1/files/statements.csv`, bff-web and bff-mobile) against the same download straight from
//! the statements service, in the same run, and the server's CPU per GiB moved.
//!
//! The server side runs in child processes of the bench (hidden subcommand `serve-files`). By
//! default the gateways (bff-web and bff-mobile, on an in-memory bus) are the server under test,
//! alone in a child pinned with `taskset -c <--server-cpus>`, and the statements service runs in
//! a second child pinned with `--service-cpus`, beside the bench's own client (run the bench on
//! those CPUs: `taskset -c 1 switchyard-bench files`): the backend and the client cost the same
//! whether the bytes go straight or through a gateway, and the gateway's cost is its own core's.
//! With `--service-cpus ""` (the first form), the launcher's whole stack — service and gateways —
//! shares one child on `--server-cpus`, so the gateway and the service divide one core. Each
//! round downloads the statement once per target, in turn (direct, bff-web, bff-mobile), so drift
//! on a shared machine spreads over all three; one unmeasured warm-up round first; medians of
//! `--runs` rounds. CPU is the child's user + system time from `/proc/<pid>/stat` across one
//! download, so a gateway's figure includes the service's own work (the direct figure), and the
//! difference is what passing through costs.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::publish_serve::{clock_ticks, own_cpus};
use crate::stats::median;

/// Bytes of one statement row, and of its header line (the service's fixed widths).
const ROW_BYTES: u64 = 83;
const HEADER_BYTES: u64 = 35;

/// Arguments of the files benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Size of each download, in MiB.
    #[arg(long, default_value_t = 2048)]
    mib: u64,
    /// Measured rounds (each downloads once per target).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The CPUs the gateways' child is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// The CPUs the statements service's own child is pinned to (run the bench on the same
    /// ones); empty: the service runs in the gateways' child instead (the launcher's stack).
    #[arg(long, default_value = "1")]
    service_cpus: String,
}

/// What a server child runs; it prints its URLs and serves until its standard input closes.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// `stack` (the launcher's stack: `ready <statements> <bff-web> <bff-mobile>`), `service`
    /// (the statements service alone: `ready <statements>`) or `gateways` (bff-web and bff-mobile
    /// on an in-memory bus, their statements backend at `--statements`: `ready <statements>
    /// <bff-web> <bff-mobile>`).
    #[arg(long, default_value = "stack")]
    role: String,
    /// The statements service's base URL (`--role gateways`).
    #[arg(long, default_value = "")]
    statements: String,
}

/// The launcher's configuration for the file benchmark: no limits in the way, a statement as
/// long as asked.
fn bench_config() -> switchyard::Config {
    let mut config = switchyard::Config::ephemeral();
    crate::serve::unlimited(&mut config);
    crate::serve::lift_connection_caps(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    config.statements.max_rows = u64::MAX / ROW_BYTES;
    config
}

/// Prints the child's `ready` line.
fn ready(urls: &[&str]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", urls.join(" "))?;
    out.flush()?;
    Ok(())
}

/// Runs one side of `files` (see [`ServeArgs`]).
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    match args.role.as_str() {
        "stack" => serve_stack().await,
        "service" => serve_service().await,
        "gateways" => serve_gateways(&args.statements).await,
        other => bail!("--role {other}: expected stack, service or gateways"),
    }
}

/// The statements service alone.
async fn serve_service() -> anyhow::Result<()> {
    let config = bench_config();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = switchyard_server::server::CancellationToken::new();
    let service = tokio::spawn(demo_services::statements::run(
        config.statements,
        listener,
        stop.clone(),
    ));
    ready(&[&url])?;
    crate::serve::until_stdin_closes().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .map_err(|_| anyhow!("the service did not stop within 10 s"))???;
    Ok(())
}

/// bff-web and bff-mobile alone, on an in-memory bus, their statements backend at `statements`.
async fn serve_gateways(statements: &str) -> anyhow::Result<()> {
    if statements.is_empty() {
        bail!("--role gateways needs --statements <url>");
    }
    let switchyard::Config {
        bus,
        mut web,
        mut mobile,
        ..
    } = bench_config();
    for backends in [&mut web.backends, &mut mobile.backends] {
        backends
            .entry("statements".to_owned())
            .or_insert_with(|| switchyard_core::upstream::BackendConfig::new(""))
            .base_url = statements.to_owned();
    }
    let broker = switchyard_core::bus::Broker::connect(&bus);
    let stop = switchyard_server::server::CancellationToken::new();
    let web_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mobile_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let web_url = format!("http://{}", web_listener.local_addr()?);
    let mobile_url = format!("http://{}", mobile_listener.local_addr()?);
    let web_task = tokio::spawn(bff_web::run(
        web,
        broker.clone(),
        web_listener,
        stop.clone(),
    ));
    let mobile_task = tokio::spawn(bff_mobile::run(
        mobile,
        broker,
        mobile_listener,
        stop.clone(),
    ));
    ready(&[statements, &web_url, &mobile_url])?;
    crate::serve::until_stdin_closes().await;
    stop.cancel();
    for task in [web_task, mobile_task] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .map_err(|_| anyhow!("a gateway did not stop within 10 s"))???;
    }
    Ok(())
}

/// The launcher's whole stack.
async fn serve_stack() -> anyhow::Result<()> {
    let stack = switchyard::Stack::start(bench_config()).await?;
    ready(&[
        &stack.url("statements"),
        &stack.url("bff-web"),
        &stack.url("bff-mobile"),
    ])?;
    crate::serve::until_stdin_closes().await;
    tokio::time::timeout(Duration::from_secs(10), stack.stop())
        .await
        .map_err(|_| anyhow!("the stack did not stop within 10 s"))??;
    Ok(())
}

/// Milliseconds the threads of process `pid` have spent runnable but waiting for a CPU (the
/// second field of `/proc/<pid>/task/*/schedstat`), summed over its live threads: the time
/// other processes on its CPUs took from it.
fn run_queue_wait_ms(pid: u32) -> anyhow::Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| anyhow!("reading /proc/{pid}/task: {e}"))?;
    let mut ns = 0u64;
    for task in tasks {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(&path) {
            ns += stat
                .split_whitespace()
                .nth(1)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e6)
}

/// One download's figures.
#[derive(Clone, Copy)]
struct Run {
    mib_per_s: f64,
    /// The gateways' child (the whole stack's, in the one-child form).
    cpu_s_per_gib: f64,
    /// The statements service's own child (0 in the one-child form).
    service_cpu_s_per_gib: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.mib == 0 || args.runs == 0 {
        bail!("--mib and --runs must be at least 1");
    }
    let ticks = clock_ticks()?;
    // The service's own child first (when it has one), then the gateways wired to it.
    let mut service = None;
    let (mut child, pid, urls) = if args.service_cpus.is_empty() {
        spawn(&args.server_cpus, &["--role", "stack"]).await?
    } else {
        let (c, service_pid, urls) = spawn(&args.service_cpus, &["--role", "service"]).await?;
        let statements = urls[0].clone();
        service = Some((c, service_pid));
        spawn(
            &args.server_cpus,
            &["--role", "gateways", "--statements", &statements],
        )
        .await?
    };
    let [statements, web, mobile] = [urls[0].clone(), urls[1].clone(), urls[2].clone()];
    let token = switchyard_core::auth::hs256_token(
        switchyard::DEMO_SECRET,
        "bench",
        Duration::from_secs(24 * 3600),
    );
    let rows = (args.mib * 1024 * 1024).saturating_sub(HEADER_BYTES) / ROW_BYTES;
    let bytes = HEADER_BYTES + rows * ROW_BYTES;
    let targets = [
        (
            "direct",
            format!("{statements}/v1/statements/bench?rows={rows}"),
        ),
        (
            "bff-web",
            format!("{web}/v1/files/statements.csv?rows={rows}"),
        ),
        (
            "bff-mobile",
            format!("{mobile}/v1/files/statements.csv?rows={rows}"),
        ),
    ];
    let client = reqwest::Client::builder().no_proxy().build()?;
    let pinned = |cpus: &str| {
        if cpus.is_empty() {
            "(not pinned)".to_owned()
        } else {
            cpus.to_owned()
        }
    };
    println!(
        "files: {} MiB statement ({bytes} bytes) per download, {} rounds; gateways on CPUs {}, \
         statements service {}, bench on CPUs {}",
        args.mib,
        args.runs,
        pinned(&args.server_cpus),
        if args.service_cpus.is_empty() {
            "in the gateways' child (the launcher's stack)".to_owned()
        } else {
            format!("in its own child on CPUs {}", args.service_cpus)
        },
        own_cpus()
    );
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..=args.runs {
        for (i, (name, url)) in targets.iter().enumerate() {
            let service_pid = service.as_ref().map(|(_, p)| *p);
            let service_ticks = || service_pid.map_or(Ok(0.0), crate::stats::cpu_ticks);
            let cpu_before = crate::stats::cpu_ticks(pid)?;
            let service_before = service_ticks()?;
            let waits = || -> anyhow::Result<[f64; 3]> {
                Ok([
                    run_queue_wait_ms(pid)?,
                    service_pid.map_or(Ok(0.0), run_queue_wait_ms)?,
                    run_queue_wait_ms(std::process::id())?,
                ])
            };
            let waits_before = waits()?;
            let started = Instant::now();
            let got = download(&client, url, &token).await.context(*name)?;
            let took = started.elapsed().as_secs_f64();
            let cpu = (crate::stats::cpu_ticks(pid)? - cpu_before) / ticks;
            let service_cpu = (service_ticks()? - service_before) / ticks;
            let waits_after = waits()?;
            let waited: Vec<f64> = waits_after
                .iter()
                .zip(waits_before)
                .map(|(a, b)| a - b)
                .collect();
            if got != bytes {
                bail!("{name}: got {got} bytes, expected {bytes}");
            }
            let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
            let run = Run {
                mib_per_s: bytes as f64 / (1024.0 * 1024.0) / took,
                cpu_s_per_gib: cpu / gib,
                service_cpu_s_per_gib: service_cpu / gib,
            };
            if round == 0 {
                continue;
            }
            println!(
                "  round {round} {name:>10}: {:>8.1} MiB/s, gateways' child CPU {:.2} s/GiB, \
                 service's child {:.2} s/GiB; waited for a CPU (run queue): gateways {:.0} ms, \
                 service {:.0} ms, bench {:.0} ms of {:.0} ms",
                run.mib_per_s,
                run.cpu_s_per_gib,
                run.service_cpu_s_per_gib,
                waited[0],
                waited[1],
                waited[2],
                took * 1000.0
            );
            results[i].push(run);
        }
    }
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    if let Some((mut service, _)) = service {
        drop(service.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), service.wait())
            .await
            .is_err()
        {
            let _ = service.kill().await;
        }
    }
    let medians: Vec<(f64, f64, f64)> = results
        .iter()
        .map(|runs| {
            (
                median(runs.iter().map(|r| r.mib_per_s).collect()),
                median(runs.iter().map(|r| r.cpu_s_per_gib).collect()),
                median(runs.iter().map(|r| r.service_cpu_s_per_gib).collect()),
            )
        })
        .collect();
    let (direct, _, _) = medians[0];
    println!("medians of {} rounds:", args.runs);
    for ((name, _), (mib_per_s, cpu, service_cpu)) in targets.iter().zip(&medians) {
        println!(
            "  {name:>10}: {mib_per_s:>8.1} MiB/s ({:.2}× direct), gateways' child CPU \
             {cpu:.2} s/GiB, service's child {service_cpu:.2} s/GiB",
            mib_per_s / direct
        );
    }
    Ok(())
}

/// Downloads `url` to its end without keeping it; returns its length.
async fn download(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<u64> {
    let mut response = client.get(url).bearer_auth(token).send().await?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let mut total = 0u64;
    while let Some(chunk) = response.chunk().await? {
        total += chunk.len() as u64;
    }
    Ok(total)
}

/// Spawns `serve-files` with `args` (under `taskset -c cpus` unless `cpus` is empty) and reads
/// the URLs of its `ready` line.
async fn spawn(cpus: &str, args: &[&str]) -> anyhow::Result<(Child, u32, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let mut command = if cpus.is_empty() {
        Command::new(exe)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", cpus]).arg(exe);
        c
    };
    let mut child = command
        .arg("serve-files")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning the server (serve-files)")?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the server exited at once"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .map_err(|_| anyhow!("the server was not ready within 60 s"))??
    .ok_or_else(|| anyhow!("the server exited before it was ready"))?;
    let mut words = line.split_whitespace();
    if words.next() != Some("ready") {
        bail!("unexpected line from the server: {line}");
    }
    let urls: Vec<String> = words.map(str::to_owned).collect();
    let expected = if args.contains(&"service") { 1 } else { 3 };
    if urls.len() != expected {
        bail!("unexpected line from the server: {line}");
    }
    Ok((child, pid, urls))
}
