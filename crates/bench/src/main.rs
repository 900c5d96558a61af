//! `switchyard-bench`: Switchyard's benchmarks. Run them in release mode:
//!
//! ```text
//! cargo run --release -p bench -- compose
//! cargo run --release -p bench -- fanout
//! cargo run --release -p bench -- memory
//! cargo run --release -p bench -- mobile-fanout
//! cargo run --release -p bench -- mobile-memory
//! cargo run --release -p bench -- bus-latency
//! flock /tmp/bench.lock taskset -c 1 target/release/switchyard-bench channels-scale
//! cargo run --release -p bench -- device-hold
//! cargo run --release -p bench -- device-soak
//! taskset -c 1 target/release/switchyard-bench publish
//! taskset -c 1 target/release/switchyard-bench sources
//! taskset -c 1 target/release/switchyard-bench files
//! target/release/switchyard-bench soak
//! taskset -c 1 target/release/switchyard-bench metrics-cost
//! flock /tmp/bench.lock target/release/switchyard-bench sockets
//! ```
//!
//! Every figure is printed beside a baseline measured in the same run, because the machine is
//! shared and noisy: compare ratios, not absolute numbers. `serve-gateway`, `serve-baseline`,
//! `serve-device`, `serve-publish` and `serve-files` are hidden: the memory benchmarks, `publish` and `sources` run each
//! server in a child process through them.

mod baseline;
mod bus;
mod channels_scale;
mod client;
mod compose;
mod device;
mod device_serve;
mod fanout;
mod fanout_serve;
mod files;
mod memory;
mod metrics_cost;
mod publish;
mod publish_serve;
mod publish_subs;
mod serve;
mod sockets;
mod sockets_child;
mod sockets_wire;
mod sources;
mod stats;

use clap::{Parser, Subcommand};

use crate::client::Protocol;

#[derive(Parser)]
#[command(
    name = "switchyard-bench",
    about = "Switchyard benchmarks (use --release)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Composition overhead: the quote through bff-web versus the same two backend calls made
    /// directly and concurrently by the client.
    Compose(compose::Args),
    /// Subscription fan-out: server CPU per delivery (servers pinned to one core, clients on the
    /// other), deliveries/s and publish-to-client latency to 1,000 graphql-transport-ws clients,
    /// bff-web versus a minimal tokio-tungstenite broadcast server.
    Fanout(fanout::Args),
    /// Memory per idle subscribed socket (server RSS with 10,000 sockets), bff-web versus a
    /// minimal tokio-tungstenite broadcast server, each in a child process.
    Memory(memory::Args),
    /// Mobile fan-out: server CPU per delivery (pinned), deliveries/s and publish-to-client
    /// latency to 1,000 switchyard-mobile.v1 (CBOR) clients, bff-mobile versus the minimal
    /// broadcast server; also prints the bytes of a rate tick in CBOR and in the JSON twin.
    MobileFanout(fanout::Args),
    /// Memory per idle authenticated, subscribed mobile socket (server RSS with 10,000 sockets),
    /// bff-mobile versus the minimal broadcast server, each in a child process.
    MobileMemory(memory::Args),
    /// Bus delivery latency: publish through instance A, receive on A and on B, for the
    /// in-memory bus (baseline), Redis, NATS and RabbitMQ Streams (needs the local Redis, NATS
    /// and RabbitMQ with its stream plugin).
    BusLatency(bus::Args),
    /// Per-user channels at scale: 1,000,000 channels of one pattern on private Redis and NATS
    /// servers (pinned): broker and client memory per channel and per live subscription,
    /// publish and subscribe CPU per channel, memory after the idle expiry, and NATS's one
    /// stream per pattern against a stream per channel.
    ChannelsScale(channels_scale::Args),
    /// Device long-poll: memory per held poll (10,000 held polls, bff-device versus a minimal
    /// long-poll server, each in a child process) and the time to answer them all when one event
    /// wakes them, versus 10,000 polls that find the event pending, in the same run.
    DeviceHold(device::HoldArgs),
    /// Device soak: 1,000 devices polling in a loop while every device gets 100 commands a
    /// second for a minute; every device must receive every command.
    DeviceSoak(device::SoakArgs),
    /// The publish API (`POST /v1/publish`) against publishing in-process on the same stack:
    /// publishes/s and server CPU per publish at 1 and 16 publishers, and publish→delivery
    /// p50/p99 to 1,000 mobile subscribers at a paced rate (server in a child process, pinned).
    Publish(publish::Args),
    /// Upstream message → client delivery through each kind of source (json-ws, sse,
    /// redis-pubsub, socketio) against the in-process publish, to 1,000 mobile subscribers (server
    /// in a child process, pinned).
    Sources(sources::Args),
    /// Large-file download throughput through bff-web's and bff-mobile's streamed file routes
    /// against the same download straight from the statements service, and the server's CPU
    /// per GiB (server in a child process, pinned).
    Files(files::Args),
    /// Runs the stack for `files`.
    #[command(hide = true)]
    ServeFiles(files::ServeArgs),
    /// Soak: 10,000 sockets (graphql-ws and mobile) and 1,000 polling devices for 10 minutes at
    /// 100 events/s, with a backend restart and a bus (private redis-server) restart in the
    /// middle: server RSS every 30 s, events lost without a signal, duplicates.
    Soak(bench::soak::Args),
    /// Runs the soak's stack (server child of `soak`).
    #[command(hide = true)]
    ServeSoak(bench::soak::ServeArgs),
    /// What serving metrics costs: fan-out deliveries/s and composition p50 with every
    /// gateway's `/metrics` served and scraped against none, two pinned server children in the
    /// same run, interleaved.
    MetricsCost(metrics_cost::Args),
    /// A million idle, authenticated, subscribed bff-mobile sockets (steps 100k, 250k, 500k, 1M):
    /// server and client memory and CPU per socket, and the time for one event to reach them
    /// all; server shards (pinned, on one Redis bus) because of the per-process file limit.
    Sockets(sockets::Args),
    /// Runs one server shard of `sockets`.
    #[command(hide = true)]
    ServeSockets(sockets_child::ServeArgs),
    /// Runs the client of one shard of `sockets`.
    #[command(hide = true)]
    SocketsClient(sockets_child::ClientArgs),
    /// Runs the stack and the in-process publisher for `publish` and `sources`.
    #[command(hide = true)]
    ServePublish(publish_serve::Args),
    /// Runs the fan-out servers (both baselines and the stack) for `fanout` and
    /// `mobile-fanout`, pinned.
    #[command(hide = true)]
    ServeFanout(fanout_serve::Args),
    /// Runs bff-device (or the minimal long-poll baseline) in this process for `device-hold`.
    #[command(hide = true)]
    ServeDevice(device_serve::Args),
    /// Runs the stack in this process for `memory` (prints its URL, stops when stdin closes).
    #[command(hide = true)]
    ServeGateway(serve::GatewayArgs),
    /// Runs the baseline server in this process for `memory`.
    #[command(hide = true)]
    ServeBaseline(serve::BaselineArgs),
}

