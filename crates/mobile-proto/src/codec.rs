//! Encoding and decoding: messages to frames and back, in CBOR or in JSON.
//!
//! Decoding is strict, bounded and the same for both encodings. A frame is checked for size and
//! frame kind, parsed into a generic value (which keeps duplicate map keys so they can be
//! refused), checked against the protocol's data model — null, booleans, integers from −2^63 to
//! 2^64 − 1, finite floats, text, arrays, and maps with unique text keys, nested at most
//! [`MAX_DEPTH`] levels; no byte strings, no CBOR tags — and only then read as a message: its
//! type `t` first, then its keys, with errors naming the key. Nothing here panics on input.
//!
//! Encoding the protocol's own messages cannot fail (their payloads are JSON values), so
//! [`Encoding::encode_server`] and [`Encoding::encode_client`] return the frame directly. Only
//! [`Encoding::encode_event`], which takes any `Serialize` payload, can fail.
//!
//! This module does not decide what a decode error does to a connection beyond naming the close
//! code ([`DecodeError::close_code`]): closing is the gateway's.

use ciborium::Value as Cbor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

use crate::msg::{ClientMsg, Position, ServerMsg};
use crate::{Encoding, Frame, FrameKind, close};

/// The deepest nesting of arrays and maps a message may have, the message's own map included.
pub const MAX_DEPTH: usize = 32;

/// The CBOR parser's recursion limit: it bounds the stack while parsing. [`MAX_DEPTH`], the
/// protocol's limit, is checked afterwards, the same way for both encodings. (serde_json's own
/// limit, 128, plays this part for JSON.)
const PARSE_DEPTH: usize = 64;

/// Longest piece of client input quoted back in an error.
const QUOTE_CHARS: usize = 40;

/// Longest error detail.
const DETAIL_CHARS: usize = 300;

/// Why a frame is not a valid protocol message. Every variant is the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is over the size limit (close with [`close::MESSAGE_TOO_BIG`]).
    #[error("a message of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text frame on a CBOR connection, or a binary frame on a JSON one.
    #[error("{encoding} messages travel in {expected} frames, not {got} frames")]
    WrongFrameKind {
        /// The connection's encoding.
        encoding: Encoding,
        /// The frame kind it uses.
        expected: FrameKind,
        /// The frame kind received.
        got: FrameKind,
    },
    /// The bytes are not one well-formed CBOR item, or not one JSON text.
    #[error("not well-formed {encoding}: {detail}")]
    Malformed {
        /// The connection's encoding.
        encoding: Encoding,
        /// What is wrong, for people.
        detail: String,
    },
    /// Well-formed, but not a valid message: outside the data model, an unknown type, a
    /// missing, unknown or mistyped key.
    #[error("{detail}")]
    Invalid {
        /// What is wrong, for people (names the message type and key).
        detail: String,
    },
}

impl DecodeError {
    /// The close code a server answers this error with: [`close::MESSAGE_TOO_BIG`] for a frame
    /// over the limit, [`close::PROTOCOL_VIOLATION`] for everything else.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => close::MESSAGE_TOO_BIG,
            _ => close::PROTOCOL_VIOLATION,
        }
    }
}

/// A payload that cannot be encoded (only [`Encoding::encode_event`] can fail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode as {encoding}: {detail}")]
pub struct EncodeError {
    /// The encoding asked for.
    pub encoding: Encoding,
    /// What went wrong.
    pub detail: String,
}

/// An `event` message borrowing its parts: serialises exactly like
/// `ServerMsg::Event(Event { .. })`, without building one.
#[derive(Serialize)]
struct EventRef<'a, D: ?Sized> {
    t: &'static str,
    topic: &'a str,
    e: u64,
    o: u64,
    d: &'a D,
}

impl Encoding {
    /// Encodes a client message (the client's side).
    pub fn encode_client(self, msg: &ClientMsg) -> Frame {
        self.encode_known(msg)
    }

    /// Encodes a server message (the server's side).
    pub fn encode_server(self, msg: &ServerMsg) -> Frame {
        self.encode_known(msg)
    }

