//! The exchange demo service on its own: thin — it parses arguments and hands over to the shared
//! server main (configuration from `--config` and `SWITCHYARD_EXCHANGE__*`, logs, signals).

use clap::Parser;
use switchyard_core::cli::{Args, run_server};

/// Currency rates over REST and its own WebSocket tick protocol (demo backend).
#[derive(Debug, Parser)]
#[command(name = "exchange", version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_server(
        &cli.args,
        |config: demo_services::exchange::Config, listener, shutdown| {
            demo_services::exchange::run(config, listener, shutdown)
        },
    )
    .await
}
