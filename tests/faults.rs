//! Real faults, end to end, with the losses counted (issue 16, first cases). A fault-injecting
//! proxy (`noxious`, Toxiproxy's port to Rust, in-process: `common::faults::FaultProxy`) sits
//! between the parts, or the test owns the broker and restarts it; live clients count what they
//! receive, and every case asserts: service continues where it can, every client gets every
//! event or an explicit gap/reset, no duplicates, and recovery once the fault heals.
//!
//! - a. bff-mobile's quote with the limits backend behind the proxy: slow beyond the
//!   deadline, down, cut in the middle of its body, then answering garbage; a mobile client and a device poll keep
//!   receiving a stream meanwhile.
//! - b. The rooms service (`tests/js/rooms-server.mjs`) as a `json-ws` source behind the proxy,
//!   dropped mid-stream, then half-open (bytes silently dropped, no FIN) until the keep-alive
//!   notices.
//! - c. A `redis-server` (no persistence) or a `nats-server` (JetStream in a scratch directory,
//!   removed when it stops) or a RabbitMQ node (its own name, ports and data directory; stopped
//!   and restarted on its data) of the test's own, on its own port, under bff-mobile, bff-web
//!   and bff-device on that bus, restarted mid-stream.
//! - d. The same private brokers partitioned from one of two instances of each gateway for 10 s
//!   (`faults/partition.rs`).
//! - e. Clients on a lossy link (latency, sliced) and on a slow one under a burst, resuming as
//!   apps do (`faults/slow_link.rs`, the resuming readers in `faults/resume.rs`).
//! - f. Gateway instances, real processes behind nginx with the deploy configuration, SIGKILLed
//!   (`faults/killed.rs`; nginx must be installed: scripts/services).
//! - g. A slow (not dead) private Redis under the bus: a burst of subscriptions, and a call past
//!   its deadline on a connection that still answers (`faults/slow_broker.rs`).
//!
//! Each prints its figures (`FIGURES | case | client | published | delivered | gaps |
//! duplicates | recovery |`), the rows of docs/reliability.md. Run:
//! `cargo test -p switchyard-e2e --test faults -- --nocapture --test-threads 1`.
//! Needs node (>= 20) with `npm ci --prefix tests/js`, `redis-server`, `nats-server` and
//! RabbitMQ 3.10+ installed (`/usr/lib/rabbitmq/bin/rabbitmq-server`; scripts/services), and the
//! machine's Redis (the private RabbitMQ bus's state store).
//! Every wait ends as soon as its condition holds; the bounds are guards against hangs.

#[path = "faults/backend.rs"]
mod backend;
#[path = "faults/broker.rs"]
mod broker;
mod common;
#[path = "faults/killed.rs"]
mod killed;
#[path = "faults/partition.rs"]
mod partition;
#[path = "faults/resume.rs"]
mod resume;
#[path = "faults/slow_broker.rs"]
mod slow_broker;
#[path = "faults/slow_link.rs"]
mod slow_link;
#[path = "faults/source.rs"]
mod source;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::faults::{FaultProxy, Figures, Shared, snapshot, until};
use mobile_proto::{Encoding, ServerMsg};
use noxious::toxic::{StreamDirection, ToxicKind};
use serde_json::Value;
use switchyard_core::bus::{Broker, BusConfig, BusKind, IdempotencyKey};
use switchyard_core::upstream::BackendConfig;
use test_support::QuoteBackends;
use test_support::device::{DeviceApi, channel_items};
use test_support::mobile::{Client as MobileClient, End};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest wait for anything that should come promptly, generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn js(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js").join(name)
}

