//! `metrics-cost`: what serving metrics costs, metrics on against metrics off in the same run.
//! Target: at most 3 % fewer fan-out deliveries/s and at most 3 % more composition p50.
//!
//! Two server children ([`crate::publish_serve`]: the launcher's stack on the in-memory bus),
//! both pinned with `taskset -c <--server-cpus>` and only one of them busy at a time:
//!
//! - **on**: every gateway serves `/metrics` (`[metrics] listen` on free loopback ports), and
//!   the bench scrapes all three every `--scrape-ms` during that server's runs, as Prometheus
//!   would;
//! - **off**: no `[metrics] listen`, so no listener, no scrape, and no request-counting
//!   middleware (the runtime installs it only with a listener).
//!
//! What "off" does NOT remove: the counters that are always kept — the hub's per-pattern
//! counters (one relaxed increment per delivery), backend call statistics, socket guards,
//! cut-offs, conflations and the per-socket queue depth store (one relaxed store per socket
//! loop turn) are in the code whether or not anyone reads them. So the comparison measures the
//! request middleware, the scrapes and the listener, not those atomics; their cost is in both
//! figures (docs/operations.md says so).
//!
//! Each round runs, for each server (which goes first alternates every round):
//!
//! - *fan-out*: `--events` events published back to back on `announcements` to `--clients`
//!   mobile subscribers (CBOR) held by the bench for that server; deliveries/s = clients ×
//!   events / (first publish → last delivery), and the server's CPU time per delivery
//!   (utime + stime from `/proc/<pid>/stat`);
//! - *composition*: `--requests` sequential `GET /v1/quote` to bff-mobile as a signed-in user
//!   (exchange and limits called concurrently), p50 and p99 of the round trip.
//!
//! One unmeasured warm-up round first; medians of `--runs` rounds; the ratio on/off.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchyard_server::server::CancellationToken;

use crate::publish_serve::{CHANNEL, Server, clock_ticks, own_cpus};
use crate::publish_subs::Subscribers;
use crate::stats::median;

/// Arguments of `metrics-cost`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Mobile subscribers of `announcements` (CBOR) per server.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Events per fan-out run, each delivered to every subscriber.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Sequential quote requests per composition run.
    #[arg(long, default_value_t = 500)]
    requests: usize,
    /// Measured rounds (each runs both servers).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// How often the "on" server's three `/metrics` are scraped during its runs, in ms.
    #[arg(long, default_value_t = 1_000)]
    scrape_ms: u64,
    /// The CPUs both server children are pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Socket handshakes in progress at once while connecting the subscribers.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

/// How long the deliveries of a fan-out run may trail its last publish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The most metrics may cost, in percent.
const TARGET_PERCENT: f64 = 3.0;

/// One server and its subscribers.
struct Side {
    name: &'static str,
    server: Server,
    subscribers: Subscribers,
    quote_url: String,
    /// The `/metrics` URLs scraped during its runs (none for "off").
    scrape: Vec<String>,
}

/// One server's figures in one round (`None`: invalid, why is printed).
#[derive(Default, Clone, Copy)]
struct Figures {
    deliveries_per_s: Option<f64>,
    cpu_us_per_delivery: Option<f64>,
    compose_p50_ms: Option<f64>,
    compose_p99_ms: Option<f64>,
    /// Scrapes made during the runs ("on" only).
    scrapes: Option<u64>,
}

