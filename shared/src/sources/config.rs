//! A source's configuration, `[sources.NAME]`: its kind, where the upstream is, which channels
//! it feeds, how to ask for one, and the rules that read its messages.
//!
//! One flat table for every kind, so that a key of another kind is refused by name (`namespace`
//! on a `json-ws` source) rather than silently ignored; [`SourceConfig::check`] says which keys a
//! kind needs and takes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rules::{RuleConfig, Rules};
use super::template::Template;
use crate::tls::TlsConfig;

/// The upstream protocols a source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Any JSON-over-WebSocket protocol, described by templates.
    JsonWs,
    /// A Socket.IO server (Engine.IO v4 over WebSocket, Socket.IO protocol v5).
    Socketio,
    /// A Server-Sent Events endpoint.
    Sse,
    /// Redis pub/sub channels (PSUBSCRIBE).
    RedisPubsub,
}

impl SourceKind {
    /// The kind as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::JsonWs => "json-ws",
            SourceKind::Socketio => "socketio",
            SourceKind::Sse => "sse",
            SourceKind::RedisPubsub => "redis-pubsub",
        }
    }
}

/// An event a Socket.IO source emits to join or leave a channel upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmitConfig {
    /// The event name.
    pub event: String,
    /// Its arguments; strings may hold the channel's placeholders (`"{symbol}"`).
    #[serde(default)]
    pub args: Vec<Value>,
    /// Ask for an acknowledgement, and log a refusal or a missing one.
    #[serde(default = "defaults::yes")]
    pub ack: bool,
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `json-ws`, `socketio`, `sse` or `redis-pubsub`.
    pub kind: SourceKind,
    /// The upstream: `ws://`/`wss://` (json-ws), `http://`/`https://` (socketio, sse),
    /// `redis://`/`rediss://` (redis-pubsub).
    pub url: String,
    /// The channels this source feeds, a template over catalog channel names
    /// (`prices.{symbol}`, `rates.{base}-{quote}`): its placeholders are what the join and
    /// subscribe templates use.
    pub channels: String,
    /// Headers sent to the upstream (`authorization = "Bearer …"`); not for redis-pubsub.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS of `wss://`/`https://`/`rediss://`: extra CA roots, client certificate.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Longest time to open the upstream connection.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First wait before reconnecting; doubles up to `reconnect_max_ms`, with full jitter.
    #[serde(default = "defaults::reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between two reconnection attempts.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Time to live of the cluster-wide lease that makes one instance feed a channel.
    #[serde(default = "defaults::lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Largest upstream message (and frame); a larger one is counted and dropped (SSE, Redis)
    /// or drops the connection (WebSocket, where the frame cannot be skipped).
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// The most channels wanted at once (each one upstream subscription); a channel beyond them
    /// is not fed, and counted.
    #[serde(default = "defaults::max_channels")]
    pub max_channels: usize,
    /// json-ws: the text sent when a channel gains its first subscriber.
    #[serde(default)]
    pub subscribe: Option<String>,
    /// json-ws: the text sent when a channel loses its last subscriber.
    #[serde(default)]
    pub unsubscribe: Option<String>,
    /// json-ws: a text sent every `keepalive_ms` (else WebSocket pings are sent).
    #[serde(default)]
    pub keepalive: Option<String>,
    /// json-ws: time between keep-alives (a connection silent for two is reopened); sse: half
    /// the silence after which the stream counts as lost; redis-pubsub: time between PINGs.
    /// (socketio follows the server's `pingInterval` and `pingTimeout`.)
    #[serde(default = "defaults::keepalive_ms")]
    pub keepalive_ms: u64,
    /// socketio: the namespace (`/` by default).
    #[serde(default)]
    pub namespace: Option<String>,
    /// socketio: the auth payload of the namespace's CONNECT (a table).
    #[serde(default)]
    pub auth: Option<Value>,
    /// socketio: the event emitted when a channel gains its first subscriber.
    #[serde(default)]
    pub join: Option<EmitConfig>,
    /// socketio: the event emitted when a channel loses its last subscriber.
    #[serde(default)]
    pub leave: Option<EmitConfig>,
    /// socketio: the Engine.IO path (`/socket.io/` by default).
    #[serde(default)]
    pub path: Option<String>,
    /// redis-pubsub: the Redis channel patterns to PSUBSCRIBE (`orders:*`).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// The rules that read upstream messages, in order.
    #[serde(default)]
    pub messages: Vec<RuleConfig>,
}

/// A source's configuration, checked: its templates and rules parsed.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The configuration.
    pub config: SourceConfig,
    /// `channels`, parsed.
    pub channels: Template,
    /// `messages`, checked.
    pub rules: Rules,
    /// `subscribe`, parsed (json-ws).
    pub subscribe: Option<Template>,
    /// `unsubscribe`, parsed (json-ws).
    pub unsubscribe: Option<Template>,
}

