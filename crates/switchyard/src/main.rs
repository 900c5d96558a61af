//! `switchyard`: the one-command launcher. `switchyard up` runs the demo services and the three
//! gateways in one process on the in-memory bus, prints every URL, and stops cleanly on Ctrl-C
//! or SIGTERM.

use clap::{Parser, Subcommand};
use switchyard::{Config, Stack};
use switchyard_core::cli::{Args, Loaded};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: Backends-for-Frontends gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo services and all three gateways in one process (in-memory bus).
    Up {
        #[command(flatten)]
        args: Args,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Up { args } = Cli::parse().command;
    let Loaded::Run(config) = args.load::<Config>(switchyard::ENV_PREFIX)? else {
        return Ok(());
    };
    switchyard_core::telemetry::init(&config.log);
    let stack = Stack::start(config).await?;
    let url = |c: &str| stack.url(c);
    println!("switchyard is up (in-memory bus)");
    println!("  bff-web      {}/v1/graphql", url("bff-web"));
    println!("  bff-mobile   {}/v1/quote", url("bff-mobile"));
    println!("  bff-device   {}/v1/quote", url("bff-device"));
    println!("  limits       {}/v1/limits/{{user}}", url("limits"));
    println!(
        "  exchange     {}/v1/rates/{{from}}/{{to}}  ws://{}/v1/ticks",
        url("exchange"),
        stack.addr("exchange")
    );
    println!("  conversions  {}/v1/conversions", url("conversions"));
    println!(
        "try: curl '{}/v1/quote?user=alice&from=EUR&to=USD&amount=100'",
        url("bff-mobile")
    );
    println!("press Ctrl-C to stop");
    stack
        .run_until(switchyard_core::server::shutdown_signal())
        .await?;
    println!("switchyard stopped");
    Ok(())
}
