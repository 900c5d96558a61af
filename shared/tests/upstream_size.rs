//! The size cap on backend answers (`max_response_bytes`), against real loopback backends: a
//! hand-written HTTP/1.1 server answers a body larger than the cap with a `Content-Length`,
//! chunked, and delimited by the connection's close; each call fails cleanly with `too_large`
//! naming the backend, is not retried, and (with a declared length) the body is not read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_core::upstream::BackendConfig;
use switchyard_core::upstream::{Call, UpstreamErrorKind, Upstreams};
use test_support::Scripted;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

const CAP: u64 = 1024 * 1024;

/// How the raw server frames its (large) body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `Content-Length: <len>`.
    Declared,
    /// `Transfer-Encoding: chunked`, 64 KiB chunks.
    Chunked,
    /// No length: the body ends when the connection closes.
    UntilClose,
}

#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    /// Body bytes the server managed to write (the client may stop reading and close).
    written: AtomicU64,
}

/// Serves every request with a body of `len` bytes of JSON-ish filler, framed as asked.
async fn raw_server(framing: Framing, len: u64) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = s.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.requests.fetch_add(1, Ordering::SeqCst);
                let head = match framing {
                    Framing::Declared => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
                    ),
                    Framing::Chunked => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned(),
                    Framing::UntilClose => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n".to_owned(),
                };
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    let ok = match framing {
                        Framing::Chunked => {
                            let mut framed = format!("{n:x}\r\n").into_bytes();
                            framed.extend_from_slice(&chunk[..n]);
                            framed.extend_from_slice(b"\r\n");
                            tcp.write_all(&framed).await.is_ok()
                        }
                        _ => tcp.write_all(&chunk[..n]).await.is_ok(),
                    };
                    if !ok {
                        return;
                    }
                    seen.written.fetch_add(n as u64, Ordering::SeqCst);
                    left -= n as u64;
                }
                if matches!(framing, Framing::Chunked) {
                    let _ = tcp.write_all(b"0\r\n\r\n").await;
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    (url, seen)
}

fn registry(url: String, cap: u64) -> Upstreams {
    let mut c = BackendConfig::new(url);
    c.max_response_bytes = cap;
    c.request_timeout_ms = 5_000;
    Upstreams::new(&BTreeMap::from([("big".to_owned(), c)])).expect("valid registry")
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[tokio::test]
async fn an_answer_over_the_cap_fails_naming_the_backend_however_it_is_framed() {
    for framing in [Framing::Declared, Framing::Chunked, Framing::UntilClose] {
        // 64 MiB: far more than the cap, and than the loopback socket buffers hold.
        let len = 64 * CAP;
        let (url, seen) = raw_server(framing, len).await;
        let up = registry(url, CAP);
        let started = std::time::Instant::now();
        let err = up
            .execute(&Call::get("big", "/x"), soon())
            .await
            .expect_err("over the cap");
        assert_eq!(
            err.kind,
            UpstreamErrorKind::TooLarge { limit_bytes: CAP },
            "{framing:?}"
        );
        assert_eq!(&*err.backend, "big");
        assert_eq!(
            err.to_string(),
            "backend `big`: answer larger than 1048576 bytes"
        );
        assert_eq!(err.kind.code(), "too_large");
        assert_eq!(
            seen.requests.load(Ordering::SeqCst),
            1,
            "{framing:?}: not retried (the same call would get the same answer)"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{framing:?}: failed promptly"
        );
        // The client stopped reading: the server could not write the whole body.
        assert!(
            test_support::eventually(Duration::from_secs(5), || {
                let seen = seen.clone();
                async move { seen.written.load(Ordering::SeqCst) < len }
            })
            .await,
            "{framing:?}"
        );
    }
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_the_body_is_read() {
    // The server declares 2 MiB but sends nothing of it: only the header can fail the call.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 2 * CAP)
                            .as_bytes(),
                    )
                    .await;
                // Hold the connection open without a body.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let up = registry(url, CAP);
    let started = std::time::Instant::now();
    let err = up
        .execute(&Call::get("big", "/x"), soon())
        .await
        .expect_err("declared over the cap");
    assert_eq!(err.kind, UpstreamErrorKind::TooLarge { limit_bytes: CAP });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no wait for the body"
    );
}

#[tokio::test]
async fn the_cap_is_exact_and_applies_to_error_answers_too() {
    let body = r#"{"ok":true}"#; // 11 bytes
    let b = Scripted::new();
    b.reply(Duration::ZERO, 200, body);
    let s = b.serve().await;
    let at_cap = registry(s.url(), body.len() as u64);
    assert_eq!(
        at_cap
            .execute(&Call::get("big", "/x"), soon())
            .await
            .expect("an answer of exactly the cap is read"),
        body.as_bytes()
    );
    let under = registry(s.url(), body.len() as u64 - 1);
    let err = under
        .execute(&Call::get("big", "/x"), soon())
        .await
        .expect_err("one byte over");
    assert_eq!(err.kind, UpstreamErrorKind::TooLarge { limit_bytes: 10 });

    // An error answer's body is read under the same cap.
    b.reply(
        Duration::ZERO,
        404,
        r#"{"error":{"code":"nope","message":"a long message"}}"#,
    );
    let err = under
        .execute(&Call::get("big", "/x"), soon())
        .await
        .expect_err("over the cap");
    assert_eq!(err.kind, UpstreamErrorKind::TooLarge { limit_bytes: 10 });
}

#[test]
fn a_zero_cap_is_a_configuration_error() {
    let mut c = BackendConfig::new("http://127.0.0.1:1");
    c.max_response_bytes = 0;
    let err = Upstreams::new(&BTreeMap::from([("big".to_owned(), c)])).expect_err("zero cap");
    assert_eq!(
        err.to_string(),
        "backend `big`: max_response_bytes must be at least 1"
    );
}
