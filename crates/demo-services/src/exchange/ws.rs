//! One WebSocket connection of the ticker protocol ([`demo_api::ticks`]): watch and unwatch
//! requests in, the watch list, errors and ticks out.
//!
//! A connection is one task. It reads client frames, and for every new market snapshot sends the
//! pre-encoded tick frame of each watched pair (ticks are encoded once per snapshot, not once per
//! connection). A connection that falls behind is conflated: it sends only the newest snapshot it
//! has, never a backlog. A newly watched pair gets its current tick at once, after the
//! `watching` answer, so a watcher never waits a whole interval for its first rate; each pair
//! is sent at most once per `seq`.
//!
//! Bounds: a client message larger than `max_message_bytes` closes the connection with 1009; a
//! write that cannot complete in [`WRITE_TIMEOUT`] drops the connection; shutdown closes it with
//! 1001. The connection counts itself and its watches in the stats, and uncounts them when it
//! ends, however it ends. This module does not know how ticks are made.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use demo_api::Pair;
use demo_api::ticks::{ClientMsg, ServerMsg};
use futures::SinkExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::Exchange;
use super::market::Snapshot;

/// Longest time one batch of frames may take to write before the client is dropped as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time a close handshake is waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The size the WebSocket layer itself refuses to read. Larger than `max_message_bytes`, so a
/// message a little over the limit is read whole and answered with a clean 1009 close; a frame
/// over this cap fails in the WebSocket layer, and is answered with 1009 too.
pub(super) fn read_cap(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(4).max(64 * 1024)
}

/// The connection's watches and its share of the stats.
struct Connection {
    exchange: Arc<Exchange>,
    /// Watched pairs and the `seq` of the last tick sent for each.
    watched: BTreeMap<Pair, u64>,
}

impl Connection {
    fn open(exchange: Arc<Exchange>) -> Self {
        exchange.stats.connections.fetch_add(1, Ordering::SeqCst);
        exchange
            .stats
            .connections_total
            .fetch_add(1, Ordering::SeqCst);
        Self {
            exchange,
            watched: BTreeMap::new(),
        }
    }

    /// Answers one client text message: the frames to send back.
    fn handle(&mut self, text: &str) -> Vec<Message> {
        let msg = match serde_json::from_str::<ClientMsg>(text) {
            Ok(msg) => msg,
            Err(e) => {
                return vec![error(
                    "bad_message",
                    format!("expected {{\"op\":\"watch\"|\"unwatch\",\"pairs\":[...]}}: {e}"),
                )];
            }
        };
        let (watch, names) = match msg {
            ClientMsg::Watch { pairs } => (true, pairs),
            ClientMsg::Unwatch { pairs } => (false, pairs),
        };
        let mut pairs = Vec::with_capacity(names.len());
        for name in &names {
            match name.parse::<Pair>() {
                Ok(p) => pairs.push(p),
                Err(e) => {
                    let shown: String = name.chars().take(32).collect();
                    return vec![error("unknown_pair", format!("`{shown}`: {e}"))];
                }
            }
        }
        if watch {
            self.watch(&pairs)
        } else {
            for p in pairs {
                if self.watched.remove(&p).is_some() {
                    self.exchange.stats.unwatch(p);
                }
            }
            vec![self.watching()]
        }
    }

    /// Adds every pair or, if that would pass the limit, none.
    fn watch(&mut self, pairs: &[Pair]) -> Vec<Message> {
        let mut added: Vec<Pair> = pairs
            .iter()
            .copied()
            .filter(|p| !self.watched.contains_key(p))
            .collect();
        added.sort();
        added.dedup();
        if self.watched.len() + added.len() > self.exchange.max_pairs {
            return vec![error(
                "too_many_pairs",
                format!(
                    "a connection may watch at most {} pairs",
                    self.exchange.max_pairs
                ),
            )];
        }
        let current = self.exchange.current();
        for &p in &added {
            self.exchange.stats.watch(p);
            self.watched.insert(p, current.seq);
        }
        let mut out = vec![self.watching()];
        out.extend(added.iter().map(|&p| Message::Text(current.frame(p))));
        out
    }

    fn watching(&self) -> Message {
        let mut pairs: Vec<String> = self.watched.keys().map(Pair::to_string).collect();
        pairs.sort();
        encode(&ServerMsg::Watching { pairs })
    }

