//! The bff-device binary: thin — it parses arguments and hands over to the shared server main.

use clap::Parser;
use switchyard_core::cli::{Args, run_server};

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
    run_server(
        &cli.args,
        |config: bff_device::Config, listener, shutdown| {
            let bus = switchyard_core::bus::from_config(&config.bus);
            bff_device::run(config, bus, listener, shutdown)
        },
    )
    .await
}
