//! The exchange service over real HTTP and real WebSockets: rates, determinism, the ticker
//! protocol, exact stats, size limits and shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use demo_api::ticks::ServerMsg;
use demo_api::{ExchangeStats, Rate};
use demo_services::exchange::{self, Config};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use test_support::eventually;
use test_support::http::{client, json};
use test_support::instance::Instance;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Long enough that no tick happens during a test: the rates stay at `seq` 0.
const FROZEN_MS: u64 = 3_600_000;

async fn exchange_with(config: Config) -> Instance<anyhow::Error> {
    Instance::start("exchange", move |listener, stop| {
        exchange::run(config, listener, stop)
    })
    .await
}

async fn exchange(tick_interval_ms: u64, seed: u64) -> Instance<anyhow::Error> {
    exchange_with(Config {
        tick_interval_ms,
        seed,
        ..Config::default()
    })
    .await
}

async fn connect(svc: &Instance<anyhow::Error>) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(svc.ws_url("/v1/ticks"))
        .await
        .expect("WebSocket handshake");
    ws
}

async fn send(ws: &mut Ws, msg: serde_json::Value) {
    ws.send(Message::text(msg.to_string())).await.expect("send");
}

/// The next frame, whatever it is.
async fn next_frame(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a frame within 5 s")
        .expect("the connection is open")
        .expect("a readable frame")
}

