//! `publish`: the publish API (`POST /v1/publish`) against publishing in-process on the same
//! stack, in the same run. Target: the API adds at most 0.3 ms to publish→delivery at p50 when
//! unsaturated.
//!
//! The server is a child process ([`crate::publish_serve`]: the launcher's stack, in-memory bus,
//! the catalog, the publish API), started under `taskset -c <--server-cpus>`; run the bench itself
//! pinned to the other core (`taskset -c 1 switchyard-bench publish`), so the two do not share a
//! core. The bench process holds 1,000 bff-mobile subscribers (CBOR) of `announcements`
//! ([`crate::publish_subs`]) and the HTTP publishers.
//!
//! Each round has one *latency* run, interleaving the two modes, and *throughput* runs of each:
//!
//! - **in-process**: the server child publishes on its own bus on the bench's command (what the
//!   API does once a request is checked);
//! - **http**: the bench POSTs `{"channel","data"}` with the demo publisher's key over keep-alive
//!   connections (one per concurrent publisher) and checks every answer (200, the channel, an
//!   epoch and offset).
//!
//! *Latency*: `--events` events published one at a time at `--rate` per second (unsaturated),
//! alternately in-process and through the API (which of the two publishes the even events swaps
//! every round), each carrying its publish time (µs, system clock, taken just before the bus
//! publish or the POST), subtracted by every subscriber on receipt — p50/p99 over all deliveries
//! of each mode's events. Interleaving puts both modes under the same conditions: on a shared
//! machine, the fan-out's speed drifts by 10–20 % between runs seconds apart, which moved
//! separate runs' p50 by more than the difference measured. *Throughput*: `publishers`
//! publishers (`--publishers 1,16`) publishing as fast as they can for `--burst-ms` on a catalog
//! channel nobody subscribes to — publishes/s, and the server's CPU time (utime + stime from
//! `/proc/<pid>/stat`) per publish. One unmeasured warm-up round first; medians of `--runs`
//! rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::publish_serve::{CHANNEL, LOAD_CHANNEL, Server, clock_ticks, now_us, own_cpus, payload};
use crate::publish_subs::Subscribers;
use crate::stats::median;

/// Arguments of the publish benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Mobile subscribers of `announcements` (CBOR), held for the whole benchmark.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Events per latency run, each delivered to every subscriber.
    #[arg(long, default_value_t = 300)]
    events: usize,
    /// Publishes per second in the latency runs (one at a time: unsaturated; 200/s saturates
    /// one server core fanning out to 1,000 subscribers).
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Concurrent publishers of the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    publishers: Vec<u64>,
    /// Length of each throughput run, in ms.
    #[arg(long, default_value_t = 2_000)]
    burst_ms: u64,
    /// Measured rounds (each runs both modes).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The CPUs the server child is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Socket handshakes in progress at once while connecting the subscribers.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

/// How the events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    InProcess,
    Http,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::InProcess => "in-process",
            Mode::Http => "http",
        }
    }
}

/// The target: what the API may add to the publish→delivery p50, in µs.
const TARGET_US: f64 = 300.0;

/// How long the deliveries of a latency run may trail its last publish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One mode's figures in one round (`None`: that part was invalid; why is printed).
#[derive(Default)]
struct Round {
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// The POST round trip's p50 (http only), µs.
    answer_p50_us: Option<f64>,
    /// Per entry of `--publishers`: publishes/s and server CPU µs per publish.
    bursts: Vec<Option<(f64, f64)>>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.clients == 0 || args.events == 0 || args.runs == 0 || args.rate == 0 {
        bail!("--clients, --events, --runs and --rate must be at least 1");
    }
    if args.publishers.is_empty() || args.publishers.contains(&0) {
        bail!("--publishers must list counts of at least 1");
    }
    // The child inherits the raised limit: it holds the server ends.
    crate::memory::raise_nofile(args.clients as u64 + 1_024)?;
    let clk_tck = clock_ticks()?;
    let mut server = Server::spawn(&args.server_cpus).await?;
    let subscribers = Subscribers::connect(
        &server.mobile_url,
        args.clients,
        args.connect_concurrency,
        &[CHANNEL],
    )
    .await
    .with_context(|| format!("connecting {} subscribers", args.clients))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    let mut bench = Bench {
        args: &args,
        http,
        publish_url: server.publish_url.clone(),
        key: format!("Bearer {}", switchyard::DEMO_PUBLISHER_KEY),
        clk_tck,
        next_run: 0,
    };
    println!(
        "publish: {} mobile subscribers (CBOR) of `{CHANNEL}`; latency: {} events at {}/s per \
         run; throughput: {:?} publishers for {} ms on `{LOAD_CHANNEL}` (no subscriber); {} \
         rounds (in-process and http alternating, one unmeasured warm-up round); server pid {} \
         on CPUs {}, bench on CPUs {}",
        args.clients,
        args.events,
        args.rate,
        args.publishers,
        args.burst_ms,
        args.runs,
        server.pid,
        if args.server_cpus.is_empty() {
            "any"
        } else {
            &args.server_cpus
        },
        own_cpus()
    );
    let warmup = (args.events / 4).max(2);
    let r = bench
        .round(&mut server, &subscribers, 0, warmup, args.burst_ms / 4)
        .await?;
    describe("warm-up", &r, &args);
    let mut rounds: Vec<[Round; 2]> = Vec::new();
    for round in 1..=args.runs {
        let r = bench
            .round(&mut server, &subscribers, round, args.events, args.burst_ms)
            .await?;
        describe(&format!("run {round}"), &r, &args);
        rounds.push(r);
    }
    drop(subscribers);
    server.stop().await;
    summary(&args, &rounds);
    Ok(())
}

