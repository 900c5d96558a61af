//! The accept loop every server runs (behind [`crate::server::serve_with`]): HTTP/1.1 on hyper,
//! one task per connection, with the bounds a public listener needs.
//!
//! - **Request head**: a client has `header_read_timeout_ms` to send a whole request head, from
//!   the connection's opening or the end of its previous answer (hyper's timer); then the
//!   connection is closed. An idle keep-alive connection is closed after the same time.
//! - **Request body**: a body not complete `body_read_timeout_ms` after its head is cut off: the
//!   handler's read fails, and the answer is replaced by a 408 `request_timeout` with
//!   `Connection: close`. A streamed route (`crate::streaming`) turns that deadline into an idle
//!   timeout through the request's [`BodyDeadline`] extension: then the body is cut off only when
//!   no chunk came for that long.
//! - **Writes**: a write that waits `send_timeout_ms` for a client that reads nothing (its
//!   socket full) fails, and the connection closes — an answer, a streamed download (whose
//!   backend call is dropped with it) or a WebSocket alike. Only a waiting write is timed: an
//!   idle connection or a held long poll is not.
//! - **Connections**: at most `max_connections_per_ip` open at once per client address (an IPv6
//!   client counts by its /64) and `max_connections` in all. Over a cap the connection is
//!   accepted and closed at once, without an answer (the cheapest refusal: nothing is read or
//!   parsed); refusals are logged at debug level each, and at warn level at most once every
//!   10 s with their count. The slot is held by the connection's IO object, which hyper moves
//!   into the upgraded socket, so a WebSocket counts against the caps until it is dropped.
//! - **Accept errors**: a client that aborted before `accept` is skipped; any other error (such
//!   as EMFILE, out of file descriptors) backs off 100 ms before the next `accept`, logged at
//!   most once every 10 s.
//! - **Shutdown**: the listener closes when the token is cancelled; open connections finish
//!   their request in flight (idle ones close at once) within the drain timeout, then are
//!   aborted. Upgraded sockets are not tracked here: whoever spawns socket handlers waits for
//!   them.
//!
//! Every request carries the peer's `ConnectInfo<SocketAddr>` as an extension. HTTP/2 is not
//! served: cleartext HTTP/2 has no client among browsers, apps or proxies in front of the
//! gateways, and leaving it out keeps one code path to bound.

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use switchyard_core::logthrottle::LogThrottle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::ServerConfig;
use crate::streaming::BodyDeadline;
use switchyard_core::slots::{Refused, Slot, Slots};

use crate::errors::JsonError;

/// How long the loop waits after an accept error that is not the client's doing.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Most one warn line per this interval for refusals, and for accept errors.
const LOG_EVERY_MS: u64 = 10_000;

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains for at most the
/// configured drain timeout.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    config: &ServerConfig,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let slots: Slots<IpAddr> = Slots::new(config.max_connections_per_ip, config.max_connections);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(nonzero(config.header_read_timeout()));
    let body_timeout = nonzero(config.body_read_timeout());
    let send_timeout = nonzero(config.send_timeout());
    let mut conns = JoinSet::new();
    let refusals = LogThrottle::new(LOG_EVERY_MS);
    let accept_errors = LogThrottle::new(LOG_EVERY_MS);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) if client_gone(&e) => continue,
            Err(e) => {
                if let Some(left_out) = accept_errors.allow() {
                    tracing::error!(%addr, error = %e, errors = left_out + 1, "accept failed; backing off");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let slot = match slots.try_acquire(client_key(peer.ip())) {
            Ok(slot) => slot,
            Err(why) => {
                drop(tcp);
                tracing::debug!(%peer, ?why, "connection refused: over the cap");
                if let Some(left_out) = refusals.allow() {
                    tracing::warn!(
                        %addr,
                        refused = left_out + 1,
                        last_peer = %peer,
                        cap = match why {
                            Refused::PerKey => "max_connections_per_ip",
                            Refused::Total => "max_connections",
                        },
                        "connections refused over the cap (logged at most every 10 s)"
                    );
                }
                continue;
            }
        };
        // Answers are written whole; Nagle's algorithm would only delay small ones.
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(Guarded {
            tcp,
            _slot: slot,
            stall: Stall::new(send_timeout),
        });
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(app, req, peer, body_timeout).await) }
        });
        let conn = http.serve_connection(io, service).with_upgrades();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(%addr, drain_ms = config.drain_timeout_ms, open = conns.len(), "draining");
    let drained = tokio::time::timeout(config.drain_timeout(), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(%addr, open = conns.len(), "drain timeout passed; closing remaining connections");
        conns.abort_all();
    }
    Ok(())
}

