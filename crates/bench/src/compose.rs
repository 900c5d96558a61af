//! Composition overhead: the quote through bff-web (GraphQL parse, two concurrent backend calls,
//! merge, serialise) against the baseline of the same two backend calls made directly and
//! concurrently by the bench client, at fixed concurrency levels, in alternating runs in one
//! process. Target: gateway p50 ≤ 1.5 × direct p50 + 0.3 ms.
//!
//! Client, gateway and backends share the machine's cores, so at high concurrency the figures
//! measure CPU cost per operation (the gateway path does about three HTTP exchanges to the direct
//! path's two, plus GraphQL) rather than the latency a hop adds; the sweep shows both regimes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{Sample, median, ms};
use serde_json::json;
use switchyard::{Config, Stack};

/// Arguments of the compose benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Operations in flight at once; a comma-separated list measures each level in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Operations per measured run.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Measured runs of each mode (alternating direct and gateway).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const QUERY: &str = r#"{ quote(user: "alice", from: "EUR", to: "USD", amount: "100") { rate converted remainingLimit } }"#;

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::ephemeral();
    crate::serve::unlimited(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    crate::serve::lift_connection_caps(&mut config);
    let stack = Stack::start(config).await?;
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_concurrency * 2)
        .build()?;
    let rate_url = format!("{}/v1/rates/EUR/USD", stack.url("exchange"));
    let limit_url = format!("{}/v1/limits/alice", stack.url("limits"));
    let gql_url = format!("{}/v1/graphql", stack.url("bff-web"));
    let body = Arc::new(serde_json::to_vec(&json!({ "query": QUERY }))?);
    // The quote's limit is only given to its own user: signed in as alice, as a real client is.
    let auth = format!(
        "Bearer {}",
        bff_web::auth::hs256_token(
            switchyard::DEMO_SECRET,
            "alice",
            std::time::Duration::from_secs(24 * 3600)
        )
    );

    let direct = {
        let client = client.clone();
        move || {
            let (client, rate_url, limit_url) =
                (client.clone(), rate_url.clone(), limit_url.clone());
            async move {
                let (a, b) = tokio::join!(
                    async { client.get(&rate_url).send().await?.bytes().await },
                    async { client.get(&limit_url).send().await?.bytes().await },
                );
                a?;
                b?;
                Ok::<(), reqwest::Error>(())
            }
        }
    };
    let json_url = format!(
        "{}/v1/quote?user=alice&from=EUR&to=USD&amount=100",
        stack.url("bff-mobile")
    );
    let json_gateway = {
        let (client, auth) = (client.clone(), auth.clone());
        move || {
            let (client, url, auth) = (client.clone(), json_url.clone(), auth.clone());
            async move {
                let r = client
                    .get(&url)
                    .header("authorization", auth)
                    .send()
                    .await?;
                assert!(
                    r.status().is_success(),
                    "bff-mobile answered {}",
                    r.status()
                );
                r.bytes().await?;
                Ok::<(), reqwest::Error>(())
            }
        }
    };
    let gateway = move || {
        let (client, url, body, auth) =
            (client.clone(), gql_url.clone(), body.clone(), auth.clone());
        async move {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .header("authorization", auth)
                .body(body.as_ref().clone())
                .send()
                .await?;
            let status = r.status();
            let text = r.bytes().await?;
            assert!(
                status.is_success() && !text.starts_with(br#"{"data":null"#),
                "gateway answered {status}: {}",
                String::from_utf8_lossy(&text)
            );
            Ok::<(), reqwest::Error>(())
        }
    };

    println!(
        "compose: {} requests per run, {} runs per mode (alternating direct/gateway), one process",
        args.requests, args.runs
    );
    // Warm both paths (connections, allocator, caches).
    measure(&direct, max_concurrency, 2_000).await?;
    measure(&gateway, max_concurrency, 2_000).await?;

    for &concurrency in &args.concurrency {
        let (mut d50, mut g50, mut d_rps, mut g_rps) = (vec![], vec![], vec![], vec![]);
        for run in 1..=args.runs {
            for (name, is_gateway) in [("direct ", false), ("gateway", true)] {
                let mut s = if is_gateway {
                    measure(&gateway, concurrency, args.requests).await?
                } else {
                    measure(&direct, concurrency, args.requests).await?
                };
                let (p50, p99, rps) = (s.percentile(0.5), s.percentile(0.99), s.rps());
                println!(
                    "c={concurrency:<3} run {run} {name}  rps {rps:>8.0}  p50 {} ms  p99 {} ms",
                    ms(p50),
                    ms(p99)
                );
                let (p, r) = if is_gateway {
                    (&mut g50, &mut g_rps)
                } else {
                    (&mut d50, &mut d_rps)
                };
                p.push(p50.as_secs_f64() * 1e3);
                r.push(rps);
            }
        }
        // The same composition without GraphQL (bff-mobile's JSON quote), to show GraphQL's share.
        let mut j = measure(&json_gateway, concurrency, args.requests).await?;
        println!(
            "c={concurrency:<3} json (bff-mobile, no GraphQL)  rps {:>8.0}  p50 {} ms  p99 {} ms",
            j.rps(),
            ms(j.percentile(0.5)),
            ms(j.percentile(0.99))
        );
        let (d, g) = (median(d50), median(g50));
        let target = 1.5 * d + 0.3;
        println!(
            "c={concurrency:<3} median p50: direct {d:.3} ms, gateway {g:.3} ms (ratio {:.2}); \
             rps ratio {:.2}; target {target:.3} ms: {}",
            g / d,
            median(g_rps) / median(d_rps),
            if g <= target { "met" } else { "NOT met" }
        );
    }
    stack.stop().await?;
    Ok(())
}

/// Runs `total` operations with `concurrency` workers and records each one's latency.
async fn measure<F, Fut>(op: &F, concurrency: usize, total: usize) -> anyhow::Result<Sample>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), reqwest::Error>>,
{
    let per_worker = total.div_ceil(concurrency);
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| async move {
        let mut lat = Vec::with_capacity(per_worker);
        for _ in 0..per_worker {
            let t = Instant::now();
            op().await?;
            lat.push(t.elapsed());
        }
        Ok::<Vec<Duration>, reqwest::Error>(lat)
    });
    let results = futures::future::try_join_all(workers).await?;
    Ok(Sample {
        elapsed: started.elapsed(),
        latencies: results.into_iter().flatten().collect(),
    })
}
