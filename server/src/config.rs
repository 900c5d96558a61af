//! Configuration loading: one TOML file per deployment, environment-variable overrides on top,
//! and the sections every server binary has (`[server]`, `[log]` with `[log.otlp]`).
//!
//! Loading goes through [`Source`], which tests replace with an in-memory file and environment.
//! The binary's defaults are the bottom layer; the file and then the environment are merged over
//! them table by table, so each changes exactly the keys it names. Unknown keys are errors that
//! name the full path of the key (`backends.exchange.timeout`), so a typo never silently falls
//! back to a default. A table keyed by names, such as `backends`, accepts any name unless the
//! binary that knows its names reads it with [`only_known`].
//!
//! Environment overrides use a per-binary prefix and `__` between path segments:
//! `SWITCHYARD_WEB__SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`. Values are read as TOML
//! scalars when they parse as one (`5`, `true`, `1.5`) and as strings otherwise.
//!
//! This module does not know any gateway's own sections, nor the core's: each subsystem owns its
//! section's type (`switchyard_core::upstream::BackendConfig`, `hub::HubConfig`,
//! `sources::SourceConfig`, `bus::BusConfig`), and each binary composes them into its own
//! config struct.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod merge;
mod names;
mod renamed;

pub use names::only_known;
pub use renamed::RenamedKey;

/// An error loading configuration. The message always names the file, variable or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file at fault.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment override cannot be applied (for example it descends into a scalar).
    #[error("environment variable {var} cannot be applied: {message}")]
    Env {
        /// The variable at fault.
        var: String,
        /// Why.
        message: String,
    },
    /// A key is unknown, missing or has the wrong type.
    #[error("invalid config at `{key}`: {message}")]
    Invalid {
        /// The dotted path of the key at fault.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Where configuration comes from: an optional file and the process environment.
///
/// Tests build one with [`Source::new`] and their own file text and variables.
#[derive(Debug, Clone, Default)]
pub struct Source {
    file: Option<(PathBuf, String)>,
    env: Vec<(String, String)>,
}

impl Source {
    /// A source with the given file (path, contents) and environment variables.
    pub fn new(file: Option<(PathBuf, String)>, env: Vec<(String, String)>) -> Self {
        Self { file, env }
    }

    /// Reads `path` (if given) and takes the process environment.
    pub fn from_process(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Some((p.to_owned(), text))
            }
            None => None,
        };
        Ok(Self::new(file, std::env::vars().collect()))
    }

    /// Loads a `T` from this source: `T::default()` as a TOML document, the file deep-merged
    /// over it, then every variable that starts with `{env_prefix}__`, then strict
    /// deserialisation. A table in the file or an override changes only the keys it names; every
    /// other key keeps `T`'s own default.
    pub fn load<T: DeserializeOwned + Serialize + Default>(
        &self,
        env_prefix: &str,
    ) -> Result<T, ConfigError> {
        self.load_renamed(env_prefix, &[]).map(|(config, _)| config)
    }

    /// [`Self::load`], reading each old key of `renamed` (in the file or the environment) as its
    /// new one; returns the deprecation warnings of the old keys used, for the caller to log once
    /// logging is set up. A file, or an environment, that sets both names of a key is refused.
    pub fn load_renamed<T: DeserializeOwned + Serialize + Default>(
        &self,
        env_prefix: &str,
        renamed: &[RenamedKey],
    ) -> Result<(T, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let mut root =
            merge::defaults_table(&T::default()).map_err(|message| ConfigError::Invalid {
                key: "(the binary's defaults)".to_owned(),
                message,
            })?;
        if let Some((path, text)) = &self.file {
            let file = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    path: path.clone(),
                    message: e.to_string().trim().to_owned(),
                })?;
            let mut file = file;
            renamed::rename_in_table(
                &mut file,
                renamed,
                &format!("in {}", path.display()),
                &mut warnings,
            )
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
            merge::deep_merge(&mut root, file);
        }
        let prefix = format!("{env_prefix}__");
        let mut vars: Vec<&(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        vars.sort();
        let mut env_paths = std::collections::BTreeSet::new();
        for (var, value) in vars {
            let path: Vec<String> = var[prefix.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            let path = renamed::rename_path(path, renamed, var, &mut warnings);
            if let Some(r) = renamed.iter().find(|r| r.new == path.join("."))
                && !env_paths.insert(r.new)
            {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: renamed::both(r),
                });
            }
            apply_override(&mut root, &path, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
        }
        let de = toml::Value::Table(root);
        let config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Invalid {
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        Ok((config, warnings))
    }
}

