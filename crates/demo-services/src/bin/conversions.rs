//! The conversions demo service on its own: loads its configuration (`--config`, environment
//! `SWITCHYARD_CONVERSIONS__*`), builds the bus it is configured with, binds, and runs until
//! SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use demo_services::conversions::{self, Config};
use switchyard_core::bus::Bus;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::cli::{Args, Loaded};
use switchyard_core::config::BusKind;
use switchyard_core::server::shutdown_token;
use tokio::net::TcpListener;

/// Converts amounts and publishes conversion events (demo backend).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Loaded::Run(config) = cli.args.load::<Config>("SWITCHYARD_CONVERSIONS")? else {
        return Ok(());
    };
    switchyard_core::telemetry::init(&config.log);
    let bus: Arc<dyn Bus> = match config.bus.kind {
        BusKind::Memory => Arc::new(MemoryBus::new(config.bus.history_events)),
    };
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "conversions listening");
    conversions::run(config, bus, listener, shutdown_token()).await
}
