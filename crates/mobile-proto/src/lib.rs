//! The bff-mobile wire protocol, `switchyard-mobile.v1`, as a crate of its own: the messages,
//! their two encodings (CBOR and its JSON twin), the close codes and the error codes. The
//! specification a Swift or Kotlin developer reads is `docs/protocol/mobile-v1.md`; this crate is
//! the same contract in Rust, shared by the gateway (bff-mobile) and the Rust client.
//!
//! What it deliberately does not do: no I/O, no sockets, no timers, no state machine — those
//! belong to the gateway and the client. It does not depend on the core (`switchyard-core`) or on
//! any gateway, so the contract can only change here, on purpose.
//!
//! The two sides use it like this:
//! - Server: [`Encoding::negotiate`] picks the encoding from the offered subprotocols;
//!   [`Encoding::decode_client`] turns each incoming frame into a [`ClientMsg`] (strictly:
//!   anything else is a [`DecodeError`], whose [`close_code`](DecodeError::close_code) says how
//!   to close); [`Encoding::encode_server`] writes answers; [`Encoding::encode_event`] encodes an
//!   event ONCE per encoding, and the same [`Frame`] goes to every subscriber.
//! - Client: [`Encoding::encode_client`] and [`Encoding::decode_server`].
//!
//! ```
//! use mobile_proto::{ClientMsg, Encoding, Position, ServerMsg, Sub, Subbed, data};
//!
//! // Client: subscribe, resuming after the last conversion seen.
//! let enc = Encoding::negotiate(["switchyard-mobile.v1.cbor"]).expect("offered");
//! let resume = Some(Position { epoch: 7, offset: 41 });
//! let frame = enc.encode_client(&ClientMsg::Sub(Sub { topic: "conversions".into(), resume }));
//!
//! // Server: decode strictly (a DecodeError names the close code), answer.
//! let ClientMsg::Sub(sub) = enc.decode_client(frame.kind(), frame.as_bytes(), 16 * 1024)?
//! else { unreachable!() };
//! let ack = enc.encode_server(&ServerMsg::Subbed(Subbed {
//!     topic: sub.topic.clone(),
//!     epoch: 7,
//!     offset: 41,
//! }));
//!
//! // Fan-out: encode an event once per encoding; every subscriber gets the same bytes.
//! let rate = data::Rate { pair: "EUR/USD".into(), rate: "1.0842".into(), seq: 48213 };
//! let event = enc.encode_event("rates:EUR/USD", Position { epoch: 7, offset: 42 }, &rate)?;
//!
//! // Client again: read the event and its data.
//! let ServerMsg::Event(ev) = enc.decode_server(event.kind(), event.as_bytes(), 1 << 20)?
//! else { unreachable!() };
//! assert_eq!(ev.data_as::<data::Rate>()?, rate);
//! # let _ = ack;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Payload shapes (call arguments, results, event data) are in [`data`]; topic and operation
//! names in [`topic`] and [`op`]; close and error codes in [`close`] and [`code`]; every
//! message of the specification, as data, in [`examples`]; a CBOR debugging aid in [`diag`].

use std::fmt;

pub mod close;
pub mod code;
mod codec;
pub mod data;
pub mod diag;
pub mod examples;
mod msg;
pub mod op;
pub mod topic;

pub use codec::{DecodeError, EncodeError, MAX_DEPTH};
pub use msg::{
    Auth, Bye, Call, CallResult, ClientMsg, ErrorMsg, Event, Gap, Limits, Ping, Pong, Position,
    ServerMsg, Sub, Subbed, Unsub, Unsubbed, Welcome,
};

/// The binary subprotocol: CBOR (RFC 8949) in binary frames.
pub const SUBPROTOCOL_CBOR: &str = "switchyard-mobile.v1.cbor";
/// The JSON twin, for debugging: the same messages in text frames.
pub const SUBPROTOCOL_JSON: &str = "switchyard-mobile.v1.json";
/// Both subprotocols, in the server's order of preference (CBOR first): what a server passes to
/// its WebSocket upgrade (for axum: `WebSocketUpgrade::protocols(SUBPROTOCOLS)`).
pub const SUBPROTOCOLS: [&str; 2] = [SUBPROTOCOL_CBOR, SUBPROTOCOL_JSON];

