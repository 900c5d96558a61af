//! The protocol's messages: what a client sends ([`ClientMsg`]) and what a server sends
//! ([`ServerMsg`]), one struct per message type.
//!
//! On the wire every message is a map whose key `"t"` names its type, with short keys; the Rust
//! fields have readable names and are renamed to the wire keys here (`epoch` is `"e"`). Optional
//! fields are left out when absent, never sent as null. Each struct rejects unknown keys: v1 is
//! frozen, and a misspelt optional key (`resume`) must not be silently ignored.
//!
//! Encoding and decoding are in the codec ([`crate::Encoding`]); the payloads inside `args` and
//! `d` are kept as generic values here, with typed shapes in [`crate::data`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::DecodeError;

/// A position in a topic's history: every event up to and including `offset` of `epoch`.
///
/// Wire: `{"e": epoch, "o": offset}`. Offsets start at 1 and grow by one per event of a stream
/// topic; `offset: 0` is the start of an epoch. The epoch changes when the server's history is
/// lost, so a position from another epoch cannot be resumed from. Both stay below 2^63.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The history generation (`e`).
    #[serde(rename = "e")]
    pub epoch: u64,
    /// The last offset seen (`o`).
    #[serde(rename = "o")]
    pub offset: u64,
}

/// `auth`: the first message on a connection, carrying the bearer token. Sent again after
/// `welcome`, with a fresh token of the same user, it re-authenticates the connection (its
/// subscriptions go on); the server answers with another `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The token (a JWT), without any `Bearer ` prefix.
    pub token: String,
    /// The client application and its version, `name/version` (`ios-app/4.2.0`), for the
    /// server's usage metrics (like the `X-Client-App` header on HTTP). Optional, additive to v1;
    /// read at the first `auth` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// `sub`: subscribe to a topic, optionally resuming after a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sub {
    /// A gateway topic name ([`crate::topic`]).
    pub topic: String,
    /// The last position the client saw on this topic (`{e, o}`), to get every event after it.
    /// Absent: start from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Position>,
}

/// `unsub`: end a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsub {
    /// The topic.
    pub topic: String,
}

/// `call`: run an operation; answered by exactly one `result` or `error` with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The correlation id, chosen by the client, unique among its calls in flight.
    pub id: u32,
    /// The operation ([`crate::op`]). Unknown names are not a decode error: the server answers
    /// them with an `unknown_op` error and keeps the connection.
    pub op: String,
    /// The operation's arguments (shapes in [`crate::data`]). May be left out when empty.
    #[serde(default)]
    pub args: Map<String, Value>,
}

impl Call {
    /// The arguments as a typed shape; the error names the offending argument and is meant for
    /// an `invalid_args` error message.
    pub fn args_as<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        crate::codec::from_value("args", Value::Object(self.args.clone()))
    }
}

/// `ping`: sent by the server every heartbeat interval, and by a client whenever it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    /// A number the answering `pong` echoes.
    pub n: u32,
}

/// `pong`: the answer to a `ping`, echoing its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pong {
    /// The number of the `ping` answered.
    pub n: u32,
}

/// `welcome`: the answer to a good `auth`; the connection is ready. Also the answer to a good
/// re-authentication (an `auth` after `welcome`): nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The signed-in user's id.
    pub user: String,
    /// The heartbeat interval (`hb`): the server pings this often, and closes a connection it
    /// heard nothing from for twice as long.
    #[serde(rename = "hb")]
    pub heartbeat_ms: u32,
    /// The connection's limits.
    pub limits: Limits,
}

/// The limits of a connection, announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most subscriptions at once (`subs`).
    #[serde(rename = "subs")]
    pub max_subscriptions: u32,
    /// Most calls in flight at once (`calls`).
    #[serde(rename = "calls")]
    pub max_calls: u32,
    /// Largest client message, in bytes (`frame`).
    #[serde(rename = "frame")]
    pub max_frame_bytes: u32,
}

/// `subbed`: a subscription started; delivery starts after the position it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subbed {
    /// The topic.
    pub topic: String,
    /// The epoch of the position delivery starts after (`e`).
    #[serde(rename = "e")]
    pub epoch: u64,
    /// The offset delivery starts after (`o`): the `resume` offset sent, or without one the
    /// topic's current offset.
    #[serde(rename = "o")]
    pub offset: u64,
}

impl Subbed {
    /// The position delivery starts after.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

/// `unsubbed`: a subscription ended; no event of the topic follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubbed {
    /// The topic.
    pub topic: String,
}

/// `event`: one event on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The topic.
    pub topic: String,
    /// Its epoch (`e`).
    #[serde(rename = "e")]
    pub epoch: u64,
    /// Its offset (`o`).
    #[serde(rename = "o")]
    pub offset: u64,
    /// The event data (`d`); shapes in [`crate::data`].
    #[serde(rename = "d")]
    pub data: Value,
}

impl Event {
    /// This event's position: resume from it to get the events after it.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }

    /// The data as a typed shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        crate::codec::from_value("d", self.data.clone())
    }
}

/// `gap`: events of a stream topic were lost for this client (its resume position is no longer
/// in history, or from another epoch). Refetch state; delivery continues after this position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    /// The topic.
    pub topic: String,
    /// The epoch delivery continues in (`e`).
    #[serde(rename = "e")]
    pub epoch: u64,
    /// The offset delivery continues after (`o`).
    #[serde(rename = "o")]
    pub offset: u64,
}

