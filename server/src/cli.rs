//! The command line every Switchyard binary shares: `--config FILE` and `--print-config`.
//!
//! A server binary's whole `main` is one call of [`main`] with its `run` (wrapped in [`with_broker`]
//! when it takes a broker): arguments, configuration, logs, the runtime, the listener and the
//! shutdown signals are handled here, the same for every binary. A binary with its own command
//! line (the launcher) parses [`Args`] and calls [`Args::load`] itself.

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

use switchyard_core::bus::BusConfig;
use switchyard_core::bus::{Broker, Retention};
use switchyard_core::channels::{Catalog, ChannelsConfig};
use tokio::net::TcpListener;

use crate::config::{self, ConfigError, LogConfig, RenamedKey, ServerConfig, Source};
use crate::server::CancellationToken;

/// Arguments common to every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// TOML configuration file; without it the defaults are used. Environment variables
    /// `PREFIX__SECTION__KEY` override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file, environment and defaults merged) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// What a binary should do after loading its configuration.
#[derive(Debug)]
pub enum Loaded<T> {
    /// Run with this configuration.
    Run(T),
    /// `--print-config` was given and the configuration has been printed: exit successfully.
    Printed,
}

impl Args {
    /// Loads the configuration from `--config` and the environment under `env_prefix`, and prints
    /// it when `--print-config` was given.
    pub fn load<T: DeserializeOwned + Serialize + Default>(
        &self,
        env_prefix: &str,
    ) -> Result<Loaded<T>, ConfigError> {
        self.load_renamed(env_prefix, &[])
            .map(|(loaded, _warnings)| loaded)
    }

    /// [`Self::load`], reading the old names of `renamed` keys as their new ones; returns the
    /// deprecation warnings of the old names used, to be logged once logging is set up (with
    /// `--print-config`, they are written to standard error).
    pub fn load_renamed<T: DeserializeOwned + Serialize + Default>(
        &self,
        env_prefix: &str,
        renamed: &[RenamedKey],
    ) -> Result<(Loaded<T>, Vec<String>), ConfigError> {
        let (config, warnings): (T, _) =
            Source::from_process(self.config.as_deref())?.load_renamed(env_prefix, renamed)?;
        if self.print_config {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", config::to_toml(&config));
            return Ok((Loaded::Printed, warnings));
        }
        Ok((Loaded::Run(config), warnings))
    }
}

/// A server binary's configuration: what [`main`] needs to know of it.
pub trait ServerBinary: DeserializeOwned + Serialize + Default {
    /// The binary's name, for `--help` and logs.
    const NAME: &'static str;
    /// What the binary is, one line for `--help`.
    const ABOUT: &'static str;
    /// Prefix of the environment variables that override the configuration.
    const ENV_PREFIX: &'static str;
    /// Keys the binary has renamed: their old names are still read, with a warning.
    const RENAMED_KEYS: &'static [RenamedKey] = &[];
    /// Its listener and limits.
    fn server(&self) -> &ServerConfig;
    /// Its log output.
    fn log(&self) -> &LogConfig;
}

/// A server binary that publishes or reads events: the bus it is configured with.
pub trait WithBus {
    /// Its `[bus]` section.
    fn bus(&self) -> &BusConfig;

    /// Its channel catalog (`[channels]`), if it has one: the bus keeps each catalog channel's
    /// own `history_events`.
    fn channel_catalog(&self) -> Option<&ChannelsConfig> {
        None
    }
}

/// The whole `main` of a server binary: parse `--config`/`--print-config` (with `C::NAME` and
/// `C::ABOUT` in `--help`), start the tokio runtime, and [`run_server`] with `run`.
pub fn main<C, F, Fut>(run: F) -> anyhow::Result<()>
where
    C: ServerBinary,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use clap::{Args as _, FromArgMatches as _};
    // `about` after the arguments: augmenting would put `Args`'s own doc comment there.
    let command = Args::augment_args(clap::Command::new(C::NAME))
        .version(env!("CARGO_PKG_VERSION"))
        .about(C::ABOUT);
    let args = Args::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_server(&args, run))
}

/// `run` of a binary that takes a broker, as the `run` of [`main`]: the process's one
/// [`Broker`], connected from the binary's `[bus]` section, keeping the history its channel
/// catalog gives each catalog channel ([`WithBus::channel_catalog`]).
pub fn with_broker<C, F, Fut>(run: F) -> impl FnOnce(C, TcpListener, CancellationToken) -> Fut
where
    C: WithBus,
    F: FnOnce(C, Broker, TcpListener, CancellationToken) -> Fut,
{
    move |config, listener, shutdown| {
        // The catalog was checked when the configuration was read (a gateway's runtime builds
        // it again and fails its start if that ever changed), so this cannot fail in practice.
        let catalog = config
            .channel_catalog()
            .and_then(|channels| Catalog::new(channels).ok())
            .map(Arc::new);
        let retention = Retention::new(config.bus().history_events, catalog);
        let broker = Broker::connect_with(config.bus(), retention);
        run(config, broker, listener, shutdown)
    }
}

/// Everything a server binary's `main` does around its `run`: load the configuration (or print
/// it and stop), set up logs, bind and log the listener, install SIGTERM/Ctrl-C handling, then
/// hand over to `run`.
pub async fn run_server<C, F, Fut>(args: &Args, run: F) -> anyhow::Result<()>
where
    C: ServerBinary,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context as _;
    let (Loaded::Run(config), deprecated) =
        args.load_renamed::<C>(C::ENV_PREFIX, C::RENAMED_KEYS)?
    else {
        return Ok(());
    };
    // Kept until `run` returns: dropping it flushes the spans not yet exported.
    let _telemetry = crate::telemetry::init(config.log(), C::NAME)?;
    for warning in deprecated {
        tracing::warn!("{warning}");
    }
    switchyard_core::tls::install_default_provider();
    let listen = config.server().listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("{}: cannot listen on {listen}", C::NAME))?;
    tracing::info!(addr = %listener.local_addr()?, "{} listening", C::NAME);
    run(config, listener, crate::server::shutdown_token()).await
}