/// The bench's side of the modes.
struct Bench<'a> {
    args: &'a Args,
    http: reqwest::Client,
    publish_url: String,
    key: String,
    clk_tck: f64,
    /// The next run number (every latency and throughput run has its own).
    next_run: u64,
}

impl Bench<'_> {
    /// One round: an interleaved latency run, then each mode's throughput runs (in-process
    /// first in odd rounds, http first in even ones). Indexed by [`Mode`].
    async fn round(
        &mut self,
        server: &mut Server,
        subscribers: &Subscribers,
        round: usize,
        events: usize,
        burst_ms: u64,
    ) -> anyhow::Result<[Round; 2]> {
        let mut r = [Round::default(), Round::default()];
        self.next_run += 1;
        let run = self.next_run;
        // Which mode publishes the even events: swapped every round.
        let even = if round % 2 == 1 {
            Mode::InProcess
        } else {
            Mode::Http
        };
        let phase = subscribers.begin(run, events, 2);
        match self.interleaved(server, run, events, even).await {
            Err(e) => println!("  latency run INVALID: {e:#}"),
            Ok(mut answers) => match subscribers.finish(&phase, DRAIN_TIMEOUT).await {
                Err(why) => println!("  latency run INVALID: {why}"),
                Ok(mut by_parity) => {
                    let odd_samples = by_parity.pop().unwrap_or_default();
                    let even_samples = by_parity.pop().unwrap_or_default();
                    let (http, in_process) = match even {
                        Mode::Http => (even_samples, odd_samples),
                        Mode::InProcess => (odd_samples, even_samples),
                    };
                    for (mode, samples) in [(Mode::InProcess, in_process), (Mode::Http, http)] {
                        r[mode as usize].p50_us = Some(percentile(&samples, 0.5));
                        r[mode as usize].p99_us = Some(percentile(&samples, 0.99));
                    }
                    answers.sort_unstable();
                    r[Mode::Http as usize].answer_p50_us = Some(percentile(&answers, 0.5));
                }
            },
        }
        let order = if round % 2 == 1 {
            [Mode::InProcess, Mode::Http]
        } else {
            [Mode::Http, Mode::InProcess]
        };
        for mode in order {
            for &publishers in &self.args.publishers {
                self.next_run += 1;
                let run = self.next_run;
                let cpu = server.cpu_ticks()?;
                let started = Instant::now();
                let count = match mode {
                    Mode::InProcess => server
                        .command(&format!("burst {run} {publishers} {burst_ms}"))
                        .await
                        .and_then(|n| n.parse::<u64>().context("the burst's count")),
                    Mode::Http => self.burst(run, publishers, burst_ms).await,
                };
                let elapsed = started.elapsed().as_secs_f64();
                let cpu = server.cpu_ticks()? - cpu;
                r[mode as usize].bursts.push(match count {
                    Ok(n) if n > 0 => {
                        Some((n as f64 / elapsed, cpu / self.clk_tck * 1e6 / n as f64))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        println!("  {} burst of {publishers} INVALID: {e:#}", mode.name());
                        None
                    }
                });
            }
        }
        Ok(r)
    }

    /// The latency run: `events` events one at a time at `--rate`, event `k` published by
    /// `even` when `k` is even and by the other mode when odd; returns each POST's round trip
    /// in µs.
    async fn interleaved(
        &self,
        server: &mut Server,
        run: u64,
        events: usize,
        even: Mode,
    ) -> anyhow::Result<Vec<u32>> {
        let url = &self.publish_url;
        let start = tokio::time::Instant::now();
        let mut answers = Vec::with_capacity(events / 2 + 1);
        for k in 0..events as u64 {
            let at = start + Duration::from_secs_f64(k as f64 / self.args.rate as f64);
            tokio::time::sleep_until(at).await;
            let mode = match (k % 2 == 0, even) {
                (true, mode) => mode,
                (false, Mode::Http) => Mode::InProcess,
                (false, Mode::InProcess) => Mode::Http,
            };
            match mode {
                // The child stamps the event itself, just before its publish.
                Mode::InProcess => {
                    server.command(&format!("one {run} {k}")).await?;
                }
                Mode::Http => {
                    let sent = Instant::now();
                    post(
                        &self.http,
                        url,
                        &self.key,
                        CHANNEL,
                        &payload(run, k, now_us()),
                    )
                    .await?;
                    answers.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
        }
        Ok(answers)
    }

    /// The http throughput run: `publishers` tasks POST one after another until `millis` ms
    /// have passed; returns how many publishes were answered.
    async fn burst(&self, run: u64, publishers: u64, millis: u64) -> anyhow::Result<u64> {
        let url = Arc::new(self.publish_url.clone());
        let end = Instant::now() + Duration::from_millis(millis);
        let tasks: Vec<_> = (0..publishers)
            .map(|p| {
                let (http, url, key) = (self.http.clone(), url.clone(), self.key.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let data = payload(run, (p << 32) | n, now_us());
                        post(&http, &url, &key, LOAD_CHANNEL, &data).await?;
                        n += 1;
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
}

/// POSTs one event (`data`, JSON) to the publish API and checks the answer.
async fn post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    channel: &str,
    data: &str,
) -> anyhow::Result<()> {
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    let answer = http
        .post(url)
        .header("authorization", key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = answer.status();
    let text = answer.text().await?;
    if status != reqwest::StatusCode::OK {
        bail!("the publish API answered {status}: {text}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("the answer is not JSON: {text}"))?;
    let position = |key: &str| v[key].as_str().and_then(|s| s.parse::<u64>().ok());
    if v["channel"] != channel || position("epoch").is_none() || position("offset").is_none() {
        bail!("unexpected answer: {text}");
    }
    Ok(())
}

/// The `p` quantile of sorted µs samples, as f64.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

fn ms(us: Option<f64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{:.3}", us / 1e3))
}

fn one(x: Option<f64>, decimals: usize) -> String {
    x.map_or("-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// One round's figures, a line per mode.
fn describe(label: &str, r: &[Round; 2], args: &Args) {
    for mode in [Mode::InProcess, Mode::Http] {
        let r = &r[mode as usize];
        let mut line = format!(
            "{label} {:<10} p50 {} ms  p99 {} ms",
            mode.name(),
            ms(r.p50_us),
            ms(r.p99_us)
        );
        if r.answer_p50_us.is_some() {
            line += &format!("  answer p50 {} ms", ms(r.answer_p50_us));
        }
        for (p, b) in args.publishers.iter().zip(&r.bursts) {
            line += &format!(
                "  | {p} publishers: {} /s, {} µs/publish",
                one(b.map(|b| b.0), 0),
                one(b.map(|b| b.1), 1)
            );
        }
        println!("{line}");
    }
}

/// The median of the valid values.
fn med(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v))
}

/// The medians table, and the target.
fn summary(args: &Args, rounds: &[[Round; 2]]) {
    println!();
    let mut header = format!(
        "{:<11} {:>9} {:>9} {:>11}",
        "mode", "p50 ms", "p99 ms", "answer p50"
    );
    for p in &args.publishers {
        header += &format!(
            " {:>12} {:>11}",
            format!("pub/s @{p}"),
            format!("CPU µs @{p}")
        );
    }
    println!("medians of {} rounds:", rounds.len());
    println!("{header}");
    for mode in [Mode::InProcess, Mode::Http] {
        let of =
            |f: &dyn Fn(&Round) -> Option<f64>| med(rounds.iter().map(|r| f(&r[mode as usize])));
        let mut line = format!(
            "{:<11} {:>9} {:>9} {:>11}",
            mode.name(),
            ms(of(&|r| r.p50_us)),
            ms(of(&|r| r.p99_us)),
            ms(of(&|r| r.answer_p50_us))
        );
        for i in 0..args.publishers.len() {
            let b = |r: &Round| r.bursts.get(i).copied().flatten();
            line += &format!(
                " {:>12} {:>11}",
                one(of(&|r| b(r).map(|b| b.0)), 0),
                one(of(&|r| b(r).map(|b| b.1)), 1)
            );
        }
        println!("{line}");
    }
    let p50 = |m: Mode| med(rounds.iter().map(|r| r[m as usize].p50_us));
    let paired = med(rounds
        .iter()
        .map(|r| Some(r[Mode::Http as usize].p50_us? - r[Mode::InProcess as usize].p50_us?)));
    match (p50(Mode::Http), p50(Mode::InProcess)) {
        (Some(h), Some(i)) => println!(
            "http − in-process at p50: {:.3} ms (median of per-round differences {}); target ≤ \
             {:.1} ms: {}",
            (h - i) / 1e3,
            ms(paired),
            TARGET_US / 1e3,
            if h - i <= TARGET_US { "met" } else { "NOT met" }
        ),
        _ => println!("http − in-process at p50: no valid latency run of both modes"),
    }
}
