//! The bff-web binary: thin — it parses arguments and hands over to the shared server main.

use clap::Parser;
use switchyard_core::cli::{Args, run_server};

#[derive(Parser)]
#[command(
    name = "bff-web",
    version,
    about = "Switchyard gateway for browsers (GraphQL)"
)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_server(&cli.args, |config: bff_web::Config, listener, shutdown| {
        let bus = switchyard_core::bus::from_config(&config.bus);
        bff_web::run(config, bus, listener, shutdown)
    })
    .await
}
