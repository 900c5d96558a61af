//! Bring your own services, end to end through the launcher: a backend written in Python
//! (standard library only, `tests/publishers/publish.py`) and one in Node (`fetch`,
//! `tests/publishers/publish.mjs`) publish on the demo catalog's `announcements` channel through
//! the publish API; each event reaches a graphql-ws client (the npm reference client,
//! `tests/js/channel-client.mjs`), a mobile client (CBOR) and a device poll — each exactly once,
//! in publish order, with the offsets the API answered.
//!
//! Needs python3, node (>= 20) and the JavaScript client's dependencies (`npm ci --prefix
//! tests/js`, which scripts/test runs). Without them this test fails, saying so; it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::launcher::token;
use mobile_proto::{Encoding, Position};
use serde_json::{Value, json};
use switchyard::{Config, DEMO_DEVICE, DEMO_DEVICE_KEY, DEMO_PUBLISHER_KEY, Stack};
use test_support::device::{DeviceApi, channel_data};
use test_support::mobile::Client as MobileClient;
use tokio::process::Command;

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing).
const PATIENCE: Duration = Duration::from_secs(30);

const CHANNEL: &str = "announcements";

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Runs `program script args…`, which must exit 0 within [`PATIENCE`]; its stdout's last line as
/// JSON.
async fn run_json(program: &str, script: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut command = Command::new(program);
    command.arg(&script).args(args).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {} did not finish in time", script.display()))
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}): install it (python3, node >= 20)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{program}: not JSON ({e}): {stdout}"))
}

/// The position a publish answer names (epoch and offset as decimal strings).
fn position(answer: &Value) -> Position {
    let num = |key: &str| -> u64 {
        answer[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("`{key}` is not a decimal string: {answer}"))
    };
    assert_eq!(answer["channel"], CHANNEL, "{answer}");
    Position {
        epoch: num("epoch"),
        offset: num("offset"),
    }
}

#[tokio::test]
async fn python_and_node_publishers_reach_every_kind_of_client_exactly_once() {
    for package in ["graphql-ws", "ws"] {
        let manifest = dir("js")
            .join("node_modules")
            .join(package)
            .join("package.json");
        assert!(
            manifest.is_file(),
            "{} is missing: run `npm ci --prefix tests/js` (scripts/test does)",
            manifest.display()
        );
    }
    let mut config = Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    config
        .device
        .devices
        .get_mut(DEMO_DEVICE)
        .expect("the demo device")
        .channels = vec![CHANNEL.to_owned()];
    let stack = Stack::start(config).await.expect("stack starts");
    let url = format!("http://{}/v1/publish", stack.addr("publish"));
    let publish = |program: &'static str, script: &'static str, data: Value| {
        let url = url.clone();
        async move {
            run_json(
                program,
                dir("publishers").join(script),
                &[&url, DEMO_PUBLISHER_KEY, CHANNEL, &data.to_string()],
                &[],
            )
            .await
        }
    };

    // A first event: the position every client starts after, so that none depends on when its
    // subscription happens to start.
    let first = position(&publish("python3", "publish.py", json!({"n": 0})).await);

    // The npm graphql-ws client, resuming after it, waiting for exactly two events.
    let ws = format!("ws://{}/v1/graphql", stack.addr("bff-web"));
    let (epoch, offset) = (first.epoch.to_string(), first.offset.to_string());
    let web = {
        let (ws, epoch, offset) = (ws.clone(), epoch.clone(), offset.clone());
        tokio::spawn(async move {
            run_json(
                "node",
                dir("js").join("channel-client.mjs"),
                &[&ws, CHANNEL, "2"],
                &[("AFTER_EPOCH", &epoch), ("AFTER_OFFSET", &offset)],
            )
            .await
        })
    };

    // A mobile client (CBOR), signed in, resuming after it.
    let mobile_url = format!("ws://{}/v1/ws", stack.addr("bff-mobile"));
    let mut mobile = MobileClient::signed_in(&mobile_url, Encoding::Cbor, token("alice"), "alice")
        .await
        .skipping_pings();
    let subbed = mobile.subbed(CHANNEL, Some(first)).await;
    assert_eq!((subbed.epoch, subbed.offset), (first.epoch, first.offset));

    // The backends publish: Python, then Node.
    let from_python = json!({"n": 1, "from": "python", "text": "héllo ✓"});
    let from_node = json!({"n": 2, "from": "node", "nested": {"list": [1, 2.5, null, true]}});
    let p1 = position(&publish("python3", "publish.py", from_python.clone()).await);
    let p2 = position(&publish("node", "publish.mjs", from_node.clone()).await);
    assert_eq!(p1.epoch, first.epoch);
    assert_eq!((p1.offset, p2.offset), (first.offset + 1, first.offset + 2));

    // Mobile: both, in order, with the answered positions, and nothing more.
    for (want, at) in [(&from_python, p1), (&from_node, p2)] {
        let event = mobile.event().await;
        assert_eq!(event.topic, CHANNEL);
        assert_eq!((event.epoch, event.offset), (at.epoch, at.offset));
        assert_eq!(serde_json::to_value(&event.data).expect("JSON"), *want);
    }
    mobile.quiet(Duration::from_millis(300)).await;

    // Web: both, in order, exactly once (the client fails on a third).
    let web = web.await.expect("the node client's task");
    let events = web["events"].as_array().expect("events");
    let got: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["epoch"].as_str().unwrap_or_default().to_owned(),
                e["offset"].as_str().unwrap_or_default().to_owned(),
                e["data"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (epoch.clone(), p1.offset.to_string(), from_python.clone()),
            (epoch.clone(), p2.offset.to_string(), from_node.clone()),
        ],
        "{web}"
    );

    // Device: every retained event of the channel once across polls with cursors, in order.
    let devices = DeviceApi::new(stack.url("bff-device"), "", PATIENCE);
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let answer = devices
            .poll(DEMO_DEVICE, DEMO_DEVICE_KEY, cursor.as_deref(), 0)
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer = answer.json();
        let data = channel_data(&answer, CHANNEL);
        if data.is_empty() && !seen.is_empty() {
            break;
        }
        seen.extend(data);
        cursor = answer["n"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, vec![json!({"n": 0}), from_python, from_node]);
}
