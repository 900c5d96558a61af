//! The conversions demo service on its own: thin — it parses arguments and hands over to the shared
//! server main (configuration from `--config` and `SWITCHYARD_CONVERSIONS__*`, logs, signals).

use clap::Parser;
use switchyard_core::cli::{Args, run_server};

/// Converts amounts and publishes conversion events (demo backend).
#[derive(Debug, Parser)]
#[command(name = "conversions", version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_server(
        &cli.args,
        |config: demo_services::conversions::Config, listener, shutdown| {
            let bus = switchyard_core::bus::from_config(&config.bus);
            demo_services::conversions::run(config, bus, listener, shutdown)
        },
    )
    .await
}
