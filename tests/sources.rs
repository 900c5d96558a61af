//! Hide a backend's own WebSocket API behind Switchyard by configuration, end to end through the
//! launcher: a Node service with a JSON protocol of its own (`tests/js/rooms-server.mjs`, the
//! npm `ws` package; follow/unfollow a room, messages for a room's followers) becomes a `json-ws`
//! source feeding the catalog channels `rooms.{room}`. Its messages reach a graphql-ws client (the
//! npm reference client), a mobile client (CBOR) and a device poll, each exactly once and in
//! order; the service sees ONE follow however many clients, released with the last; garbage from
//! it is counted and never stops the source.
//!
//! Needs node (>= 20) and `npm ci --prefix tests/js` (scripts/test runs it). Without them this
//! test fails, saying so; it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::launcher::token;
use mobile_proto::Encoding;
use serde_json::{Value, json};
use switchyard::{Config, DEMO_DEVICE, DEMO_DEVICE_KEY, Stack};
use switchyard_core::channels::{ChannelConfig, SubscribeRule};
use switchyard_core::event::TopicClass;
use switchyard_core::sources::SourceConfig;
use test_support::device::{DeviceApi, channel_data};
use test_support::mobile::Client as MobileClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing).
const PATIENCE: Duration = Duration::from_secs(30);