impl SourceConfig {
    /// A source of `kind` at `url` feeding `channels`, with the default timings and no rules.
    pub fn new(kind: SourceKind, url: impl Into<String>, channels: impl Into<String>) -> Self {
        Self {
            kind,
            url: url.into(),
            channels: channels.into(),
            headers: BTreeMap::new(),
            tls: TlsConfig::default(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            reconnect_initial_ms: defaults::reconnect_initial_ms(),
            reconnect_max_ms: defaults::reconnect_max_ms(),
            lease_ttl_ms: defaults::lease_ttl_ms(),
            max_message_bytes: defaults::max_message_bytes(),
            max_channels: defaults::max_channels(),
            subscribe: None,
            unsubscribe: None,
            keepalive: None,
            keepalive_ms: defaults::keepalive_ms(),
            namespace: None,
            auth: None,
            join: None,
            leave: None,
            path: None,
            patterns: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Time to open a connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    /// The lease's time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(1))
    }

    /// Checks the source: the keys its kind needs are set, keys of other kinds are not, the
    /// templates and rules parse, the URL's scheme fits the kind. The error names the key,
    /// relative to the source (`messages[2].capture."/pair": …`).
    pub fn check(&self) -> Result<Checked, String> {
        let channels = Template::parse(&self.channels).map_err(|e| format!("channels: {e}"))?;
        if channels.prefix().is_empty() {
            return Err(format!(
                "channels: `{}` must start with literal text (`prices.{{symbol}}`), so that the \
                 source's channels can be told apart",
                self.channels
            ));
        }
        let schemes: &[&str] = match self.kind {
            SourceKind::JsonWs => &["ws://", "wss://"],
            SourceKind::Socketio | SourceKind::Sse => &["http://", "https://"],
            SourceKind::RedisPubsub => &["redis://", "rediss://"],
        };
        if !schemes.iter().any(|s| {
            self.url
                .get(..s.len())
                .is_some_and(|u| u.eq_ignore_ascii_case(s))
        }) {
            return Err(format!(
                "url: `{}` must start with {} for a {} source",
                self.url,
                schemes.join(" or "),
                self.kind.as_str()
            ));
        }
        let kind = self.kind.as_str();
        let only = |set: bool, key: &str, kinds: &[SourceKind]| -> Result<(), String> {
            if set && !kinds.contains(&self.kind) {
                return Err(format!("{key}: not a key of a {kind} source"));
            }
            Ok(())
        };
        use SourceKind::*;
        only(self.subscribe.is_some(), "subscribe", &[JsonWs])?;
        only(self.unsubscribe.is_some(), "unsubscribe", &[JsonWs])?;
        only(self.keepalive.is_some(), "keepalive", &[JsonWs])?;
        only(self.namespace.is_some(), "namespace", &[Socketio])?;
        only(self.auth.is_some(), "auth", &[Socketio])?;
        only(self.join.is_some(), "join", &[Socketio])?;
        only(self.leave.is_some(), "leave", &[Socketio])?;
        only(self.path.is_some(), "path", &[Socketio])?;
        only(!self.patterns.is_empty(), "patterns", &[RedisPubsub])?;
        only(
            !self.headers.is_empty(),
            "headers",
            &[JsonWs, Socketio, Sse],
        )?;
        if self.kind == RedisPubsub && self.patterns.is_empty() {
            return Err("patterns: a redis-pubsub source needs at least one pattern".into());
        }
        if self.messages.is_empty() {
            return Err(format!(
                "messages: a {kind} source needs at least one rule saying which channel an \
                 upstream message goes to"
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(format!("headers.{name}: not a valid HTTP header"));
            }
        }
        if let Some(auth) = &self.auth
            && !auth.is_object()
        {
            return Err("auth: must be a table".into());
        }
        if let Some(ns) = &self.namespace
            && !ns.starts_with('/')
        {
            return Err(format!("namespace: `{ns}` must start with /"));
        }
        if self.max_message_bytes == 0 {
            return Err("max_message_bytes: must be at least 1".into());
        }
        if self.max_channels == 0 {
            return Err("max_channels: must be at least 1".into());
        }
        let with_channel_vars =
            |key: &str, t: &Option<String>| -> Result<Option<Template>, String> {
                let Some(t) = t else { return Ok(None) };
                let t = Template::parse(t).map_err(|e| format!("{key}: {e}"))?;
                if let Some(missing) = t.vars().find(|v| !channels.vars().any(|c| c == *v)) {
                    return Err(format!(
                        "{key}: `{{{missing}}}` is not a placeholder of channels `{channels}`"
                    ));
                }
                Ok(Some(t))
            };
        let subscribe = with_channel_vars("subscribe", &self.subscribe)?;
        let unsubscribe = with_channel_vars("unsubscribe", &self.unsubscribe)?;
        for (key, emit) in [("join", &self.join), ("leave", &self.leave)] {
            if let Some(emit) = emit {
                if emit.event.is_empty() {
                    return Err(format!("{key}.event: must not be empty"));
                }
                for (i, arg) in emit.args.iter().enumerate() {
                    let mut texts = Vec::new();
                    strings(arg, &mut texts);
                    for text in texts {
                        with_channel_vars(&format!("{key}.args[{i}]"), &Some(text.to_owned()))?;
                    }
                }
            }
        }
        let rules = Rules::new(&self.messages, &channels)?;
        Ok(Checked {
            config: self.clone(),
            channels,
            rules,
            subscribe,
            unsubscribe,
        })
    }
}

/// Every string inside `value`.
pub(crate) fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

mod defaults {
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        2_000
    }
    pub(super) fn reconnect_initial_ms() -> u64 {
        100
    }
    pub(super) fn reconnect_max_ms() -> u64 {
        5_000
    }
    pub(super) fn lease_ttl_ms() -> u64 {
        3_000
    }
    pub(super) fn max_message_bytes() -> usize {
        1 << 20
    }
    pub(super) fn max_channels() -> usize {
        10_000
    }
    pub(super) fn keepalive_ms() -> u64 {
        15_000
    }
}