impl Gap {
    /// The position delivery continues after: the client's new position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

/// `result`: a call's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallResult {
    /// The call's correlation id.
    pub id: u32,
    /// The result (`d`); shapes in [`crate::data`].
    #[serde(rename = "d")]
    pub data: Value,
}

impl CallResult {
    /// The result as a typed shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        crate::codec::from_value("d", self.data.clone())
    }
}

/// `error`: a call failed, a subscription could not be made, or a message was refused without
/// closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMsg {
    /// The id of the call this answers, if it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// The topic of the `sub` this answers, if it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// A stable code ([`crate::code`]) for programs.
    pub code: String,
    /// A message for people (`msg`): logs, not UI, and never parsed.
    #[serde(rename = "msg")]
    pub message: String,
    /// With [`crate::code::RATE_LIMITED`] only: how long to wait before sending again, in
    /// milliseconds (`retry_ms`). Added to v1 after it shipped; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<u32>,
}

/// `bye`: the server is going away (drain); reconnect, possibly elsewhere, after a random
/// delay up to `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bye {
    /// The window to spread reconnects over (`ms`).
    #[serde(rename = "ms")]
    pub reconnect_within_ms: u32,
}

/// A message from client to server.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum ClientMsg {
    /// `auth`.
    Auth(Auth),
    /// `sub`.
    Sub(Sub),
    /// `unsub`.
    Unsub(Unsub),
    /// `call`.
    Call(Call),
    /// `ping`.
    Ping(Ping),
    /// `pong`.
    Pong(Pong),
}

impl ClientMsg {
    /// Every client message type, as on the wire.
    pub const TYPES: [&'static str; 6] = ["auth", "sub", "unsub", "call", "ping", "pong"];

    /// The message type, as on the wire (`"sub"`): for logs and metrics labels.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Auth(_) => "auth",
            Self::Sub(_) => "sub",
            Self::Unsub(_) => "unsub",
            Self::Call(_) => "call",
            Self::Ping(_) => "ping",
            Self::Pong(_) => "pong",
        }
    }
}

/// A message from server to client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum ServerMsg {
    /// `welcome`.
    Welcome(Welcome),
    /// `subbed`.
    Subbed(Subbed),
    /// `unsubbed`.
    Unsubbed(Unsubbed),
    /// `event`.
    Event(Event),
    /// `gap`.
    Gap(Gap),
    /// `result`.
    Result(CallResult),
    /// `error`.
    Error(ErrorMsg),
    /// `ping`.
    Ping(Ping),
    /// `pong`.
    Pong(Pong),
    /// `bye`.
    Bye(Bye),
}

impl ServerMsg {
    /// Every server message type, as on the wire.
    pub const TYPES: [&'static str; 10] = [
        "welcome", "subbed", "unsubbed", "event", "gap", "result", "error", "ping", "pong", "bye",
    ];

    /// The message type, as on the wire (`"event"`): for logs and metrics labels.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome(_) => "welcome",
            Self::Subbed(_) => "subbed",
            Self::Unsubbed(_) => "unsubbed",
            Self::Event(_) => "event",
            Self::Gap(_) => "gap",
            Self::Result(_) => "result",
            Self::Error(_) => "error",
            Self::Ping(_) => "ping",
            Self::Pong(_) => "pong",
            Self::Bye(_) => "bye",
        }
    }

    /// An `error` answering call `id`.
    pub fn call_error(id: u32, code: &str, message: impl Into<String>) -> Self {
        Self::Error(ErrorMsg {
            id: Some(id),
            topic: None,
            code: code.to_owned(),
            message: message.into(),
            retry_ms: None,
        })
    }

    /// A `rate_limited` `error`, answering call `id` or a `sub` of `topic` when given.
    pub fn rate_limited(id: Option<u32>, topic: Option<&str>, retry_ms: u32) -> Self {
        Self::Error(ErrorMsg {
            id,
            topic: topic.map(str::to_owned),
            code: crate::code::RATE_LIMITED.to_owned(),
            message: format!("too many messages; retry after {retry_ms} ms"),
            retry_ms: Some(retry_ms),
        })
    }

    /// An `error` answering a `sub` of `topic`.
    pub fn topic_error(topic: &str, code: &str, message: impl Into<String>) -> Self {
        Self::Error(ErrorMsg {
            id: None,
            topic: Some(topic.to_owned()),
            code: code.to_owned(),
            message: message.into(),
            retry_ms: None,
        })
    }
}

macro_rules! from_structs {
    ($enum:ident: $($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for $enum {
            fn from(m: $ty) -> Self {
                Self::$variant(m)
            }
        })*
    };
}

from_structs!(ClientMsg: Auth(Auth), Sub(Sub), Unsub(Unsub), Call(Call), Ping(Ping), Pong(Pong));
from_structs!(ServerMsg: Welcome(Welcome), Subbed(Subbed), Unsubbed(Unsubbed), Event(Event),
    Gap(Gap), Result(CallResult), Error(ErrorMsg), Ping(Ping), Pong(Pong), Bye(Bye));
