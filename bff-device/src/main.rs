//! The bff-device binary: reads its configuration, installs signal handling, runs the gateway.

use clap::Parser;
use switchyard_core::cli::{Args, Loaded};

#[derive(Parser)]
#[command(
    name = "bff-device",
    version,
    about = "Switchyard gateway for devices (long-poll)"
)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Loaded::Run(config) = cli
        .args
        .load::<bff_device::Config>(bff_device::ENV_PREFIX)?
    else {
        return Ok(());
    };
    switchyard_core::telemetry::init(&config.log);
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "bff-device listening");
    let bus = switchyard_core::bus::from_config(&config.bus);
    let shutdown = switchyard_core::server::shutdown_token();
    bff_device::run(config, bus, listener, shutdown).await
}
