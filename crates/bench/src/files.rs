//! `files`: download throughput of a large statement through each gateway's streamed file route
//! (`/v1/files/statements.csv`, bff-web and bff-mobile) against the same download straight from
//! the statements service, in the same run, and the server's CPU per GiB moved.
//!
//! The server side (hidden subcommand `serve-files`) is the launcher's stack in a child process
//! pinned with `taskset -c <--server-cpus>` (the statements service and every gateway share those
//! CPUs, so the direct download and the gateway's cost the same CPU budget); the bench reads the
//! bodies in this process, run it on other CPUs (`taskset -c 1 switchyard-bench files`). Each
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
    /// The CPUs the server child is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    server_cpus: String,
}

/// What the server child runs (`serve-files` has no options: it prints its URLs and serves
/// until its standard input closes).
#[derive(clap::Args)]
pub(crate) struct ServeArgs {}

/// Runs the stack for `files`: prints `ready <statements> <bff-web> <bff-mobile>` base URLs.
pub(crate) async fn serve(_: ServeArgs) -> anyhow::Result<()> {
    let mut config = switchyard::Config::ephemeral();
    crate::serve::unlimited(&mut config);
    crate::serve::lift_connection_caps(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    config.statements.max_rows = u64::MAX / ROW_BYTES;
    let stack = switchyard::Stack::start(config).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready {} {} {}",
            stack.url("statements"),
            stack.url("bff-web"),
            stack.url("bff-mobile")
        )?;
        out.flush()?;
    }
    crate::serve::until_stdin_closes().await;
    tokio::time::timeout(Duration::from_secs(10), stack.stop())
        .await
        .map_err(|_| anyhow!("the stack did not stop within 10 s"))??;
    Ok(())
}

/// One download's figures.
#[derive(Clone, Copy)]
struct Run {
    mib_per_s: f64,
    cpu_s_per_gib: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.mib == 0 || args.runs == 0 {
        bail!("--mib and --runs must be at least 1");
    }
    let ticks = clock_ticks()?;
    let (mut child, pid, urls) = spawn(&args.server_cpus).await?;
    let [statements, web, mobile] = urls;
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
    println!(
        "files: {} MiB statement ({bytes} bytes) per download, {} rounds; server on CPUs {}, \
         bench on CPUs {}",
        args.mib,
        args.runs,
        if args.server_cpus.is_empty() {
            "(not pinned)"
        } else {
            &args.server_cpus
        },
        own_cpus()
    );
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..=args.runs {
        for (i, (name, url)) in targets.iter().enumerate() {
            let cpu_before = crate::stats::cpu_ticks(pid)?;
            let started = Instant::now();
            let got = download(&client, url, &token).await.context(*name)?;
            let took = started.elapsed().as_secs_f64();
            let cpu = (crate::stats::cpu_ticks(pid)? - cpu_before) / ticks;
            if got != bytes {
                bail!("{name}: got {got} bytes, expected {bytes}");
            }
            let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
            let run = Run {
                mib_per_s: bytes as f64 / (1024.0 * 1024.0) / took,
                cpu_s_per_gib: cpu / gib,
            };
            if round == 0 {
                continue;
            }
            println!(
                "  round {round} {name:>10}: {:>8.1} MiB/s, server CPU {:.2} s/GiB",
                run.mib_per_s, run.cpu_s_per_gib
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
    let medians: Vec<(f64, f64)> = results
        .iter()
        .map(|runs| {
            (
                median(runs.iter().map(|r| r.mib_per_s).collect()),
                median(runs.iter().map(|r| r.cpu_s_per_gib).collect()),
            )
        })
        .collect();
    let (direct, _) = medians[0];
    println!("medians of {} rounds:", args.runs);
    for ((name, _), (mib_per_s, cpu)) in targets.iter().zip(&medians) {
        println!(
            "  {name:>10}: {mib_per_s:>8.1} MiB/s ({:.2}× direct), server CPU {cpu:.2} s/GiB",
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

/// Spawns `serve-files` (under `taskset -c cpus` unless `cpus` is empty) and reads its URLs.
async fn spawn(cpus: &str) -> anyhow::Result<(Child, u32, [String; 3])> {
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
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["ready", statements, web, mobile] = words[..] else {
        bail!("unexpected line from the server: {line}");
    };
    Ok((
        child,
        pid,
        [statements.to_owned(), web.to_owned(), mobile.to_owned()],
    ))
}
