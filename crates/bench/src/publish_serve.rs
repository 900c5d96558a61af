//! The server side of the `publish` benchmark (hidden subcommand `serve-publish`), run in a child
//! process of the bench binary (pinned to its own core by the parent): the launcher's stack on the
//! in-memory bus with the channel catalog and the publish API, and the *in-process* publisher the
//! HTTP API is compared with.
//!
//! The child prints one line once it serves, `ready <bff-mobile ws URL> <publish API URL>`, then
//! reads commands from its standard input, one per line, and answers each on standard output
//! with `ok <result>` or `err <why>`:
//!
//! - `one <run> <k>`: publishes event `k` of run `run` on `announcements` at once, stamped just
//!   before its publish: the in-process half of an interleaved latency run; answers `ok` once the
//!   bus has it.
//! - `fire <run> <k>`: as `one`, with no answer (the `sources` benchmark's: no write on the
//!   server's core while the event fans out).
//! - `flood <run> <events>`: publishes events `0..events` of run `run` on `announcements` one
//!   after the other, as fast as the bus takes them (yielding after each); answers `ok` once all
//!   are published (the `metrics-cost` benchmark's fan-out runs).
//! - `burst <run> <publishers> <millis>`: `publishers` tasks publish on [`LOAD_CHANNEL`] (which
//!   nobody subscribes to) as fast as they can for `millis` ms, each yielding to the runtime after
//!   every publish as a request handler would; answers `ok <publishes>`.
//!
//! It stops when its standard input closes, so it never outlives the bench. [`Server`] is the
//! bench's end: it spawns the child, sends the commands and reads the child's CPU time.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use switchyard_core::bus::Bus;
use switchyard_core::channels::{Catalog, ChannelConfig, ChannelsConfig, SubscribeRule};
use switchyard_core::event::{Topic, TopicClass};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::Protocol;

/// The channel the subscribers follow and the latency phases publish on (the demo catalog's
/// public stream).
pub(crate) const CHANNEL: &str = "announcements";

/// The channel the throughput phases publish on: in the catalog, with no subscriber, so that a
/// burst measures publishing, not the fan-out to 1,000 sockets (which is the same for both modes).
pub(crate) const LOAD_CHANNEL: &str = "bench.load";

/// The publisher every channel the benchmark uses allows (the launcher's demo publisher key's).
const PUBLISHER: &str = "demo";

/// Arguments of `serve-publish` (the commands come over standard input).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Upstream sources to add to the stack, as JSON (`{"name": <[sources.NAME] table>}`), each
    /// feeding a channel of the catalog entry `src.{kind}` (public stream) that this adds: the
    /// `sources` benchmark's.
    #[arg(long)]
    sources: Option<String>,
    /// `/metrics` listeners of bff-web, bff-mobile and bff-device (`[metrics] listen`, comma
    /// separated, in that order): the `metrics-cost` benchmark's "metrics on" server. None by
    /// default (the launcher's ephemeral stack serves no metrics).
    #[arg(long, value_delimiter = ',')]
    metrics_listen: Vec<String>,
}

/// The catalog entry the `sources` benchmark's sources feed.
pub(crate) const SOURCES_PATTERN: &str = "src.{kind}";

