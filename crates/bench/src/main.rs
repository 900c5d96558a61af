//! `switchyard-bench`: Switchyard's benchmarks. Run them in release mode:
//!
//! ```text
//! cargo run --release -p bench -- compose
//! ```
//!
//! Every figure is printed beside a baseline measured in the same process and run, because the
//! machine is shared and noisy: compare ratios, not absolute numbers.

mod compose;
mod stats;

use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; run benchmarks with --release");
    }
    match Cli::parse().bench {
        Bench::Compose(args) => compose::run(args).await,
    }
}
