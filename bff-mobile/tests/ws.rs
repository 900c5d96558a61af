//! The `/v1/ws` socket end to end over real sockets: auth and welcome, subscriptions and their
//! isolation per user, resume (exact catch-up, gap, state topics), protocol violations and their
//! close codes, slow consumers, heartbeats and drain — in both encodings where it matters.

mod common;

use std::time::Duration;

use common::{Client, End, WAIT, config, start, token, token_with};
use mobile_proto::{ClientMsg, Encoding, FrameKind, Position, ServerMsg, close, code, data};

#[tokio::test]
async fn auth_gets_welcome_with_limits_in_both_encodings() {
    let gw = start(config(), 100).await;
    for enc in Encoding::ALL {
        let mut c = Client::connect(&gw.ws_url(), &[enc.subprotocol()]).await;
        assert_eq!(c.enc, Some(enc));
        c.send(&ClientMsg::Auth(mobile_proto::Auth {
            token: token("alice"),
            client: None,
        }))
        .await;
        let ServerMsg::Welcome(w) = c.recv().await else {
            panic!("expected welcome")
        };
        assert_eq!(w.user, "alice");
        assert_eq!(w.heartbeat_ms, 20_000);
        assert_eq!(w.limits.max_subscriptions, 32);
        assert_eq!(w.limits.max_calls, 16);
        assert_eq!(w.limits.max_frame_bytes, 16_384);
    }
}

#[tokio::test]
async fn the_server_prefers_cbor_whatever_the_order_offered() {
    let gw = start(config(), 100).await;
    let c = Client::connect(
        &gw.ws_url(),
        &[
            mobile_proto::SUBPROTOCOL_JSON,
            mobile_proto::SUBPROTOCOL_CBOR,
        ],
    )
    .await;
    assert_eq!(c.enc, Some(Encoding::Cbor));
}

#[tokio::test]
async fn no_subprotocol_is_closed_with_4406() {
    let gw = start(config(), 100).await;
    let mut c = Client::connect(&gw.ws_url(), &[]).await;
    assert_eq!(c.enc, None);
    assert_eq!(c.closed().await, close::SUBPROTOCOL_REQUIRED);
}

#[tokio::test]
async fn refused_tokens_close_with_4401() {
    let gw = start(config(), 100).await;
    for bad in [
        token_with("alice", "another-secret-that-is-32-bytes-long", 3600),
        token_with("alice", common::SECRET, -3600),
        "garbage".to_owned(),
    ] {
        let mut c = Client::connect(&gw.ws_url(), &[mobile_proto::SUBPROTOCOL_JSON]).await;
        c.send(&ClientMsg::Auth(mobile_proto::Auth {
            token: bad,
            client: None,
        }))
        .await;
        assert_eq!(c.closed().await, close::UNAUTHENTICATED);
    }
}

#[tokio::test]
async fn before_auth_only_ping_is_allowed() {
    let gw = start(config(), 100).await;
    let mut c = Client::connect(&gw.ws_url(), &[mobile_proto::SUBPROTOCOL_CBOR]).await;
    c.send(&ClientMsg::Ping(mobile_proto::Ping { n: 9 })).await;
    assert_eq!(c.recv().await, ServerMsg::Pong(mobile_proto::Pong { n: 9 }));
    c.sub("conversions", None).await;
    assert_eq!(c.closed().await, close::UNAUTHENTICATED);
}

#[tokio::test]
async fn no_auth_in_time_closes_with_4408() {
    let mut cfg = config();
    cfg.websocket.auth_timeout_ms = 200;
    let gw = start(cfg, 100).await;
    let mut c = Client::connect(&gw.ws_url(), &[mobile_proto::SUBPROTOCOL_CBOR]).await;
    assert_eq!(c.closed().await, close::TIMEOUT);
}

