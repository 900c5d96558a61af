//! Structured logs through tracing-subscriber, human or JSON, set up once per process.
//!
//! Library code only emits `tracing` events; binaries call [`init`]. Tests do not call it, so
//! their output stays quiet unless they opt in.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `config.filter`.
/// Calling it twice is harmless: the second call leaves the first subscriber in place.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