/// The next protocol message; fails on anything else.
async fn next_msg(ws: &mut Ws) -> ServerMsg {
    match next_frame(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("a ServerMsg"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next message that is not a tick.
async fn next_answer(ws: &mut Ws) -> ServerMsg {
    loop {
        match next_msg(ws).await {
            ServerMsg::Tick { .. } => continue,
            other => return other,
        }
    }
}

fn watching(pairs: &[&str]) -> ServerMsg {
    ServerMsg::Watching {
        pairs: pairs.iter().map(|p| p.to_string()).collect(),
    }
}

fn reason(msg: &ServerMsg) -> &str {
    match msg {
        ServerMsg::Error { reason, .. } => reason,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn rate(svc: &Instance<anyhow::Error>, from: &str, to: &str) -> Rate {
    let response = client()
        .get(svc.url(&format!("/v1/rates/{from}/{to}")))
        .send()
        .await
        .expect("rates answer");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a Rate")
}

async fn stats(svc: &Instance<anyhow::Error>) -> ExchangeStats {
    client()
        .get(svc.url("/v1/stats"))
        .send()
        .await
        .expect("stats answer")
        .json()
        .await
        .expect("ExchangeStats")
}

fn watchers(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(p, n)| (p.to_string(), *n)).collect()
}

#[tokio::test]
async fn a_watch_gets_the_current_rate_at_once_matching_rest() {
    let svc = exchange(FROZEN_MS, 42).await;
    let rest = rate(&svc, "EUR", "USD").await;
    assert_eq!(rest.pair.to_string(), "EUR/USD");
    assert_eq!(rest.seq, 0);
    assert_eq!(rest.rate.to_string(), "1.080000");

    let mut ws = connect(&svc).await;
    send(&mut ws, json!({"op": "watch", "pairs": ["EUR/USD"]})).await;
    assert_eq!(next_msg(&mut ws).await, watching(&["EUR/USD"]));
    assert_eq!(
        next_msg(&mut ws).await,
        ServerMsg::Tick {
            pair: "EUR/USD".into(),
            rate: rest.rate.to_string(),
            seq: rest.seq,
        }
    );
}

#[tokio::test]
async fn ticks_stream_and_match_rest_at_the_same_seq() {
    let svc = exchange(20, 42).await;
    let mut ws = connect(&svc).await;
    send(&mut ws, json!({"op": "watch", "pairs": ["GBP/JPY"]})).await;
    assert_eq!(next_msg(&mut ws).await, watching(&["GBP/JPY"]));
    let mut last_seq = None;
    let mut matched = 0;
    for _ in 0..200 {
        let ServerMsg::Tick {
            pair,
            rate: tick_rate,
            seq,
        } = next_msg(&mut ws).await
        else {
            panic!("only ticks follow a watch");
        };
        assert_eq!(pair, "GBP/JPY");
        assert!(
            last_seq.is_none_or(|l| seq > l),
            "seq grows: {last_seq:?} then {seq}"
        );
        last_seq = Some(seq);
        let rest = rate(&svc, "GBP", "JPY").await;
        if rest.seq == seq {
            assert_eq!(rest.rate.to_string(), tick_rate, "seq {seq}");
            matched += 1;
            if matched == 3 {
                return;
            }
        }
    }
    panic!("REST never answered at the seq of a tick just received");
}

/// Reads ticks of one pair until a tick with `seq >= upto`: seq → rate.
async fn collect(svc: &Instance<anyhow::Error>, pair: &str, upto: u64) -> BTreeMap<u64, String> {
    let mut ws = connect(svc).await;
    send(&mut ws, json!({"op": "watch", "pairs": [pair]})).await;
    let mut seen = BTreeMap::new();
    loop {
        if let ServerMsg::Tick { seq, rate, .. } = next_msg(&mut ws).await {
            seen.insert(seq, rate);
            if seq >= upto {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_rates_and_another_seed_does_not() {
    let a = exchange(5, 7).await;
    let b = exchange(5, 7).await;
    let c = exchange(5, 8).await;
    let (ra, rb, rc) = tokio::join!(
        collect(&a, "CHF/CAD", 60),
        collect(&b, "CHF/CAD", 60),
        collect(&c, "CHF/CAD", 60)
    );
    let common: Vec<u64> = ra.keys().filter(|s| rb.contains_key(s)).copied().collect();
    assert!(common.len() >= 10, "too few common ticks: {common:?}");
    for seq in &common {
        assert_eq!(ra[seq], rb[seq], "seq {seq}");
    }
    let differing = ra
        .iter()
        .filter(|(seq, rate)| **seq > 0 && rc.get(seq).is_some_and(|r| r != *rate))
        .count();
    assert!(differing >= 5, "seed 8 should walk elsewhere than seed 7");
}

#[tokio::test]
async fn watch_unwatch_and_errors_keep_the_connection_open() {
    let svc = exchange_with(Config {
        tick_interval_ms: FROZEN_MS,
        max_pairs_per_connection: 3,
        ..Config::default()
    })
    .await;
    let mut ws = connect(&svc).await;

    send(
        &mut ws,
        json!({"op": "watch", "pairs": ["GBP/USD", "EUR/USD"]}),
    )
    .await;
    assert_eq!(next_msg(&mut ws).await, watching(&["EUR/USD", "GBP/USD"]));
    let mut initial = Vec::new();
    for _ in 0..2 {
        match next_msg(&mut ws).await {
            ServerMsg::Tick { pair, seq: 0, .. } => initial.push(pair),
            other => panic!("expected an initial tick, got {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["EUR/USD", "GBP/USD"]);

    // Watching a pair again changes nothing and sends no tick.
    send(&mut ws, json!({"op": "watch", "pairs": ["EUR/USD"]})).await;
    assert_eq!(next_msg(&mut ws).await, watching(&["EUR/USD", "GBP/USD"]));

    send(
        &mut ws,
        json!({"op": "unwatch", "pairs": ["EUR/USD", "CHF/JPY"]}),
    )
    .await;
    assert_eq!(next_msg(&mut ws).await, watching(&["GBP/USD"]));

    for bad in [
        "not json".to_owned(),
        json!({"op": "subscribe", "pairs": []}).to_string(),
        json!({"op": "watch"}).to_string(),
        json!({"op": "watch", "pairs": ["EUR/USD"], "extra": true}).to_string(),
    ] {
        ws.send(Message::text(bad.clone())).await.unwrap();
        assert_eq!(reason(&next_msg(&mut ws).await), "bad_message", "{bad}");
    }
    ws.send(Message::binary(b"{}".to_vec())).await.unwrap();
    assert_eq!(reason(&next_msg(&mut ws).await), "bad_message");

    for pair in ["EUR/XXX", "EUR/EUR", "eur/usd", "EURUSD"] {
        send(&mut ws, json!({"op": "watch", "pairs": ["USD/JPY", pair]})).await;
        assert_eq!(reason(&next_msg(&mut ws).await), "unknown_pair", "{pair}");
    }

    // 1 watched + 3 new > 3: refused as a whole.
    send(
        &mut ws,
        json!({"op": "watch", "pairs": ["USD/JPY", "USD/CHF", "USD/CAD"]}),
    )
    .await;
    assert_eq!(reason(&next_msg(&mut ws).await), "too_many_pairs");
    send(&mut ws, json!({"op": "watch", "pairs": []})).await;
    assert_eq!(next_msg(&mut ws).await, watching(&["GBP/USD"]));

    // Up to the limit is fine.
    send(
        &mut ws,
        json!({"op": "watch", "pairs": ["USD/JPY", "USD/CHF"]}),
    )
    .await;
    assert_eq!(
        next_msg(&mut ws).await,
        watching(&["GBP/USD", "USD/CHF", "USD/JPY"])
    );
}

#[tokio::test]
async fn stats_count_connections_and_watchers_exactly() {
    let svc = exchange(FROZEN_MS, 42).await;
    let mut c1 = connect(&svc).await;
    let mut c2 = connect(&svc).await;
    let mut c3 = connect(&svc).await;
    send(
        &mut c1,
        json!({"op": "watch", "pairs": ["EUR/USD", "GBP/USD"]}),
    )
    .await;
    send(&mut c2, json!({"op": "watch", "pairs": ["EUR/USD"]})).await;
    send(&mut c3, json!({"op": "watch", "pairs": []})).await;
    for ws in [&mut c1, &mut c2, &mut c3] {
        assert!(matches!(next_msg(ws).await, ServerMsg::Watching { .. }));
    }
    assert_eq!(
        stats(&svc).await,
        ExchangeStats {
            connections: 3,
            watchers: watchers(&[("EUR/USD", 2), ("GBP/USD", 1)]),
            connections_total: 3,
        }
    );

    send(&mut c1, json!({"op": "unwatch", "pairs": ["GBP/USD"]})).await;
    assert_eq!(next_answer(&mut c1).await, watching(&["EUR/USD"]));
    send(&mut c2, json!({"op": "watch", "pairs": ["EUR/USD"]})).await;
    assert_eq!(next_answer(&mut c2).await, watching(&["EUR/USD"]));
    assert_eq!(stats(&svc).await.watchers, watchers(&[("EUR/USD", 2)]));

    // One leaves with a close handshake, one just drops its socket.
    c1.close(None).await.unwrap();
    drop(c2);
    let settled = eventually(Duration::from_secs(5), || async {
        let s = stats(&svc).await;
        s.connections == 1 && s.watchers.is_empty()
    })
    .await;
    assert!(settled, "stats after two leave: {:?}", stats(&svc).await);

    drop(c3);
    let settled = eventually(Duration::from_secs(5), || async {
        stats(&svc).await.connections == 0
    })
    .await;
    assert!(settled, "stats after all leave: {:?}", stats(&svc).await);
    assert_eq!(stats(&svc).await.connections_total, 3);
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let svc = exchange_with(Config {
        tick_interval_ms: FROZEN_MS,
        max_message_bytes: 256,
        ..Config::default()
    })
    .await;
    let mut ws = connect(&svc).await;
    // Just under the limit is an ordinary (bad) message.
    ws.send(Message::text("x".repeat(256))).await.unwrap();
    assert_eq!(reason(&next_msg(&mut ws).await), "bad_message");

    let pairs: Vec<String> = (0..40).map(|_| "EUR/USD".to_owned()).collect();
    send(&mut ws, json!({"op": "watch", "pairs": pairs})).await;
    match next_frame(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let settled = eventually(Duration::from_secs(5), || async {
        stats(&svc).await.connections == 0
    })
    .await;
    assert!(settled);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_run_returns() {
    let svc = exchange_with(Config {
        tick_interval_ms: 10,
        server: switchyard_server::config::ServerConfig {
            drain_timeout_ms: 30_000,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let mut ws = connect(&svc).await;
    send(&mut ws, json!({"op": "watch", "pairs": ["EUR/USD"]})).await;
    assert_eq!(next_msg(&mut ws).await, watching(&["EUR/USD"]));
    svc.cancel();
    let close = loop {
        match next_frame(&mut ws).await {
            Message::Close(frame) => break frame,
            Message::Text(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    // Reading on sends our half of the close handshake and sees the connection end.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server ends the connection after the handshake"
    );
    svc.finished(Duration::from_secs(5))
        .await
        .expect("run ends cleanly, well before the drain timeout");
}

#[tokio::test]
async fn bad_rate_requests_are_400_with_their_codes() {
    let svc = exchange(FROZEN_MS, 42).await;
    let cases = [
        ("/v1/rates/EUR/XXX", "invalid_currency"),
        ("/v1/rates/eur/usd", "invalid_currency"),
        ("/v1/rates/EUR/EUR", "invalid_pair"),
    ];
    for (path, expected) in cases {
        let (status, body) = json(client().get(svc.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"]["code"], expected, "{path}");
    }
    // A plain GET of the WebSocket endpoint gets a JSON error too.
    let (status, body) = json(client().get(svc.url("/v1/ticks")).send().await.unwrap()).await;
    assert!((400..500).contains(&status), "{status}");
    assert!(body["error"]["code"].is_string());
}