    /// Encodes an `event` message straight from its parts, with the same bytes as
    /// [`encode_server`](Self::encode_server) of the equivalent [`crate::Event`].
    ///
    /// This is the fan-out path: encode each event once per encoding in use and send the same
    /// frame to every subscriber (cache it by topic, offset and encoding). `data` must stay
    /// within the data model: maps with text keys, no byte strings; money as decimal strings.
    pub fn encode_event<D: Serialize + ?Sized>(
        self,
        topic: &str,
        position: Position,
        data: &D,
    ) -> Result<Frame, EncodeError> {
        self.encode(&EventRef {
            t: "event",
            topic,
            e: position.epoch,
            o: position.offset,
            d: data,
        })
    }

    /// Decodes a frame received by the server. `kind` is the frame's kind as received;
    /// `max_frame_bytes` the connection's limit (the `frame` limit announced in `welcome`).
    pub fn decode_client(
        self,
        kind: FrameKind,
        payload: &[u8],
        max_frame_bytes: usize,
    ) -> Result<ClientMsg, DecodeError> {
        let mut map = self.parse_message(kind, payload, max_frame_bytes)?;
        let t = take_type(&mut map)?;
        let body = Value::Object(map);
        Ok(match t.as_str() {
            "auth" => ClientMsg::Auth(from_value("auth", body)?),
            "sub" => ClientMsg::Sub(from_value("sub", body)?),
            "unsub" => ClientMsg::Unsub(from_value("unsub", body)?),
            "call" => ClientMsg::Call(from_value("call", body)?),
            "ping" => ClientMsg::Ping(from_value("ping", body)?),
            "pong" => ClientMsg::Pong(from_value("pong", body)?),
            _ => return Err(unknown_type(&t, "a client", &ClientMsg::TYPES)),
        })
    }

    /// Decodes a frame received by a client. `max_frame_bytes` bounds what the client accepts
    /// (servers send at most 1 MiB).
    pub fn decode_server(
        self,
        kind: FrameKind,
        payload: &[u8],
        max_frame_bytes: usize,
    ) -> Result<ServerMsg, DecodeError> {
        let mut map = self.parse_message(kind, payload, max_frame_bytes)?;
        let t = take_type(&mut map)?;
        let body = Value::Object(map);
        Ok(match t.as_str() {
            "welcome" => ServerMsg::Welcome(from_value("welcome", body)?),
            "subbed" => ServerMsg::Subbed(from_value("subbed", body)?),
            "unsubbed" => ServerMsg::Unsubbed(from_value("unsubbed", body)?),
            "event" => ServerMsg::Event(from_value("event", body)?),
            "gap" => ServerMsg::Gap(from_value("gap", body)?),
            "result" => ServerMsg::Result(from_value("result", body)?),
            "error" => ServerMsg::Error(from_value("error", body)?),
            "ping" => ServerMsg::Ping(from_value("ping", body)?),
            "pong" => ServerMsg::Pong(from_value("pong", body)?),
            "bye" => ServerMsg::Bye(from_value("bye", body)?),
            _ => return Err(unknown_type(&t, "a server", &ServerMsg::TYPES)),
        })
    }

    /// Encodes a message whose payloads are JSON values: cannot fail.
    fn encode_known<T: Serialize>(self, msg: &T) -> Frame {
        match self.encode(msg) {
            Ok(frame) => frame,
            // Broken invariant: JSON values always have text keys and finite numbers, and
            // writing to a Vec cannot fail.
            Err(e) => panic!("a protocol message failed to encode: {e}"),
        }
    }

    fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Frame, EncodeError> {
        let fail = |detail: String| EncodeError {
            encoding: self,
            detail,
        };
        match self {
            Self::Json => serde_json::to_string(value)
                .map(Frame::Text)
                .map_err(|e| fail(e.to_string())),
            Self::Cbor => {
                let mut out = Vec::with_capacity(96);
                ciborium::into_writer(value, &mut out).map_err(|e| fail(e.to_string()))?;
                Ok(Frame::Binary(out))
            }
        }
    }

    /// Size, frame kind, well-formedness, data model, and "a message is a map".
    fn parse_message(
        self,
        kind: FrameKind,
        payload: &[u8],
        max_frame_bytes: usize,
    ) -> Result<Map<String, Value>, DecodeError> {
        if payload.len() > max_frame_bytes {
            return Err(DecodeError::TooLarge {
                len: payload.len(),
                max: max_frame_bytes,
            });
        }
        if kind != self.frame_kind() {
            return Err(DecodeError::WrongFrameKind {
                encoding: self,
                expected: self.frame_kind(),
                got: kind,
            });
        }
        match to_model(parse_raw(self, payload)?, 1)? {
            Value::Object(map) => Ok(map),
            other => Err(invalid(format!(
                "a message is a map with a type key `t`, not {}",
                kind_of(&other)
            ))),
        }
    }
}