/// With `--features dhat-heap`, every allocation goes through dhat (see `device_serve.rs`).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Cli::parse().bench;
    let is_child = matches!(
        bench,
        Bench::ServeGateway(_)
            | Bench::ServeBaseline(_)
            | Bench::ServeDevice(_)
            | Bench::ServePublish(_)
            | Bench::ServeFanout(_)
            | Bench::ServeFiles(_)
            | Bench::ServeSoak(_)
            | Bench::ServeSockets(_)
            | Bench::SocketsClient(_)
    );
    if cfg!(debug_assertions) && !is_child {
        eprintln!("warning: a debug build; run benchmarks with --release");
    }
    match bench {
        Bench::Compose(args) => compose::run(args).await,
        Bench::Fanout(args) => fanout::run(args, Protocol::Graphql).await,
        Bench::Memory(args) => memory::run(args, Protocol::Graphql).await,
        Bench::MobileFanout(args) => fanout::run(args, Protocol::Mobile).await,
        Bench::MobileMemory(args) => memory::run(args, Protocol::Mobile).await,
        Bench::BusLatency(args) => bus::run(args).await,
        Bench::ChannelsScale(args) => channels_scale::run(args).await,
        Bench::DeviceHold(args) => device::hold(args).await,
        Bench::DeviceSoak(args) => device::soak(args).await,
        Bench::Publish(args) => publish::run(args).await,
        Bench::Sources(args) => sources::run(args).await,
        Bench::Files(args) => files::run(args).await,
        Bench::ServeFiles(args) => files::serve(args).await,
        Bench::Soak(args) => {
            let report = bench::soak::run(args).await?;
            if report.duplicates > 0 || report.silent_losses > 0 || report.behind > 0 {
                anyhow::bail!("the soak lost or duplicated events: {report:?}");
            }
            Ok(())
        }
        Bench::ServeSoak(args) => bench::soak::serve(args).await,
        Bench::MetricsCost(args) => metrics_cost::run(args).await,
        Bench::Sockets(args) => sockets::run(args).await,
        Bench::ServeSockets(args) => sockets_child::serve(args).await,
        Bench::SocketsClient(args) => sockets_child::client(args).await,
        Bench::ServePublish(args) => publish_serve::run(args).await,
        Bench::ServeFanout(args) => fanout_serve::run(args).await,
        Bench::ServeDevice(args) => device_serve::run(args).await,
        Bench::ServeGateway(args) => serve::gateway(args).await,
        Bench::ServeBaseline(args) => serve::baseline(args).await,
    }
}
