//! The demo page in a real headless Chromium: Debian's `/usr/bin/chromium` driven by the npm
//! `playwright-core` package (`tests/js/browser-demo.mjs`), against the whole stack.
//!
//! The launcher's own bff-web is checked over HTTP (the page, the client, each service's
//! component through `/ui/{service}/…`, and what that proxy refuses). The browser runs against a
//! second bff-web built from the launcher's wiring (`Stack::web_config`) on the stack's broker,
//! which the test holds: it reads the gateway's open sockets and subscriptions
//! (`bff_web::App::stats`), and stops and starts it on the same address. Over stdio the script
//! asks for those; this test answers. The script checks: all three components live, ONE
//! WebSocket; two components on one channel make one subscription at the gateway; a convert
//! shows in the feed and moves the limit (and the screenshot, `docs/browser-demo.png`); after a
//! restart, with conversions made meanwhile through the conversions service, the page reconnects
//! and shows each once; in shared mode a second tab opens no socket and gets the same events.
//!
//! Needs node (>= 20), `npm ci --prefix tests/js` and chromium (scripts/services installs it).
//! Without them this test fails, saying so; it never skips.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::launcher::{stack, token};
use serde_json::{Value, json};
use switchyard::Stack;
use switchyard_server::server::CancellationToken;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinHandle;

/// The whole browser run's bound (the script has its own, shorter).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

fn check_setup() {
    let hint = "run `bash scripts/services` (installs chromium) and `npm ci --prefix tests/js`";
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: {hint}"
    );
    assert!(
        js_dir()
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is missing: {hint}"
    );
}

/// A bff-web the test holds: its stats, and the means to stop it.
struct Gateway {
    stats: bff_web::Stats,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    async fn start(stack: &Stack, addr: SocketAddr) -> Self {
        // The address was just given up by the gateway before: retry briefly while it frees.
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("cannot bind {addr} again"));
        let stop = CancellationToken::new();
        let app = bff_web::app(stack.web_config(), stack.broker(), stop.clone()).expect("app");
        let stats = app.stats();
        let task = tokio::spawn(app.serve(listener));
        Self { stats, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the gateway drains in time")
            .expect("the gateway task")
            .expect("the gateway stops cleanly");
    }
}

async fn get(url: &str) -> (u16, String, String) {
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("GET");
    let status = answer.status().as_u16();
    let media = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, media, answer.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launchers_gateway_serves_the_page_the_client_and_each_services_component() {
    let stack = stack(3_600_000).await;
    let web = stack.url("bff-web");
    let (status, media, page) = get(&format!("{web}/")).await;
    assert_eq!(status, 200);
    assert!(media.starts_with("text/html"), "{media}");
    assert!(
        page.contains("/ui/conversions/conversion-feed.js"),
        "{page}"
    );
    let (status, media, client) = get(&format!("{web}/v1/client.js")).await;
    assert_eq!(
        (status, media.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(client.contains("export function connect"));
    let (status, _, dts) = get(&format!("{web}/v1/client.d.ts")).await;
    assert_eq!(status, 200);
    assert!(dts.contains("export function connect"));
    for (service, file, element) in [
        ("exchange", "fx-ticker.js", "fx-ticker"),
        ("limits", "limit-card.js", "limit-card"),
        ("conversions", "conversion-feed.js", "conversion-feed"),
    ] {
        let (status, media, body) = get(&format!("{web}/ui/{service}/{file}")).await;
        assert_eq!(status, 200, "{service}/{file}");
        assert_eq!(media, "text/javascript; charset=utf-8");
        assert!(body.contains(&format!("customElements.define('{element}'")));
        // Only through its own service: another service does not have it.
        let other = if service == "limits" {
            "exchange"
        } else {
            "limits"
        };
        let (status, _, _) = get(&format!("{web}/ui/{other}/{file}")).await;
        assert_eq!(status, 404, "{other}/{file}");
    }
    // Nothing but a service's own /ui/ files: no traversal, no other route, no other service.
    for path in [
        "/ui/limits/..%2Fv1%2Flimits%2Falice",
        "/ui/limits/%2e%2e/v1/limits/alice",
        "/ui/limits/..%5Cv1",
        "/ui/exchange/.%2e/v1/stats",
        "/ui/exchange/x%00.js",
        "/ui/exchange/.hidden",
        "/ui/bff-mobile/x.js",
        "/ui/publish/x.js",
        "/ui/limits/",
    ] {
        let (status, _, body) = get(&format!("{web}{path}")).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("dailyLimit"), "{path}: {body}");
    }
    let long = format!("{web}/ui/exchange/{}.js", "a".repeat(10_000));
    assert_eq!(get(&long).await.0, 404);
    stack.stop().await.expect("stack stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_in_headless_chromium_shares_one_connection_and_resumes() {
    check_setup();
    // Rates tick every 300 ms: live, without flooding the page.
    let stack = stack(300).await;
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let mut gateway = Gateway::start(&stack, addr).await;
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/browser-demo.png");

    let mut child = Command::new("node")
        .arg(js_dir().join("browser-demo.mjs"))
        .arg(format!("http://{addr}"))
        .arg(token("alice"))
        .arg(&screenshot)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install node >= 20"));
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let run = async {
        let report = loop {
            let Some(line) = lines.next_line().await.expect("read the script") else {
                panic!("the script ended without a report");
            };
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the script wrote no JSON ({e}): {line}"));
            let answer = match message["ask"].as_str() {
                Some("stats") => json!({
                    "sockets": gateway.stats.sockets(),
                    "subscriptions": gateway.stats.v1_subscriptions(),
                }),
                Some("restart") => {
                    gateway.stop().await;
                    // While the gateway is down, conversions are made and published.
                    let mut ids = Vec::new();
                    for _ in 0..3 {
                        let made: Value = client
                            .post(format!("{}/v1/conversions", stack.url("conversions")))
                            .json(&json!({"user": "alice", "from": "EUR", "to": "USD", "amount": "1"}))
                            .send()
                            .await
                            .expect("convert")
                            .error_for_status()
                            .expect("converted")
                            .json()
                            .await
                            .expect("conversion JSON");
                        ids.push(made["id"].clone());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    gateway = Gateway::start(&stack, addr).await;
                    json!({ "ids": ids })
                }
                _ => break message,
            };
            stdin
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .expect("answer the script");
        };
        (report, gateway)
    };
    let (report, gateway) = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .expect("the browser run finishes in time");
    let status = child.wait().await.expect("node exits");
    assert_eq!(report["ok"], true, "browser run failed: {report}");
    assert!(status.success(), "node exited {status}: {report}");
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    gateway.stop().await;
    stack.stop().await.expect("stack stops");
}