/// One request: the peer's address as an extension, the body under its deadline, and a 408 in
/// place of the answer when the deadline cut the body off.
async fn handle(
    app: Router,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    body_timeout: Option<Duration>,
) -> Response<Body> {
    req.extensions_mut().insert(ConnectInfo(peer));
    let (req, timed_out) = match body_timeout {
        Some(limit) if !req.body().is_end_stream() => {
            let flag = Arc::new(AtomicBool::new(false));
            let timed_out = flag.clone();
            let deadline = BodyDeadline::default();
            req.extensions_mut().insert(deadline.clone());
            let req = req.map(|inner| {
                Body::new(DeadlineBody {
                    inner,
                    sleep: Box::pin(tokio::time::sleep(limit)),
                    timed_out,
                    deadline,
                    idle: None,
                })
            });
            (req, Some((flag, limit)))
        }
        _ => (req.map(Body::new), None),
    };
    let Ok(response) = app.oneshot(req).await;
    match timed_out {
        Some((flag, limit)) if flag.load(Ordering::Relaxed) => {
            let mut response = JsonError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body was not received within {} ms",
                    limit.as_millis()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => response,
    }
}

/// A request body that fails once its deadline has passed without it being complete — or, once
/// a route made it an idle timeout ([`BodyDeadline::idle`]), without a chunk for that long.
struct DeadlineBody {
    inner: Incoming,
    sleep: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
    deadline: BodyDeadline,
    /// The idle timeout in force, once the route set one.
    idle: Option<Duration>,
}

/// The error a body cut off by its deadline reads as.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
struct BodyTimeout;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        let idle = this.deadline.idle_timeout();
        if idle.is_some() && idle != this.idle {
            this.idle = idle;
            if let Some(idle) = idle {
                this.sleep.as_mut().reset(Instant::now() + idle);
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let (Some(idle), Some(Ok(_))) = (this.idle, &frame) {
                    this.sleep.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyTimeout.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream together with its connection slot: the slot lives exactly as long as the
/// socket, including after an upgrade (hyper moves the IO into the upgraded connection). It
/// also bounds how long a write may wait for the client to read ([`Stall`]).
struct Guarded {
    tcp: TcpStream,
    _slot: Slot<IpAddr>,
    stall: Stall,
}

/// The send timeout: armed when a write finds the client's socket full, disarmed as soon as
/// the socket takes a byte again; once it fires, every write fails with `TimedOut`, which ends
/// the connection (and whatever it was streaming). No timer exists while writes go through,
/// so a fast connection pays nothing for it; the timer is allocated on a connection's first
/// stall and reused.
struct Stall {
    timeout: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// Passes a write's result on, timing how long it has been pending.
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let Some(timeout) = self.timeout else {
            return result;
        };
        if result.is_ready() {
            self.armed = false;
            return result;
        }
        if !self.armed {
            let deadline = Instant::now() + timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(timer) = &mut self.timer else {
            return result;
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(
                    timeout_ms = timeout.as_millis() as u64,
                    "closing a connection whose client stopped reading"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within the send timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.stall.watch(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.stall.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP stream's flush and shutdown never wait: only writes are timed.
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The key a client's connections are counted under: its IPv4 address, or its IPv6 /64 (one
/// host usually holds a whole /64); IPv4-mapped IPv6 addresses count as IPv4.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Errors of a connection its client abandoned before it was accepted: skip, do not back off.
fn client_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(
            client_key(mapped),
            "10.0.0.7".parse::<IpAddr>().expect("ip")
        );
    }
}