/// One of the protocol's two encodings, chosen per connection by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// CBOR in binary frames (`switchyard-mobile.v1.cbor`).
    Cbor,
    /// JSON in text frames (`switchyard-mobile.v1.json`).
    Json,
}

impl Encoding {
    /// Both encodings, CBOR first.
    pub const ALL: [Encoding; 2] = [Encoding::Cbor, Encoding::Json];

    /// The encoding a subprotocol name stands for; `None` for any other name.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            SUBPROTOCOL_CBOR => Some(Self::Cbor),
            SUBPROTOCOL_JSON => Some(Self::Json),
            _ => None,
        }
    }

    /// The subprotocol name of this encoding.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Self::Cbor => SUBPROTOCOL_CBOR,
            Self::Json => SUBPROTOCOL_JSON,
        }
    }

    /// The WebSocket frame kind this encoding travels in: binary for CBOR, text for JSON.
    pub const fn frame_kind(self) -> FrameKind {
        match self {
            Self::Cbor => FrameKind::Binary,
            Self::Json => FrameKind::Text,
        }
    }

    /// The server's choice among the subprotocols a client offered: CBOR if it was offered,
    /// else JSON, else `None` (the server then closes with [`close::SUBPROTOCOL_REQUIRED`]).
    ///
    /// Each item is a subprotocol name or a whole `Sec-WebSocket-Protocol` header value
    /// (comma-separated names).
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        offered
            .into_iter()
            .flat_map(|value| value.split(','))
            .filter_map(Self::from_subprotocol)
            .min()
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cbor => "CBOR",
            Self::Json => "JSON",
        })
    }
}

/// The kind of a WebSocket data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A text frame (UTF-8).
    Text,
    /// A binary frame.
    Binary,
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Binary => "binary",
        })
    }
}

/// One encoded protocol message: the payload of exactly one WebSocket message.
///
/// Both variants turn into a WebSocket library's message without copying (for axum and
/// tungstenite: `Utf8Bytes::from(String)`, `Bytes::from(Vec<u8>)`). To send one event to many
/// subscribers, build that library message once and clone it per socket: its clones share the
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Frame {
    /// A text frame (the JSON encoding).
    Text(String),
    /// A binary frame (the CBOR encoding).
    Binary(Vec<u8>),
}

impl Frame {
    /// The kind of WebSocket frame this goes in.
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Text(_) => FrameKind::Text,
            Self::Binary(_) => FrameKind::Binary,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(s) => s.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// The payload size in bytes (what the frame costs on the wire, less WebSocket framing).
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty (never true for an encoded message).
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The payload bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Text(s) => s.into_bytes(),
            Self::Binary(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_names_map_both_ways() {
        for enc in Encoding::ALL {
            assert_eq!(Encoding::from_subprotocol(enc.subprotocol()), Some(enc));
        }
        assert_eq!(
            Encoding::from_subprotocol("switchyard-mobile.v2.cbor"),
            None
        );
        assert_eq!(Encoding::from_subprotocol(""), None);
    }

    #[test]
    fn negotiation_prefers_cbor_and_reads_header_values() {
        assert_eq!(
            Encoding::negotiate(["switchyard-mobile.v1.json, switchyard-mobile.v1.cbor"]),
            Some(Encoding::Cbor)
        );
        assert_eq!(
            Encoding::negotiate(["graphql-transport-ws", SUBPROTOCOL_JSON]),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::negotiate(["graphql-transport-ws"]), None);
        assert_eq!(Encoding::negotiate([]), None);
    }

    #[test]
    fn each_encoding_has_its_frame_kind() {
        assert_eq!(Encoding::Cbor.frame_kind(), FrameKind::Binary);
        assert_eq!(Encoding::Json.frame_kind(), FrameKind::Text);
    }
}
