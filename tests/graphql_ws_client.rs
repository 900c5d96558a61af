//! Compatibility with the reference graphql-transport-ws client: the npm package `graphql-ws`,
//! run with node (`tests/js/rates-client.mjs`) against bff-web of the whole stack. It connects,
//! runs a query over the socket, subscribes to rates, receives ticks with increasing `seq`,
//! completes the subscription and closes normally; then the exchange service shows the upstream
//! watch released.
//!
//! Needs node (>= 20) and the client's dependencies: `npm ci --prefix tests/js` (scripts/test
//! runs it). Without them this test fails, saying so; it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::launcher::{exchange_stats, stack, token, ws_url};
use serde_json::{Value, json};
use switchyard::Stack;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How long the node client may run before it is killed (it has its own 15 s timeout).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

const SETUP_HINT: &str = "install the JavaScript client's dependencies with \
    `npm ci --prefix tests/js` (scripts/test does it; it needs node >= 20 and npm)";

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Fails (never skips) with a clear message when node or the npm dependencies are missing.
async fn check_node_setup() {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install node >= 20, then {SETUP_HINT}")
        });
    assert!(
        version.status.success(),
        "`node --version` failed ({}): install node >= 20, then {SETUP_HINT}",
        version.status
    );
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version} is too old: graphql-ws 6 needs node >= 20"
    );
    for package in ["graphql-ws", "ws"] {
        let dir = js_dir().join("node_modules").join(package);
        assert!(
            dir.join("package.json").is_file(),
            "{} is missing: {SETUP_HINT}",
            dir.display()
        );
    }
}

/// What the node client reported.
struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "node client exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `node tests/js/rates-client.mjs <url> [token]`, killing it after [`CLIENT_TIMEOUT`].
async fn run_node_client(ws_url: &str, token: Option<&str>) -> Run {
    let script = js_dir().join("rates-client.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(ws_url)
        .args(token)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node {}: {e}", script.display()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let read_out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s).await;
        s
    });
    let read_err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    let status = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait()).await {
        Ok(status) => status.expect("wait for node"),
        Err(_) => {
            let _ = child.kill().await;
            let stderr = read_err.await.unwrap_or_default();
            panic!(
                "the node client did not finish within {CLIENT_TIMEOUT:?}; killed it. stderr:\n{stderr}"
            );
        }
    };
    Run {
        status,
        stdout: read_out.await.expect("stdout reader"),
        stderr: read_err.await.expect("stderr reader"),
    }
}

/// Checks a successful run's summary: the query's answer, at least 3 ticks with strictly
/// increasing `seq`, and a normal closure.
fn check_summary(run: &Run) {
    let report = run.report();
    assert!(run.status.success(), "{report}");
    println!("{report}"); // shown with --nocapture
    let summary: Value = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary on stdout\n{report}"));
    assert_eq!(summary["ok"], true, "{report}");
    assert_eq!(
        summary["query"],
        json!({"data": {"__typename": "Query"}}),
        "{report}"
    );
    let seqs: Vec<i64> = summary["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("no seqs in the summary\n{report}"))
        .iter()
        .map(|s| s.as_i64().expect("an integer seq"))
        .collect();
    assert!(seqs.len() >= 3, "at least 3 ticks\n{report}");
    assert_eq!(summary["ticks"], json!(seqs.len()), "{report}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increasing: {seqs:?}\n{report}"
    );
    assert_eq!(summary["closeCode"], 1000, "normal closure\n{report}");
}

/// The ticks came through the gateway's upstream source from the exchange service, and now that
/// the client is gone the gateway has released its upstream watch there.
async fn assert_upstream_watch_released(stack: &Stack) {
    let stats = exchange_stats(stack).await;
    assert!(
        stats["connections_total"].as_u64() >= Some(1),
        "the exchange never saw the gateway's upstream connection: {stats}"
    );
    let released = test_support::eventually(Duration::from_secs(5), || async {
        exchange_stats(stack).await["watchers"] == json!({})
    })
    .await;
    assert!(
        released,
        "the exchange still has watchers after the client left: {}",
        exchange_stats(stack).await
    );
}

#[tokio::test]
async fn the_graphql_ws_npm_client_subscribes_to_rates_and_completes_cleanly() {
    check_node_setup().await;
    let stack = stack(50).await;
    let run = run_node_client(&ws_url(&stack), None).await;
    check_summary(&run);
    assert_upstream_watch_released(&stack).await;
    stack.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_npm_client_signs_in_with_connection_params_and_a_bad_token_is_refused() {
    check_node_setup().await;
    let stack = stack(50).await;
    let token = token("alice");
    let run = run_node_client(&ws_url(&stack), Some(&token)).await;
    check_summary(&run);

    // A refused token closes the socket with 4403 Forbidden; the client reports it and fails.
    let run = run_node_client(&ws_url(&stack), Some("not-a-token")).await;
    let report = run.report();
    assert!(!run.status.success(), "a bad token must fail\n{report}");
    println!("{report}"); // shown with --nocapture
    assert!(
        run.stderr.contains("code 4403"),
        "closed with 4403\n{report}"
    );
    assert!(
        run.stdout.trim().is_empty(),
        "no summary on failure\n{report}"
    );

    assert_upstream_watch_released(&stack).await;
    stack.stop().await.expect("clean stop");
}
