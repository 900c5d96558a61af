//! `call` over the socket against scripted backends on loopback ports: results in the shapes of
//! `mobile_proto::data`, partial results, the error codes (`unknown_op`, `invalid_args`,
//! `limit_exceeded`, `upstream_timeout`, `too_many_calls`) and the in-flight id conflict.

mod common;

use std::time::Duration;

use common::{config, start};
use mobile_proto::{ClientMsg, Encoding, ServerMsg, close, code, data};
use serde_json::{Value, json};
use switchyard_core::upstream::BackendConfig;
use test_support::{Scripted, TestServer};

struct Backends {
    exchange: Scripted,
    limits: Scripted,
    conversions: Scripted,
    _servers: Vec<TestServer>,
}

async fn backends() -> (bff_mobile::Config, Backends) {
    let exchange = Scripted::replying(200, r#"{"pair":"EUR/USD","rate":"1.0842","seq":7}"#);
    let limits = Scripted::replying(
        200,
        r#"{"user":"kim","daily_limit":"1000","used":"10","remaining":"990"}"#,
    );
    let conversions = Scripted::replying(200, r#"{"conversions":[]}"#);
    let mut cfg = config();
    cfg.operations.deadline_ms = 400;
    let mut servers = Vec::new();
    for (name, s) in [
        ("exchange", &exchange),
        ("limits", &limits),
        ("conversions", &conversions),
    ] {
        let server = s.serve().await;
        cfg.backends
            .insert(name.to_owned(), BackendConfig::new(server.url()));
        servers.push(server);
    }
    (
        cfg,
        Backends {
            exchange,
            limits,
            conversions,
            _servers: servers,
        },
    )
}

fn call(id: u32, op: &str, args: Value) -> ClientMsg {
    let Value::Object(args) = args else {
        panic!("args are a map")
    };
    ClientMsg::Call(mobile_proto::Call {
        id,
        op: op.to_owned(),
        args,
    })
}

async fn answer(c: &mut common::Client) -> ServerMsg {
    c.recv_skipping_pings().await
}

fn error_code(msg: &ServerMsg, id: u32) -> String {
    match msg {
        ServerMsg::Error(e) => {
            assert_eq!(e.id, Some(id));
            e.code.clone()
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn quote_dashboard_and_convert_answer_in_both_encodings() {
    let (cfg, b) = backends().await;
    let gw = start(cfg, 100).await;
    for enc in Encoding::ALL {
        let mut c = gw.signed_in(enc, "kim").await;
        c.send(&call(
            1,
            "quote",
            json!({"from": "EUR", "to": "USD", "amount": "1000.00"}),
        ))
        .await;
        let ServerMsg::Result(r) = answer(&mut c).await else {
            panic!("expected a result")
        };
        assert_eq!(r.id, 1);
        let q: data::Quote = r.data_as().unwrap();
        assert_eq!(q.pair, "EUR/USD");
        assert_eq!((q.from.as_str(), q.to.as_str()), ("EUR", "USD"));
        assert_eq!(q.converted, "1084.20");
        assert_eq!(q.remaining_limit.as_deref(), Some("990"));
        assert_eq!(q.within_limit, Some(false));
        assert!(q.errors.is_empty());

        c.send(&call(
            2,
            "dashboard",
            json!({"pairs": ["EUR/USD", "GBP/USD"]}),
        ))
        .await;
        let ServerMsg::Result(r) = answer(&mut c).await else {
            panic!("expected a result")
        };
        let d: data::Dashboard = r.data_as().unwrap();
        assert_eq!(d.user, "kim");
        assert_eq!(d.rates.len(), 2);
        assert_eq!(d.limit.unwrap().remaining, "990");
        assert_eq!(d.recent, Some(vec![]));
    }
    let conversion = json!({
        "id": "c1", "user": "kim", "from": "EUR", "to": "USD", "amount": "10",
        "rate": "1.0842", "converted": "10.84", "at": "2026-01-01T00:00:00Z"
    });
    b.conversions
        .reply(Duration::ZERO, 201, &conversion.to_string());
    let mut c = gw.signed_in(Encoding::Cbor, "kim").await;
    c.send(&call(
        3,
        "convert",
        json!({"from": "EUR", "to": "USD", "amount": "10"}),
    ))
    .await;
    let ServerMsg::Result(r) = answer(&mut c).await else {
        panic!("expected a result")
    };
    let conv: data::Conversion = r.data_as().unwrap();
    assert_eq!(conv.id, "c1");
    assert_eq!(conv.converted, "10.84");
}

#[tokio::test]
async fn a_failed_optional_part_is_data() {
    let (cfg, b) = backends().await;
    b.limits.reply(
        Duration::ZERO,
        503,
        r#"{"error":{"code":"down","message":"down"}}"#,
    );
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Json, "kim").await;
    c.send(&call(
        1,
        "quote",
        json!({"from": "EUR", "to": "USD", "amount": "1"}),
    ))
    .await;
    let ServerMsg::Result(r) = answer(&mut c).await else {
        panic!("expected a result")
    };
    let q: data::Quote = r.data_as().unwrap();
    assert_eq!(q.remaining_limit, None);
    assert_eq!(q.within_limit, None);
    assert_eq!(q.errors.len(), 1);
    assert_eq!(q.errors[0].part, "/remaining_limit");
    assert_eq!(q.errors[0].backend, "limits");
    assert_eq!(q.errors[0].code, code::UPSTREAM_ERROR);
}

#[tokio::test]
async fn call_errors_have_their_codes_and_keep_the_socket() {
    let (cfg, b) = backends().await;
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Json, "kim").await;

    c.send(&call(1, "teleport", json!({}))).await;
    assert_eq!(error_code(&answer(&mut c).await, 1), code::UNKNOWN_OP);

    c.send(&call(
        2,
        "quote",
        json!({"from": "EUR", "to": "XYZ", "amount": "1"}),
    ))
    .await;
    assert_eq!(error_code(&answer(&mut c).await, 2), code::INVALID_ARGS);

    c.send(&call(3, "quote", json!({"from": "EUR", "to": "USD"})))
        .await;
    assert_eq!(error_code(&answer(&mut c).await, 3), code::INVALID_ARGS);

    c.send(&call(
        4,
        "convert",
        json!({"from": "EUR", "to": "USD", "amount": "-5"}),
    ))
    .await;
    assert_eq!(error_code(&answer(&mut c).await, 4), code::INVALID_ARGS);

    b.conversions.reply(
        Duration::ZERO,
        422,
        r#"{"error":{"code":"limit_exceeded","message":"over the daily limit"}}"#,
    );
    c.send(&call(
        5,
        "convert",
        json!({"from": "EUR", "to": "USD", "amount": "5"}),
    ))
    .await;
    assert_eq!(error_code(&answer(&mut c).await, 5), code::LIMIT_EXCEEDED);

    b.exchange.reply(Duration::from_secs(3), 200, "{}");
    c.send(&call(
        6,
        "quote",
        json!({"from": "EUR", "to": "USD", "amount": "1"}),
    ))
    .await;
    assert_eq!(error_code(&answer(&mut c).await, 6), code::UPSTREAM_TIMEOUT);
}

#[tokio::test]
async fn too_many_calls_is_an_error_and_a_reused_id_in_flight_is_a_conflict() {
    let (mut cfg, b) = backends().await;
    cfg.websocket.max_calls = 1;
    cfg.operations.deadline_ms = 2_000;
    b.exchange.reply(Duration::from_millis(800), 200, "{}");
    let gw = start(cfg, 100).await;
    let mut c = gw.signed_in(Encoding::Cbor, "kim").await;
    let quote = json!({"from": "EUR", "to": "USD", "amount": "1"});
    c.send(&call(1, "quote", quote.clone())).await;
    c.send(&call(2, "quote", quote.clone())).await;
    assert_eq!(error_code(&answer(&mut c).await, 2), code::TOO_MANY_CALLS);
    c.send(&call(1, "quote", quote)).await;
    assert_eq!(c.closed().await, close::CONFLICT);
}