#[tokio::test]
async fn a_users_connection_over_the_cap_is_closed_with_4429_while_others_get_in() {
    let mut cfg = config();
    cfg.websocket.max_sockets_per_user = 2;
    let gw = start(cfg, 100).await;
    let mut alice = vec![
        gw.signed_in(Encoding::Cbor, "alice").await,
        gw.signed_in(Encoding::Json, "alice").await,
    ];
    let mut third = Client::connect(&gw.ws_url(), &[mobile_proto::SUBPROTOCOL_CBOR]).await;
    third
        .send(&ClientMsg::Auth(mobile_proto::Auth {
            token: token("alice"),
            client: None,
        }))
        .await;
    assert_eq!(third.closed().await, close::TOO_MANY_CONNECTIONS);
    let _bob = gw.signed_in(Encoding::Cbor, "bob").await;
    drop(alice.pop());
    // Once the closed connection's task has ended, alice gets in again.
    let again = test_support::eventually(WAIT, || async {
        let mut c = Client::connect(&gw.ws_url(), &[mobile_proto::SUBPROTOCOL_CBOR]).await;
        c.send(&ClientMsg::Auth(mobile_proto::Auth {
            token: token("alice"),
            client: None,
        }))
        .await;
        matches!(c.recv_within(WAIT).await, Ok(ServerMsg::Welcome(_)))
    })
    .await;
    assert!(again, "a slot is given back when a connection ends");
}

