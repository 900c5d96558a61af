//! The server side of the pinned fan-out benchmarks (hidden subcommand `serve-fanout`), run in a
//! child process of the bench binary that the parent pins to its own core (`taskset`), so that
//! the child's CPU time (utime + stime from `/proc/<pid>/stat`) is the servers' and nothing
//! else's: the clients run in the parent, on the other core.
//!
//! The child runs the three servers of one protocol side by side: the baseline broadcast server
//! with tungstenite's default buffers, the baseline with a 4 KiB read buffer, and the launcher's
//! stack (the gateway of the protocol, on the in-memory bus or on Redis). Only the server being
//! measured has sockets with traffic, so the CPU time the child spends during a run is that
//! server's.
//!
//! The child prints one line once it serves, `ready <url> <url> <url>` (the servers in the order
//! of [`crate::fanout::SERVER_NAMES`]), then reads commands from its standard input, one per
//! line, and never answers (so that no write competes with the fan-out being measured):
//!
//! - `pub <server> <id>`: publishes the event whose conversion id is `id` on server number
//!   `server` (for the gateway: on the bus, as the conversions service would).
//!
//! On Redis the gateway's events are not published by the child but by the parent
//! ([`BusPublisher`]): a backend publishes from a process of its own, and a publisher inside the
//! child would run each publish's round trip to Redis on the gateway's one busy worker, a turn
//! behind every socket task, so events would reach the hub one per turn of the runtime — a
//! measure of that queue, not of the broker hop.
//!
//! A command it cannot run ends the child with an error on standard error: the parent then sees
//! its stdout close and fails the run. It stops when its standard input closes.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use switchyard_core::bus::{BusConfig, BusKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Mutex;

use crate::client::Protocol;
use crate::fanout::{self, Server};

/// The bus under the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BusChoice {
    /// The in-process bus (one instance).
    Memory,
    /// Redis Streams (the machine's Redis, a fresh prefix per run).
    Redis,
}

/// Arguments of `serve-fanout`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The protocol the servers speak.
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// The gateway's bus.
    #[arg(long, value_enum, default_value = "memory")]
    bus: BusChoice,
    /// Redis URL (with `--bus redis`).
    #[arg(long, default_value = DEFAULT_REDIS_URL)]
    redis_url: String,
}

/// Events the bench's Redis publisher may hold unpublished: far above a run's window (the
/// client must stay below bff-web's send queue), so reaching it means the publisher is stuck.
const PUBLISH_QUEUE: usize = 4_096;

/// The machine's Redis, where `--bus redis` runs.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The bus section of the stack for `choice`.
fn bus_config(choice: BusChoice, redis_url: &str) -> BusConfig {
    match choice {
        BusChoice::Memory => BusConfig::default(),
        BusChoice::Redis => BusConfig {
            kind: BusKind::Redis,
            url: redis_url.to_owned(),
            prefix: format!("fanout-bench-{}", std::process::id()),
            ..BusConfig::default()
        },
    }
}

/// Runs the servers and publishes on command until standard input closes.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let bus = bus_config(args.bus, &args.redis_url);
    let (stack, servers) = fanout::start_servers(args.protocol, bus).await?;
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready {}", urls.join(" "));
        let _ = out.flush();
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let (Some("pub"), Some(index), Some(id), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            bail!("unknown command: {line}");
        };
        let server = index
            .parse::<usize>()
            .ok()
            .and_then(|i| servers.get(i))
            .ok_or_else(|| anyhow!("no server {index}"))?;
        server.publish(id.to_owned()).await?;
    }
    drop(servers);
    tokio::time::timeout(Duration::from_secs(10), stack.stop())
        .await
        .map_err(|_| anyhow!("the stack did not stop within 10 s"))??;
    Ok(())
}

/// The parent's handle on the `serve-fanout` child.
pub(crate) struct Remote {
    child: Mutex<Child>,
    /// `None` once stopping: dropping the pipe's writer is what the child reads as the end.
    stdin: Mutex<Option<ChildStdin>>,
    pid: u32,
    /// The servers' URLs, in the order of [`crate::fanout::SERVER_NAMES`].
    pub(crate) urls: Vec<String>,
    ticks_per_s: f64,
    /// With `--bus redis`: publishes the gateway's events from this process.
    publisher: Option<BusPublisher>,
}

