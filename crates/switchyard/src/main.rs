//! `switchyard`: the one-command launcher. `switchyard up` runs the demo services and the three
//! gateways in one process on the in-memory bus, prints every URL, and stops cleanly on Ctrl-C
//! or SIGTERM.

use clap::{Parser, Subcommand};
use switchyard::{Config, Stack};
use switchyard_server::cli::{Args, Loaded};

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
    /// Print a bearer token for a demo user, signed with the stack's secret (valid 24 hours).
    Token {
        /// The user the token signs in (1 to 64 of A-Z a-z 0-9 _ -).
        user: String,
        #[command(flatten)]
        args: Args,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (args, token_for) = match Cli::parse().command {
        Command::Up { args } => (args, None),
        Command::Token { user, args } => (args, Some(user)),
    };
    let (Loaded::Run(config), deprecated) =
        args.load_renamed::<Config>(switchyard::ENV_PREFIX, switchyard::RENAMED_KEYS)?
    else {
        return Ok(());
    };
    if let Some(user) = token_for {
        demo_api::UserId::parse(&user)?;
        let ttl = std::time::Duration::from_secs(24 * 3600);
        println!(
            "{}",
            bff_web::auth::hs256_token(config.token_secret()?, &user, ttl)
        );
        return Ok(());
    }
    // Kept until the stack stops: dropping it flushes the spans not yet exported.
    let _telemetry = switchyard_server::telemetry::init(&config.log, "switchyard")?;
    for warning in deprecated {
        tracing::warn!("{warning}");
    }
    switchyard_core::tls::install_default_provider();
    let demo_key = config
        .device
        .devices
        .get(switchyard::DEMO_DEVICE)
        .map(|d| d.key.clone());
    let admin_token = config.device.admin.token.clone();
    // The demo key is printed only while the configuration still holds its hash.
    let demo_publisher_key = config
        .publish
        .keys
        .iter()
        .any(|k| {
            k.publisher == switchyard::DEMO_PUBLISHER
                && switchyard_core::keyhash::from_hex(&k.sha256)
                    == Some(switchyard_core::keyhash::sha256(
                        switchyard::DEMO_PUBLISHER_KEY.as_bytes(),
                    ))
        })
        .then_some(switchyard::DEMO_PUBLISHER_KEY);
    let metrics_urls = config.metrics_urls();
    let stack = Stack::start(config).await?;
    let url = |c: &str| stack.url(c);
    println!("switchyard is up (in-memory bus)");
    println!("  bff-web      {}/v1/graphql", url("bff-web"));
    if stack.web_config().ui.demo_page {
        println!(
            "    demo page: {}/  (sign in: `switchyard token alice`, or {}/#token=<token>)",
            url("bff-web"),
            url("bff-web")
        );
    }
    println!("  bff-mobile   {}/v1/quote", url("bff-mobile"));
    println!(
        "  bff-device   {}/v1/devices/{{id}}/events",
        url("bff-device")
    );
    if let Some(key) = &demo_key {
        println!(
            "    demo device `{}`: X-Device-Key: {key}",
            switchyard::DEMO_DEVICE
        );
    }
    if !admin_token.is_empty() {
        println!("    admin API: Authorization: Bearer {admin_token}");
    }
    println!("  limits       {}/v1/limits/{{user}}", url("limits"));
    println!(
        "  exchange     {}/v1/rates/{{from}}/{{to}}  ws://{}/v1/ticks",
        url("exchange"),
        stack.addr("exchange")
    );
    println!("  conversions  {}/v1/conversions", url("conversions"));
    println!(
        "  statements   {}/v1/statements/{{user}}  (through the gateways: /v1/files/statements.csv)",
        url("statements")
    );
    if let Some(addr) = stack.publish_addr() {
        println!("  publish      http://{addr}/v1/publish");
        if let Some(key) = demo_publisher_key {
            println!(
                "    publisher `{}`: Authorization: Bearer {key}",
                switchyard::DEMO_PUBLISHER
            );
        }
    }
    for (gateway, url) in &metrics_urls {
        match url {
            Some(url) => println!("  metrics      {url}  ({gateway}, Prometheus text format)"),
            None => {
                println!("  metrics      ({gateway}: port chosen at start, logged as metrics_addr)")
            }
        }
    }
    println!(
        "try: curl '{}/v1/quote?user=alice&from=EUR&to=USD&amount=100'",
        url("bff-mobile")
    );
    if let Some(key) = &demo_key {
        println!(
            "try: curl -H 'X-Device-Key: {key}' '{}/v1/devices/{}/events?wait=20'",
            url("bff-device"),
            switchyard::DEMO_DEVICE
        );
    }
    println!("press Ctrl-C to stop");
    stack
        .run_until(switchyard_server::server::shutdown_signal())
        .await?;
    println!("switchyard stopped");
    Ok(())
}
