//! Hostile input against the real bff-mobile binary, started from its production example config:
//! forged tokens in `auth` and on `GET /v1/quote`, another user's channel by every spelling,
//! CBOR garbage (huge declared lengths, deep nesting), invalid UTF-8 and oversized fragmented
//! WebSocket messages, foreign origins. Each gets its documented close code, error or status;
//! afterwards the process is still up and its peak memory stayed bounded.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::hostile::{self, RS256_PUBLIC_PEM};
use test_support::process::{self, Spawned};
use test_support::raw_ws::{Ending, RawSocket};

const SECRET: &str = "hostile-suite-secret-0123456789abcdef";
const PEAK_RSS_BOUND_KIB: u64 = 256 * 1024;
const JSON: &str = "switchyard-mobile.v1.json";
const CBOR: &str = "switchyard-mobile.v1.cbor";
const WAIT: Duration = Duration::from_secs(5);

fn start() -> Spawned {
    // Nothing answers for the backends: the attacks must not need one.
    process::start_without_backends(
        env!("CARGO_BIN_EXE_bff-mobile"),
        "SWITCHYARD_MOBILE",
        &[
            ("SWITCHYARD_MOBILE__AUTH__HS256_SECRET", SECRET),
            (
                "SWITCHYARD_MOBILE__AUTH__RS256_PUBLIC_KEY_PEM",
                RS256_PUBLIC_PEM,
            ),
        ],
    )
}

/// Reads JSON-twin messages from a raw socket until one satisfies `pick`, or it closes.
async fn next_json(s: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Value {
    use futures::StreamExt;
    loop {
        let msg = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["t"] != "ping" {
                return v;
            }
        }
    }
}

async fn json_socket(gw: &Spawned) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/ws", gw.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", JSON.parse().expect("header"));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
    tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade")
        .0
}

async fn send(s: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, v: Value) {
    use futures::SinkExt;
    s.send(tokio_tungstenite::tungstenite::Message::Text(
        v.to_string().into(),
    ))
    .await
    .expect("send");
}

#[tokio::test]
async fn bff_mobile_survives_hostile_input_with_documented_answers() {
    let mut gw = start();

    // Forged tokens: the socket closes with 4401; the HTTP quote answers 401.
    for (attack, token) in hostile::forged_tokens(SECRET, "alice") {
        let mut s = RawSocket::connect(gw.addr, "/v1/ws", JSON, &[]).await;
        s.send_text(&json!({"t": "auth", "token": token}).to_string())
            .await;
        let expected = if attack == "oversized" { 1009 } else { 4401 };
        assert_eq!(
            s.ending(WAIT).await,
            Ending::Close(Some(expected)),
            "{attack}"
        );
        let res = reqwest::Client::new()
            .get(format!("{}/v1/quote?from=EUR&to=USD&amount=1", gw.url()))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("answered");
        assert_eq!(res.status(), 401, "{attack}");
    }

    // Another user's channel by every spelling: refused, never subscribed.
    let mut s = json_socket(&gw).await;
    send(
        &mut s,
        json!({"t": "auth", "token": hostile::good_rs256("alice")}),
    )
    .await;
    assert_eq!(next_json(&mut s).await["t"], "welcome");
    for topic in [
        "conversions.bob",
        "conversions:bob",
        "conversions/bob",
        "conversions.*",
        "conversions.>",
        "Conversions",
        "conversions ",
        "сonversions",
        "conversions\u{0}bob",
        "rates:*",
        "rates:>",
        "rates:EUR/USD/../bob",
        "rates:eur/usd",
        "rates:EUR.USD",
        "rates:",
        "devices.bob.commands",
        "",
    ] {
        send(&mut s, json!({"t": "sub", "topic": topic})).await;
        let answer = next_json(&mut s).await;
        assert_eq!(answer["t"], "error", "{topic:?}: {answer}");
        assert_eq!(answer["topic"], topic, "{topic:?}: {answer}");
    }
    let long = "x".repeat(10_000);
    send(&mut s, json!({"t": "sub", "topic": long})).await;
    assert_eq!(next_json(&mut s).await["t"], "error");

    // CBOR garbage: huge declared lengths and deep nesting are protocol violations (4400).
    let mut huge_bytes = vec![0xa2, 0x61, b't', 0x63, b's', b'u', b'b', 0x65];
    huge_bytes.extend_from_slice(b"topic");
    huge_bytes.push(0x7b); // a text string whose length follows in 8 bytes
    huge_bytes.extend_from_slice(&u64::MAX.to_be_bytes());
    let mut huge_map = vec![0xbb];
    huge_map.extend_from_slice(&(1u64 << 62).to_be_bytes());
    let mut huge_array = vec![0x9b];
    huge_array.extend_from_slice(&(1u64 << 62).to_be_bytes());
    let deep = vec![0x81; 10_000];
    let tags = [0xc6; 5_000].to_vec();
    for (name, frame) in [
        ("huge string", huge_bytes),
        ("huge map", huge_map),
        ("huge array", huge_array),
        ("deep nesting", deep),
        ("nested tags", tags),
        ("truncated", vec![0xa1]),
        ("break outside", vec![0xff]),
    ] {
        let mut s = RawSocket::connect(gw.addr, "/v1/ws", CBOR, &[]).await;
        s.send_frame(0x82, &frame, true).await;
        assert_eq!(s.ending(WAIT).await, Ending::Close(Some(4400)), "{name}");
    }

    // WebSocket framing: invalid UTF-8 in the JSON twin 1007; a message over the frame limit
    // built from continuation frames 1009; a foreign origin 403.
    let mut s = RawSocket::connect(gw.addr, "/v1/ws", JSON, &[]).await;
    s.send_frame(0x81, &[0xc3, 0x28], true).await;
    assert_eq!(s.ending(WAIT).await, Ending::Close(Some(1007)));
    let mut s = RawSocket::connect(gw.addr, "/v1/ws", JSON, &[]).await;
    let chunk = vec![b'a'; 4 * 1024];
    s.send_frame(0x01, &chunk, true).await;
    let mut ending = Ending::Timeout;
    for _ in 0..64 {
        s.send_frame(0x00, &chunk, true).await;
        ending = s.ending(Duration::from_millis(20)).await;
        if ending != Ending::Timeout {
            break;
        }
    }
    assert_eq!(ending, Ending::Close(Some(1009)));
    let (status, _) =
        RawSocket::try_connect(gw.addr, "/v1/ws", JSON, &["Origin: https://evil.example"]).await;
    assert_eq!(status, 403);

    // Still up, memory bounded.
    assert!(gw.is_running(), "the gateway died");
    let health = reqwest::get(format!("{}/healthz", gw.url()))
        .await
        .expect("up");
    assert_eq!(health.status(), 200);
    hostile::assert_bounded_and_stops(&mut gw, PEAK_RSS_BOUND_KIB);
}