/// Parses one complete item, keeping everything (duplicate keys, tags, byte strings) so the
/// data model check can refuse it by name.
pub(crate) fn parse_raw(encoding: Encoding, payload: &[u8]) -> Result<Cbor, DecodeError> {
    let malformed = |detail: String| DecodeError::Malformed {
        encoding,
        detail: clip(&detail, DETAIL_CHARS),
    };
    match encoding {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| malformed(e.to_string())),
        Encoding::Cbor => {
            let mut rest = payload;
            let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, PARSE_DEPTH)
                .map_err(|e| malformed(cbor_error(e)))?;
            if !rest.is_empty() {
                return Err(malformed(format!(
                    "{} bytes follow the first item (one message per frame)",
                    rest.len()
                )));
            }
            Ok(value)
        }
    }
}

fn cbor_error(e: ciborium::de::Error<std::io::Error>) -> String {
    use ciborium::de::Error;
    match e {
        Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the frame ends inside an item".to_owned()
        }
        Error::Io(e) => e.to_string(),
        Error::Syntax(at) => format!("syntax error at byte {at}"),
        Error::Semantic(Some(at), msg) => format!("{msg} at byte {at}"),
        Error::Semantic(None, msg) => msg,
        Error::RecursionLimitExceeded => format!("nested deeper than {MAX_DEPTH} levels"),
    }
}

/// Checks a parsed value against the data model and turns it into a JSON value. `depth` is the
/// nesting level of `value` if it is an array or a map (the message's map is level 1).
fn to_model(value: Cbor, depth: usize) -> Result<Value, DecodeError> {
    let nest = || {
        if depth > MAX_DEPTH {
            Err(invalid(format!("nested deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(())
        }
    };
    Ok(match value {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let i = i128::from(i);
            if let Ok(u) = u64::try_from(i) {
                Value::from(u)
            } else if let Ok(s) = i64::try_from(i) {
                Value::from(s)
            } else {
                return Err(invalid(format!(
                    "integer {i} is out of range (−2^63 to 2^64 − 1)"
                )));
            }
        }
        Cbor::Float(f) => match Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => return Err(invalid(format!("float {f} is not finite"))),
        },
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(_) => {
            return Err(invalid(
                "byte strings are not part of the protocol (use text)".to_owned(),
            ));
        }
        Cbor::Tag(tag, _) => {
            return Err(invalid(format!(
                "CBOR tags are not part of the protocol (tag {tag})"
            )));
        }
        Cbor::Array(items) => {
            nest()?;
            let items = items
                .into_iter()
                .map(|v| to_model(v, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(items)
        }
        Cbor::Map(entries) => {
            nest()?;
            let mut map = Map::new();
            for (key, value) in entries {
                let Cbor::Text(key) = key else {
                    return Err(invalid("map keys must be text".to_owned()));
                };
                if map.contains_key(&key) {
                    return Err(invalid(format!(
                        "duplicate map key `{}`",
                        clip(&key, QUOTE_CHARS)
                    )));
                }
                let value = to_model(value, depth + 1)?;
                map.insert(key, value);
            }
            Value::Object(map)
        }
        _ => return Err(invalid("a value outside the data model".to_owned())),
    })
}

fn take_type(map: &mut Map<String, Value>) -> Result<String, DecodeError> {
    match map.remove("t") {
        Some(Value::String(t)) => Ok(t),
        Some(other) => Err(invalid(format!(
            "the type key `t` must be text, not {}",
            kind_of(&other)
        ))),
        None => Err(invalid("the message has no type key `t`".to_owned())),
    }
}

fn unknown_type(t: &str, sender: &str, known: &[&str]) -> DecodeError {
    invalid(format!(
        "unknown message type `{}` ({sender} sends {})",
        clip(t, QUOTE_CHARS),
        known.join(", ")
    ))
}

/// Reads a JSON value as a typed shape; the error names `what` and the offending key path.
pub(crate) fn from_value<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            invalid(format!("`{what}`: {inner}"))
        } else {
            invalid(format!("`{what}`: `{}`: {inner}", clip(&path, QUOTE_CHARS)))
        }
    })
}

fn invalid(detail: String) -> DecodeError {
    DecodeError::Invalid {
        detail: clip(&detail, DETAIL_CHARS),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

/// At most `max` characters of `s`, with an ellipsis if cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