const CHANNEL: &str = "rooms.lobby";

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// An upstream service run by node: commands on its stdin, one JSON line back for each.
struct Upstream {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl Upstream {
    /// Starts `node tests/js/<script>` and reads the port it prints.
    async fn start(script: &str) -> Self {
        let manifest = dir("js/node_modules/ws/package.json");
        assert!(
            manifest.is_file(),
            "{} is missing: run `npm ci --prefix tests/js` (scripts/test does)",
            manifest.display()
        );
        let mut child = Command::new("node")
            .arg(dir("js").join(script))
            .current_dir(dir("js"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install node >= 20"));
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = Self::line(&mut lines).await;
        let port = first["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{script} did not print its port: {first}"));
        Self {
            _child: child,
            stdin,
            lines,
            port,
        }
    }

    async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the upstream answers in time")
            .expect("the upstream's stdout")
            .expect("the upstream is running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Asks for `stats` until `done` holds, for at most [`PATIENCE`].
    async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let end = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.command("stats").await;
            if done(&stats) {
                return stats;
            }
            assert!(tokio::time::Instant::now() < end, "{what}: {stats}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn command(&mut self, line: &str) -> Value {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the upstream's stdin");
        Self::line(&mut self.lines).await
    }
}

/// The `[sources.rooms]` block a team would write for the rooms service at `port`.
fn rooms_source(port: u16) -> SourceConfig {
    let text = format!(
        r#"
kind = "json-ws"
url = "ws://127.0.0.1:{port}/"
channels = "rooms.{{room}}"
headers = {{ authorization = "Bearer rooms-secret" }}
subscribe = '{{"action":"follow","room":"{{room}}"}}'
unsubscribe = '{{"action":"unfollow","room":"{{room}}"}}'
reconnect_initial_ms = 50
reconnect_max_ms = 500

[[messages]]
when = {{ "/type" = "message" }}
capture = {{ "/room" = "{{room}}" }}
fields = {{ seq = "/seq", text = "/text" }}

[[messages]]
when = {{ "/type" = "following" }}
ignore = true

[[messages]]
when = {{ "/type" = "unfollowed" }}
ignore = true
"#
    );
    toml::from_str(&text).expect("the documented configuration reads")
}

fn message(seq: u64) -> Value {
    json!({"seq": seq, "text": format!("hello {seq} ✓")})
}

#[tokio::test]
async fn a_json_ws_service_reaches_every_kind_of_client_through_one_upstream_follow() {
    let mut rooms = Upstream::start("rooms-server.mjs").await;
    let mut config = Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    config.channels.catalog.push(ChannelConfig {
        pattern: "rooms.{room}".to_owned(),
        class: TopicClass::Stream,
        history_events: 100,
        max_payload_bytes: 4096,
        subscribe: SubscribeRule::Public,
        publishers: Vec::new(),
    });
    config
        .sources
        .insert("rooms".to_owned(), rooms_source(rooms.port));
    config
        .device
        .devices
        .get_mut(DEMO_DEVICE)
        .expect("the demo device")
        .channels = vec![CHANNEL.to_owned()];
    let stack = Stack::start(config).await.expect("stack starts");

    // A mobile client subscribes: the source follows the room upstream, once.
    let mobile_url = format!("ws://{}/v1/ws", stack.addr("bff-mobile"));
    let mut mobile = MobileClient::signed_in(&mobile_url, Encoding::Cbor, token("alice"), "alice")
        .await
        .skipping_pings();
    mobile.subbed(CHANNEL, None).await;
    rooms
        .until("the service sees one follow of the lobby", |s| {
            s["follows"]["lobby"] == 1
        })
        .await;

    // The first message; its position is where the web client starts.
    assert_eq!(rooms.command("say lobby 1").await["to"], 1);
    let first = mobile.event().await;
    assert_eq!(first.topic, CHANNEL);
    assert_eq!(serde_json::to_value(&first.data).unwrap(), message(0));

    let ws = format!("ws://{}/v1/graphql", stack.addr("bff-web"));
    let (epoch, offset) = (first.epoch.to_string(), first.offset.to_string());
    let web = {
        let (epoch, offset) = (epoch.clone(), offset.clone());
        tokio::spawn(async move {
            let out = Command::new("node")
                .arg(dir("js").join("channel-client.mjs"))
                .args([&ws, CHANNEL, "2"])
                .env("AFTER_EPOCH", &epoch)
                .env("AFTER_OFFSET", &offset)
                .kill_on_drop(true)
                .output()
                .await
                .expect("node runs");
            assert!(
                out.status.success(),
                "channel-client failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default())
                .expect("the client's JSON line")
        })
    };

    // Garbage from the service is counted and changes nothing; then two more messages.
    assert_eq!(rooms.command("garbage lobby").await["sent"], 4);
    assert_eq!(rooms.command("say lobby 2").await["to"], 1);

    for seq in [1, 2] {
        let event = mobile.event().await;
        assert_eq!(event.topic, CHANNEL);
        assert_eq!((event.epoch, event.offset), (first.epoch, first.offset + seq));
        assert_eq!(serde_json::to_value(&event.data).unwrap(), message(seq));
    }
    mobile.quiet(Duration::from_millis(300)).await;

    let web = tokio::time::timeout(PATIENCE, web)
        .await
        .expect("the web client finishes")
        .expect("the web client's task");
    let got: Vec<(String, String, Value)> = web["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["epoch"].as_str().unwrap_or_default().to_owned(),
                e["offset"].as_str().unwrap_or_default().to_owned(),
                e["data"].clone(),
            )
        })
        .collect();
    let at = |k: u64| (first.offset + k).to_string();
    assert_eq!(
        got,
        vec![
            (epoch.clone(), at(1), message(1)),
            (epoch.clone(), at(2), message(2)),
        ],
        "{web}"
    );

    // The device: every retained message once across polls with cursors, in order.
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
    assert_eq!(seen, vec![message(0), message(1), message(2)]);

    // Still one follow and one connection for all of them; garbage did not break the source.
    let stats = rooms.command("stats").await;
    assert_eq!(stats["follows"]["lobby"], 1, "{stats}");
    assert_eq!(stats["connections_total"], 1, "{stats}");

    // The last subscriber gone: the room is unfollowed upstream.
    drop(mobile);
    rooms
        .until("the last subscriber's departure unfollows the room", |s| {
            s["unfollows"]["lobby"] == 1
        })
        .await;
}
