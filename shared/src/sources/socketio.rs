//! `socketio`: a Socket.IO client — Engine.IO v4 over WebSocket only (no long-polling, no
//! upgrade), Socket.IO protocol v5 — spoken over the WebSocket transport ([`super::ws`]).
//!
//! On a new connection it waits for the Engine.IO open packet (`0{"pingInterval":…}`), then sends
//! the namespace's CONNECT with the configured auth payload (`40/market,{"token":…}`); channels are
//! asked for only once the server's CONNECT acknowledgement (`40/market,{"sid":…}`) has arrived.
//! A channel that gains its first subscriber is joined by emitting the configured `join` event
//! (its arguments rendered from the channel's placeholders, with an ack id when `join.ack`), and
//! released by emitting `leave`. Every EVENT of the namespace goes through the source's rules as
//! `Inbound { event: name, json: [arguments…] }` (so `/0/symbol` reads the first argument); an
//! event that asks for an acknowledgement gets an empty one.
//!
//! Liveness is Engine.IO's: the server pings (`2`), the client answers (`3`), and a connection
//! silent for longer than `pingInterval + pingTimeout` is reopened. A CONNECT_ERROR (wrong auth)
//! is counted as an upstream error and the connection reopened with backoff; a DISCONNECT or an
//! Engine.IO close reopens it. A join that the server refuses (its ack's first argument is
//! `false` or an object with a non-null `error`) or does not acknowledge within [`ACK_TIMEOUT`]
//! is counted as an upstream error; the channel stays wanted and is asked for again on the next
//! connection.
//!
//! Refused, counted and logged, never fatal: binary events and acks (`45`, `46`) and their
//! attachments (binary WebSocket messages, skipped), any other binary message, and every packet
//! it cannot read. It does not do long-polling, Engine.IO upgrades, Socket.IO v2/v3 servers
//! (`EIO=3`), several namespaces per source, or emits other than join and leave.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::rules::{Inbound, Rules};
use super::template::{Template, Vars};
use super::ws::{Step, WsProtocol};
use super::{Checked, EmitConfig, LOGGED_CHARS};
use crate::channels::ChannelName;

/// How often the protocol checks deadlines (silence, the handshake, acknowledgements).
const TICK: Duration = Duration::from_millis(250);

/// Longest wait for the acknowledgement of a join or leave emit.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most emits awaiting an acknowledgement on one connection; beyond it, emits ask for none.
const MAX_PENDING_ACKS: usize = 4096;

/// Longest ack id read (Socket.IO ids are JavaScript numbers, exact up to 2^53).
const MAX_ID_DIGITS: usize = 15;

/// Most attachments a binary packet may announce (socket.io-parser reads them all into memory;
/// this client only skips them).
const MAX_ATTACHMENTS: u64 = 1_000;

/// Longest namespace accepted in the configuration.
const MAX_NAMESPACE_BYTES: usize = 256;

/// Longest timing accepted from an open packet (an hour); larger values are clamped.
const MAX_TIMING_MS: u64 = 3_600_000;

/// Engine.IO's defaults when the open packet leaves a value out.
const DEFAULT_PING_INTERVAL_MS: u64 = 25_000;
const DEFAULT_PING_TIMEOUT_MS: u64 = 20_000;
const DEFAULT_MAX_PAYLOAD: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// The codec: Engine.IO v4 packets, and Socket.IO v5 packets inside Engine.IO messages.
// ---------------------------------------------------------------------------------------------

/// The values of an Engine.IO open packet this client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handshake {
    /// How often the server pings.
    pub(crate) ping_interval: Duration,
    /// How long the server waits for a pong; the client waits as long for the next ping.
    pub(crate) ping_timeout: Duration,
    /// The largest packet the server accepts.
    pub(crate) max_payload: u64,
}

impl Handshake {
    /// Longest silence before the connection counts as lost.
    pub(crate) fn silence_limit(&self) -> Duration {
        self.ping_interval.saturating_add(self.ping_timeout)
    }
}

