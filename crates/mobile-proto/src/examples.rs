//! Every message of the specification, as data: the examples `docs/protocol/mobile-v1.md`
//! shows, and how they are rendered there.
//!
//! The document's wire bytes are generated from this table (`cargo run -p mobile-proto
//! --example wire`), and a test checks that the document still contains exactly what this table
//! renders, so the two cannot drift apart. Client tests may reuse the examples too.
//!
//! Map keys inside payloads are sorted here, so the bytes do not depend on how `serde_json` keeps
//! maps in a given build; on the wire, key order is never significant.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::data::{Conversion, Dashboard, Limit, PartError, Quote, Rate};
use crate::{
    Auth, Bye, Call, CallResult, ClientMsg, Encoding, ErrorMsg, Event, Frame, Gap, Limits, Ping,
    Pong, Position, ServerMsg, Sub, Subbed, Unsub, Unsubbed, Welcome, code, diag, op, topic,
};

/// One example message.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// A short unique name (`event-rate`).
    pub name: &'static str,
    /// The message.
    pub message: Message,
}

/// A message of either direction.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Sent by a client.
    Client(ClientMsg),
    /// Sent by a server.
    Server(ServerMsg),
}

impl Message {
    /// The message in `encoding`.
    pub fn encode(&self, encoding: Encoding) -> Frame {
        match self {
            Self::Client(m) => encoding.encode_client(m),
            Self::Server(m) => encoding.encode_server(m),
        }
    }
}

/// An epoch as the in-memory bus makes them: random, below 2^63.
pub const EPOCH: u64 = 6_130_412_896_125_523_119;
/// The epoch after a server lost its history (the `gap` example).
pub const NEW_EPOCH: u64 = 2_870_719_915_390_446_213;

/// The example conversion.
pub fn conversion() -> Conversion {
    Conversion {
        id: "c-7f3a9d".into(),
        from: "EUR".into(),
        to: "USD".into(),
        amount: "250.00".into(),
        rate: "1.0842".into(),
        converted: "271.05".into(),
        at: "2026-05-04T09:30:12Z".into(),
    }
}

/// The example rate tick's data.
pub fn rate() -> Rate {
    Rate {
        pair: "EUR/USD".into(),
        rate: "1.0842".into(),
        seq: 48_213,
    }
}

/// The example catalog channel event's data: JSON as a backend published it on channel
/// `announcements`, delivered as is.
pub fn channel_data() -> Value {
    sorted(json!({"level": "info", "text": "Maintenance tonight at 22:00 UTC"}))
}