/// A free loopback address (bound, read, released: the child binds it right after).
fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if args.clients == 0 || args.events == 0 || args.requests == 0 || args.runs == 0 {
        bail!("--clients, --events, --requests and --runs must be at least 1");
    }
    crate::memory::raise_nofile(2 * args.clients as u64 + 1_024)?;
    let clk_tck = clock_ticks()?;
    let metrics: Vec<String> = (0..3).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
    let on = side("on", &args, &metrics).await?;
    let off = side("off", &args, &[]).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .tcp_nodelay(true)
        .build()?;
    let token = format!("Bearer {}", crate::client::token());
    println!(
        "metrics-cost: {} mobile subscribers per server, {} events per fan-out run, {} quotes \
         per composition run, scrapes every {} ms on the \"on\" server; {} rounds (order \
         alternating, one unmeasured warm-up); servers (pids {} on, {} off) on CPUs {}, bench \
         on CPUs {}",
        args.clients,
        args.events,
        args.requests,
        args.scrape_ms,
        args.runs,
        on.server.pid,
        off.server.pid,
        if args.server_cpus.is_empty() {
            "any"
        } else {
            &args.server_cpus
        },
        own_cpus()
    );
    let mut sides = [on, off];
    let mut next_run = 0u64;
    let mut rounds: Vec<[Figures; 2]> = Vec::new();
    for round in 0..=args.runs {
        let mut figures = [Figures::default(); 2];
        // "on" first in odd rounds, "off" first in even ones.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            next_run += 1;
            let side = &mut sides[i];
            figures[i] = measure(side, &args, &http, &token, clk_tck, next_run).await;
        }
        let label = if round == 0 {
            "warm-up".to_owned()
        } else {
            format!("run {round}")
        };
        for (side, f) in sides.iter().zip(&figures) {
            println!("  {label} {:>3}: {}", side.name, describe(f));
        }
        if round > 0 {
            rounds.push(figures);
        }
    }
    for side in sides {
        drop(side.subscribers);
        side.server.stop().await;
    }
    summary(&rounds);
    Ok(())
}

/// Starts a server (with `/metrics` on `metrics` when given) and connects its subscribers.
async fn side(name: &'static str, args: &Args, metrics: &[String]) -> anyhow::Result<Side> {
    let server = Server::spawn_args(&args.server_cpus, None, metrics).await?;
    let subscribers = Subscribers::connect(
        &server.mobile_url,
        args.clients,
        args.connect_concurrency,
        &[CHANNEL],
    )
    .await
    .with_context(|| format!("connecting the \"{name}\" server's subscribers"))?;
    let base = server
        .mobile_url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("bff-mobile's URL: {}", server.mobile_url))?;
    Ok(Side {
        name,
        quote_url: format!("http://{base}/v1/quote?user=alice&from=EUR&to=USD&amount=100"),
        scrape: metrics
            .iter()
            .map(|addr| format!("http://{addr}/metrics"))
            .collect(),
        server,
        subscribers,
    })
}

/// One fan-out run and one composition run on `side`, scraped meanwhile when it serves metrics.
async fn measure(
    side: &mut Side,
    args: &Args,
    http: &reqwest::Client,
    token: &str,
    clk_tck: f64,
    run: u64,
) -> Figures {
    let stop = CancellationToken::new();
    let scraper = (!side.scrape.is_empty()).then(|| {
        tokio::spawn(scrape(
            http.clone(),
            side.scrape.clone(),
            Duration::from_millis(args.scrape_ms.max(1)),
            stop.clone(),
        ))
    });
    let mut f = Figures::default();
    match fanout(side, args, clk_tck, run).await {
        Ok((rate, cpu)) => {
            f.deliveries_per_s = Some(rate);
            f.cpu_us_per_delivery = Some(cpu);
        }
        Err(e) => println!("  {} fan-out run {run} invalid: {e:#}", side.name),
    }
    match compose(side, args, http, token).await {
        Ok((p50, p99)) => {
            f.compose_p50_ms = Some(p50);
            f.compose_p99_ms = Some(p99);
        }
        Err(e) => println!("  {} composition run {run} invalid: {e:#}", side.name),
    }
    stop.cancel();
    if let Some(scraper) = scraper {
        match scraper.await {
            Ok(Ok(n)) => f.scrapes = Some(n),
            Ok(Err(e)) => println!("  {} run {run}: a scrape failed: {e:#}", side.name),
            Err(e) => println!("  {} run {run}: the scraper panicked: {e}", side.name),
        }
    }
    f
}

