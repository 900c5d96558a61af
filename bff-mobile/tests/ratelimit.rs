//! Rate limits of the mobile socket: messages per second and new `sub`s per minute, per user
//! (shared by the user's sockets); over the rate a message is answered by an `error`
//! `rate_limited` with `retry_ms` and not acted on — never dropped silently.

mod common;

use common::{config, start};
use mobile_proto::{ClientMsg, Encoding, Ping, ServerMsg, Sub, code};

#[tokio::test]
async fn a_message_flood_is_answered_with_rate_limited_errors_per_user() {
    let mut c = config();
    c.rate_limits.socket_messages_per_s = 5;
    c.rate_limits.socket_messages_burst = 5;
    let gw = start(c, 10).await;
    let mut ws = gw.signed_in(Encoding::Json, "alice").await;
    for n in 0..10 {
        ws.send(&ClientMsg::Ping(Ping { n })).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..10 {
        match ws.recv().await {
            ServerMsg::Pong(_) => pongs += 1,
            ServerMsg::Error(e) => {
                assert_eq!(e.code, code::RATE_LIMITED);
                assert_eq!((e.id, e.topic.as_deref()), (None, None));
                let ms = e.retry_ms.expect("retry_ms");
                assert!((1..=200).contains(&ms), "{ms}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // 10 per second refill: a slow machine may let one more through.
    assert!((5..=6).contains(&pongs), "{pongs} pongs, {limited} refused");
    // The budget is the user's, not the socket's: a second socket of alice is refused too,
    // while bob's is not.
    let mut again = gw.signed_in(Encoding::Cbor, "alice").await;
    again.send(&ClientMsg::Ping(Ping { n: 99 })).await;
    match again.recv().await {
        ServerMsg::Error(e) => assert_eq!(e.code, code::RATE_LIMITED),
        ServerMsg::Pong(_) => {} // refilled meanwhile on a slow machine
        other => panic!("unexpected {other:?}"),
    }
    let mut bob = gw.signed_in(Encoding::Json, "bob").await;
    bob.send(&ClientMsg::Ping(Ping { n: 1 })).await;
    assert!(matches!(bob.recv().await, ServerMsg::Pong(_)));
}

#[tokio::test]
async fn a_sub_over_the_subscription_rate_gets_rate_limited_for_its_topic() {
    let mut c = config();
    c.rate_limits.subscriptions_per_min = 2;
    c.rate_limits.subscriptions_burst = 2;
    let gw = start(c, 10).await;
    let mut ws = gw.signed_in(Encoding::Json, "alice").await;
    for topic in ["rates:EUR/USD", "rates:USD/JPY"] {
        ws.send(&ClientMsg::Sub(Sub {
            topic: topic.into(),
            resume: None,
        }))
        .await;
        match ws.recv().await {
            ServerMsg::Subbed(s) => assert_eq!(s.topic, topic),
            other => panic!("expected subbed, got {other:?}"),
        }
    }
    ws.send(&ClientMsg::Sub(Sub {
        topic: "rates:GBP/USD".into(),
        resume: None,
    }))
    .await;
    loop {
        match ws.recv().await {
            ServerMsg::Error(e) => {
                assert_eq!(e.code, code::RATE_LIMITED);
                assert_eq!(e.topic.as_deref(), Some("rates:GBP/USD"));
                assert!(e.retry_ms.is_some_and(|ms| ms > 1_000));
                break;
            }
            ServerMsg::Event(_) => {} // a rate of the first two
            other => panic!("unexpected {other:?}"),
        }
    }
}
