//! The accept loop's bounds, with raw TCP clients on loopback: the time to send a request head
//! and a body, the time a write may wait for a client that reads nothing, connections per
//! client address and in all (WebSockets included), and the peer address handed to handlers.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::ws::WebSocketUpgrade;
use axum::routing::{get, post};
use switchyard_server::config::ServerConfig;
use switchyard_server::server::{self, CancellationToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a test waits for anything the server should do within its (small) timeouts.
const WAIT: Duration = Duration::from_secs(5);

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(config: ServerConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        server::serve_with(listener, app(), s, &config)
            .await
            .expect("serve");
    });
    Running { addr, stop }
}

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|body: String| async move { body.len().to_string() }),
        )
        .route("/endless", get(endless))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(
                    |mut socket| async move { while let Some(Ok(_)) = socket.recv().await {} },
                )
            }),
        )
}

/// Set when the body of a `/endless` answer is dropped: the connection that carried it ended.
static ENDLESS_DROPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An answer that never ends (64 KiB chunks, as fast as the client reads): a download of a
/// client that may stop reading.
async fn endless() -> axum::body::Body {
    struct Endless;
    impl Drop for Endless {
        fn drop(&mut self) {
            ENDLESS_DROPPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let guard = Endless;
    axum::body::Body::from_stream(futures::stream::repeat_with(move || {
        let _held = &guard;
        Ok::<_, std::io::Error>(chunk.clone())
    }))
}

fn config() -> ServerConfig {
    ServerConfig {
        header_read_timeout_ms: 300,
        body_read_timeout_ms: 300,
        send_timeout_ms: 300,
        ..ServerConfig::default()
    }
}

/// Reads until the server closes the connection (or resets it); None if it stays open for
/// [`WAIT`].
async fn read_to_close(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

/// A keep-alive `GET /ok` on an open connection; whether it was answered 200.
async fn get_ok(tcp: &mut TcpStream) -> bool {
    if tcp
        .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

/// A new connection, answered or refused (accepted and closed without an answer).
async fn answered(addr: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    get_ok(&mut tcp).await
}

#[tokio::test]
async fn half_a_request_head_is_closed_within_the_header_timeout() {
    let server = start(config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\nx-half: ")
        .await
        .expect("write");
    let got = read_to_close(&mut tcp)
        .await
        .expect("the connection is closed, not held open");
    // No answer is owed to a request that never arrived (hyper may say 408).
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_head_dripped_byte_by_byte_is_closed_within_the_header_timeout() {
    let server = start(config()).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let drip = tokio::spawn(async move {
        let _ = wr.write_all(b"GET /ok HTTP/1.1\r\nx-drip: ").await;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    drip.abort();
    assert!(closed.is_ok(), "a dripping client is cut off");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    assert!(get_ok(&mut tcp).await, "the first request is answered");
    read_to_close(&mut tcp)
        .await
        .expect("the idle connection is closed");
}

#[tokio::test]
async fn a_slow_body_is_cut_off_with_408() {
    let server = start(config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\nabc")
        .await
        .expect("write");
    // A byte every 50 ms keeps every read busy but never completes the body in time.
    let (mut rd, mut wr) = tcp.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    drip.abort();
    assert!(closed.is_ok(), "the connection is closed after the answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[tokio::test]
async fn connection_n_plus_one_from_one_ip_is_refused_until_one_closes() {
    // The default head timeout: the open connections stay open while idle.
    let server = start(ServerConfig {
        max_connections_per_ip: 3,
        ..ServerConfig::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        assert!(get_ok(&mut tcp).await, "within the cap");
        open.push(tcp);
    }
    let mut fourth = TcpStream::connect(server.addr).await.expect("connect");
    let _ = fourth
        .write_all(b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let got = read_to_close(&mut fourth)
        .await
        .expect("the fourth is closed at once");
    assert!(got.is_empty(), "refused without an answer: {got:?}");
    drop(open.pop());
    assert!(
        test_support::eventually(WAIT, || answered(server.addr)).await,
        "a connection is accepted again once one closed"
    );
}

#[tokio::test]
async fn connections_over_the_total_cap_are_refused() {
    let server = start(ServerConfig {
        max_connections: 2,
        max_connections_per_ip: 0,
        ..ServerConfig::default()
    })
    .await;
    let mut a = TcpStream::connect(server.addr).await.expect("connect");
    let mut b = TcpStream::connect(server.addr).await.expect("connect");
    assert!(get_ok(&mut a).await && get_ok(&mut b).await);
    assert!(!answered(server.addr).await, "the third is refused");
    drop(a);
    assert!(test_support::eventually(WAIT, || answered(server.addr)).await);
}

#[tokio::test]
async fn an_idle_websocket_counts_against_the_per_ip_cap() {
    let server = start(ServerConfig {
        max_connections_per_ip: 2,
        ..config()
    })
    .await;
    let url = format!("ws://{}/ws", server.addr);
    let (ws1, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("first socket");
    let (ws2, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("second socket");
    // The sockets stay idle, well past the header timeout, and still hold their slots.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !answered(server.addr).await,
        "two open sockets fill the cap"
    );
    drop(ws1);
    assert!(
        test_support::eventually(WAIT, || answered(server.addr)).await,
        "a closed socket gives its slot back"
    );
    drop(ws2);
}

#[tokio::test]
async fn handlers_see_the_peer_address() {
    let server = start(config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let local = tcp.local_addr().expect("local addr");
    tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut tcp).await.expect("answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with(&local.to_string()), "{text}");
}

/// The `/endless` answers dropped so far.
fn endless_dropped() -> usize {
    ENDLESS_DROPPED.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let server = start(config()).await;
    let before = endless_dropped();
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /endless HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .expect("write");
    // Never read: the socket's buffers fill, the server's write waits, the timeout fires and the
    // answer's body (the backend call of a real download) is dropped with the connection.
    let dropped = tokio::time::timeout(WAIT * 2, async {
        while endless_dropped() == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(dropped.is_ok(), "the stalled answer was never dropped");
    // The connection is closed: what the buffers held can still be read, then the end (or a
    // reset).
    assert!(
        read_to_close(&mut tcp).await.is_some(),
        "the connection stayed open"
    );
}

#[tokio::test]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let server = start(config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /endless HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .expect("write");
    // Slower than the server can write (the socket stays full), but never silent for as long as
    // the send timeout: 16 KiB every 50 ms, for three times the timeout and more.
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    for _ in 0..40 {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the server went silent")
            .expect("read");
        assert!(
            n > 0,
            "the server closed a connection that was reading, after {total} bytes"
        );
        total += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(total >= 40, "read {total} bytes");
}
