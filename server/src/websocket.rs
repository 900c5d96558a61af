//! Closing server-side WebSockets the way RFC 6455 asks, for every socket gateway.
//!
//! Two things every gateway got wrong alike, kept here once:
//!
//! - A read error is not always "the client is gone": an invalid UTF-8 text message must be
//!   answered with close code 1007, a protocol violation with 1002, an oversized message with
//!   1009 ([`read_error_close`]). Dropping the TCP connection instead leaves the client guessing.
//! - A close frame must actually reach the client. A client cut off for being slow has a full
//!   socket buffer in front of the close frame; dropping the connection a second after queueing
//!   the frame (or while the client's own frames sit unread, which makes the kernel answer with
//!   a reset) loses it, and the client sees only EOF. [`close`] queues the frame, keeps flushing
//!   it while reading and discarding whatever the client still sends, and returns when the
//!   client answers the close, goes away, or the bounded linger time passes.
//!
//! It knows nothing of any gateway's protocol: codes and reasons come from the caller.

/// How many bytes of frames a gateway's socket gathers before it writes them (tungstenite's
/// `write_buffer_size`): frames handed over together go out in one system call per batch up to
/// this size, and a flush writes whatever is gathered. The buffer costs nothing until the socket
/// has traffic; it is the most a busy socket keeps allocated between bursts.
pub const WRITE_BATCH_BYTES: usize = 8 * 1024;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};

/// RFC 6455 1002: the peer broke the WebSocket protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455 1007: a text message was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// RFC 6455 1009: a message was larger than the server accepts.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// The close code and reason owed to the client for a read error, or `None` when the connection
/// itself failed (reset, EOF) and there is nobody left to tell.
pub fn read_error_close(error: &axum::Error) -> Option<(u16, &'static str)> {
    // axum hides tungstenite's error type; its messages are stable and name the kind.
    let text = error.to_string();
    if text.contains("Space limit") || text.contains("too long") || text.contains("capacity") {
        Some((MESSAGE_TOO_BIG, "message too big"))
    } else if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        Some((INVALID_PAYLOAD, "invalid UTF-8 in a text message"))
    } else if text.contains("protocol error") || text.contains("Protocol") {
        Some((PROTOCOL_ERROR, "WebSocket protocol violation"))
    } else {
        None
    }
}

/// Cuts a close reason to the 123 bytes a close frame can carry, on a character boundary.
pub fn close_reason(reason: &str) -> Utf8Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Utf8Bytes::from(reason[..end].to_owned())
}

/// Sends a close frame and lingers until the client has it: flushes while reading and
/// discarding what the client still sends, and returns when the client answers the close or
/// goes away, or after `linger`. Never waits longer than `linger` in all.
pub async fn close<Si, St>(
    sink: &mut Si,
    stream: &mut St,
    code: u16,
    reason: &str,
    linger: Duration,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: close_reason(reason),
    };
    let deadline = tokio::time::Instant::now() + linger;
    let mut sent = false;
    let mut send = std::pin::pin!(async {
        // `send` writes and flushes; a slow client's buffers make this wait for its reads.
        let _ = sink.send(Message::Close(Some(frame))).await;
    });
    loop {
        tokio::select! {
            () = &mut send, if !sent => sent = true,
            incoming = stream.next() => match incoming {
                // The client's own close answers ours (or crossed it): the handshake is done.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    if sent {
                        return;
                    }
                    // Still give the frame its chance to go out, within the deadline.
                    let _ = tokio::time::timeout_at(deadline, &mut send).await;
                    return;
                }
                // Read and discard: unread input would make the kernel reset the connection
                // when it is dropped, losing the close frame still in flight.
                Some(Ok(_)) => {}
            },
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.as_str().len() <= 123);
        assert!(long.starts_with(cut.as_str()));
    }
}
