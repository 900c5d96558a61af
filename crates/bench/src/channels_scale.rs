//! `channels-scale`: per-user channels at scale — N distinct channels of one catalog pattern
//! (`conversions.{user}`, default 1,000,000) on Redis and on NATS, each broker a PRIVATE server
//! started by the bench on spare ports (so its memory is only ours), pinned with `taskset` to
//! `--broker-cpus`; the bench process (the bus client, as a gateway would be) runs wherever it
//! was started (`taskset -c 1 …`).
//!
//! For each layout — Redis, NATS with the pattern's channels in one stream, and NATS with the
//! old stream per topic at `--old-layout-channels` (default 10,000: what it can handle) — it
//! measures:
//! - publish: one event on each channel, `--concurrency` publishes in flight; wall time per
//!   publish (of the whole phase), client and broker CPU µs per publish (utime+stime from
//!   /proc over the phase);
//! - broker memory per channel: Redis `INFO memory` used_memory; NATS `/varz` mem (the server's
//!   RSS) and `/jsz` store bytes, before and after;
//! - subscribe: `--subscriptions` hub subscriptions (one per channel, through the bus, as a
//!   gateway's clients make them), CPU per subscribe (client and broker), client RSS and broker
//!   memory per live subscription; one delivery checked on a sample;
//! - expiry: the subscriptions dropped, the catalog's `idle_expiry_ms` (`--idle-expiry-ms`)
//!   waited out (plus margin), broker memory again (full-size runs only).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;
use switchyard_core::bus::{BusConfig, BusKind, Retention, StartAt};
use switchyard_core::channels::{Catalog, ChannelConfig, ChannelsConfig, SubscribeRule};
use switchyard_core::event::{Topic, TopicClass};
use switchyard_core::hub::{Hub, HubConfig, Item};

use crate::memory::rss_kib;
use crate::stats::cpu_ticks;

/// Options of `channels-scale`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Distinct channels of the pattern (one publish each).
    #[arg(long, default_value_t = 1_000_000)]
    channels: usize,
    /// Hub subscriptions (one per channel, the first ones).
    #[arg(long, default_value_t = 100_000)]
    subscriptions: usize,
    /// Channels for the old NATS layout (a stream per topic); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    old_layout_channels: usize,
    /// Publishes (and subscribes) in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// The pattern's `idle_expiry_ms`.
    #[arg(long, default_value_t = 120_000)]
    idle_expiry_ms: u64,
    /// The pattern's `history_events`.
    #[arg(long, default_value_t = 10)]
    history_events: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Brokers to run: `redis`, `nats`, or both.
    #[arg(long, default_value = "redis,nats")]
    brokers: String,
    /// CPUs the private brokers are pinned to (`taskset -c`).
    #[arg(long, default_value = "0")]
    broker_cpus: String,
}