/// Publishes the gateway's events on the child's Redis bus (the same URL and prefix) from a
/// thread of the bench's own, with its own runtime and connection, in the order they are
/// handed over: as a backend would, outside the gateway's process.
struct BusPublisher {
    tx: tokio::sync::mpsc::Sender<String>,
    /// Why the publisher stopped, if it did.
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl BusPublisher {
    fn start(redis_url: &str, prefix: String) -> anyhow::Result<Self> {
        let user = demo_api::UserId::parse(crate::client::USER).map_err(|e| anyhow!("{e}"))?;
        let topic = switchyard_core::event::Topic::new(&demo_api::conversions_topic(&user))?;
        let template = fanout::template(user)?;
        let config = BusConfig {
            kind: BusKind::Redis,
            url: redis_url.to_owned(),
            prefix,
            ..BusConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Bounded: a run has at most its window of events in flight (and a probe at a time),
        // so a full queue means the publisher is stuck, and the run fails rather than queue on.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(PUBLISH_QUEUE);
        let failed = Arc::new(std::sync::Mutex::new(None));
        let fail = failed.clone();
        std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                let outcome: anyhow::Result<()> = runtime.block_on(async move {
                    let broker = switchyard_core::bus::Broker::connect(&config);
                    let bus = broker.bus();
                    // The connection opens in the background: wait for it (bounded).
                    let ready = async {
                        while bus.check().await.is_err() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::time::timeout(Duration::from_secs(10), ready)
                        .await
                        .map_err(|_| anyhow!("Redis did not answer within 10 s"))?;
                    while let Some(id) = rx.recv().await {
                        let mut event = template.clone();
                        event.conversion.id = id;
                        let payload = bytes::Bytes::from(serde_json::to_vec(&event)?);
                        bus.publish(&topic, payload).await?;
                    }
                    Ok(())
                });
                if let Err(e) = outcome {
                    eprintln!("error: the bench's Redis publisher stopped: {e:#}");
                    *fail.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
                }
            })?;
        Ok(Self { tx, failed })
    }

    fn publish(&self, id: &str) -> anyhow::Result<()> {
        if let Some(why) = &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            bail!("the bench's Redis publisher stopped: {why}");
        }
        self.tx.try_send(id.to_owned()).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                anyhow!("the bench's Redis publisher is {PUBLISH_QUEUE} events behind")
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                anyhow!("the bench's Redis publisher is gone")
            }
        })
    }
}

impl Remote {
    /// Spawns `serve-fanout` under `taskset -c cpus` and reads its `ready` line.
    pub(crate) async fn spawn(
        cpus: &str,
        protocol: Protocol,
        bus: BusChoice,
    ) -> anyhow::Result<Arc<Self>> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new("taskset");
        command.args(["-c", cpus]).arg(exe).arg("serve-fanout");
        command.args(["--protocol", protocol.flag()]);
        command.args([
            "--bus",
            match bus {
                BusChoice::Memory => "memory",
                BusChoice::Redis => "redis",
            },
        ]);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the server (serve-fanout under taskset)")?;
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
        let urls: Vec<String> = match line.strip_prefix("ready ") {
            Some(rest) => rest.split_whitespace().map(str::to_owned).collect(),
            None => bail!("unexpected line from the server: {line}"),
        };
        if urls.len() != fanout::SERVER_NAMES.len() {
            bail!("unexpected line from the server: {line}");
        }
        let publisher = match bus {
            BusChoice::Memory => None,
            // The child's bus: its prefix is named after its pid (`bus_config`).
            BusChoice::Redis => Some(BusPublisher::start(
                DEFAULT_REDIS_URL,
                format!("fanout-bench-{pid}"),
            )?),
        };
        Ok(Arc::new(Self {
            child: Mutex::new(child),
            stdin: Mutex::new(Some(stdin)),
            pid,
            urls,
            ticks_per_s: crate::publish_serve::clock_ticks()?,
            publisher,
        }))
    }

    /// Asks the child to publish event `id` on server `index` (the gateway's events on Redis
    /// are published from here: [`BusPublisher`]).
    pub(crate) async fn publish(&self, index: usize, id: &str) -> anyhow::Result<()> {
        if let Some(publisher) = &self.publisher
            && fanout::SERVER_NAMES.get(index) == Some(&"gateway")
        {
            return publisher.publish(id);
        }
        let mut stdin = self.stdin.lock().await;
        let stdin = stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the server child is stopping"))?;
        stdin
            .write_all(format!("pub {index} {id}\n").as_bytes())
            .await
            .context("the server child is gone")?;
        stdin.flush().await?;
        Ok(())
    }

    /// The child's CPU time so far (user + system), in seconds.
    pub(crate) fn cpu_s(&self) -> anyhow::Result<f64> {
        Ok(crate::stats::cpu_ticks(self.pid)? / self.ticks_per_s)
    }

    /// The child's resident memory, in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        crate::memory::rss_kib(self.pid).ok()
    }

    /// Closes the child's standard input (it stops) and waits for it, killing it after 10 s.
    pub(crate) async fn stop(&self) {
        // Dropping the pipe's writer: the child reads end of file.
        drop(self.stdin.lock().await.take());
        let mut child = self.child.lock().await;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            eprintln!("warning: the server did not exit within 10 s; killing it");
            let _ = child.kill().await;
        }
    }
}
