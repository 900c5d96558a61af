//! `bus-latency`: event delivery latency through each bus, across instances and within one.
//!
//! For each bus — in-memory (the baseline: one instance, no network), Redis, NATS, RabbitMQ
//! Streams (with its Redis state store) — two bus
//! instances share one namespace, as two gateway instances would. A subscriber on instance A
//! (single-instance delivery) and one on instance B (cross-instance delivery) take every event
//! published through A; each payload carries its publish time, so every delivery gives one
//! latency sample. Latency is measured with one event in flight (the next is published once both
//! subscribers have the previous one), so no sample includes queueing; throughput is measured
//! separately, with a burst published as fast as each publish is acknowledged, as deliveries per
//! second to B. Reported: p50/p99 per path, deliveries/s, and ratios — cross-instance against
//! single-instance, and against the in-memory bus measured in the same run.
//!
//! CPU over the throughput burst, per event delivered to B, from `/proc/<pid>/stat`: the bench
//! process's own (both bus instances' client code: what a gateway would spend) and, when their
//! pids are given (`--broker-pids`), the brokers' (Redis for `redis` and as RabbitMQ's state
//! store, nats-server, RabbitMQ's beam.smp). The brokers are shared with whatever else runs on
//! the machine, so their figure is an upper bound.
//!
//! The brokers are the real ones this machine runs (`scripts/services`); the bench's keys and
//! streams live under a random prefix and are deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use switchyard_core::bus::nats::NatsBus;
use switchyard_core::bus::rabbitmq::RabbitBus;
use switchyard_core::bus::redis::RedisBus;
use switchyard_core::bus::{Bus, Delivery, StartAt, Subscription};
use switchyard_core::bus::{BusConfig, BusKind, BusStateConfig};
use switchyard_core::event::Topic;
use tokio::sync::mpsc;

use crate::stats::{median, ms_ns, percentile_ns};

/// Options of `bus-latency`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Events published per bus and run (for latency, then again as a burst for throughput).
    #[arg(long, default_value_t = 2_000)]
    events: usize,
    /// Payload size in bytes (at least 8: the publish time).
    #[arg(long, default_value_t = 128)]
    payload_bytes: usize,
    /// Runs per bus (the median run is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// NATS URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// RabbitMQ stream URL (its state store is `--redis-url`).
    #[arg(
        long,
        default_value = "rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f"
    )]
    rabbitmq_url: String,
    /// Broker processes whose CPU is measured, as `redis=PID,nats=PID,rabbitmq=PID` (any of
    /// them; e.g. `redis=$(pgrep -f 'redis-server 127.0.0.1:6379'),nats=$(pgrep nats-server),
    /// rabbitmq=$(pgrep beam.smp)`).
    #[arg(long, default_value = "")]
    broker_pids: String,
}

impl Args {
    /// The pids of the broker processes `kind` runs on (RabbitMQ's include its Redis).
    fn pids_of(&self, kind: BusKind) -> Vec<u32> {
        let named = |name: &str| {
            self.broker_pids.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().parse().ok()).flatten()
            })
        };
        let names: &[&str] = match kind {
            BusKind::Memory => &[],
            BusKind::Redis => &["redis"],
            BusKind::Nats => &["nats"],
            BusKind::Rabbitmq => &["rabbitmq", "redis"],
        };
        names.iter().filter_map(|n| named(n)).collect()
    }
}

/// One run's figures for one bus.
struct Figures {
    same_p50: u64,
    same_p99: u64,
    cross_p50: u64,
    cross_p99: u64,
    per_sec: f64,
    /// CPU of the bench process per event delivered to B in the burst, in microseconds.
    own_us: f64,
    /// CPU of the broker processes (when given) per event delivered to B, in microseconds.
    broker_us: Option<f64>,
}

/// CPU ticks of the bench process and of `pids`.
fn ticks(pids: &[u32]) -> anyhow::Result<(f64, f64)> {
    let own = crate::stats::cpu_ticks(std::process::id())?;
    let mut brokers = 0.0;
    for pid in pids {
        brokers += crate::stats::cpu_ticks(*pid)?;
    }
    Ok((own, brokers))
}

