//! The two child processes of the `sockets` benchmark (hidden subcommands), each bounded by the
//! machine's per-process limit on open files, which is why there are many of each:
//!
//! - `serve-sockets`: one shard of the server side — the launcher's stack (bff-mobile on the
//!   Redis bus, so that ONE publish reaches every shard, as it reaches every instance of a
//!   deployment) with bff-mobile's heartbeat and sign-in timeouts out of the way of idle sockets.
//!   Prints `url <ws://…>` once it serves; stops when its standard input closes.
//! - `sockets-client`: the lean load generator for one shard — one small tokio task per socket
//!   holding its `TcpStream` and no buffer ([`crate::sockets_wire`]); each socket
//!   opens from a source address of its own among 127.1.0.1–127.1.15.250 (bind before connect),
//!   signs in (`auth` → `welcome`), subscribes (`sub conversions` → `subbed`), then only reads:
//!   it answers server pings and checks every event it gets against the id it was told to expect.
//!
//! `sockets-client` reads commands on its standard input, one per line, and answers each with
//! one line: `open <n>` → `opened <total>` (or `error <why>`: sockets opened before the failure
//! stay open); `expect <k>` → `armed` (counters reset; event `moon-<k>` expected);
//! `wait <seconds>` → `got <received> <sockets> <lost> <wrong> <first_ns> <last_ns>` once every
//! open socket has received event `k` (or the time is up; `lost`: sockets the server closed;
//! `wrong`: any other message; times are Unix nanoseconds of the first and last receipt).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use serde::Deserialize;
use switchyard_core::bus::{BusConfig, BusKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::{self, Protocol};
use crate::sockets_wire as wire;

/// Arguments of `serve-sockets`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The Redis every shard's bus uses.
    #[arg(long)]
    redis_url: String,
    /// The bus's key prefix (the same for every shard of a run).
    #[arg(long)]
    prefix: String,
}

/// The bus of every shard of a run, and of the publisher.
pub(crate) fn bus_config(redis_url: &str, prefix: &str) -> BusConfig {
    BusConfig {
        kind: BusKind::Redis,
        url: redis_url.to_owned(),
        prefix: prefix.to_owned(),
        ..BusConfig::default()
    }
}

/// Runs one server shard until standard input closes.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    // With `--features dhat-heap`: a heap profile of this shard, written to `dhat-heap.json` (in
    // the working directory) when its standard input closes — while its sockets are still
    // open, so the blocks live at the end are what the idle sockets hold.
    #[cfg(feature = "dhat-heap")]
    let profiler = dhat::Profiler::new_heap();
    let mut config = switchyard::Config::ephemeral();
    crate::serve::unlimited(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    config.bus = bus_config(&args.redis_url, &args.prefix);
    // Idle sockets send nothing: no server ping every 20 s (a million sockets would be 50,000
    // pings and pongs a second — a load of its own, not an idle socket) and no silence close.
    config.mobile.websocket.heartbeat_ms = 3_600_000;
    crate::serve::lift_connection_caps(&mut config);
    let stack = switchyard::Stack::start(config).await?;
    crate::serve::announce(&crate::fanout::gateway_url(&stack, Protocol::Mobile));
    crate::serve::until_stdin_closes().await;
    #[cfg(feature = "dhat-heap")]
    drop(profiler);
    // The parent kills a shard rather than waiting for a drain of thousands of sockets; this is
    // the orderly path when it does not.
    tokio::time::timeout(Duration::from_secs(10), stack.stop())
        .await
        .map_err(|_| anyhow!("the stack did not stop within 10 s"))??;
    Ok(())
}

