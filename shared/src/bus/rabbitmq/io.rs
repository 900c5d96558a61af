//! The stream connection's plumbing: frames on the socket (a big-endian length, then the
//! command, encoded and decoded by `rabbitmq-stream-protocol`), the routes the reader task
//! delivers by (answers by correlation id, chunks by subscription id, confirms by publisher and
//! publishing id), and the reader and writer tasks themselves. The reader ends every route when
//! the connection closes: waiters fail, subscriptions end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rabbitmq_stream_protocol::codec::{Decoder, Encoder};
use rabbitmq_stream_protocol::commands::Command;
use rabbitmq_stream_protocol::commands::heart_beat::HeartBeatCommand;
use rabbitmq_stream_protocol::{Request, RequestKind, Response, ResponseCode, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connection::Chunk;

/// Largest frame this client accepts (and asks the server to keep to).
pub(super) const MAX_FRAME: u32 = 8 * 1024 * 1024;
/// Heartbeat interval asked for, in seconds (the server may lower it).
pub(super) const HEARTBEAT_S: u32 = 20;
const KEY_DELIVER: u16 = 8;
const KEY_METADATA_UPDATE: u16 = 16;
const KEY_CLOSE: u16 = 22;

/// What an answer with a correlation id goes to.
pub(super) enum Waiter {
    Reply(oneshot::Sender<Response>),
    /// An Unsubscribe's answer: the subscription id is free again (no delivery for it can follow).
    FreeSubscription(u8),
    /// A DeletePublisher's answer: the publisher id is free again.
    FreePublisher(u8),
}

/// The state the reader task and callers share.
pub(super) struct Routes {
    pub(super) waiters: HashMap<u32, Waiter>,
    /// Live subscriptions: id → (stream, where its chunks go).
    pub(super) subscriptions: HashMap<u8, (String, mpsc::Sender<Chunk>)>,
    pub(super) confirms: HashMap<(u8, u64), oneshot::Sender<Result<(), ResponseCode>>>,
    /// Ids in use (including those whose release the server has not answered yet).
    pub(super) subscription_ids: [bool; 256],
    pub(super) publisher_ids: [bool; 256],
    /// Metadata updates received (a stream deleted or moved): what this connection knew of its
    /// streams may be stale once it moves.
    pub(super) updates: u64,
    pub(super) closed: bool,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            waiters: HashMap::new(),
            subscriptions: HashMap::new(),
            confirms: HashMap::new(),
            subscription_ids: [false; 256],
            publisher_ids: [false; 256],
            updates: 0,
            closed: false,
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here are single map operations; none can leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn encode(request: Request) -> Vec<u8> {
    let mut buf = Vec::with_capacity(request.encoded_size() as usize + 4);
    // Encoding into a Vec cannot fail (no I/O error is possible).
    let _ = request.encode(&mut buf);
    buf
}

pub(super) fn request<C: Into<RequestKind> + Command>(cmd: C) -> Vec<u8> {
    encode(Request::from(cmd))
}

pub(super) async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = rd.read_u32().await?;
    if !(4..=MAX_FRAME + 1024).contains(&len) {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut frame = vec![0; len as usize + 4];
    frame[..4].copy_from_slice(&len.to_be_bytes());
    rd.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

pub(super) fn decode(frame: &[u8]) -> Result<Response, String> {
    Response::decode(frame)
        .map(|(_, r)| r)
        .map_err(|e| format!("{e:?}"))
}

pub(super) async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    closed: CancellationToken,
    heartbeat: Duration,
) {
    let mut beat = tokio::time::interval(heartbeat.max(Duration::from_secs(1)));
    loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break,
            frame = frames.recv() => match frame { Some(f) => f, None => break },
            _ = beat.tick() => request(HeartBeatCommand::default()),
        };
        if wr.write_all(&frame).await.is_err() {
            break;
        }
    }
    closed.cancel();
    let _ = wr.shutdown().await;
}