/// Microseconds since the Unix epoch: the publish time an event carries. The bench and this child
/// read the same system clock, so the subscribers in the bench process can subtract it.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The JSON of an event of run `run`, number `k`, published at `us` (µs since the epoch): the
/// bus payload of both modes (the API stores `data`'s compact JSON, which is this).
pub(crate) fn payload(run: u64, k: u64, us: u64) -> String {
    format!(r#"{{"r":{run},"k":{k},"us":{us}}}"#)
}

/// The stack's catalog: the configured one (the demo catalog), with `announcements` added if it
/// lacks it, and [`LOAD_CHANNEL`].
fn catalog(mut channels: ChannelsConfig) -> ChannelsConfig {
    let entry = |pattern: &str| ChannelConfig {
        pattern: pattern.to_owned(),
        class: TopicClass::Stream,
        history_events: 1_000,
        max_payload_bytes: 64 * 1024,
        subscribe: SubscribeRule::Public,
        publishers: vec![PUBLISHER.to_owned()],
        idle_expiry_ms: None,
    };
    if !channels.catalog.iter().any(|e| e.pattern == CHANNEL) {
        channels.catalog.push(entry(CHANNEL));
    }
    channels.catalog.push(entry(LOAD_CHANNEL));
    channels
}

/// Runs the stack and answers the bench's commands until standard input closes.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = switchyard::Config::ephemeral();
    crate::serve::unlimited(&mut config);
    crate::serve::lift_connection_caps(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    // Idle subscribers send nothing: no heartbeat pings in the middle of a measurement.
    config.mobile.websocket.heartbeat_ms = 3_600_000;
    config.channels = catalog(config.channels);
    for (gateway, listen) in [
        &mut config.web.metrics.listen,
        &mut config.mobile.metrics.listen,
        &mut config.device.metrics.listen,
    ]
    .into_iter()
    .zip(&args.metrics_listen)
    {
        gateway.clone_from(listen);
    }
    if let Some(sources) = &args.sources {
        config.sources = serde_json::from_str(sources).context("--sources")?;
        config.channels.catalog.push(ChannelConfig {
            pattern: SOURCES_PATTERN.to_owned(),
            class: TopicClass::Stream,
            history_events: 1_000,
            max_payload_bytes: 64 * 1024,
            subscribe: SubscribeRule::Public,
            publishers: Vec::new(),
            idle_expiry_ms: None,
        });
    }
    let catalog = Catalog::new(&config.channels)?;
    let topic = |name: &str| {
        catalog
            .resolve(name)
            .map(|r| r.topic())
            .with_context(|| format!("channel {name}"))
    };
    let (channel, load) = (topic(CHANNEL)?, topic(LOAD_CHANNEL)?);
    let stack = switchyard::Stack::start(config).await?;
    let mobile = crate::fanout::gateway_url(&stack, Protocol::Mobile);
    let publish = stack
        .publish_addr()
        .ok_or_else(|| anyhow!("the stack serves no publish API (publish.listen is empty)"))?;
    let publish = format!("http://{publish}/v1/publish");
    reply(&format!("ready {mobile} {publish}"));

    let bus = stack.bus().clone();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        // `fire`: `one` without an answer, so that writing it does not compete with the fan-out
        // being measured (a failure still answers, and the bench reads it as a protocol error).
        if let Some(rest) = line.strip_prefix("fire ") {
            if let Err(e) = command(&bus, &channel, &load, &format!("one {rest}")).await {
                reply(&format!("err {e:#}"));
            }
            continue;
        }
        let answer = match command(&bus, &channel, &load, &line).await {
            Ok(result) => format!("ok {result}"),
            Err(e) => format!("err {e:#}"),
        };
        reply(answer.trim_end());
    }
    tokio::time::timeout(Duration::from_secs(10), stack.stop())
        .await
        .map_err(|_| anyhow!("the stack did not stop within 10 s"))??;
    Ok(())
}

/// Writes one line to the bench.
fn reply(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // The parent reads this line; if stdout is gone there is nobody to answer.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs one command line; the result is the rest of the `ok` line.
async fn command(
    bus: &std::sync::Arc<dyn Bus>,
    channel: &Topic,
    load: &Topic,
    line: &str,
) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| -> anyhow::Result<u64> {
        let word = words
            .get(i)
            .ok_or_else(|| anyhow!("missing argument {i}"))?;
        word.parse()
            .with_context(|| format!("argument {i}: {word}"))
    };
    match words.first().copied() {
        Some("one") => {
            let (run, k) = (number(1)?, number(2)?);
            let data = payload(run, k, now_us());
            bus.publish(channel, Bytes::from(data)).await?;
            Ok(String::new())
        }
        Some("flood") => {
            let (run, events) = (number(1)?, number(2)?);
            for k in 0..events {
                let data = payload(run, k, now_us());
                bus.publish(channel, Bytes::from(data)).await?;
                tokio::task::yield_now().await;
            }
            Ok(String::new())
        }
        Some("burst") => {
            let (run, publishers, millis) = (number(1)?, number(2)?, number(3)?);
            let n = burst(bus, load, run, publishers.max(1), millis).await?;
            Ok(n.to_string())
        }
        _ => bail!("unknown command: {line}"),
    }
}

