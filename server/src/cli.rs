//! The command line every Switchyard binary shares: `--config FILE` and `--print-config`.
//!
//! A binary's `main` parses [`Args`], calls [`Args::load`] with its own config type and env prefix,
//! and hands the result to its `run`. Nothing here starts servers.

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{self, ConfigError, Source};

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
        let config: T = Source::from_process(self.config.as_deref())?.load(env_prefix)?;
        if self.print_config {
            print!("{}", config::to_toml(&config));
            return Ok(Loaded::Printed);
        }
        Ok(Loaded::Run(config))
    }
}

/// A server binary's configuration: what [`run_server`] needs to know of it.
pub trait ServerBinary: DeserializeOwned + Serialize + Default {
    /// The binary's name, for logs.
    const NAME: &'static str;
    /// Prefix of the environment variables that override the configuration.
    const ENV_PREFIX: &'static str;
    /// Its listener and limits.
    fn server(&self) -> &crate::config::ServerConfig;
    /// Its log output.
    fn log(&self) -> &crate::config::LogConfig;
}

/// Everything a server binary's `main` does around its `run`: load the configuration (or print
/// it and stop), set up logs, bind and log the listener, install SIGTERM/Ctrl-C handling, then
/// hand over to `run`.
pub async fn run_server<C, F, Fut>(args: &Args, run: F) -> anyhow::Result<()>
where
    C: ServerBinary,
    F: FnOnce(C, tokio::net::TcpListener, crate::server::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context as _;
    let Loaded::Run(config) = args.load::<C>(C::ENV_PREFIX)? else {
        return Ok(());
    };
    crate::telemetry::init(config.log());
    crate::tls::install_default_provider();
    let listen = config.server().listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("{}: cannot listen on {listen}", C::NAME))?;
    tracing::info!(addr = %listener.local_addr()?, "{} listening", C::NAME);
    run(config, listener, crate::server::shutdown_token()).await
}
