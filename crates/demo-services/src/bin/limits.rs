//! The limits demo service on its own: thin — it parses arguments and hands over to the shared
//! server main (configuration from `--config` and `SWITCHYARD_LIMITS__*`, logs, signals).

use clap::Parser;
use switchyard_core::cli::{Args, run_server};

/// Per-user daily conversion limits (demo backend).
#[derive(Debug, Parser)]
#[command(name = "limits", version, about)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_server(
        &cli.args,
        |config: demo_services::limits::Config, listener, shutdown| {
            demo_services::limits::run(config, listener, shutdown)
        },
    )
    .await
}