/// Every example, in the document's order.
pub fn all() -> Vec<Example> {
    use Message::{Client, Server};
    let ex = |name, message| Example { name, message };
    let conversions = topic::CONVERSIONS.to_owned();
    let eur_usd = topic::rates("EUR/USD");
    vec![
        ex(
            "auth",
            Client(ClientMsg::Auth(Auth {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig".into(),
                client: None,
            })),
        ),
        ex(
            "welcome",
            Server(ServerMsg::Welcome(Welcome {
                user: "alice".into(),
                heartbeat_ms: 20_000,
                limits: Limits {
                    max_subscriptions: 32,
                    max_calls: 16,
                    max_frame_bytes: 16_384,
                },
            })),
        ),
        ex(
            "sub",
            Client(ClientMsg::Sub(Sub {
                topic: eur_usd.clone(),
                resume: None,
            })),
        ),
        ex(
            "subbed",
            Server(ServerMsg::Subbed(Subbed {
                topic: eur_usd.clone(),
                epoch: EPOCH,
                offset: 1_288,
            })),
        ),
        ex(
            "event-rate",
            Server(ServerMsg::Event(Event {
                topic: eur_usd.clone(),
                epoch: EPOCH,
                offset: 1_289,
                data: value(&rate()),
            })),
        ),
        ex(
            "sub-resume",
            Client(ClientMsg::Sub(Sub {
                topic: conversions.clone(),
                resume: Some(Position {
                    epoch: EPOCH,
                    offset: 41,
                }),
            })),
        ),
        ex(
            "subbed-resume",
            Server(ServerMsg::Subbed(Subbed {
                topic: conversions.clone(),
                epoch: EPOCH,
                offset: 41,
            })),
        ),
        ex(
            "event-conversion",
            Server(ServerMsg::Event(Event {
                topic: conversions.clone(),
                epoch: EPOCH,
                offset: 42,
                data: value(&conversion()),
            })),
        ),
        ex(
            "event-channel",
            Server(ServerMsg::Event(Event {
                topic: "announcements".into(),
                epoch: EPOCH,
                offset: 7,
                data: channel_data(),
            })),
        ),
        ex(
            "gap",
            Server(ServerMsg::Gap(Gap {
                topic: conversions.clone(),
                epoch: NEW_EPOCH,
                offset: 3,
            })),
        ),
        ex(
            "unsub",
            Client(ClientMsg::Unsub(Unsub {
                topic: eur_usd.clone(),
            })),
        ),
        ex(
            "unsubbed",
            Server(ServerMsg::Unsubbed(Unsubbed {
                topic: eur_usd.clone(),
            })),
        ),
        ex(
            "call-quote",
            Client(ClientMsg::Call(Call {
                id: 1,
                op: op::QUOTE.into(),
                args: object(json!({"amount": "1000.00", "from": "EUR", "to": "USD"})),
            })),
        ),
        ex(
            "result-quote",
            Server(ServerMsg::Result(CallResult {
                id: 1,
                data: value(&Quote {
                    pair: "EUR/USD".into(),
                    from: "EUR".into(),
                    to: "USD".into(),
                    amount: "1000.00".into(),
                    rate: "1.0842".into(),
                    converted: "1084.20".into(),
                    remaining_limit: Some("4750.00".into()),
                    within_limit: Some(true),
                    errors: vec![],
                }),
            })),
        ),
        ex(
            "call-dashboard",
            Client(ClientMsg::Call(Call {
                id: 2,
                op: op::DASHBOARD.into(),
                args: object(json!({"pairs": ["EUR/USD", "GBP/USD"]})),
            })),
        ),
        ex(
            "result-dashboard",
            Server(ServerMsg::Result(CallResult {
                id: 2,
                data: value(&Dashboard {
                    user: "alice".into(),
                    limit: Some(Limit {
                        daily_limit: "5000.00".into(),
                        used: "250.00".into(),
                        remaining: "4750.00".into(),
                    }),
                    rates: vec![Some(rate()), None],
                    recent: Some(vec![conversion()]),
                    errors: vec![PartError {
                        part: "/rates/1".into(),
                        backend: "exchange".into(),
                        code: code::UPSTREAM_TIMEOUT.into(),
                        message: "exchange did not answer within 1500 ms".into(),
                    }],
                }),
            })),
        ),
        ex(
            "call-convert",
            Client(ClientMsg::Call(Call {
                id: 3,
                op: op::CONVERT.into(),
                args: object(json!({"amount": "250.00", "from": "EUR", "to": "USD"})),
            })),
        ),
        ex(
            "result-convert",
            Server(ServerMsg::Result(CallResult {
                id: 3,
                data: value(&conversion()),
            })),
        ),
        ex(
            "error-call",
            Server(ServerMsg::call_error(
                4,
                code::LIMIT_EXCEEDED,
                "converting 9000.00 EUR exceeds the 4750.00 left today",
            )),
        ),
        ex(
            "error-sub",
            Server(ServerMsg::Error(ErrorMsg {
                id: None,
                topic: Some("rates:EUR/XYZ".into()),
                code: code::UNKNOWN_TOPIC.into(),
                message: "unknown currency `XYZ`".into(),
                retry_ms: None,
            })),
        ),
        ex(
            "error-rate-limited",
            Server(ServerMsg::rate_limited(Some(5), None, 250)),
        ),
        ex("ping", Server(ServerMsg::Ping(Ping { n: 17 }))),
        ex("pong", Client(ClientMsg::Pong(Pong { n: 17 }))),
        ex(
            "bye",
            Server(ServerMsg::Bye(Bye {
                reconnect_within_ms: 5_000,
            })),
        ),
    ]
}

/// The example with this name.
pub fn get(name: &str) -> Option<Example> {
    all().into_iter().find(|e| e.name == name)
}

/// How the document shows an example: its JSON text, then its CBOR bytes as hex and in
/// diagnostic notation, each in a fenced block (`json`, `cbor-hex`, `cbor-diag`).
pub fn markdown(example: &Example) -> String {
    let json = example.message.encode(Encoding::Json);
    let cbor = example.message.encode(Encoding::Cbor);
    let diag = diag::diagnostic_pretty(cbor.as_bytes())
        .unwrap_or_else(|e| format!("(not well-formed: {e})"));
    format!(
        "JSON, {} bytes:\n\n```json\n{}\n```\n\nCBOR, {} bytes:\n\n```cbor-hex\n{}\n```\n\n\
         ```cbor-diag\n{}\n```\n",
        json.len(),
        String::from_utf8_lossy(json.as_bytes()),
        cbor.len(),
        hex(cbor.as_bytes()),
        diag,
    )
}

/// Bytes as lower-case hex pairs, 16 to a line.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The document's size table: every example's payload size in both encodings.
pub fn size_table() -> String {
    let mut out =
        String::from("| example | CBOR bytes | JSON bytes | CBOR / JSON |\n|---|---:|---:|---:|\n");
    for example in all() {
        let cbor = example.message.encode(Encoding::Cbor).len();
        let json = example.message.encode(Encoding::Json).len();
        out.push_str(&format!(
            "| `{}` | {cbor} | {json} | {:.0} % |\n",
            example.name,
            100.0 * cbor as f64 / json as f64
        ));
    }
    out
}

/// A payload as a JSON value with its map keys sorted.
fn value<T: Serialize>(payload: &T) -> Value {
    match serde_json::to_value(payload) {
        Ok(v) => sorted(v),
        // Broken invariant: the payload shapes are plain structs of strings and numbers.
        Err(e) => panic!("an example payload failed to serialise: {e}"),
    }
}

fn object(v: Value) -> Map<String, Value> {
    match sorted(v) {
        Value::Object(map) => map,
        other => panic!("an example's args are not a map: {other}"),
    }
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