/// A mobile client (raw protocol) reading in a task of its own: every event counted by the key
/// `key` gives it, every `gap` counted as one.
fn live_mobile(
    mut client: MobileClient,
    key: impl Fn(&mobile_proto::Event) -> String + Send + 'static,
) -> (Shared, tokio::task::JoinHandle<()>) {
    let tally = Shared::default();
    let mine = tally.clone();
    let task = tokio::spawn(async move {
        loop {
            match client.recv_within(Duration::from_secs(3600)).await {
                Ok(ServerMsg::Event(e)) => {
                    let k = key(&e);
                    mine.lock().unwrap_or_else(|e| e.into_inner()).event(k);
                }
                Ok(ServerMsg::Gap(_)) => mine.lock().unwrap_or_else(|e| e.into_inner()).gap(),
                Ok(_) => {}
                Err(End::Closed(code)) => {
                    mine.lock().unwrap_or_else(|e| e.into_inner()).closed = Some(code);
                    return;
                }
                Err(End::Timeout) => {}
            }
        }
    });
    (tally, task)
}

/// A device long-polling in a task of its own, its cursor carried from answer to answer: every
/// item counted by the key `read` gives it (`None`: not one to count), every gap item and every
/// reset answer (`rs`) counted as a gap.
fn live_device(
    api: DeviceApi,
    id: &'static str,
    key: &'static str,
    read: impl Fn(&Value) -> Vec<Item> + Send + 'static,
) -> (Shared, tokio::task::JoinHandle<()>) {
    let tally = Shared::default();
    let mine = tally.clone();
    let task = tokio::spawn(async move {
        let mut cursor: Option<String> = None;
        loop {
            let answer = api.poll(id, key, cursor.as_deref(), 1).await;
            if answer.status != 200 {
                // The gateway may answer 503 while its broker is down: poll again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let body = answer.json();
            let mut t = mine.lock().unwrap_or_else(|e| e.into_inner());
            if body.get("rs").is_some() {
                t.gap();
            }
            for item in read(&body) {
                match item {
                    Item::Event(k) => t.event(k),
                    Item::Gap => t.gap(),
                }
            }
            drop(t);
            cursor = body["n"].as_str().map(str::to_owned);
        }
    });
    (tally, task)
}

/// A graphql-transport-ws client of one subscription, reading in a task of its own: every
/// event counted by the key `key` finds in a `next` payload's `data`, every `EVENTS_LOST` or
/// `HISTORY_GAP` error counted as a gap; an `error` or `complete` ends it (recorded as closed).
fn live_web(
    mut client: test_support::graphql_ws::Client,
    key: impl Fn(&Value) -> Option<String> + Send + 'static,
) -> (Shared, tokio::task::JoinHandle<()>) {
    let tally = Shared::default();
    let mine = tally.clone();
    let task = tokio::spawn(async move {
        loop {
            let Some(msg) = client.recv_within(Duration::from_secs(3600)).await else {
                continue;
            };
            let mut t = mine.lock().unwrap_or_else(|e| e.into_inner());
            let errors = match msg["type"].as_str() {
                Some("next") => &msg["payload"]["errors"],
                _ => &msg["payload"],
            };
            let lost = errors.as_array().into_iter().flatten().any(|e| {
                e["extensions"]["code"] == "EVENTS_LOST" || e["extensions"]["code"] == "HISTORY_GAP"
            });
            if lost {
                t.gap();
            }
            match msg["type"].as_str() {
                Some("next") => {
                    if let Some(k) = key(&msg["payload"]["data"]) {
                        t.event(k);
                    }
                }
                Some("error" | "complete") => {
                    t.closed = Some(0);
                    return;
                }
                _ => {}
            }
        }
    });
    (tally, task)
}

/// What a device answer holds, for the tally.
enum Item {
    Event(String),
    Gap,
}

/// A v1 device answer's commands, by id; a reset answer is counted by [`live_device`].
fn commands(body: &Value) -> Vec<Item> {
    test_support::device::of_kind(body, "c")
        .iter()
        .map(|e| Item::Event(e["i"].as_str().unwrap_or("?").to_owned()))
        .collect()
}