/// Arguments of `sockets-client`.
#[derive(clap::Args)]
pub(crate) struct ClientArgs {
    /// The shard's WebSocket URL (`ws://127.0.0.1:<port>/v1/ws`).
    #[arg(long)]
    url: String,
    /// The run-wide index of this client's first socket (picks its source addresses).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Sockets being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// Counters every socket task of the client shares.
#[derive(Default)]
struct Shared {
    /// The event expected: `moon-<k>`.
    expected: AtomicU64,
    received: AtomicUsize,
    wrong: AtomicUsize,
    lost: AtomicUsize,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// The parts of a server message the client reads (CBOR; other keys are skipped).
#[derive(Deserialize)]
struct Msg {
    t: String,
    #[serde(default)]
    d: Option<Data>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Deserialize)]
struct Data {
    id: String,
}

/// Unix time in nanoseconds: the one clock every process of the run shares.
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Source address of run-wide socket `g`: 4,000 addresses, so a million sockets take 250
/// ephemeral ports of each.
fn source(g: usize) -> Ipv4Addr {
    let n = g % 4_000;
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// Opens one socket from its own source address, signs in and subscribes.
async fn open(addr: SocketAddr, path: &str, g: usize, token: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let from = source(g);
    socket
        .bind((from, 0).into())
        .with_context(|| format!("binding {from}:0"))?;
    let steps = async {
        let mut tcp = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting {from} → {addr}"))?;
        tcp.set_nodelay(true)?;
        let mut pending = wire::handshake(
            &mut tcp,
            &addr.to_string(),
            path,
            Protocol::Mobile.subprotocol(),
        )
        .await?;
        let auth = mobile_proto::ClientMsg::Auth(mobile_proto::Auth {
            token: token.to_owned(),
            client: None,
        });
        step(&mut tcp, &mut pending, &auth, "welcome").await?;
        let sub = mobile_proto::ClientMsg::Sub(mobile_proto::Sub {
            topic: mobile_proto::topic::CONVERSIONS.to_owned(),
            resume: None,
        });
        step(&mut tcp, &mut pending, &sub, "subbed").await?;
        if !pending.is_empty() {
            bail!("unexpected bytes after `subbed`");
        }
        anyhow::Ok(tcp)
    };
    tokio::time::timeout(client::STEP_TIMEOUT, steps)
        .await
        .map_err(|_| anyhow!("not subscribed within {:?}", client::STEP_TIMEOUT))?
}

/// Sends `msg` and reads until the answer of type `ty` (server pings are answered).
async fn step(
    tcp: &mut TcpStream,
    pending: &mut Vec<u8>,
    msg: &mobile_proto::ClientMsg,
    ty: &str,
) -> anyhow::Result<()> {
    tcp.write_all(&wire::client_frame(&encode(msg))).await?;
    loop {
        let frame = wire::read_frame(tcp, pending).await?;
        if frame.opcode == wire::OP_CLOSE {
            bail!("closed by the server before `{ty}`");
        }
        if frame.opcode != wire::OP_BINARY {
            continue;
        }
        let msg = client::MOBILE
            .decode_server(mobile_proto::FrameKind::Binary, &frame.payload, 1 << 20)
            .map_err(|e| anyhow!("undecodable server message: {e}"))?;
        match msg {
            mobile_proto::ServerMsg::Ping(p) => {
                let pong = mobile_proto::ClientMsg::Pong(mobile_proto::Pong { n: p.n });
                tcp.write_all(&wire::client_frame(&encode(&pong))).await?;
            }
            m if m.type_name() == ty => return Ok(()),
            m => bail!("expected `{ty}`, got {m:?}"),
        }
    }
}

/// A client message in CBOR.
fn encode(msg: &mobile_proto::ClientMsg) -> Vec<u8> {
    match client::MOBILE.encode_client(msg) {
        mobile_proto::Frame::Binary(b) => b,
        mobile_proto::Frame::Text(t) => t.into_bytes(),
    }
}

/// One idle socket: reads until the server closes it, checking events; holds no buffer while
/// nothing is half-read.
async fn idle(mut tcp: TcpStream, shared: Arc<Shared>) {
    let mut pending = Vec::new();
    'socket: while let Ok(true) = wire::read_more(&tcp, &mut pending).await {
        loop {
            let frame = match wire::take_frame(&mut pending) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => break 'socket,
            };
            match frame.opcode {
                wire::OP_BINARY => {}
                wire::OP_CLOSE => break 'socket,
                wire::OP_PING => {
                    let pong = wire::masked(wire::OP_PONG, &frame.payload);
                    if tcp.write_all(&pong).await.is_err() {
                        break 'socket;
                    }
                    continue;
                }
                _ => continue,
            }
            match ciborium::from_reader::<Msg, _>(frame.payload.as_slice()) {
                Ok(Msg { t, d: Some(d), .. }) if t == "event" => {
                    let now = unix_ns();
                    let k =
                        d.id.strip_prefix("moon-")
                            .and_then(|k| k.parse::<u64>().ok());
                    if k == Some(shared.expected.load(Ordering::Acquire)) {
                        shared.first_ns.fetch_min(now, Ordering::AcqRel);
                        shared.last_ns.fetch_max(now, Ordering::AcqRel);
                        shared.received.fetch_add(1, Ordering::AcqRel);
                    } else {
                        shared.wrong.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Ok(Msg { t, n: Some(n), .. }) if t == "ping" => {
                    let pong = mobile_proto::ClientMsg::Pong(mobile_proto::Pong { n });
                    if tcp
                        .write_all(&wire::client_frame(&encode(&pong)))
                        .await
                        .is_err()
                    {
                        break 'socket;
                    }
                }
                _ => {
                    shared.wrong.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        if pending.is_empty() {
            // Frees what the last read allocated: an idle socket keeps nothing.
            pending = Vec::new();
        }
    }
    shared.lost.fetch_add(1, Ordering::AcqRel);
}

/// Runs the client of one shard: commands on standard input, answers on standard output.
pub(crate) async fn client(args: ClientArgs) -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let (authority, path) = args
        .url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| anyhow!("not a ws://host:port/path URL: {}", args.url))?;
    let path = format!("/{path}");
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("not an IP address and port: {authority}"))?;
    let token = client::token();
    let shared = Arc::new(Shared::default());
    let mut opened = 0usize;
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("open"), Some(Ok(n))) => {
                let from = args.first + opened;
                let (path, token) = (path.as_str(), token.as_str());
                let mut results = futures::stream::iter(from..from + n as usize)
                    .map(|g| async move { open(addr, path, g, token).await })
                    .buffer_unordered(args.concurrency.max(1));
                let mut failure = None;
                while let Some(result) = results.next().await {
                    match result {
                        Ok(tcp) => {
                            opened += 1;
                            tokio::spawn(idle(tcp, shared.clone()));
                        }
                        Err(e) if failure.is_none() => failure = Some(format!("{e:#}")),
                        Err(_) => {}
                    }
                }
                match failure {
                    None => format!("opened {opened}"),
                    Some(why) => format!("error after {opened} sockets: {why}"),
                }
            }
            (Some("expect"), Some(Ok(k))) => {
                shared.received.store(0, Ordering::Release);
                shared.wrong.store(0, Ordering::Release);
                shared.first_ns.store(u64::MAX, Ordering::Release);
                shared.last_ns.store(0, Ordering::Release);
                shared.expected.store(k, Ordering::Release);
                "armed".to_owned()
            }
            (Some("wait"), Some(Ok(secs))) => {
                let end = tokio::time::Instant::now() + Duration::from_secs(secs);
                loop {
                    let done = shared.received.load(Ordering::Acquire)
                        + shared.lost.load(Ordering::Acquire);
                    if done >= opened || tokio::time::Instant::now() >= end {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                format!(
                    "got {} {opened} {} {} {} {}",
                    shared.received.load(Ordering::Acquire),
                    shared.lost.load(Ordering::Acquire),
                    shared.wrong.load(Ordering::Acquire),
                    shared.first_ns.load(Ordering::Acquire),
                    shared.last_ns.load(Ordering::Acquire),
                )
            }
            _ => format!("error unknown command: {line}"),
        };
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}
