//! Hostile input against the real bff-web binary, started from its production example config:
//! forged tokens, channel-name injection in `rates`, oversized and malformed bodies, deep,
//! aliased, cyclic and exponential GraphQL, invalid UTF-8 and oversized fragmented WebSocket
//! messages, foreign origins. Each gets its documented status or close code; afterwards the
//! process is still up and answering, and its peak memory stayed bounded.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::hostile::{self, RS256_PUBLIC_PEM};
use test_support::process::{self, Spawned};
use test_support::raw_ws::{Ending, RawSocket};

const SECRET: &str = "hostile-suite-secret-0123456789abcdef";
/// The bound on the gateway's peak resident memory over the whole attack.
const PEAK_RSS_BOUND_KIB: u64 = 256 * 1024;

fn start() -> Spawned {
    // Nothing answers for the backends: the attacks must not need one.
    process::start_without_backends(
        env!("CARGO_BIN_EXE_bff-web"),
        "SWITCHYARD_WEB",
        &[
            ("SWITCHYARD_WEB__AUTH__HS256_SECRET", SECRET),
            (
                "SWITCHYARD_WEB__AUTH__RS256_PUBLIC_KEY_PEM",
                RS256_PUBLIC_PEM,
            ),
        ],
    )
}

async fn post(
    gw: &Spawned,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/graphql", gw.url()))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(10))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("the gateway answers");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn first_error(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn bff_web_survives_hostile_input_with_documented_answers() {
    let mut gw = start();
    let query = json!({"query": "{ __typename }"}).to_string();

    // Good tokens of both algorithms pass: the refusals below are not a broken verifier.
    for token in [
        hostile::good_hs256(SECRET, "alice"),
        hostile::good_rs256("alice"),
    ] {
        let auth = format!("Bearer {token}");
        let (status, body) = post(&gw, &[("authorization", &auth)], query.clone()).await;
        assert_eq!(
            (status, &body["data"]["__typename"]),
            (200, &json!("Query")),
            "{body}"
        );
    }
    // Forged tokens: 401 over HTTP, 4403 at connection_init.
    for (attack, token) in hostile::forged_tokens(SECRET, "alice") {
        let auth = format!("Bearer {token}");
        let (status, body) = post(&gw, &[("authorization", &auth)], query.clone()).await;
        assert_eq!(status, 401, "{attack}: {body}");
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{attack}"
        );
        let mut s = RawSocket::connect(gw.addr, "/v1/graphql", "graphql-transport-ws", &[]).await;
        s.send_text(
            &json!({"type": "connection_init", "payload": {"authorization": auth}}).to_string(),
        )
        .await;
        // A token larger than a socket message may be is refused by size first.
        let expected = if attack == "oversized" { 1009 } else { 4403 };
        assert_eq!(
            s.ending(Duration::from_secs(5)).await,
            Ending::Close(Some(expected)),
            "{attack}"
        );
    }

    // Channel-name injection in `rates`: every spelling is a validation error, never a topic.
    for pair in [
        "eur/usd",
        "EUR/USD/X",
        "EUR.USD",
        "EUR/*",
        ">",
        "EUR/US\u{0}",
        "ЕUR/USD",
        "EUR/../USD",
        "EUR%2FUSD",
        "",
    ] {
        let doc = json!({"query": format!(
            "subscription {{ rates(pairs: [{}]) {{ pair }} }}",
            serde_json::to_string(pair).expect("json")
        )});
        let mut s = test_support::graphql_ws::Client::connect(
            &format!("ws://{}/v1/graphql", gw.addr),
            None,
        )
        .await;
        s.send(json!({"id": "1", "type": "subscribe", "payload": doc}))
            .await;
        let answer = s.recv().await;
        let text = answer.to_string();
        assert!(
            answer["type"] == "error" || text.contains("\"errors\""),
            "{pair:?} was not refused: {answer}"
        );
    }

    // Bodies: oversized 413, malformed 400, wrong media type 415.
    let limit = 64 * 1024;
    let big = format!(
        r#"{{"query":"{{ __typename }}","x":"{}"}}"#,
        "a".repeat(limit + 1)
    );
    assert_eq!(post(&gw, &[], big).await.0, 413);
    for bad in [
        "{",
        "[]",
        r#"{"query": 1}"#,
        "\u{0}\u{1}",
        r#"{"variables":{}}"#,
    ] {
        assert_eq!(post(&gw, &[], bad.to_owned()).await.0, 400, "{bad:?}");
    }
    let (status, _) = post(&gw, &[], vec![0xff_u8, 0xfe, 0x00]).await;
    assert_eq!(status, 400);

    // GraphQL: deep, aliased, cyclic, exponential — each a GraphQL error, none executed.
    let aliases: String = (0..1_000).map(|i| format!(" a{i}: __typename")).collect();
    let mut exponential = String::from("query { ...F0 }");
    for i in 0..30 {
        exponential.push_str(&format!(
            " fragment F{i} on Query {{ ...F{n} ...F{n} }}",
            n = i + 1
        ));
    }
    exponential.push_str(" fragment F30 on Query { __typename }");
    let brackets = format!(
        "{}{}",
        "{ dashboard(pairs: []) ".repeat(500),
        "}".repeat(500)
    );
    for (name, doc) in [
        ("aliases", format!("{{{aliases} }}")),
        (
            "cycle",
            "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }".to_owned(),
        ),
        ("exponential", exponential),
        ("deeply nested", brackets),
    ] {
        let (status, body) = post(&gw, &[], json!({ "query": doc }).to_string()).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["data"], Value::Null, "{name}: {body}");
        assert!(!first_error(&body).is_empty(), "{name}: {body}");
    }

    // WebSocket framing: invalid UTF-8 1007, oversized fragmented message 1009, and a foreign
    // origin (or a rebinding host) is refused before the upgrade.
    let mut s = RawSocket::connect(gw.addr, "/v1/graphql", "graphql-transport-ws", &[]).await;
    s.send_frame(0x81, &[0xc3, 0x28], true).await;
    assert_eq!(
        s.ending(Duration::from_secs(5)).await,
        Ending::Close(Some(1007))
    );
    let mut s = RawSocket::connect(gw.addr, "/v1/graphql", "graphql-transport-ws", &[]).await;
    let chunk = vec![b'a'; 16 * 1024];
    s.send_frame(0x01, &chunk, true).await; // text, not final
    let mut ending = Ending::Timeout;
    for _ in 0..64 {
        s.send_frame(0x00, &chunk, true).await; // continuation, not final
        ending = s.ending(Duration::from_millis(20)).await;
        if ending != Ending::Timeout {
            break;
        }
    }
    assert_eq!(ending, Ending::Close(Some(1009)));
    let port = gw.addr.port();
    for headers in [
        vec!["Origin: https://evil.example".to_owned()],
        vec![
            format!("Host: evil.example:{port}"),
            format!("Origin: http://evil.example:{port}"),
        ],
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, _) =
            RawSocket::try_connect(gw.addr, "/v1/graphql", "graphql-transport-ws", &headers).await;
        assert_eq!(status, 403, "{headers:?}");
    }

    // Still up, still answering, memory bounded.
    assert!(gw.is_running(), "the gateway died");
    let (status, body) = post(&gw, &[], query).await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query"))
    );
    hostile::assert_bounded_and_stops(&mut gw, PEAK_RSS_BOUND_KIB);
}