/// A pair of instances of one bus and how to clean up after them.
struct Pair {
    a: Arc<dyn Bus>,
    b: Arc<dyn Bus>,
    cleanup: Option<Cleanup>,
}

enum Cleanup {
    Redis(Arc<RedisBus>),
    Nats(Arc<NatsBus>),
    Rabbitmq(Vec<Arc<RabbitBus>>),
}

fn config(kind: BusKind, url: &str, prefix: &str) -> BusConfig {
    BusConfig {
        url: url.to_owned(),
        prefix: prefix.to_owned(),
        history_events: 10_000,
        ..BusConfig::of(kind)
    }
}

fn pair(kind: BusKind, args: &Args, prefix: &str) -> Pair {
    match kind {
        BusKind::Memory => {
            let bus: Arc<dyn Bus> = Arc::new(switchyard_core::bus::memory::MemoryBus::new(10_000));
            Pair {
                a: bus.clone(),
                b: bus,
                cleanup: None,
            }
        }
        BusKind::Redis => {
            let c = config(kind, &args.redis_url, prefix);
            let a = Arc::new(RedisBus::new(&c));
            Pair {
                a: a.clone(),
                b: Arc::new(RedisBus::new(&c)),
                cleanup: Some(Cleanup::Redis(a)),
            }
        }
        BusKind::Nats => {
            let c = config(kind, &args.nats_url, prefix);
            let a = Arc::new(NatsBus::new(&c));
            Pair {
                a: a.clone(),
                b: Arc::new(NatsBus::new(&c)),
                cleanup: Some(Cleanup::Nats(a)),
            }
        }
        BusKind::Rabbitmq => {
            let c = BusConfig {
                state: Some(BusStateConfig::redis(&args.redis_url)),
                ..config(kind, &args.rabbitmq_url, prefix)
            };
            let (a, b) = (Arc::new(RabbitBus::new(&c)), Arc::new(RabbitBus::new(&c)));
            Pair {
                a: a.clone(),
                b: b.clone(),
                cleanup: Some(Cleanup::Rabbitmq(vec![a, b])),
            }
        }
    }
}

/// Forwards the latency of every delivery (now minus the publish time in its payload).
fn collect(
    mut sub: Subscription,
    base: Instant,
) -> (
    mpsc::UnboundedReceiver<anyhow::Result<u64>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(d) = sub.next().await {
            let item = match d {
                Delivery::Event(e) if e.payload.len() >= 8 => {
                    let now = base.elapsed().as_nanos() as u64;
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&e.payload[..8]);
                    Ok(now.saturating_sub(u64::from_le_bytes(sent)))
                }
                other => Err(anyhow::anyhow!("unexpected {other:?}")),
            };
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    (rx, task)
}

async fn receipt(rx: &mut mpsc::UnboundedReceiver<anyhow::Result<u64>>) -> anyhow::Result<u64> {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(r)) => r,
        Ok(None) => anyhow::bail!("subscription ended"),
        Err(_) => anyhow::bail!("no delivery for 30 s"),
    }
}

fn payload(base: Instant, padding: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(8 + padding);
    payload.put_u64_le(base.elapsed().as_nanos() as u64);
    payload.put_bytes(b'x', padding);
    payload.freeze()
}