/// `publishers` tasks publish as fast as they can until `millis` ms have passed; returns how
/// many publishes they made.
async fn burst(
    bus: &std::sync::Arc<dyn Bus>,
    topic: &Topic,
    run: u64,
    publishers: u64,
    millis: u64,
) -> anyhow::Result<u64> {
    let end = tokio::time::Instant::now() + Duration::from_millis(millis);
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (bus, topic) = (bus.clone(), topic.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while tokio::time::Instant::now() < end {
                    let data = payload(run, (p << 32) | n, now_us());
                    bus.publish(&topic, Bytes::from(data)).await?;
                    n += 1;
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.context("a publisher task panicked")??;
    }
    Ok(total)
}

/// The bench's handle on the server child and its command channel.
pub(crate) struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    pub(crate) pid: u32,
    pub(crate) mobile_url: String,
    pub(crate) publish_url: String,
}

impl Server {
    /// Spawns `serve-publish` (under `taskset -c cpus` unless `cpus` is empty) and reads its
    /// `ready` line.
    pub(crate) async fn spawn(cpus: &str) -> anyhow::Result<Self> {
        Self::spawn_with(cpus, None).await
    }

    /// [`Server::spawn`], with `--sources` (JSON) when given.
    pub(crate) async fn spawn_with(cpus: &str, sources: Option<&str>) -> anyhow::Result<Self> {
        Self::spawn_args(cpus, sources, &[]).await
    }

    /// [`Server::spawn_with`], its gateways serving `/metrics` on `metrics` (web, mobile,
    /// device) when given.
    pub(crate) async fn spawn_args(
        cpus: &str,
        sources: Option<&str>,
        metrics: &[String],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = if cpus.is_empty() {
            Command::new(exe)
        } else {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(exe);
            c
        };
        command.arg("serve-publish");
        if let Some(sources) = sources {
            command.args(["--sources", sources]);
        }
        if !metrics.is_empty() {
            command.arg("--metrics-listen").arg(metrics.join(","));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the server (serve-publish)")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the server exited at once"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| anyhow!("the server was not ready within 60 s"))??
            .ok_or_else(|| anyhow!("the server exited before it was ready"))?;
        let mut words = line.split_whitespace();
        let (Some("ready"), Some(mobile), Some(publish), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            bail!("unexpected line from the server: {line}");
        };
        Ok(Self {
            pid,
            mobile_url: mobile.to_owned(),
            publish_url: publish.to_owned(),
            child,
            stdin,
            lines,
        })
    }

    /// Sends a command that has no answer (`fire`).
    pub(crate) async fn fire(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Sends one command and returns the rest of its `ok` line.
    pub(crate) async fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(Duration::from_secs(600), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("no answer to `{line}` within 600 s"))??
            .ok_or_else(|| anyhow!("the server exited during `{line}`"))?;
        if let Some(err) = answer.strip_prefix("err ") {
            bail!("the server failed `{line}`: {err}");
        }
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("unexpected answer to `{line}`: {answer}"),
        }
    }

    /// The server's CPU time so far (user + system), in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> anyhow::Result<f64> {
        crate::stats::cpu_ticks(self.pid)
    }

    /// Closes the child's standard input (it stops) and waits for it, killing it after 10 s.
    pub(crate) async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("warning: the server did not exit within 10 s; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of `/proc/<pid>/stat`.
pub(crate) fn clock_ticks() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running `getconf CLK_TCK`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|t| *t > 0.0)
        .ok_or_else(|| anyhow!("`getconf CLK_TCK` printed {text:?}"))
}

/// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status).
pub(crate) fn own_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}