#[tokio::test]
async fn conversions_reach_their_user_only_in_both_encodings() {
    let gw = start(config(), 100).await;
    for enc in Encoding::ALL {
        let mut alice = gw.signed_in(enc, "alice").await;
        let mut bob = gw.signed_in(enc, "bob").await;
        let a = alice.subbed("conversions", None).await;
        let b = bob.subbed("conversions", None).await;
        let published = gw.publish_conversion("alice", &format!("c-{enc}")).await;
        let ev = alice.event().await;
        assert_eq!(ev.topic, "conversions");
        assert_eq!((ev.epoch, ev.offset), (published.epoch, published.offset));
        assert_eq!(ev.epoch, a.epoch);
        assert_eq!(ev.offset, a.offset + 1);
        let conversion: data::Conversion = ev.data_as().unwrap();
        assert_eq!(conversion.id, format!("c-{enc}"));
        assert_eq!(conversion.converted, "10.84");
        // Bob hears nothing of Alice's conversion, and gets his own.
        bob.quiet(Duration::from_millis(200)).await;
        gw.publish_conversion("bob", "b-1").await;
        let ev = bob.event().await;
        assert_eq!(ev.offset, b.offset + 1);
        assert_eq!(ev.data_as::<data::Conversion>().unwrap().id, "b-1");
        alice.quiet(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_events_in_order_then_live() {
    let gw = start(config(), 100).await;
    for enc in Encoding::ALL {
        let mut c = gw.signed_in(enc, "carol").await;
        c.subbed("conversions", None).await;
        gw.publish_conversion("carol", "first").await;
        let last = c.event().await.position();
        drop(c);
        let mut missed = Vec::new();
        for i in 0..7 {
            missed.push(gw.publish_conversion("carol", &format!("m{i}")).await);
        }
        let mut c = gw.signed_in(enc, "carol").await;
        let subbed = c.subbed("conversions", Some(last)).await;
        assert_eq!(subbed.position(), last);
        for (i, want) in missed.iter().enumerate() {
            let ev = c.event().await;
            assert_eq!((ev.epoch, ev.offset), (want.epoch, want.offset));
            assert_eq!(
                ev.data_as::<data::Conversion>().unwrap().id,
                format!("m{i}")
            );
        }
        c.quiet(Duration::from_millis(150)).await;
        let live = gw.publish_conversion("carol", "live").await;
        let ev = c.event().await;
        assert_eq!(ev.offset, live.offset);
    }
}

#[tokio::test]
async fn resume_below_history_gets_a_gap() {
    let gw = start(config(), 3).await;
    let mut c = gw.signed_in(Encoding::Json, "dave").await;
    let start_pos = c.subbed("conversions", None).await.position();
    drop(c);
    let mut published = Vec::new();
    for i in 0..6 {
        published.push(gw.publish_conversion("dave", &format!("d{i}")).await);
    }
    let mut c = gw.signed_in(Encoding::Json, "dave").await;
    c.subbed("conversions", Some(start_pos)).await;
    let ServerMsg::Gap(gap) = c.recv().await else {
        panic!("expected a gap")
    };
    assert_eq!(gap.topic, "conversions");
    // Delivery continues after the gap's position, up to the newest event.
    let mut last = gap.position();
    while last.offset < published[5].offset {
        let ev = c.event().await;
        assert_eq!(ev.offset, last.offset + 1);
        last = ev.position();
    }

    // Another epoch cannot be placed either.
    let mut c = gw.signed_in(Encoding::Cbor, "dave").await;
    let foreign = Position {
        epoch: published[0].epoch ^ 1,
        offset: 1,
    };
    c.subbed("conversions", Some(foreign)).await;
    assert!(matches!(c.recv().await, ServerMsg::Gap(_)));
}

#[tokio::test]
async fn state_topics_resume_with_the_latest_value_only() {
    let gw = start(config(), 100).await;
    for seq in 1..=5 {
        gw.publish_rate("EUR/USD", seq).await;
    }
    let mut c = gw.signed_in(Encoding::Cbor, "erin").await;
    let old = Position {
        epoch: 1,
        offset: 1,
    };
    let subbed = c.subbed("rates:EUR/USD", Some(old)).await;
    let ev = c.event().await;
    assert_eq!(ev.topic, "rates:EUR/USD");
    assert_eq!(ev.offset, subbed.offset);
    let rate: data::Rate = ev.data_as().unwrap();
    assert_eq!(rate.seq, 5);
    assert_eq!(rate.pair, "EUR/USD");
    c.quiet(Duration::from_millis(150)).await;
    gw.publish_rate("EUR/USD", 6).await;
    assert_eq!(c.event().await.data_as::<data::Rate>().unwrap().seq, 6);
}

#[tokio::test]
async fn subscription_refusals_are_errors_and_the_socket_stays() {
    let mut cfg = config();
    cfg.websocket.max_subscriptions = 2;
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Json, "frank").await;
    // `conversions.bob` is a catalog channel (the demo catalog's `conversions.{user}`) that
    // frank may not read: forbidden, where the others do not exist at all.
    for (bad, want) in [
        ("rates:EUR/XYZ", code::UNKNOWN_TOPIC),
        ("nope", code::UNKNOWN_TOPIC),
        ("rates:", code::UNKNOWN_TOPIC),
        ("conversions.bob", code::FORBIDDEN),
    ] {
        c.sub(bad, None).await;
        let ServerMsg::Error(e) = c.recv().await else {
            panic!("expected an error")
        };
        assert_eq!(e.code, want, "{bad}");
        assert_eq!(e.topic.as_deref(), Some(bad));
    }
    c.subbed("conversions", None).await;
    c.sub("conversions", None).await;
    let ServerMsg::Error(e) = c.recv().await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, code::ALREADY_SUBSCRIBED);
    c.subbed("rates:EUR/USD", None).await;
    c.sub("rates:GBP/USD", None).await;
    let ServerMsg::Error(e) = c.recv().await else {
        panic!("expected an error")
    };
    assert_eq!(e.code, code::TOO_MANY_SUBSCRIPTIONS);
    // unsub frees a slot, and no event of the topic follows its unsubbed.
    c.send(&ClientMsg::Unsub(mobile_proto::Unsub {
        topic: "conversions".into(),
    }))
    .await;
    assert!(matches!(c.recv().await, ServerMsg::Unsubbed(u) if u.topic == "conversions"));
    gw.publish_conversion("frank", "x").await;
    c.quiet(Duration::from_millis(150)).await;
    c.subbed("rates:GBP/USD", None).await;
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let gw = start(config(), 100).await;
    let url = gw.ws_url();

    // Not a message at all.
    let mut c = Client::connect(&url, &[mobile_proto::SUBPROTOCOL_JSON]).await;
    c.send_raw(FrameKind::Text, b"{not json".to_vec()).await;
    assert_eq!(c.closed().await, close::PROTOCOL_VIOLATION);

    // The wrong frame kind.
    let mut c = Client::connect(&url, &[mobile_proto::SUBPROTOCOL_CBOR]).await;
    c.send_raw(FrameKind::Text, br#"{"t":"ping","n":1}"#.to_vec())
        .await;
    assert_eq!(c.closed().await, close::PROTOCOL_VIOLATION);

    // An unknown key (a misspelt resume).
    let mut c = gw.signed_in(Encoding::Json, "gina").await;
    c.send_raw(
        FrameKind::Text,
        br#"{"t":"sub","topic":"conversions","resmue":{"e":1,"o":1}}"#.to_vec(),
    )
    .await;
    assert_eq!(c.closed().await, close::PROTOCOL_VIOLATION);

    // An unknown message type.
    let mut c = gw.signed_in(Encoding::Json, "gina").await;
    c.send_raw(FrameKind::Text, br#"{"t":"hello"}"#.to_vec())
        .await;
    assert_eq!(c.closed().await, close::PROTOCOL_VIOLATION);

    // Too big.
    let mut c = gw.signed_in(Encoding::Json, "gina").await;
    let big = format!(r#"{{"t":"auth","token":"{}"}}"#, "x".repeat(20_000));
    c.send_raw(FrameKind::Text, big.into_bytes()).await;
    assert_eq!(c.closed().await, close::MESSAGE_TOO_BIG);

    // A second auth is a re-authentication (tests/token.rs), no longer a conflict.
    let mut c = gw.signed_in(Encoding::Cbor, "gina").await;
    c.send(&ClientMsg::Auth(mobile_proto::Auth {
        token: token("gina"),
        client: None,
    }))
    .await;
    assert!(matches!(
        c.recv_skipping_pings().await,
        ServerMsg::Welcome(_)
    ));
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_cut_off_while_others_keep_receiving() {
    let mut cfg = config();
    cfg.websocket.send_queue_messages = 16;
    let gw = start(cfg, 100_000).await;
    let mut slow = gw.signed_in(Encoding::Cbor, "hank").await;
    let mut fast = gw.signed_in(Encoding::Cbor, "hank").await;
    slow.subbed("conversions", None).await;
    fast.subbed("conversions", None).await;
    // Large events fill the socket buffers quickly; the slow client reads nothing meanwhile.
    let big_id = "x".repeat(8 * 1024);
    let mut received = 0usize;
    let mut published = 0usize;
    for _ in 0..4_000 {
        gw.publish_conversion("hank", &big_id).await;
        published += 1;
        // The fast client keeps up.
        while let Ok(m) = fast.recv_within(Duration::from_millis(1)).await {
            if let ServerMsg::Event(_) = m {
                received += 1;
            }
        }
        if published.is_multiple_of(200) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if published == 2_000 {
            // 16 MB published by now: far beyond what the slow client's queue and socket
            // buffers hold. It reads now (within the 10 s its close frame lingers) and finds
            // the close code after what was already in flight.
            assert_eq!(slow.closed().await, close::SLOW_CONSUMER);
        }
    }
    while received < published {
        match fast.recv_within(WAIT).await {
            Ok(ServerMsg::Event(_)) => received += 1,
            Ok(_) => {}
            Err(e) => panic!("the fast client stopped after {received} events: {e:?}"),
        }
    }
}

#[tokio::test]
async fn the_server_pings_and_closes_silent_clients_with_4408() {
    let mut cfg = config();
    cfg.websocket.heartbeat_ms = 150;
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Json, "ivy").await;
    let ServerMsg::Ping(p) = c.recv().await else {
        panic!("expected a ping")
    };
    // The pong is the last frame the server hears: its silence deadline is 2 x hb after it,
    // whenever this (possibly loaded) test gets to read the next ping.
    let last_frame = std::time::Instant::now();
    c.send(&ClientMsg::Pong(mobile_proto::Pong { n: p.n }))
        .await;
    let ServerMsg::Ping(p2) = c.recv().await else {
        panic!("expected a ping")
    };
    assert_eq!(p2.n, p.n.wrapping_add(1));
    // Silence from now on: closed after 2 x hb.
    assert_eq!(c.closed().await, close::TIMEOUT);
    assert!(last_frame.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn drain_sends_bye_then_closes_with_1001() {
    let mut cfg = config();
    cfg.server.drain_timeout_ms = 400;
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Cbor, "jack").await;
    c.subbed("conversions", None).await;
    gw.shutdown.cancel();
    let ServerMsg::Bye(bye) = c.recv().await else {
        panic!("expected bye")
    };
    assert_eq!(bye.reconnect_within_ms, 300);
    // Still served while draining.
    gw.publish_conversion("jack", "during-drain").await;
    assert_eq!(
        c.event().await.data_as::<data::Conversion>().unwrap().id,
        "during-drain"
    );
    let started = std::time::Instant::now();
    assert_eq!(c.closed().await, close::GOING_AWAY);
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = End::Timeout;
}

/// `bff_mobile::run` with the drain timeout `drain_ms`, and one socket signed in as `user`.
async fn running_with_a_socket(
    drain_ms: u64,
    user: &str,
) -> (
    switchyard_server::server::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    Client,
) {
    let mut cfg = config();
    cfg.server.drain_timeout_ms = drain_ms;
    let broker = switchyard_core::bus::Broker::memory(10);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = switchyard_server::server::CancellationToken::new();
    let running = tokio::spawn(bff_mobile::run(cfg, broker, listener, shutdown.clone()));
    let mut c = Client::connect(
        &format!("ws://{addr}/v1/ws"),
        &[mobile_proto::SUBPROTOCOL_JSON],
    )
    .await;
    c.send(&ClientMsg::Auth(mobile_proto::Auth {
        token: token(user),
        client: None,
    }))
    .await;
    assert!(matches!(c.recv().await, ServerMsg::Welcome(_)));
    (shutdown, running, c)
}

#[tokio::test]
async fn after_bye_a_call_that_cannot_finish_gets_draining_and_run_waits_for_sockets() {
    let (shutdown, running, mut c) = running_with_a_socket(400, "kate").await;
    shutdown.cancel();
    assert!(matches!(c.recv().await, ServerMsg::Bye(_)));
    let serde_json::Value::Object(args) =
        serde_json::json!({"from": "EUR", "to": "USD", "amount": "1"})
    else {
        unreachable!()
    };
    c.send(&ClientMsg::Call(mobile_proto::Call {
        id: 4,
        op: "quote".into(),
        args,
    }))
    .await;
    let ServerMsg::Error(e) = c.recv().await else {
        panic!("expected an error")
    };
    assert_eq!((e.id, e.code.as_str()), (Some(4), code::DRAINING));
    assert_eq!(c.closed().await, close::GOING_AWAY);
    tokio::time::timeout(Duration::from_secs(3), running)
        .await
        .expect("run returns within the drain")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_slow_reader_of_a_state_topic_is_conflated_not_cut_off() {
    let mut cfg = config();
    cfg.websocket.send_queue_messages = 4;
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Cbor, "liam").await;
    c.subbed("rates:EUR/USD", None).await;
    let last = 20_000;
    for seq in 1..=last {
        gw.publish_rate("EUR/USD", seq).await;
        if seq % 1_000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Reading only now: the newest value arrives, the socket stays open, no backlog is kept.
    let mut received = 0;
    loop {
        let ev = c.event().await;
        received += 1;
        let seq = ev.data_as::<data::Rate>().unwrap().seq;
        if seq == last {
            break;
        }
    }
    assert!(received <= last as usize);
    c.quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_resume_position_at_or_above_2_pow_63_is_refused_not_echoed() {
    let gw = start(config(), 100).await;
    let mut c = gw.signed_in(Encoding::Json, "oscar").await;
    for (epoch, offset) in [(1, u64::MAX), (u64::MAX, 1), (1, 1 << 63)] {
        c.sub("conversions", Some(Position { epoch, offset })).await;
        let ServerMsg::Error(e) = c.recv().await else {
            panic!("expected an error for ({epoch}, {offset})")
        };
        assert_eq!(e.code, code::INVALID_ARGS);
        assert_eq!(e.topic.as_deref(), Some("conversions"));
    }
    // The socket is still usable.
    c.subbed("conversions", None).await;
}

#[tokio::test]
async fn a_browser_page_of_a_foreign_origin_cannot_open_a_socket() {
    let mut cfg = config();
    cfg.websocket.allowed_origins = vec!["https://app.example.com".into()];
    let gw = start(cfg, 100).await;
    let proto = mobile_proto::SUBPROTOCOL_CBOR;
    for (origin, expected) in [
        (Some("https://evil.example"), 403),
        (Some("null"), 403),
        (Some("https://app.example.com"), 101),
        (None, 101),
    ] {
        let headers: Vec<String> = origin.map(|o| format!("Origin: {o}")).into_iter().collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, _) =
            test_support::raw_ws::RawSocket::try_connect(gw.server.addr, "/v1/ws", proto, &headers)
                .await;
        assert_eq!(status, expected, "origin {origin:?}");
    }
}

#[tokio::test]
async fn websocket_protocol_violations_get_their_rfc_6455_close_codes() {
    use test_support::raw_ws::{Ending, RawSocket};
    let gw = start(config(), 100).await;
    let json = mobile_proto::SUBPROTOCOL_JSON;
    // A text message that is not UTF-8: 1007.
    let mut s = RawSocket::connect(gw.server.addr, "/v1/ws", json, &[]).await;
    s.send_frame(0x81, &[0xff, 0xfe, 0xfd], true).await;
    assert_eq!(s.ending(WAIT).await, Ending::Close(Some(1007)));
    // Reserved bits set: 1002.
    let mut s = RawSocket::connect(gw.server.addr, "/v1/ws", json, &[]).await;
    s.send_frame(0xC1, b"{}", true).await;
    assert_eq!(s.ending(WAIT).await, Ending::Close(Some(1002)));
    // An unmasked frame from a client: 1002.
    let mut s = RawSocket::connect(gw.server.addr, "/v1/ws", json, &[]).await;
    s.send_frame(0x81, b"{}", false).await;
    assert_eq!(s.ending(WAIT).await, Ending::Close(Some(1002)));
    // A fragmented control frame: 1002.
    let mut s = RawSocket::connect(gw.server.addr, "/v1/ws", json, &[]).await;
    s.send_frame(0x09, b"ping", true).await;
    assert_eq!(s.ending(WAIT).await, Ending::Close(Some(1002)));
    // A frame that declares 2^62 bytes: 1009, at once.
    let mut s = RawSocket::connect(gw.server.addr, "/v1/ws", json, &[]).await;
    let mut header = vec![0x82u8, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.send_raw(&header).await;
    assert_eq!(s.ending(WAIT).await, Ending::Close(Some(1009)));
}

#[tokio::test]
async fn a_client_cut_off_for_not_reading_still_gets_the_close_code_when_it_reads_later() {
    let mut cfg = config();
    // The write deadline, not the queue, cuts it off here.
    cfg.websocket.send_queue_messages = 100_000;
    cfg.websocket.write_timeout_ms = 300;
    let gw = start(cfg, 100_000).await;
    let mut slow = gw.signed_in(Encoding::Cbor, "pia").await;
    slow.subbed("conversions", None).await;
    let big_id = "x".repeat(8 * 1024);
    for i in 0..3_000 {
        gw.publish_conversion("pia", &big_id).await;
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Long after the cut-off (and after the old one-second wait for a close answer), the
    // client reads what its buffers hold, and then the close code.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(slow.closed().await, close::SLOW_CONSUMER);
}

#[tokio::test]
async fn the_sockets_drain_budget_counts_from_shutdown_not_from_start() {
    // Up for longer than the drain timeout before the shutdown: the sockets still get their
    // share of the drain (bye, then 1001 after 750 ms), and `run` waits for them.
    let (shutdown, running, mut c) = running_with_a_socket(1_000, "lena").await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    shutdown.cancel();
    assert!(matches!(c.recv_skipping_pings().await, ServerMsg::Bye(_)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !running.is_finished(),
        "run returned while its socket was still draining"
    );
    assert_eq!(c.closed().await, close::GOING_AWAY);
    tokio::time::timeout(Duration::from_secs(3), running)
        .await
        .expect("run returns within the drain")
        .unwrap()
        .unwrap();
}