/// One Engine.IO packet (a WebSocket text message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnginePacket<'a> {
    /// `0{…}`: the session is open.
    Open(Handshake),
    /// `1`: the server closes the session.
    Close,
    /// `2[data]`: the server's ping, answered with `3[data]`.
    Ping(&'a str),
    /// `3[data]`: a pong (servers of v4 do not send them).
    Pong,
    /// `4…`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: an upgrade (never on a WebSocket-only session).
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Reads one Engine.IO packet, or says why it cannot.
pub(crate) fn parse_engine(text: &str) -> Result<EnginePacket<'_>, String> {
    let Some(&kind) = text.as_bytes().first() else {
        return Err("an empty Engine.IO packet".into());
    };
    // `kind` is ASCII in every accepted case, so `text[1..]` is on a character boundary.
    let rest = || &text[1..];
    match kind {
        b'0' => parse_open(rest()).map(EnginePacket::Open),
        b'1' => Ok(EnginePacket::Close),
        b'2' => Ok(EnginePacket::Ping(rest())),
        b'3' => Ok(EnginePacket::Pong),
        b'4' => Ok(EnginePacket::Message(rest())),
        b'5' => Ok(EnginePacket::Upgrade),
        b'6' => Ok(EnginePacket::Noop),
        _ => Err(format!(
            "`{}` is not an Engine.IO packet type",
            shown(&text.chars().take(1).collect::<String>())
        )),
    }
}

fn parse_open(json: &str) -> Result<Handshake, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("open packet: {e}"))?;
    let Value::Object(open) = value else {
        return Err("open packet: not a JSON object".into());
    };
    let number = |key: &str, default: u64| -> Result<u64, String> {
        match open.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("open packet: `{key}` is not a whole number")),
        }
    };
    let ms = |key: &str, default: u64| -> Result<Duration, String> {
        Ok(Duration::from_millis(
            number(key, default)?.min(MAX_TIMING_MS),
        ))
    };
    Ok(Handshake {
        ping_interval: ms("pingInterval", DEFAULT_PING_INTERVAL_MS)?,
        ping_timeout: ms("pingTimeout", DEFAULT_PING_TIMEOUT_MS)?,
        max_payload: number("maxPayload", DEFAULT_MAX_PAYLOAD)?,
    })
}

/// A Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `0`: CONNECT (the client's request, the server's acknowledgement).
    Connect,
    /// `1`: DISCONNECT.
    Disconnect,
    /// `2`: EVENT.
    Event,
    /// `3`: ACK.
    Ack,
    /// `4`: CONNECT_ERROR.
    ConnectError,
    /// `5`: BINARY_EVENT.
    BinaryEvent,
    /// `6`: BINARY_ACK.
    BinaryAck,
}

impl Kind {
    fn digit(self) -> char {
        match self {
            Kind::Connect => '0',
            Kind::Disconnect => '1',
            Kind::Event => '2',
            Kind::Ack => '3',
            Kind::ConnectError => '4',
            Kind::BinaryEvent => '5',
            Kind::BinaryAck => '6',
        }
    }
}

/// One Socket.IO packet: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    pub(crate) kind: Kind,
    /// Attachments announced (binary packets only).
    pub(crate) attachments: u64,
    /// The namespace (`/` when left out).
    pub(crate) namespace: &'a str,
    pub(crate) id: Option<u64>,
    /// The JSON data, unparsed (empty when there is none).
    pub(crate) data: &'a str,
}