    /// The tick frames of `snapshot` not sent yet.
    fn ticks(&mut self, snapshot: &Snapshot) -> Vec<Message> {
        let mut out = Vec::new();
        for (&pair, last) in &mut self.watched {
            if *last < snapshot.seq {
                *last = snapshot.seq;
                out.push(Message::Text(snapshot.frame(pair)));
            }
        }
        out
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for &p in self.watched.keys() {
            self.exchange.stats.unwatch(p);
        }
        self.exchange
            .stats
            .connections
            .fetch_sub(1, Ordering::SeqCst);
    }
}

fn encode(msg: &ServerMsg) -> Message {
    let text = serde_json::to_string(msg).expect("a server message of strings always serialises");
    Message::Text(text.into())
}

fn error(reason: &str, message: String) -> Message {
    encode(&ServerMsg::Error {
        reason: reason.to_owned(),
        message,
    })
}

/// Why a connection ends.
enum End {
    /// The client closed, went away, or could not be written to: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Runs one connection until the client leaves, breaks a rule, or the service shuts down.
pub(super) async fn serve(mut socket: WebSocket, exchange: Arc<Exchange>) {
    let shutdown = exchange.shutdown.clone();
    // Subscribe before anything is answered, so no snapshot after a watch's current one is missed.
    let mut ticks = exchange.ticks.subscribe();
    let max_message_bytes = exchange.max_message_bytes;
    let mut conn = Connection::open(exchange);
    let end = loop {
        let out = tokio::select! {
            biased;
            () = shutdown.cancelled() => break End::Close(close_code::AWAY, "server shutting down"),
            msg = socket.recv() => match msg {
                None => break End::Gone,
                Some(Err(e)) => break read_error(&e),
                Some(Ok(Message::Text(text))) => {
                    if text.len() > max_message_bytes {
                        break End::Close(close_code::SIZE, "message too big");
                    }
                    conn.handle(text.as_str())
                }
                Some(Ok(Message::Binary(data))) => {
                    if data.len() > max_message_bytes {
                        break End::Close(close_code::SIZE, "message too big");
                    }
                    vec![error("bad_message", "messages are JSON text frames".to_owned())]
                }
                // Pings are answered by the WebSocket layer; a Close is answered by it too and the
                // next read ends the stream.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
            },
            tick = ticks.recv() => match tick {
                Ok(snapshot) => conn.ticks(&newest(&mut ticks, snapshot)),
                Err(RecvError::Lagged(_)) => match ticks.try_recv() {
                    Ok(snapshot) => conn.ticks(&newest(&mut ticks, snapshot)),
                    Err(_) => continue,
                },
                Err(RecvError::Closed) => break End::Close(close_code::AWAY, "server shutting down"),
            },
        };
        if out.is_empty() {
            continue;
        }
        let write = async {
            for m in out {
                socket.feed(m).await?;
            }
            socket.flush().await
        };
        tokio::select! {
            () = shutdown.cancelled() => break End::Gone,
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => match r {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break End::Gone,
                Err(_) => {
                    tracing::info!("exchange: dropping a ticks client that stopped reading");
                    break End::Gone;
                }
            },
        }
    };
    // Uncount the watches before the close handshake, so stats never show a leaving connection.
    drop(conn);
    if let End::Close(code, reason) = end {
        close(socket, code, reason).await;
    }
}

/// Skips to the newest snapshot already queued: rates are a state stream.
fn newest(
    ticks: &mut tokio::sync::broadcast::Receiver<Arc<Snapshot>>,
    mut snapshot: Arc<Snapshot>,
) -> Arc<Snapshot> {
    loop {
        match ticks.try_recv() {
            Ok(s) => snapshot = s,
            Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => return snapshot,
        }
    }
}

/// How to end after the WebSocket layer failed to read. It reports an oversized frame as
/// "Space limit exceeded" (tungstenite's `Error::Capacity`); axum does not expose the type.
fn read_error(e: &axum::Error) -> End {
    let text = e.to_string();
    if text.contains("Space limit exceeded") {
        End::Close(close_code::SIZE, "message too big")
    } else {
        tracing::debug!(error = %text, "exchange: ticks client read failed");
        End::Gone
    }
}

/// Sends a Close frame and waits briefly for the client's, so the close is clean.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let handshake = async {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.recv().await {}
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
}