fn apply_override(root: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("the variable names no key".into());
    };
    if path.iter().any(String::is_empty) {
        return Err("empty key segment".into());
    }
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{seg}` is not a table"))?;
    }
    table.insert(last.clone(), parse_scalar(raw));
    Ok(())
}

/// Reads an override value as a TOML value when it parses as one, else as a plain string.
fn parse_scalar(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

/// Renders a config as TOML, for `--print-config`.
pub fn to_toml<T: Serialize>(config: &T) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

/// The HTTP listener and request limits of a server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port (the bound address is logged).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests before closing them.
    pub drain_timeout_ms: u64,
    /// Time a client has to send a whole request head (request line and headers), counted from
    /// the connection's opening or the end of its previous answer; the connection is closed
    /// when it passes. So it is also how long an idle keep-alive connection stays open.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a whole request body, counted from the end of its head; a body
    /// not complete in time gets 408 and the connection is closed.
    pub body_read_timeout_ms: u64,
    /// Time a write to a client may wait for the client to read (no byte accepted by its
    /// socket for this long while an answer, a streamed body or a WebSocket frame is pending);
    /// the connection is then closed. Counted only while a write waits, never while idle or
    /// while a long poll is held. 0 = no timeout (not advised: a client that stops reading
    /// would hold its connection, and a streamed download's backend call, for ever).
    pub send_timeout_ms: u64,
    /// Connections open at once from one client address (an IPv6 client: its /64); more are
    /// accepted and closed at once. 0 = no cap (behind a proxy every connection comes from the
    /// proxy's address: cap per client there).
    pub max_connections_per_ip: usize,
    /// Connections open at once in all; more are accepted and closed at once. 0 = no cap.
    pub max_connections: usize,
}

impl ServerConfig {
    /// A server config listening on `listen` with the default limits.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }

    /// A backend's server config on `listen`: its callers are a few gateway instances, so there
    /// is no cap per client address (`max_connections` still bounds the total).
    pub fn backend(listen: SocketAddr) -> Self {
        Self {
            max_connections_per_ip: 0,
            ..Self::on(listen)
        }
    }

    /// The drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The request head timeout as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// The request body timeout as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// The write stall timeout as a duration.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            body_limit_bytes: 64 * 1024,
            drain_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            send_timeout_ms: 60_000,
            max_connections_per_ip: 256,
            max_connections: 10_000,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` for terminals, `json` for log collectors (one object per line).
    pub format: LogFormat,
    /// A tracing-subscriber filter such as `info` or `info,switchyard_core=debug`.
    /// `RUST_LOG`, when set, wins over this.
    pub filter: String,
    /// `[log.otlp]`: OpenTelemetry spans exported over OTLP/HTTP, off unless `endpoint` is set.
    pub otlp: OtlpConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".into(),
            otlp: OtlpConfig::default(),
        }
    }
}

/// `[log.otlp]`: where and how spans are exported (docs/operations.md, "Tracing").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The OTLP/HTTP collector's base URL, such as `http://127.0.0.1:4318`: spans are POSTed
    /// (protobuf) to `{endpoint}/v1/traces`. Empty, the default: nothing is exported, and no
    /// exporter is started.
    pub endpoint: String,
    /// The spans' `service.name`; empty: the binary's name (`bff-web`, `switchyard`, ...).
    pub service_name: String,
    /// The share of new traces recorded, 0.0 to 1.0. A trace a caller started (a valid
    /// `traceparent`) is recorded when the caller's sampled flag says so, whatever this is.
    pub sample_ratio: f64,
    /// Longest one export request may take.
    pub timeout_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            service_name: String::new(),
            sample_ratio: 1.0,
            timeout_ms: 5_000,
        }
    }
}

impl OtlpConfig {
    /// The traces URL (`{endpoint}/v1/traces`), or `None` when export is off; an endpoint that
    /// is not an `http://` or `https://` URL, or a ratio outside 0 to 1, is an error naming its
    /// key.
    pub fn traces_url(&self) -> Result<Option<String>, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("log.otlp.{key}"),
            message,
        };
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "sample_ratio",
                format!("{} is not between 0.0 and 1.0", self.sample_ratio),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "must be at least 1".to_owned()));
        }
        let endpoint = self.endpoint.trim();
        if endpoint.is_empty() {
            return Ok(None);
        }
        let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !scheme_ok || endpoint.parse::<axum::http::Uri>().is_err() {
            return Err(invalid(
                "endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL"),
            ));
        }
        Ok(Some(format!(
            "{}/v1/traces",
            endpoint.trim_end_matches('/')
        )))
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Coloured, multi-field lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests;
