//! Streamed backend answers (`Upstreams::stream`) against a real loopback backend: a body whose
//! chunks keep coming more slowly than nothing but faster than the idle timeout is read whole,
//! and a backend that goes silent mid-body fails the stream with a timeout naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method};
use switchyard_core::upstream::{
    BackendConfig, StreamCall, StreamLimits, UpstreamErrorKind, Upstreams,
};

/// `/drip`: 8 chunks of 1 KiB, 100 ms apart. `/stall`: one chunk, then nothing (never ends).
fn backend() -> Router {
    Router::new()
        .route(
            "/drip",
            get(|| async {
                Body::from_stream(futures::stream::iter(0..8).then(|i| async move {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024]))
                }))
            }),
        )
        .route(
            "/stall",
            get(|| async {
                Body::from_stream(
                    futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("first")) })
                        .chain(futures::stream::pending()),
                )
            }),
        )
}

async fn call(up: &Upstreams, path: &str) -> Vec<Result<usize, UpstreamErrorKind>> {
    let limits = StreamLimits {
        head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(300),
    };
    let answer = up
        .stream(
            StreamCall {
                backend: "files".into(),
                method: Method::GET,
                path: path.to_owned(),
                headers: HeaderMap::new(),
                body: None,
            },
            limits,
        )
        .await
        .expect("the answer's head");
    let chunks = answer.body.map(|c| {
        c.map(|b| b.len()).map_err(|e| {
            assert_eq!(&*e.backend, "files", "the error names the backend");
            e.kind
        })
    });
    // Bounded: a stream that never ends fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(10), chunks.collect())
        .await
        .expect("the stream ended")
}

#[tokio::test]
async fn chunks_slower_than_nothing_but_within_the_idle_timeout_all_arrive() {
    let server = test_support::serve(backend()).await;
    let up = Upstreams::new(&BTreeMap::from([(
        "files".to_owned(),
        BackendConfig::new(server.url()),
    )]))
    .expect("registry");
    // 8 chunks over 700 ms with a 300 ms idle timeout: the whole body, no timeout.
    let got = call(&up, "/drip").await;
    let bytes: usize = got.iter().map(|c| *c.as_ref().expect("no error")).sum();
    assert_eq!(bytes, 8 * 1024);
}

#[tokio::test]
async fn a_backend_silent_mid_body_fails_the_stream_with_a_timeout() {
    let server = test_support::serve(backend()).await;
    let up = Upstreams::new(&BTreeMap::from([(
        "files".to_owned(),
        BackendConfig::new(server.url()),
    )]))
    .expect("registry");
    let got = call(&up, "/stall").await;
    assert_eq!(got.len(), 2, "one chunk, then the error: {got:?}");
    assert_eq!(got[0], Ok(5));
    assert!(
        matches!(got[1], Err(UpstreamErrorKind::Timeout)),
        "{:?}",
        got[1]
    );
}