/// Reads the Socket.IO packet of an Engine.IO message, or says why it cannot. The data is left
/// as text: each packet type reads it its own way.
pub(crate) fn parse_packet(text: &str) -> Result<Packet<'_>, String> {
    let kind = match text.as_bytes().first() {
        None => return Err("an empty Socket.IO packet".into()),
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        Some(_) => {
            return Err(format!(
                "`{}` is not a Socket.IO packet type",
                shown(&text.chars().take(1).collect::<String>())
            ));
        }
    };
    // Every split below is just before or after an ASCII byte: on a character boundary.
    let mut rest = &text[1..];
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let Some(dash) = rest.find('-') else {
            return Err("a binary packet without its attachment count".into());
        };
        let count = &rest[..dash];
        attachments = digits(count)
            .filter(|n| (1..=MAX_ATTACHMENTS).contains(n))
            .ok_or_else(|| {
                format!(
                    "`{}` is not an attachment count (1 to {MAX_ATTACHMENTS})",
                    shown(count)
                )
            })?;
        rest = &rest[dash + 1..];
    }
    let mut namespace = "/";
    if rest.starts_with('/') {
        // As socket.io-parser reads it: up to the first comma, or the end.
        match rest.find(',') {
            Some(comma) => {
                namespace = &rest[..comma];
                rest = &rest[comma + 1..];
            }
            None => {
                namespace = rest;
                rest = "";
            }
        }
    }
    let id_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if id_len == 0 {
        None
    } else {
        let id = &rest[..id_len];
        match digits(id) {
            Some(n) if id_len <= MAX_ID_DIGITS => Some(n),
            _ => {
                return Err(format!(
                    "ack id `{}` is longer than {MAX_ID_DIGITS} digits",
                    shown(id)
                ));
            }
        }
    };
    Ok(Packet {
        kind,
        attachments,
        namespace,
        id,
        data: &rest[id_len..],
    })
}

/// A decimal number of at most 19 digits.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A Socket.IO packet as an Engine.IO message: `4<type>[<namespace>,][<id>]<data>`.
pub(crate) fn encode(kind: Kind, namespace: &str, id: Option<u64>, data: &str) -> String {
    let mut out = String::with_capacity(4 + namespace.len() + data.len() + 20);
    out.push('4');
    out.push(kind.digit());
    if namespace != "/" {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
    out.push_str(data);
    out
}

/// An EVENT's data: its name and its arguments.
pub(crate) fn parse_event(data: &str) -> Result<(String, Vec<Value>), String> {
    let value: Value = serde_json::from_str(data).map_err(|e| format!("event data: {e}"))?;
    let Value::Array(mut items) = value else {
        return Err("event data: not a JSON array".into());
    };
    if items.is_empty() {
        return Err("event data: an empty array (no event name)".into());
    }
    match items.remove(0) {
        Value::String(name) => Ok((name, items)),
        _ => Err("event data: the event name is not a string".into()),
    }
}

/// An ACK's arguments.
pub(crate) fn parse_ack(data: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str(data) {
        Ok(Value::Array(args)) => Ok(args),
        Ok(_) => Err("ack data: not a JSON array".into()),
        Err(e) => Err(format!("ack data: {e}")),
    }
}

/// Why an acknowledgement says no: its first argument is `false`, or an object with a non-null
/// `error`.
pub(crate) fn refusal(args: &[Value]) -> Option<String> {
    match args.first() {
        Some(Value::Bool(false)) => Some("false".into()),
        Some(Value::Object(o)) => match o.get("error") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(shown(s)),
            Some(other) => Some(shown(&other.to_string())),
        },
        _ => None,
    }
}

/// Why a CONNECT_ERROR was sent: its data's `message` (or the data as is).
fn connect_error_message(data: &str) -> String {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(o)) => match o.get("message") {
            Some(Value::String(m)) => shown(m),
            _ => shown(data),
        },
        Ok(Value::String(m)) => shown(&m),
        _ => shown(data),
    }
}

/// At most [`LOGGED_CHARS`] characters of upstream text.
fn shown(text: &str) -> String {
    text.chars().take(LOGGED_CHARS).collect()
}

// ---------------------------------------------------------------------------------------------
// Configuration: the WebSocket URL, the namespace, the join and leave emits.
// ---------------------------------------------------------------------------------------------