/// A private broker server, killed when dropped.
struct Server {
    kind: BusKind,
    port: u16,
    monitor: u16,
    dir: std::path::PathBuf,
    child: Child,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    fn start(kind: BusKind, cpus: &str) -> anyhow::Result<Self> {
        let (port, monitor) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("switchyard-channels-scale-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpus]);
        match kind {
            BusKind::Redis => {
                cmd.args(["redis-server", "--port", &port.to_string()])
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
            }
            _ => {
                cmd.args(["nats-server", "-a", "127.0.0.1", "-p", &port.to_string()])
                    .args(["-m", &monitor.to_string(), "-js", "-sd"])
                    .arg(&dir);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the private broker (taskset, redis-server, nats-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("{kind:?} did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            kind,
            port,
            monitor,
            dir,
            child,
        })
    }

    fn url(&self) -> String {
        match self.kind {
            BusKind::Redis => format!("redis://127.0.0.1:{}", self.port),
            _ => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// The broker's memory, in bytes: Redis used_memory; NATS (RSS from /varz, JetStream store
    /// bytes from /jsz).
    async fn memory(&self) -> anyhow::Result<(u64, u64)> {
        match self.kind {
            BusKind::Redis => {
                let client = redis::Client::open(self.url())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await?;
                let used = info
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| anyhow!("no used_memory in INFO"))?;
                Ok((used, 0))
            }
            _ => {
                let get = |path: &'static str| {
                    let url = format!("http://127.0.0.1:{}/{path}", self.monitor);
                    async move {
                        reqwest::get(url)
                            .await?
                            .json::<serde_json::Value>()
                            .await
                            .map_err(anyhow::Error::from)
                    }
                };
                let varz = get("varz").await?;
                let jsz = get("jsz").await?;
                Ok((
                    varz["mem"].as_u64().unwrap_or(0),
                    jsz["storage"].as_u64().unwrap_or(0),
                ))
            }
        }
    }

    fn cpu(&self) -> anyhow::Result<f64> {
        // taskset execs the server: the child's pid is the server's.
        cpu_ticks(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The catalog of the one pattern.
fn catalog(args: &Args) -> anyhow::Result<Arc<Catalog>> {
    let config = ChannelsConfig {
        catalog: vec![ChannelConfig {
            pattern: "conversions.{user}".into(),
            class: TopicClass::Stream,
            history_events: args.history_events,
            max_payload_bytes: 64 * 1024,
            subscribe: SubscribeRule::User,
            publishers: Vec::new(),
            idle_expiry_ms: Some(args.idle_expiry_ms),
        }],
    };
    Ok(Arc::new(Catalog::new(&config)?))
}

/// Clock ticks per second (for /proc CPU times).
const TICK_HZ: f64 = 100.0;

/// CPU µs of this process and of the broker over `f`, and its wall time.
async fn timed<T>(
    server: &Server,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64, f64, Duration)> {
    let me = std::process::id();
    let (c0, b0, t0) = (cpu_ticks(me)?, server.cpu()?, Instant::now());
    let out = f.await?;
    let (c1, b1, wall) = (cpu_ticks(me)?, server.cpu()?, t0.elapsed());
    let us = |ticks: f64| ticks / TICK_HZ * 1e6;
    Ok((out, us(c1 - c0), us(b1 - b0), wall))
}

/// One layout's figures.
struct Figures {
    label: String,
    channels: usize,
    subs: usize,
    pub_wall_us: f64,
    pub_client_us: f64,
    pub_broker_us: f64,
    broker_bytes_per_channel: f64,
    store_bytes_per_channel: f64,
    client_bytes_per_channel: f64,
    sub_client_us: f64,
    sub_broker_us: f64,
    client_bytes_per_sub: f64,
    broker_bytes_per_sub: f64,
    /// Broker memory and store bytes per channel once the idle expiry passed.
    after_expiry_bytes_per_channel: Option<(f64, f64)>,
}

fn topic_of(grouped: bool, i: usize) -> Topic {
    let name = if grouped {
        format!("ch:conversions.u{i}")
    } else {
        // Outside the catalog: a stream per topic on NATS.
        format!("conversions.u{i}")
    };
    Topic::new(&name).expect("a valid topic")
}

async fn run_layout(
    args: &Args,
    kind: BusKind,
    grouped: bool,
    channels: usize,
    label: &str,
) -> anyhow::Result<Figures> {
    let server = Server::start(kind, &args.broker_cpus)?;
    let config = BusConfig {
        url: server.url(),
        prefix: "scale".into(),
        history_events: usize::try_from(args.history_events)?,
        operation_timeout_ms: 30_000,
        // The grouped layout is opt-in on NATS; the old one is measured with it off.
        nats_pattern_streams: grouped,
        ..BusConfig::of(kind)
    };
    let retention = Retention::new(config.history_events, Some(catalog(args)?));
    let broker = switchyard_core::bus::Broker::connect_with(&config, retention);
    let bus = broker.bus();
    bus.check().await.ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus.check().await.is_err() {
        if Instant::now() > deadline {
            bail!("{label}: the bus never became ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payload = Bytes::from(vec![b'x'; args.payload_bytes]);
    let (mem0, store0) = server.memory().await?;
    let rss_before = rss_kib(std::process::id())?;
    eprintln!("{label}: publishing on {channels} channels …");
    let publish = async {
        let failed = futures::stream::iter(0..channels)
            .map(|i| {
                let (bus, payload) = (bus.clone(), payload.clone());
                async move { bus.publish(&topic_of(grouped, i), payload).await.is_err() }
            })
            .buffer_unordered(args.concurrency)
            .filter(|failed| futures::future::ready(*failed))
            .count()
            .await;
        if failed > 0 {
            bail!("{label}: {failed} publishes failed");
        }
        Ok(())
    };
    let ((), pub_client, pub_broker, pub_wall) = timed(&server, publish).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mem1, store1) = server.memory().await?;
    let rss_published = rss_kib(std::process::id())?;
    let n = channels as f64;

    let subs = args.subscriptions.min(channels);
    eprintln!("{label}: {subs} hub subscriptions …");
    let rss0 = rss_kib(std::process::id())?;
    let hub = Hub::new(bus.clone(), HubConfig::default());
    let subscribe = async {
        // In completion order: each subscription is put back at its channel's index (the
        // samples below publish on channel i and read subscription i).
        let mut made: Vec<_> = futures::stream::iter(0..subs)
            .map(|i| {
                let hub = hub.clone();
                async move { (i, hub.subscribe(&topic_of(grouped, i), StartAt::Live).await) }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        made.sort_unstable_by_key(|(i, _)| *i);
        made.into_iter()
            .map(|(_, sub)| sub)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{label}: subscribe: {e:?}"))
    };
    let (mut made, sub_client, sub_broker, _) = timed(&server, subscribe).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(std::process::id())?;
    let (mem2, _) = server.memory().await?;
    // A delivery on a sample of them, to show they are live (after a gap if the channel
    // expired meanwhile: a run longer than the idle expiry).
    for i in (0..subs).step_by((subs / 10).max(1)) {
        bus.publish(&topic_of(grouped, i), payload.clone()).await?;
        let sent = Instant::now();
        let delivered = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match made[i].next().await {
                    Some(Item::Event(_)) => return Ok(()),
                    Some(Item::Gap { .. }) => {}
                    other => return Err(anyhow!("{label}: subscription {i} got {other:?}")),
                }
            }
        })
        .await;
        delivered.map_err(|_| anyhow!("{label}: subscription {i} got nothing in 60 s"))??;
        if sent.elapsed() > Duration::from_secs(1) {
            eprintln!("{label}: subscription {i} took {:?}", sent.elapsed());
        }
    }
    drop(made);
    drop(hub);

    if pub_wall > Duration::from_millis(args.idle_expiry_ms) / 2 {
        eprintln!(
            "warning: {label}: publishing took {pub_wall:?}, over half the idle expiry: the \
             first channels may have expired before the memory was read"
        );
    }
    // The expiry is waited out for the full-size runs (the old layout has none).
    let after_expiry = if grouped && channels == args.channels {
        let wait = Duration::from_millis(args.idle_expiry_ms) + Duration::from_secs(5);
        eprintln!("{label}: waiting {wait:?} for the idle channels to expire …");
        tokio::time::sleep(wait).await;
        let (mem3, store3) = server.memory().await?;
        Some((
            (mem3 as f64 - mem0 as f64) / n,
            (store3 as f64 - store0 as f64) / n,
        ))
    } else {
        None
    };
    Ok(Figures {
        label: label.to_owned(),
        channels,
        subs,
        pub_wall_us: pub_wall.as_secs_f64() * 1e6 / n,
        pub_client_us: pub_client / n,
        pub_broker_us: pub_broker / n,
        broker_bytes_per_channel: (mem1 as f64 - mem0 as f64) / n,
        store_bytes_per_channel: (store1 as f64 - store0 as f64) / n,
        client_bytes_per_channel: (rss_published as f64 - rss_before as f64) * 1024.0 / n,
        sub_client_us: sub_client / subs.max(1) as f64,
        sub_broker_us: sub_broker / subs.max(1) as f64,
        client_bytes_per_sub: (rss1 as f64 - rss0 as f64) * 1024.0 / subs.max(1) as f64,
        broker_bytes_per_sub: (mem2 as f64 - mem1 as f64) / subs.max(1) as f64,
        after_expiry_bytes_per_channel: after_expiry,
    })
}

/// Runs `channels-scale`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    crate::memory::raise_nofile(4096)?;
    print_header();
    for broker in args.brokers.split(',').map(str::trim) {
        match broker {
            "redis" => {
                print_row(&run_layout(&args, BusKind::Redis, true, args.channels, "redis").await?)
            }
            "nats" => {
                let label = "nats, one stream per pattern";
                print_row(&run_layout(&args, BusKind::Nats, true, args.channels, label).await?);
                if args.old_layout_channels > 0 {
                    let n = args.old_layout_channels;
                    let label = "nats, one stream per pattern (same size)";
                    print_row(&run_layout(&args, BusKind::Nats, true, n, label).await?);
                    let label = "nats, a stream per channel (old layout)";
                    print_row(&run_layout(&args, BusKind::Nats, false, n, label).await?);
                }
            }
            other => bail!("unknown broker `{other}`: use redis, nats"),
        }
    }
    Ok(())
}

fn print_header() {
    println!(
        "\n| layout | channels | publish wall µs | publish CPU µs client / broker | broker B/channel | \
         store B/channel | client B/channel | subscriptions | subscribe CPU µs client / broker | client B/sub | \
         broker B/sub | after expiry: broker B/channel, store B/channel |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(f: &Figures) {
    println!(
        "| {} | {} | {:.1} | {:.1} / {:.1} | {:.0} | {} | {:.0} | {} | {:.1} / {:.1} | {:.0} | {:.0} | {} |",
        f.label,
        f.channels,
        f.pub_wall_us,
        f.pub_client_us,
        f.pub_broker_us,
        f.broker_bytes_per_channel,
        if f.store_bytes_per_channel > 0.0 {
            format!("{:.0}", f.store_bytes_per_channel)
        } else {
            "–".into()
        },
        f.client_bytes_per_channel,
        f.subs,
        f.sub_client_us,
        f.sub_broker_us,
        f.client_bytes_per_sub,
        f.broker_bytes_per_sub,
        f.after_expiry_bytes_per_channel
            .map_or("–".into(), |(b, s)| format!("{b:.0}, {s:.0}")),
    );
}
