//! A socket lives no longer than its token: closed with 4440 at `exp` (+ leeway), unless the
//! client re-authenticated with `auth` (same user) on the same socket, which keeps its
//! subscriptions; a re-authentication as another user closes with 4403, a bad token with 4401.

mod common;

use std::time::Duration;

use common::{Client, End, config, start, token, token_with};
use mobile_proto::{ClientMsg, Encoding, ServerMsg, close};

/// The test gateway without clock-skew leeway, so that a token's `exp` is the socket's end.
fn no_leeway() -> bff_mobile::Config {
    let mut c = config();
    c.auth.leeway_s = 0;
    c
}

async fn auth(c: &mut Client, token: String) {
    c.send(&ClientMsg::Auth(mobile_proto::Auth {
        token,
        client: None,
    }))
    .await;
}

/// Reads (skipping everything else) until the socket closes; its close code, or `None` when it
/// is still open after `wait`.
async fn close_within(c: &mut Client, wait: Duration) -> Option<u16> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await {
            Ok(_) => continue,
            Err(End::Closed(code)) => return Some(code),
            Err(End::Timeout) => return None,
        }
    }
}

#[tokio::test]
async fn a_socket_is_closed_with_4440_when_its_token_expires() {
    let gw = start(no_leeway(), 100).await;
    for enc in Encoding::ALL {
        let mut c = Client::connect(&gw.ws_url(), &[enc.subprotocol()]).await;
        auth(&mut c, token_with("alice", common::SECRET, 2)).await;
        assert!(matches!(c.recv().await, ServerMsg::Welcome(_)));
        c.subbed("conversions", None).await;
        // Still open and receiving right after authenticating.
        gw.publish_conversion("alice", "c-1").await;
        assert_eq!(c.event().await.topic, "conversions");
        // Closed shortly after `exp` (2 s from its issue), with the documented code.
        assert_eq!(
            close_within(&mut c, Duration::from_secs(10)).await,
            Some(close::TOKEN_EXPIRED),
            "{enc}"
        );
    }
}

#[tokio::test]
async fn the_leeway_applies_to_the_socket_deadline() {
    // A 3 s leeway: a token expiring within a second keeps the socket open for the next 2 s
    // (its `exp` + 3 s is more than 3 s away), then it is closed.
    let mut cfg = config();
    cfg.auth.leeway_s = 3;
    let gw = start(cfg, 100).await;
    let mut c = Client::connect(&gw.ws_url(), &[Encoding::Json.subprotocol()]).await;
    auth(&mut c, token_with("alice", common::SECRET, 1)).await;
    assert!(matches!(c.recv().await, ServerMsg::Welcome(_)));
    assert_eq!(close_within(&mut c, Duration::from_secs(2)).await, None);
    assert_eq!(
        close_within(&mut c, Duration::from_secs(10)).await,
        Some(close::TOKEN_EXPIRED)
    );
}

#[tokio::test]
async fn a_reauthenticated_socket_keeps_its_subscriptions_past_the_first_tokens_exp() {
    let gw = start(no_leeway(), 100).await;
    for enc in Encoding::ALL {
        let mut c = Client::connect(&gw.ws_url(), &[enc.subprotocol()]).await;
        auth(&mut c, token_with("alice", common::SECRET, 2)).await;
        assert!(matches!(c.recv().await, ServerMsg::Welcome(_)));
        let subbed = c.subbed("conversions", None).await;
        // Re-authenticate with a fresh token of the same user: answered by another welcome.
        auth(&mut c, token("alice")).await;
        match c.recv_skipping_pings().await {
            ServerMsg::Welcome(w) => assert_eq!(w.user, "alice"),
            other => panic!("expected welcome, got {other:?}"),
        }
        // Past the first token's expiry, the socket is open and its subscription delivers.
        assert_eq!(
            close_within(&mut c, Duration::from_secs(3)).await,
            None,
            "{enc}"
        );
        let published = gw.publish_conversion("alice", "after-exp").await;
        let ev = c.event().await;
        assert_eq!((ev.epoch, ev.offset), (published.epoch, published.offset));
        assert!(ev.offset > subbed.offset);
    }
}

#[tokio::test]
async fn reauthentication_as_another_user_closes_with_4403() {
    let gw = start(no_leeway(), 100).await;
    let mut c = gw.signed_in(Encoding::Cbor, "alice").await;
    c.subbed("conversions", None).await;
    auth(&mut c, token("bob")).await;
    assert_eq!(c.closed().await, close::FORBIDDEN);
}

#[tokio::test]
async fn reauthentication_with_a_bad_token_closes_with_4401() {
    let gw = start(no_leeway(), 100).await;
    for bad in [
        token_with("alice", "another-secret-that-is-32-bytes-long", 3600),
        token_with("alice", common::SECRET, -3600),
        "garbage".to_owned(),
        String::new(),
    ] {
        let mut c = gw.signed_in(Encoding::Json, "alice").await;
        auth(&mut c, bad).await;
        assert_eq!(c.closed().await, close::UNAUTHENTICATED);
    }
}