async fn run_once(kind: BusKind, args: &Args, run: usize, clk_tck: f64) -> anyhow::Result<Figures> {
    let prefix = format!("bench-{:x}", rand::random::<u32>());
    let pair = pair(kind, args, &prefix);
    let topic = Topic::new(&format!("bench.run-{run}"))?;
    pair.a.check().await?;
    pair.b.check().await?;
    let base = Instant::now();
    let (mut same_rx, same_task) = collect(pair.a.subscribe(&topic, StartAt::Live).await?, base);
    let (mut cross_rx, cross_task) = collect(pair.b.subscribe(&topic, StartAt::Live).await?, base);
    let padding = args.payload_bytes.max(8) - 8;
    // Latency: one event in flight at a time, so no sample includes queueing behind another.
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for _ in 0..args.events {
        pair.a.publish(&topic, payload(base, padding)).await?;
        same.push(receipt(&mut same_rx).await?);
        cross.push(receipt(&mut cross_rx).await?);
    }
    // Throughput: publish a burst as fast as publishing allows; time until B has it all.
    let pids = args.pids_of(kind);
    let (own_before, brokers_before) = ticks(&pids)?;
    let started = Instant::now();
    for _ in 0..args.events {
        pair.a.publish(&topic, payload(base, padding)).await?;
    }
    for _ in 0..args.events {
        receipt(&mut same_rx).await?;
        receipt(&mut cross_rx).await?;
    }
    let elapsed = started.elapsed();
    let (own_after, brokers_after) = ticks(&pids)?;
    let per_event_us = |ticks: f64| ticks / clk_tck * 1e6 / args.events as f64;
    same_task.abort();
    cross_task.abort();
    same.sort_unstable();
    cross.sort_unstable();
    match &pair.cleanup {
        Some(Cleanup::Redis(b)) => drop(b.delete_all().await?),
        Some(Cleanup::Nats(b)) => drop(b.delete_all().await?),
        Some(Cleanup::Rabbitmq(buses)) => {
            for b in buses {
                b.delete_all().await?;
            }
        }
        None => {}
    }
    Ok(Figures {
        same_p50: percentile_ns(&same, 0.5),
        same_p99: percentile_ns(&same, 0.99),
        cross_p50: percentile_ns(&cross, 0.5),
        cross_p99: percentile_ns(&cross, 0.99),
        per_sec: args.events as f64 / elapsed.as_secs_f64(),
        own_us: per_event_us(own_after - own_before),
        broker_us: (!pids.is_empty()).then(|| per_event_us(brokers_after - brokers_before)),
    })
}

/// Runs the benchmark and prints its table.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "bus-latency: {} events of {} bytes per run, {} runs per bus, median run shown",
        args.events, args.payload_bytes, args.runs
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>14} {:>12} {:>14}",
        "bus",
        "same p50 ms",
        "same p99 ms",
        "cross p50 ms",
        "cross p99 ms",
        "deliveries/s",
        "bench µs/ev",
        "brokers µs/ev"
    );
    let clk_tck = crate::publish_serve::clock_ticks()?;
    let mut memory_p50 = None;
    for kind in [
        BusKind::Memory,
        BusKind::Redis,
        BusKind::Nats,
        BusKind::Rabbitmq,
    ] {
        let mut runs = Vec::new();
        for run in 0..args.runs.max(1) {
            runs.push(run_once(kind, &args, run, clk_tck).await?);
        }
        let pick = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        let (s50, s99) = (pick(|f| f.same_p50 as f64), pick(|f| f.same_p99 as f64));
        let (c50, c99) = (pick(|f| f.cross_p50 as f64), pick(|f| f.cross_p99 as f64));
        let per_sec = pick(|f| f.per_sec);
        let own_us = pick(|f| f.own_us);
        let brokers = runs
            .iter()
            .all(|f| f.broker_us.is_some())
            .then(|| pick(|f| f.broker_us.unwrap_or_default()))
            .map_or("-".to_owned(), |us| format!("{us:.1}"));
        let name = format!("{kind:?}").to_lowercase();
        println!(
            "{name:<8} {:>12} {:>12} {:>12} {:>12} {:>14.0} {:>12.1} {:>14}",
            ms_ns(s50 as u64),
            ms_ns(s99 as u64),
            ms_ns(c50 as u64),
            ms_ns(c99 as u64),
            per_sec,
            own_us,
            brokers
        );
        if kind == BusKind::Memory {
            memory_p50 = Some(s50.max(1.0));
        } else if let Some(base) = memory_p50 {
            println!(
                "         cross/same p50 {:.2}x, p99 {:.2}x; cross p50 vs in-memory {:.1}x",
                c50 / s50.max(1.0),
                c99 / s99.max(1.0),
                c50 / base
            );
        }
    }
    Ok(())
}
