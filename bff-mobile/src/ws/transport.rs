//! The socket's transport plumbing: its outgoing queue (bounded by the caller, conflating state
//! updates, pings and pongs), writes that never take a message the sink has not accepted, and
//! the close (flush within a bound, close frame, linger).
//!
//! This module knows WebSocket messages, not the protocol: it neither encodes nor decodes
//! (`mobile_proto` does, in [`super::conn`]) and decides no close code of its own — it is told
//! how to close ([`Closing`]), except that a slow consumer's queue is dropped, not flushed.

use std::collections::VecDeque;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use mobile_proto::{Frame, close};
use tokio::time::Instant;

/// How long a close frame may take to reach the client (a slow consumer reads what its
/// buffers hold first), reading and discarding meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Longest wait for a client's close answer, and for flushing before a close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Longest close reason (RFC 6455 allows 123 bytes).
const MAX_REASON_BYTES: usize = 123;

/// How to close a socket.
pub(super) struct Closing {
    pub(super) code: u16,
    pub(super) reason: String,
}

impl Closing {
    pub(super) fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Self { code, reason }
    }
}

/// What a queued message is, for bounding and conflation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// An answer (`welcome`, `subbed`, `result`, `error`, …): never dropped.
    Reply,
    /// An event or gap of a stream topic: counts against the send queue.
    Stream,
    /// An event of a state topic (by subscription id): replaced by a newer one while queued.
    State(u32),
    /// A server `ping`: at most one queued.
    Ping,
    /// A `pong`: at most one queued (the newest).
    Pong,
}

/// The socket's outgoing queue.
pub(super) struct Queue {
    items: VecDeque<(Kind, Message)>,
    /// Whether something was handed to the sink and not yet flushed.
    dirty: bool,
    /// When the queue last moved (or last became non-empty).
    progress: Instant,
    /// Where conflations are counted (the gateway's metrics).
    pub(super) conflations: Option<switchyard_server::metrics::Counter>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            dirty: false,
            progress: Instant::now(),
            conflations: None,
        }
    }
}

impl Queue {
    /// Whether something waits to be written or flushed.
    pub(super) fn busy(&self) -> bool {
        !self.items.is_empty() || self.dirty
    }

    /// When the queue last moved (or last became non-empty): the write timeout counts from here.
    pub(super) fn progress(&self) -> Instant {
        self.progress
    }

    pub(super) fn push(&mut self, kind: Kind, msg: Message) {
        if !self.busy() {
            self.progress = Instant::now();
        }
        let same = |k: &Kind| match (&kind, k) {
            (Kind::State(a), Kind::State(b)) => a == b,
            (Kind::Ping, Kind::Ping) | (Kind::Pong, Kind::Pong) => true,
            _ => false,
        };
        if matches!(kind, Kind::State(_) | Kind::Ping | Kind::Pong)
            && let Some(slot) = self.items.iter_mut().find(|(k, _)| same(k))
        {
            // Conflation: the newer value replaces the unsent one, in its place.
            if kind != Kind::Ping {
                slot.1 = msg;
            }
            if let (Kind::State(_), Some(c)) = (&kind, &self.conflations) {
                c.add(1);
            }
            return;
        }
        self.items.push_back((kind, msg));
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }
}

/// The socket and its outgoing queue. The socket is not split into halves: one task reads and
/// writes it, and a split would put a lock between the halves on every message.
pub(super) struct Io {
    pub(super) socket: WebSocket,
    pub(super) queue: Queue,
}

/// What a turn of the socket's IO gave ([`Io::turn`]).
pub(super) enum Turn {
    /// The queue was written and flushed (or the write failed: the client is gone).
    Written(Result<(), axum::Error>),
    /// A message from the client, a read error, or `None` at its end.
    Incoming(Option<Result<Message, axum::Error>>),
}

/// Writes queued messages and flushes; resolves once the queue is empty and flushed. Cancel-safe:
/// a message leaves the queue only when the sink has taken it.
pub(super) async fn write_queued(
    sink: &mut WebSocket,
    queue: &mut Queue,
) -> Result<(), axum::Error> {
    futures::future::poll_fn(|cx| poll_write(sink, queue, cx)).await
}

/// One poll of [`write_queued`].
fn poll_write(
    sink: &mut WebSocket,
    queue: &mut Queue,
    cx: &mut std::task::Context<'_>,
) -> Poll<Result<(), axum::Error>> {
    let mut moved = false;
    while !queue.items.is_empty() {
        match sink.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if moved {
                    queue.progress = Instant::now();
                }
                return Poll::Pending;
            }
        }
        if let Some((_, msg)) = queue.items.pop_front() {
            sink.start_send_unpin(msg)?;
            queue.dirty = true;
            // The clock is read once per batch, not once per message.
            moved = true;
        }
    }
    match sink.poll_flush_unpin(cx) {
        Poll::Ready(Ok(())) => {
            queue.dirty = false;
            queue.progress = Instant::now();
            Poll::Ready(Ok(()))
        }
        other => {
            if moved {
                queue.progress = Instant::now();
            }
            other
        }
    }
}

impl Io {
    pub(super) fn new(socket: WebSocket) -> Self {
        Self {
            socket,
            queue: Queue::default(),
        }
    }

    /// Writes what is queued (when `write`), else — or while the write waits for the client —
    /// reads the client's next message: writing first, so the queue only grows while the socket
    /// itself is blocked. Cancel-safe, like [`write_queued`] and a socket's read.
    pub(super) async fn turn(&mut self, write: bool) -> Turn {
        futures::future::poll_fn(|cx| {
            if write && let Poll::Ready(r) = poll_write(&mut self.socket, &mut self.queue, cx) {
                return Poll::Ready(Turn::Written(r));
            }
            self.socket.poll_next_unpin(cx).map(Turn::Incoming)
        })
        .await
    }

    /// Closes the socket: flushes what is queued (except for a slow consumer, whose queue is
    /// dropped), sends the close frame and lingers, reading and discarding, until the client has
    /// it (a slow consumer gets its close frame only once it reads what its socket buffers hold:
    /// give it as long as any write).
    pub(super) async fn close(&mut self, closing: Closing) {
        if closing.code == close::SLOW_CONSUMER {
            self.queue.items.clear();
        }
        let _ =
            tokio::time::timeout(CLOSE_WAIT, write_queued(&mut self.socket, &mut self.queue)).await;
        switchyard_server::websocket::close_socket(
            &mut self.socket,
            closing.code,
            &closing.reason,
            CLOSE_LINGER,
        )
        .await;
    }

    /// The client is gone or closed: flushes whatever close answer is pending, within a bound.
    pub(super) async fn finish(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WAIT, self.socket.flush()).await;
    }
}

/// The close owed to the client for a read error (1009 too big, 1007 invalid UTF-8, 1002
/// protocol violation), or nothing when the client is gone.
pub(super) fn read_error(e: &axum::Error) -> Option<Closing> {
    switchyard_server::websocket::read_error_close(e)
        .map(|(code, reason)| Closing::new(code, reason))
}

/// A protocol frame as a WebSocket message (no copy).
pub(super) fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(s) => Message::Text(Utf8Bytes::from(s)),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_at_123_bytes_on_a_char_boundary() {
        let c = Closing::new(4400, "é".repeat(100));
        assert!(c.reason.len() <= MAX_REASON_BYTES);
        assert!(c.reason.len() >= MAX_REASON_BYTES - 1);
    }
}
