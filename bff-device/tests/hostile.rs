//! Hostile input against the real bff-device binary, started from its production example config
//! with two devices issued through the admin API: forged and foreign keys, another device's data
//! by every spelling of its id (dot segments, case, encoded separators, NUL, length), forged and
//! oversized cursors, bad waits, oversized and malformed bodies, forged admin tokens. Each gets its
//! documented status; no answer ever carries the other device's data; afterwards the process is
//! still up and its peak memory stayed bounded.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::hostile;
use test_support::process::{self, Spawned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "hostile-suite-admin-token-0123456789";
const PEAK_RSS_BOUND_KIB: u64 = 256 * 1024;

fn start() -> Spawned {
    // Nothing answers for the backends: the attacks must not need one.
    process::start_without_backends(
        env!("CARGO_BIN_EXE_bff-device"),
        "SWITCHYARD_DEVICE",
        &[("SWITCHYARD_DEVICE__ADMIN__TOKEN", ADMIN)],
    )
}

/// One request written by hand (no URL normalisation, any bytes); the status code.
async fn raw(gw: &Spawned, request_line_path: &str, headers: &[String]) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let mut req = format!(
        "GET {request_line_path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        gw.addr
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("\"secret-of-tv-b\""),
        "{request_line_path}: an answer carried the other device's data: {text}"
    );
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn bff_device_survives_hostile_input_with_documented_answers() {
    let mut gw = start();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let admin = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", gw.url()))
            .bearer_auth(ADMIN)
    };
    let mut keys = Vec::new();
    for (id, secret) in [("tv-a", "public-of-tv-a"), ("tv-b", "secret-of-tv-b")] {
        let res = admin(reqwest::Method::POST, "/admin/devices")
            .json(&json!({"id": id, "settings": {"note": secret}}))
            .send()
            .await
            .expect("admin");
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.expect("JSON");
        keys.push(body["key"].as_str().expect("key").to_owned());
    }
    let (key_a, key_b) = (keys[0].clone(), keys[1].clone());
    let poll = |id: &str, key: &str, query: &str| {
        http.get(format!("{}/v1/devices/{id}/events?wait=0{query}", gw.url()))
            .header("x-device-key", key)
    };
    let ok = poll("tv-a", &key_a, "").send().await.expect("poll");
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("JSON");
    let cursor_a = body["n"].as_str().expect("cursor").to_owned();
    let cursor_b = poll("tv-b", &key_b, "")
        .send()
        .await
        .expect("poll")
        .json::<Value>()
        .await
        .expect("JSON")["n"]
        .as_str()
        .expect("cursor")
        .to_owned();

    // Keys: none, wrong, oversized, non-ASCII → 401; the other device's → 403.
    for (name, key, expected) in [
        ("wrong", "A".repeat(43), 401),
        ("oversized", "A".repeat(16 * 1024), 401),
        ("another device's", key_b.clone(), 403),
        ("empty", String::new(), 401),
    ] {
        let res = poll("tv-a", &key, "").send().await.expect("answered");
        assert_eq!(res.status().as_u16(), expected, "{name} key");
    }
    let none = http
        .get(format!("{}/v1/devices/tv-a/events?wait=0", gw.url()))
        .send()
        .await
        .expect("answered");
    assert_eq!(none.status(), 401);

    // tv-a's key never reaches tv-b's data, whatever the spelling of the id.
    let key_header = format!("X-Device-Key: {key_a}");
    for path in [
        "/v1/devices/tv-a/../tv-b/events?wait=0",
        "/v1/devices/tv-a/%2e%2e/tv-b/events?wait=0",
        "/v1/devices/tv-b%00/events?wait=0",
        "/v1/devices/TV-B/events?wait=0",
        "/v1/devices/tv-a%2Ftv-b/events?wait=0",
        "/v1/devices/tv-b/events?wait=0",
        "/v1/devices/tv-b/config",
        "/v1/devices/%74v-b/config",
        "/v1/devices/tv-b%20/config",
        "/v1/devices/*/events?wait=0",
        "/v1/devices/tv-a/../../admin/devices",
    ] {
        let status = raw(&gw, path, std::slice::from_ref(&key_header)).await;
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    let long = format!("/v1/devices/{}/events?wait=0", "a".repeat(20_000));
    let status = raw(&gw, &long, std::slice::from_ref(&key_header)).await;
    assert!((400..500).contains(&status), "a 20 kB id: {status}");

    // Cursors and waits: forged, foreign and oversized cursors and bad waits are 400.
    for (name, query) in [
        ("garbage cursor", "&cursor=not-a-cursor".to_owned()),
        ("foreign cursor", format!("&cursor={cursor_b}")),
        (
            "oversized cursor",
            format!("&cursor={}", "A".repeat(8 * 1024)),
        ),
        (
            "flipped cursor",
            format!("&cursor={}A", &cursor_a[..cursor_a.len() - 1]),
        ),
        ("negative wait", "&wait=-1".to_owned()),
        ("huge wait", "&wait=99999999999999999999".to_owned()),
        ("nan wait", "&wait=NaN".to_owned()),
    ] {
        let res = poll("tv-a", &key_a, &query).send().await.expect("answered");
        assert_eq!(res.status(), 400, "{name}");
    }

    // Bodies: oversized 413, malformed 400.
    let telemetry = format!("{}/v1/devices/tv-a/telemetry", gw.url());
    let big = format!(r#"{{"points":[{}]}}"#, "1,".repeat(40_000));
    let res = http
        .post(&telemetry)
        .header("x-device-key", &key_a)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status(), 413);
    for bad in ["{", "[]", "null", "\u{0}", r#"{"points": "x"}"#] {
        let res = http
            .post(&telemetry)
            .header("x-device-key", &key_a)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .expect("answered");
        assert_eq!(res.status(), 400, "{bad:?}");
    }

    // The admin API: a forged or misspelt token is 401.
    for token in [
        "wrong-token-0123456789".to_owned(),
        format!("{ADMIN}x"),
        ADMIN[..ADMIN.len() - 1].to_owned(),
        hostile::good_hs256(ADMIN, "admin"),
    ] {
        let res = http
            .post(format!("{}/admin/devices", gw.url()))
            .bearer_auth(&token)
            .json(&json!({"id": "intruder"}))
            .send()
            .await
            .expect("answered");
        assert_eq!(res.status(), 401, "{token}");
    }

    // Still up, memory bounded.
    assert!(gw.is_running(), "the gateway died");
    let health = http
        .get(format!("{}/healthz", gw.url()))
        .send()
        .await
        .expect("up");
    assert_eq!(health.status(), 200);
    hostile::assert_bounded_and_stops(&mut gw, PEAK_RSS_BOUND_KIB);
}