/// The Engine.IO WebSocket URL of `url` (`http(s)://host[:port][/base][?query]`): `ws`/`wss`,
/// `path` when set, else `base` + `/socket.io/`, the query kept, then `EIO=4&transport=websocket`.
/// The error names the key.
pub(crate) fn websocket_url(url: &str, path: Option<&str>) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("url: `{url}` is not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "ws",
        Some(s) if s.eq_ignore_ascii_case("https") => "wss",
        _ => return Err(format!("url: `{url}` must start with http:// or https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("url: `{url}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "url: `{url}` holds credentials; send them in `auth` or `headers`"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("url: `{url}` has no host"));
    }
    let path = match path {
        Some(p) => {
            if !p.starts_with('/')
                || p.bytes()
                    .any(|b| b.is_ascii_control() || b" ?#%\"<>\\^`{|}".contains(&b))
            {
                return Err(format!(
                    "path: `{p}` must start with / and hold no spaces, ?, #, % or control characters"
                ));
            }
            p.to_owned()
        }
        None => format!("{}/socket.io/", uri.path().trim_end_matches('/')),
    };
    let query = match uri.query() {
        Some(q) if !q.is_empty() => format!("{q}&"),
        _ => String::new(),
    };
    Ok(format!(
        "{scheme}://{authority}{path}?{query}EIO=4&transport=websocket"
    ))
}

/// An emit argument, its strings parsed as templates.
#[derive(Debug, Clone)]
enum Arg {
    Text(Template),
    List(Vec<Arg>),
    Map(Vec<(String, Arg)>),
    Other(Value),
}

impl Arg {
    fn parse(key: &str, value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(s) => Arg::Text(Template::parse(s).map_err(|e| format!("{key}: {e}"))?),
            Value::Array(items) => Arg::List(
                items
                    .iter()
                    .map(|v| Arg::parse(key, v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Arg::Map(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), Arg::parse(key, v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Arg::Other(other.clone()),
        })
    }

    /// The argument with every string rendered from `vars`; `None` when a placeholder has no
    /// value.
    fn render(&self, vars: &Vars) -> Option<Value> {
        Some(match self {
            Arg::Text(t) => Value::String(t.render(vars)?),
            Arg::List(items) => Value::Array(
                items
                    .iter()
                    .map(|a| a.render(vars))
                    .collect::<Option<_>>()?,
            ),
            Arg::Map(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, a)| Some((k.clone(), a.render(vars)?)))
                    .collect::<Option<_>>()?,
            ),
            Arg::Other(v) => v.clone(),
        })
    }
}

/// A configured join or leave emit.
#[derive(Debug, Clone)]
struct Emit {
    /// `join` or `leave`, for logs.
    what: &'static str,
    event: String,
    args: Vec<Arg>,
    ack: bool,
}

