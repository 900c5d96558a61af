//! The limits demo service on its own: loads its configuration (`--config`, environment
//! `SWITCHYARD_LIMITS__*`), binds, and runs until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use demo_services::limits::{self, Config};
use switchyard_core::cli::{Args, Loaded};
use switchyard_core::server::shutdown_token;
use tokio::net::TcpListener;

/// Per-user daily conversion limits (demo backend).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Loaded::Run(config) = cli.args.load::<Config>("SWITCHYARD_LIMITS")? else {
        return Ok(());
    };
    switchyard_core::telemetry::init(&config.log);
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "limits listening");
    limits::run(config, listener, shutdown_token()).await
}
