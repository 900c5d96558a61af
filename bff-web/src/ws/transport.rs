//! The socket's transport: the close codes this server sends, the close owed ([`Closing`]),
//! bounded writes of protocol messages (a client that stops reading is cut off with 1013), and
//! the close frame that lingers until a slow client has it. It knows nothing of the protocol's
//! states or of the operations running on the socket.

use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use futures::stream::StreamExt;

use crate::fanout::Frame;

/// Close codes this server sends.
pub(crate) mod close {
    /// The message was not a valid graphql-transport-ws message.
    pub(crate) const INVALID_MESSAGE: u16 = 4400;
    /// `subscribe` before `connection_ack`.
    pub(crate) const UNAUTHORIZED: u16 = 4401;
    /// The `connection_init` or re-authentication credentials were refused, a re-authentication
    /// named another user, or the token expired without one.
    pub(crate) const FORBIDDEN: u16 = 4403;
    /// The client did not offer `graphql-transport-ws`.
    pub(crate) const SUBPROTOCOL_NOT_ACCEPTABLE: u16 = 4406;
    /// No `connection_init` within the configured time.
    pub(crate) const INIT_TIMEOUT: u16 = 4408;
    /// An operation with that id is already active.
    pub(crate) const DUPLICATE_ID: u16 = 4409;
    /// More than one `connection_init`.
    pub(crate) const TOO_MANY_INIT: u16 = 4429;
    /// The user already has `max_sockets_per_user` sockets open (same code: "too many").
    pub(crate) const TOO_MANY_SOCKETS: u16 = 4429;
    /// The server is draining: reconnect (elsewhere).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The client did not read fast enough and missed events of a stream subscription.
    pub(crate) const SLOW_CONSUMER: u16 = 1013;
    /// The client sent messages faster than its rate limit.
    pub(crate) const RATE_LIMITED: u16 = 1008;
}

/// Why the socket ends.
pub(crate) struct Closing(u16, String);

impl Closing {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        // A close reason must fit a control frame (123 bytes).
        while reason.len() > 120 {
            reason.pop();
        }
        Self(code, reason)
    }

    /// The close code.
    pub(crate) fn code(&self) -> u16 {
        self.0
    }

    /// For a slow consumer's close (1013), whether its queue was full (events were missed)
    /// rather than a write timing out; `None` for any other close.
    pub(crate) fn slow_consumer(&self) -> Option<bool> {
        (self.0 == close::SLOW_CONSUMER).then(|| self.1.contains("missed"))
    }
}

/// How long a close frame may take to reach the client, reading and discarding meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Why a write failed: `None` when the client is gone, or the close owed to a client that
/// stopped reading (its frame is still sent, and lingers until it reads or the linger ends).
pub(super) type Sent = Result<(), Option<Closing>>;

/// Sends one message, waiting at most `timeout` for a client that does not read.
pub(super) async fn send_text(socket: &mut WebSocket, text: String, timeout: Duration) -> Sent {
    send_all(socket, [Message::Text(Utf8Bytes::from(text))], timeout).await
}

/// Sends messages in one write where the socket's buffer allows (each is handed to the socket,
/// then ONE flush: one system call for a batch, not one per message), waiting at most `timeout`
/// in all for a client that does not read.
pub(super) async fn send_all(
    socket: &mut WebSocket,
    messages: impl IntoIterator<Item = Message>,
    timeout: Duration,
) -> Sent {
    let write = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => {
            tracing::info!("cutting off a socket whose client has not read for {timeout:?}");
            Err(Some(Closing::new(
                close::SLOW_CONSUMER,
                "too slow: the client stopped reading; reconnect",
            )))
        }
    }
}

/// Sends an operation's frame as its `next`, `error` or `complete` message.
pub(super) async fn send_frame(
    socket: &mut WebSocket,
    id: &str,
    frame: &Frame,
    timeout: Duration,
) -> Sent {
    send_all(socket, [frame_message(id, frame)], timeout).await
}

/// An operation's frame as its `next`, `error` or `complete` message; a `next` message is built
/// once per result for the id most sockets give it ([`crate::fanout::Next`]).
pub(super) fn frame_message(id: &str, frame: &Frame) -> Message {
    let id_json = id_json(id);
    let text = match frame {
        Frame::Next(next) => {
            return Message::Text(
                next.message(&id_json, || envelope(&id_json, "next", &next.payload)),
            );
        }
        Frame::Error(errors) => envelope(&id_json, "error", errors),
        Frame::Complete => format!(r#"{{"id":{id_json},"type":"complete"}}"#),
    };
    Message::Text(Utf8Bytes::from(text))
}

/// An operation id as a JSON string: most ids need no escaping, and are quoted without a
/// detour through `serde_json::Value`.
fn id_json(id: &str) -> String {
    if id
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        let mut s = String::with_capacity(id.len() + 2);
        s.push('"');
        s.push_str(id);
        s.push('"');
        s
    } else {
        serde_json::Value::String(id.to_owned()).to_string()
    }
}

/// Sends an operation's `complete` message.
pub(super) async fn send_complete(socket: &mut WebSocket, id: &str, timeout: Duration) -> Sent {
    send_frame(socket, id, &Frame::Complete, timeout).await
}

/// `{"id":…,"type":…,"payload":…}` around an already-serialised payload.
fn envelope(id_json: &str, ty: &str, payload: &[u8]) -> String {
    let payload = std::str::from_utf8(payload).unwrap_or("null");
    let mut s = String::with_capacity(id_json.len() + payload.len() + 40);
    s.push_str(r#"{"id":"#);
    s.push_str(id_json);
    s.push_str(r#","type":""#);
    s.push_str(ty);
    s.push_str(r#"","payload":"#);
    s.push_str(payload);
    s.push('}');
    s
}

/// Sends the close frame and lingers until the client has it (a slow consumer cut off with
/// 1013 must read what its buffers hold before the frame reaches it).
pub(super) async fn close(socket: WebSocket, closing: Closing) {
    let (mut sink, mut stream) = socket.split();
    switchyard_server::websocket::close(
        &mut sink,
        &mut stream,
        closing.0,
        &closing.1,
        CLOSE_LINGER,
    )
    .await;
}