pub(super) async fn read_loop(
    mut rd: OwnedReadHalf,
    routes: Arc<Mutex<Routes>>,
    closed: CancellationToken,
    idle: Duration,
) {
    loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break,
            frame = tokio::time::timeout(idle, read_frame(&mut rd)) => match frame {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => { tracing::debug!(error = %e, "rabbitmq stream connection lost"); break }
                Err(_) => { tracing::debug!("rabbitmq stream connection silent; closing"); break }
            },
        };
        if !dispatch(&frame, &routes) {
            break;
        }
    }
    closed.cancel();
    let mut r = lock(&routes);
    r.closed = true;
    // Dropping the senders fails every waiter and ends every subscription.
    r.waiters.clear();
    r.subscriptions.clear();
    r.confirms.clear();
}

/// Routes one frame; `false` when the server closes the connection.
fn dispatch(frame: &[u8], routes: &Mutex<Routes>) -> bool {
    let key = u16::from_be_bytes([frame[4], frame[5]]) & 0x7fff;
    match key {
        KEY_METADATA_UPDATE => {
            // code (u16), then the stream's name (i16 length, bytes): its subscriptions end.
            let stream = frame
                .get(10..12)
                .map(|l| usize::try_from(i16::from_be_bytes([l[0], l[1]])).unwrap_or(0))
                .and_then(|len| frame.get(12..12 + len))
                .map(|name| String::from_utf8_lossy(name).into_owned());
            let mut r = lock(routes);
            r.updates += 1;
            r.subscriptions
                .retain(|_, (s, _)| stream.as_deref().is_some_and(|name| name != s));
            return true;
        }
        KEY_CLOSE => {
            tracing::warn!("rabbitmq closed the stream connection");
            return false;
        }
        _ => {}
    }
    let response = match decode(frame) {
        Ok(r) => r,
        Err(e) => {
            if key == KEY_DELIVER
                && let Some(&id) = frame.get(8)
            {
                // An undecodable chunk ends its subscription (its reader resyncs from history).
                tracing::warn!(error = %e, "undecodable rabbitmq chunk; ending its subscription");
                lock(routes).subscriptions.remove(&id);
                return true;
            }
            tracing::debug!(key, error = %e, "undecodable rabbitmq frame skipped");
            return true;
        }
    };
    let corr = response.correlation_id();
    match response.kind_ref() {
        ResponseKind::Deliver(_) => {
            let ResponseKind::Deliver(d) = response.kind() else {
                return true;
            };
            let mut r = lock(routes);
            let id = d.subscription_id;
            let overflow = match r.subscriptions.get(&id) {
                Some((_, tx)) => tx
                    .try_send(Chunk {
                        first: d.chunk_first_offset,
                        messages: d.messages,
                    })
                    .is_err(),
                None => false,
            };
            if overflow {
                // More chunks than credits granted, or a reader gone: end the subscription.
                r.subscriptions.remove(&id);
            }
        }
        ResponseKind::PublishConfirm(c) => {
            let mut r = lock(routes);
            for id in &c.publishing_ids {
                if let Some(tx) = r.confirms.remove(&(c.publisher_id, *id)) {
                    let _ = tx.send(Ok(()));
                }
            }
        }
        ResponseKind::PublishError(e) => {
            let mut r = lock(routes);
            for err in &e.publishing_errors {
                if let Some(tx) = r.confirms.remove(&(e.publisher_id, err.publishing_id)) {
                    let _ = tx.send(Err(err.error_code.clone()));
                }
            }
        }
        ResponseKind::Heartbeat(_) | ResponseKind::Credit(_) => {}
        _ => {
            let Some(corr) = corr else { return true };
            let waiter = lock(routes).waiters.remove(&corr);
            match waiter {
                Some(Waiter::Reply(tx)) => {
                    let _ = tx.send(response);
                }
                Some(Waiter::FreeSubscription(id)) => {
                    lock(routes).subscription_ids[usize::from(id)] = false;
                }
                Some(Waiter::FreePublisher(id)) => {
                    lock(routes).publisher_ids[usize::from(id)] = false;
                }
                None => {}
            }
        }
    }
    true
}
