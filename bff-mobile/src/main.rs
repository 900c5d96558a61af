//! The bff-mobile binary: thin — it parses arguments and hands over to the shared server main.

use clap::Parser;
use switchyard_core::cli::{Args, run_server};

#[derive(Parser)]
#[command(
    name = "bff-mobile",
    version,
    about = "Switchyard gateway for mobile apps"
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
        |config: bff_mobile::Config, listener, shutdown| {
            let bus = switchyard_core::bus::from_config(&config.bus);
            bff_mobile::run(config, bus, listener, shutdown)
        },
    )
    .await
}
