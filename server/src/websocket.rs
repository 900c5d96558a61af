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
//!   a reset) loses it, and the client sees only EOF. [`close`] ([`close_socket`]) queues the frame, keeps flushing
//!   it while reading and discarding whatever the client still sends, and returns when the
//!   client answers the close, goes away, or the bounded linger time passes.
//!
//! It knows nothing of any gateway's protocol: codes and reasons come from the caller.

/// How many bytes of frames a gateway's socket gathers before it writes them (tungstenite's
/// `write_buffer_size`): frames handed over together go out in one system call per batch up to
/// this size, and a flush writes whatever is gathered. The buffer costs nothing until the socket
/// has traffic; it is the most a busy socket keeps allocated between bursts.
pub const WRITE_BATCH_BYTES: usize = 8 * 1024;

use std::future::Future;
use std::task::{Context, Poll};
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
/// goes away, or after `linger`. Never waits longer than `linger` in all. For a socket split in
/// two halves; [`close_socket`] for one that is not.
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
    linger_close(Halves(sink, stream), code, reason, linger).await;
}

/// [`close`] for a socket that is one object, reading and writing (not split: no lock between
/// the halves on every message).
pub async fn close_socket<S>(socket: &mut S, code: u16, reason: &str, linger: Duration)
where
    S: Sink<Message> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    linger_close(Whole(socket), code, reason, linger).await;
}

/// What a close needs of a socket: to push a message out (ready, send, flush) and to read.
trait Duplex {
    /// Sends `frame` (taken once the sink accepts it) and flushes; ready when done or failed.
    fn poll_send(&mut self, cx: &mut Context<'_>, frame: &mut Option<Message>) -> Poll<()>;
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>>;
}

struct Halves<'a, Si, St>(&'a mut Si, &'a mut St);
struct Whole<'a, S>(&'a mut S);

/// Sends `frame` through `sink` and flushes it; an error ends it as done (nothing more to do).
fn poll_send_on<Si: Sink<Message> + Unpin>(
    sink: &mut Si,
    cx: &mut Context<'_>,
    frame: &mut Option<Message>,
) -> Poll<()> {
    if frame.is_some() {
        match sink.poll_ready_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {}
        }
        if let Some(f) = frame.take()
            && sink.start_send_unpin(f).is_err()
        {
            return Poll::Ready(());
        }
    }
    sink.poll_flush_unpin(cx).map(|_| ())
}

impl<Si, St> Duplex for Halves<'_, Si, St>
where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    fn poll_send(&mut self, cx: &mut Context<'_>, frame: &mut Option<Message>) -> Poll<()> {
        poll_send_on(self.0, cx, frame)
    }
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        self.1.poll_next_unpin(cx)
    }
}

impl<S> Duplex for Whole<'_, S>
where
    S: Sink<Message> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    fn poll_send(&mut self, cx: &mut Context<'_>, frame: &mut Option<Message>) -> Poll<()> {
        poll_send_on(self.0, cx, frame)
    }
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        self.0.poll_next_unpin(cx)
    }
}

async fn linger_close(mut io: impl Duplex, code: u16, reason: &str, linger: Duration) {
    let mut frame = Some(Message::Close(Some(CloseFrame {
        code,
        reason: close_reason(reason),
    })));
    let mut deadline = std::pin::pin!(tokio::time::sleep(linger));
    // Sent: the frame is written and flushed (a slow client's buffers make that wait for its
    // reads). Answered: the client's own close answered ours (or crossed it), or it went away.
    let (mut sent, mut answered) = (false, false);
    std::future::poll_fn(|cx| {
        if !sent && io.poll_send(cx, &mut frame).is_ready() {
            sent = true;
        }
        // Read and discard: unread input would make the kernel reset the connection when it
        // is dropped, losing the close frame still in flight.
        while !answered {
            match io.poll_read(cx) {
                Poll::Ready(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => answered = true,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Pending => break,
            }
        }
        // Once answered, the frame still gets its chance to go out, within the deadline.
        if (sent && answered) || deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
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