impl Emit {
    fn new(what: &'static str, config: &EmitConfig) -> Result<Self, String> {
        Ok(Self {
            what,
            event: config.event.clone(),
            args: config
                .args
                .iter()
                .enumerate()
                .map(|(i, a)| Arg::parse(&format!("{what}.args[{i}]"), a))
                .collect::<Result<_, _>>()?,
            ack: config.ack,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The protocol.
// ---------------------------------------------------------------------------------------------

/// An emit awaiting its acknowledgement.
#[derive(Debug)]
struct Pending {
    what: &'static str,
    event: String,
    channel: ChannelName,
    deadline: Instant,
}

/// The state of one connection.
#[derive(Debug)]
struct Connection {
    /// The open packet's values, once it arrived.
    engine: Option<Handshake>,
    /// Whether the server acknowledged the namespace's CONNECT.
    joined: bool,
    /// When the connection opened (the handshake's deadline counts from it).
    started: Instant,
    /// When the upstream last sent anything.
    last_heard: Instant,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// Binary messages still to skip: the attachments of a refused binary packet.
    skip_attachments: u64,
}

impl Connection {
    fn new(now: Instant) -> Self {
        Self {
            engine: None,
            joined: false,
            started: now,
            last_heard: now,
            next_id: 0,
            pending: BTreeMap::new(),
            skip_attachments: 0,
        }
    }
}

/// The `socketio` protocol of one source.
pub(super) struct SocketIo {
    url: String,
    namespace: String,
    /// The CONNECT packet (with the auth payload).
    connect: String,
    join: Option<Emit>,
    leave: Option<Emit>,
    rules: Rules,
    handshake_timeout: Duration,
    conn: Connection,
}

impl SocketIo {
    /// The protocol of a checked `socketio` source; the error names the key (relative to the
    /// source).
    pub(super) fn new(checked: &Checked) -> Result<Self, String> {
        let config = &checked.config;
        let url = websocket_url(&config.url, config.path.as_deref())?;
        let namespace = config.namespace.clone().unwrap_or_else(|| "/".to_owned());
        if !namespace.starts_with('/')
            || namespace.len() > MAX_NAMESPACE_BYTES
            || namespace.bytes().any(|b| b == b',' || b.is_ascii_control())
        {
            return Err(format!(
                "namespace: `{namespace}` must start with /, hold no comma or control character, \
                 and be at most {MAX_NAMESPACE_BYTES} bytes"
            ));
        }
        let auth = match &config.auth {
            None => String::new(),
            Some(a @ Value::Object(_)) => a.to_string(),
            Some(_) => return Err("auth: must be a table".into()),
        };
        let connect = encode(Kind::Connect, &namespace, None, &auth);
        let join = config
            .join
            .as_ref()
            .map(|j| Emit::new("join", j))
            .transpose()?;
        let leave = config
            .leave
            .as_ref()
            .map(|l| Emit::new("leave", l))
            .transpose()?;
        Ok(Self {
            url,
            namespace,
            connect,
            join,
            leave,
            rules: checked.rules.clone(),
            handshake_timeout: config.connect_timeout(),
            conn: Connection::new(Instant::now()),
        })
    }

    /// The frames of `emit` for `channel`.
    fn emit(&mut self, which: Which, channel: &ChannelName, vars: &Vars) -> Vec<Step> {
        let emit = match which {
            Which::Join => self.join.as_ref(),
            Which::Leave => self.leave.as_ref(),
        };
        let Some(emit) = emit else {
            return Vec::new();
        };
        let mut data = Vec::with_capacity(emit.args.len() + 1);
        data.push(Value::String(emit.event.clone()));
        for arg in &emit.args {
            match arg.render(vars) {
                Some(v) => data.push(v),
                None => {
                    return vec![Step::UpstreamError(format!(
                        "{} `{}` of channel `{channel}` not sent: its arguments need a \
                         placeholder the channel lacks",
                        emit.what, emit.event
                    ))];
                }
            }
        }
        let data = Value::Array(data).to_string();
        let mut steps = Vec::new();
        let conn = &mut self.conn;
        let id = if !emit.ack {
            None
        } else if conn.pending.len() >= MAX_PENDING_ACKS {
            steps.push(Step::UpstreamError(format!(
                "{MAX_PENDING_ACKS} emits await their acknowledgement; {} `{}` of channel \
                 `{channel}` is sent without asking for one",
                emit.what, emit.event
            )));
            None
        } else {
            let id = conn.next_id;
            conn.next_id += 1;
            Some(id)
        };
        let packet = encode(Kind::Event, &self.namespace, id, &data);
        let max = conn.engine.map_or(DEFAULT_MAX_PAYLOAD, |h| h.max_payload);
        if packet.len() as u64 > max {
            steps.push(Step::UpstreamError(format!(
                "{} `{}` of channel `{channel}` not sent: {} bytes is over the server's \
                 maxPayload ({max})",
                emit.what,
                emit.event,
                packet.len()
            )));
            return steps;
        }
        if let Some(id) = id {
            conn.pending.insert(
                id,
                Pending {
                    what: emit.what,
                    event: emit.event.clone(),
                    channel: channel.clone(),
                    deadline: Instant::now() + ACK_TIMEOUT,
                },
            );
        }
        steps.push(Step::Send(packet));
        steps
    }

    /// One Socket.IO packet (an Engine.IO message's data).
    fn message(&mut self, text: &str) -> Vec<Step> {
        let packet = match parse_packet(text) {
            Ok(p) => p,
            Err(why) => return vec![Step::Unparsable(why)],
        };
        if packet.namespace != self.namespace {
            return vec![Step::Unparsable(format!(
                "a packet for namespace `{}`, not `{}`",
                shown(packet.namespace),
                self.namespace
            ))];
        }
        match packet.kind {
            Kind::Connect => match serde_json::from_str::<Value>(packet.data) {
                Ok(Value::Object(_)) => {
                    if !self.conn.joined {
                        self.conn.joined = true;
                        tracing::debug!(namespace = %self.namespace, "Socket.IO namespace joined");
                    }
                    vec![Step::Healthy]
                }
                _ => vec![Step::Unparsable(
                    "a CONNECT acknowledgement without its JSON object".into(),
                )],
            },
            Kind::ConnectError => {
                let why = connect_error_message(packet.data);
                vec![
                    Step::UpstreamError(format!(
                        "the server refused the connection to namespace `{}`: {why}",
                        self.namespace
                    )),
                    Step::Lost(format!("CONNECT_ERROR: {why}")),
                ]
            }
            Kind::Disconnect => vec![Step::Lost(format!(
                "the server disconnected namespace `{}`",
                self.namespace
            ))],
            Kind::Event => {
                let (name, args) = match parse_event(packet.data) {
                    Ok(e) => e,
                    Err(why) => return vec![Step::Unparsable(why)],
                };
                let json = Value::Array(args);
                let outcome = self.rules.apply(Inbound {
                    event: Some(&name),
                    channel: None,
                    json: &json,
                });
                let mut steps = vec![Step::Deliver(outcome)];
                if let Some(id) = packet.id {
                    steps.push(Step::Send(encode(
                        Kind::Ack,
                        &self.namespace,
                        Some(id),
                        "[]",
                    )));
                }
                steps
            }
            Kind::Ack => {
                let Some(id) = packet.id else {
                    return vec![Step::Unparsable("an ACK without an id".into())];
                };
                let args = match parse_ack(packet.data) {
                    Ok(a) => a,
                    Err(why) => return vec![Step::Unparsable(why)],
                };
                let Some(pending) = self.conn.pending.remove(&id) else {
                    tracing::debug!(
                        id,
                        "an acknowledgement of no pending emit (late, or unknown)"
                    );
                    return Vec::new();
                };
                match refusal(&args) {
                    Some(why) => vec![Step::UpstreamError(format!(
                        "the server refused {} `{}` of channel `{}`: {why}",
                        pending.what, pending.event, pending.channel
                    ))],
                    None => vec![Step::Healthy],
                }
            }
            Kind::BinaryEvent | Kind::BinaryAck => {
                self.conn.skip_attachments = self
                    .conn
                    .skip_attachments
                    .saturating_add(packet.attachments);
                let what = if packet.kind == Kind::BinaryEvent {
                    "event"
                } else {
                    "ack"
                };
                let name = parse_event(packet.data)
                    .ok()
                    .filter(|_| packet.kind == Kind::BinaryEvent)
                    .map(|(n, _)| format!(" `{}`", shown(&n)))
                    .unwrap_or_default();
                vec![Step::Binary(format!(
                    "a Socket.IO binary {what}{name} with {} attachment(s) (only JSON is read; \
                     its attachments are skipped)",
                    packet.attachments
                ))]
            }
        }
    }

    /// Deadlines at `now`: the handshake, the server's pings, the acknowledgements.
    fn tick_at(&mut self, heard: bool, now: Instant) -> Vec<Step> {
        let conn = &mut self.conn;
        if heard && now > conn.last_heard {
            conn.last_heard = now;
        }
        if !conn.joined && now.saturating_duration_since(conn.started) > self.handshake_timeout {
            let stage = if conn.engine.is_none() {
                "no Engine.IO open packet"
            } else {
                "no CONNECT acknowledgement"
            };
            return vec![Step::Lost(format!(
                "{stage} within {:?}; reconnecting",
                self.handshake_timeout
            ))];
        }
        if let Some(h) = conn.engine {
            let silent = now.saturating_duration_since(conn.last_heard);
            if silent > h.silence_limit() {
                return vec![Step::Lost(format!(
                    "no ping from the server for {silent:?} (pingInterval + pingTimeout: {:?}); \
                     reconnecting",
                    h.silence_limit()
                ))];
            }
        }
        let late: Vec<u64> = conn
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        late.into_iter()
            .filter_map(|id| conn.pending.remove(&id))
            .map(|p| {
                Step::UpstreamError(format!(
                    "{} `{}` of channel `{}` not acknowledged within {ACK_TIMEOUT:?}",
                    p.what, p.event, p.channel
                ))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Join,
    Leave,
}

impl WsProtocol for SocketIo {
    fn url(&self) -> &str {
        &self.url
    }

    fn opened(&mut self) -> Vec<Step> {
        self.conn = Connection::new(Instant::now());
        // The CONNECT waits for the open packet.
        Vec::new()
    }

    fn ready(&self) -> bool {
        self.conn.joined
    }

    fn want(&mut self, channel: &ChannelName, vars: &Vars) -> Vec<Step> {
        self.emit(Which::Join, channel, vars)
    }

    fn release(&mut self, channel: &ChannelName, vars: &Vars) -> Vec<Step> {
        self.emit(Which::Leave, channel, vars)
    }

    fn text(&mut self, text: &str) -> Vec<Step> {
        self.conn.last_heard = Instant::now();
        match parse_engine(text) {
            Err(why) => vec![Step::Unparsable(why)],
            Ok(EnginePacket::Open(handshake)) => {
                if self.conn.engine.is_some() {
                    return vec![Step::Unparsable("a second Engine.IO open packet".into())];
                }
                self.conn.engine = Some(handshake);
                vec![Step::Send(self.connect.clone())]
            }
            Ok(EnginePacket::Close) => {
                vec![Step::Lost("the server closed the Engine.IO session".into())]
            }
            Ok(EnginePacket::Ping(data)) => vec![Step::Send(format!("3{data}"))],
            Ok(EnginePacket::Pong | EnginePacket::Noop) => Vec::new(),
            Ok(EnginePacket::Upgrade) => vec![Step::Unparsable(
                "an Engine.IO upgrade packet on a WebSocket-only session".into(),
            )],
            Ok(EnginePacket::Message(m)) => {
                if self.conn.engine.is_none() {
                    return vec![Step::Unparsable(
                        "a Socket.IO packet before the Engine.IO open packet".into(),
                    )];
                }
                self.message(m)
            }
        }
    }

    fn binary(&mut self, len: usize) -> Vec<Step> {
        self.conn.last_heard = Instant::now();
        if self.conn.skip_attachments > 0 {
            self.conn.skip_attachments -= 1;
            tracing::debug!(bytes = len, "attachment of a refused binary packet skipped");
            return Vec::new();
        }
        vec![Step::Binary(format!(
            "a binary WebSocket message of {len} bytes outside any binary packet"
        ))]
    }

    fn tick_every(&self) -> Duration {
        TICK
    }

    fn tick(&mut self, heard: bool) -> Vec<Step> {
        self.tick_at(heard, Instant::now())
    }
}

#[cfg(test)]
mod tests;