/// Scrapes every URL every `every` until `stop`; returns how many scrapes it made.
async fn scrape(
    http: reqwest::Client,
    urls: Vec<String>,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(n),
            _ = tick.tick() => {}
        }
        for url in &urls {
            let answer = http.get(url).send().await?;
            anyhow::ensure!(answer.status() == 200, "{url}: {}", answer.status());
            answer.bytes().await?;
            n += 1;
        }
    }
}

/// `--events` events flooded to the subscribers: deliveries/s and server CPU µs per delivery.
async fn fanout(
    side: &mut Side,
    args: &Args,
    clk_tck: f64,
    run: u64,
) -> anyhow::Result<(f64, f64)> {
    let phase = side.subscribers.begin(run, args.events, 1);
    let cpu_before = side.server.cpu_ticks()?;
    let start = Instant::now();
    side.server
        .command(&format!("flood {run} {}", args.events))
        .await?;
    side.subscribers
        .finish(&phase, DRAIN_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_s = (side.server.cpu_ticks()? - cpu_before) / clk_tck;
    let deliveries = (args.clients * args.events) as f64;
    Ok((deliveries / elapsed, cpu_s * 1e6 / deliveries))
}

/// `--requests` sequential quotes: p50 and p99 in ms.
async fn compose(
    side: &Side,
    args: &Args,
    http: &reqwest::Client,
    token: &str,
) -> anyhow::Result<(f64, f64)> {
    let mut latencies = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let start = Instant::now();
        let answer = http
            .get(&side.quote_url)
            .header("Authorization", token)
            .header("X-Client-App", "bench/1.0")
            .send()
            .await?;
        let status = answer.status();
        answer.bytes().await?;
        anyhow::ensure!(status == 200, "a quote answered {status}");
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok((at(0.5), at(0.99)))
}

fn describe(f: &Figures) -> String {
    let num = |x: Option<f64>, digits: usize| {
        x.map_or_else(|| "invalid".to_owned(), |v| format!("{v:.digits$}"))
    };
    let scrapes = f
        .scrapes
        .map_or_else(String::new, |n| format!("; {n} scrapes"));
    format!(
        "{} deliveries/s, {} µs CPU per delivery; quote p50 {} ms, p99 {} ms{scrapes}",
        num(f.deliveries_per_s, 0),
        num(f.cpu_us_per_delivery, 2),
        num(f.compose_p50_ms, 3),
        num(f.compose_p99_ms, 3)
    )
}

/// The median of one figure over the rounds where it is valid for both servers.
fn medians(rounds: &[[Figures; 2]], get: fn(&Figures) -> Option<f64>) -> Option<(f64, f64)> {
    let pairs: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|[on, off]| Some((get(on)?, get(off)?)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    Some((
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
    ))
}

fn summary(rounds: &[[Figures; 2]]) {
    println!("medians over {} rounds (on vs off):", rounds.len());
    let line = |what: &str, get: fn(&Figures) -> Option<f64>, higher_is_better: bool| {
        match medians(rounds, get) {
            Some((_, off)) if off <= 0.0 => {
                println!("  {what}: too small to measure (runs too short for the CPU clock)");
            }
            Some((on, off)) => {
                // The cost: how much worse "on" is, in percent of "off".
                let cost = if higher_is_better {
                    (off - on) / off * 100.0
                } else {
                    (on - off) / off * 100.0
                };
                let verdict = if cost <= TARGET_PERCENT {
                    "within"
                } else {
                    "OVER"
                };
                println!(
                    "  {what}: on {on:.3}, off {off:.3}: metrics cost {cost:+.2} % \
                     ({verdict} the {TARGET_PERCENT} % target)"
                );
            }
            None => println!("  {what}: no round valid for both"),
        }
    };
    line("fan-out deliveries/s", |f| f.deliveries_per_s, true);
    line("CPU µs per delivery", |f| f.cpu_us_per_delivery, false);
    line("composition p50 ms", |f| f.compose_p50_ms, false);
    line("composition p99 ms", |f| f.compose_p99_ms, false);
}
