//! The servers the memory benchmark measures, each run alone in a child process of the bench
//! binary (hidden subcommands `serve-gateway` and `serve-baseline`) so that the process's
//! resident memory is the server's and nothing else's.
//!
//! A child prints one line, `url <ws://…>`, once it accepts sockets, and runs until its standard
//! input closes — so it never outlives the bench that spawned it. It does not measure anything
//! itself.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::baseline::{Baseline, Buffers};
use crate::client::Protocol;

/// Arguments of `serve-baseline`.
#[derive(clap::Args)]
pub(crate) struct BaselineArgs {
    /// The sockets' buffer sizes.
    #[arg(long, value_enum, default_value = "default")]
    buffers: Buffers,
    /// The protocol it speaks.
    #[arg(long, value_enum, default_value = "graphql")]
    protocol: Protocol,
}

/// Arguments of `serve-gateway`.
#[derive(clap::Args)]
pub(crate) struct GatewayArgs {
    /// Which gateway's URL to announce: bff-web's (graphql) or bff-mobile's (mobile).
    #[arg(long, value_enum, default_value = "graphql")]
    protocol: Protocol,
}

/// Runs the whole stack (bff-web and bff-mobile on the in-memory bus, the demo services beside
/// them) and announces the URL of the gateway of `protocol`.
pub(crate) async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut config = switchyard::Config::ephemeral();
    unlimited(&mut config);
    config.exchange.tick_interval_ms = 3_600_000;
    config.log.filter = "warn".into();
    // The benchmark holds sockets open before `connection_init` (`auth`) to measure them at that
    // stage, and its idle sockets send nothing: no sign-in timeout, no heartbeat close.
    config.web.websocket.init_timeout_ms = 3_600_000;
    config.mobile.websocket.auth_timeout_ms = 3_600_000;
    config.mobile.websocket.heartbeat_ms = 3_600_000;
    lift_connection_caps(&mut config);
    let stack = switchyard::Stack::start(config).await?;
    announce(&crate::fanout::gateway_url(&stack, args.protocol));
    until_stdin_closes().await;
    tokio::time::timeout(Duration::from_secs(10), stack.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the stack did not stop within 10 s"))??;
    Ok(())
}

/// Lifts every connection cap of the stack: a benchmark opens thousands of connections from one
/// address, signed in as one user.
pub(crate) fn lift_connection_caps(config: &mut switchyard::Config) {
    for server in [
        &mut config.limits.server,
        &mut config.exchange.server,
        &mut config.conversions.server,
        &mut config.statements.server,
        &mut config.web.server,
        &mut config.mobile.server,
        &mut config.device.server,
    ] {
        server.max_connections_per_ip = 0;
        server.max_connections = 0;
    }
    config.web.websocket.max_sockets_per_user = 0;
    config.mobile.websocket.max_sockets_per_user = 0;
}

/// Runs the baseline broadcast server.
pub(crate) async fn baseline(args: BaselineArgs) -> anyhow::Result<()> {
    let server = Baseline::start(128, args.buffers, args.protocol).await?;
    announce(&server.url());
    until_stdin_closes().await;
    drop(server);
    Ok(())
}

pub(crate) fn announce(url: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // The parent reads this line; if stdout is gone there is nobody to serve.
    let _ = writeln!(out, "url {url}");
    let _ = out.flush();
}

pub(crate) async fn until_stdin_closes() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Turns every gateway's rate limits off: a benchmark drives thousands of requests and sockets
/// from one address on purpose.
pub(crate) fn unlimited(config: &mut switchyard::Config) {
    let off = switchyard_core::ratelimit::RateLimitConfig::off;
    config.web.rate_limits = off();
    config.mobile.rate_limits = off();
    config.device.rate_limits = off();
}
