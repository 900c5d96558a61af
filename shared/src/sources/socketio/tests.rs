//! Unit tests of the Socket.IO client: the codec (every packet type, hostile input), the
//! WebSocket URL, and the protocol's steps through a handshake, joins, acks, events, binary
//! packets and deadlines. Nothing here may panic, whatever the input.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::sources::rules::{Outcome, RuleConfig};
use crate::sources::{SourceConfig, SourceKind};

fn config() -> SourceConfig {
    let mut c = SourceConfig::new(
        SourceKind::Socketio,
        "http://127.0.0.1:3000",
        "prices.{symbol}",
    );
    c.namespace = Some("/market".into());
    c.auth = Some(json!({"token": "s3cret"}));
    c.join = Some(EmitConfig {
        event: "subscribe".into(),
        args: vec![json!("{symbol}")],
        ack: true,
    });
    c.leave = Some(EmitConfig {
        event: "unsubscribe".into(),
        args: vec![json!("{symbol}")],
        ack: false,
    });
    c.messages = vec![RuleConfig {
        event: Some("price".into()),
        capture: [("/0/symbol".to_owned(), "{symbol}".to_owned())].into(),
        payload: Some("/0".into()),
        ..Default::default()
    }];
    c
}

fn protocol_of(c: &SourceConfig) -> SocketIo {
    SocketIo::new(&c.check().expect("a valid source")).expect("a valid socketio source")
}

/// A protocol past its handshake on `/market`.
fn joined() -> SocketIo {
    let mut p = protocol_of(&config());
    assert!(p.opened().is_empty());
    assert!(!p.ready());
    let steps = p.text(r#"0{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#);
    assert_eq!(sends(&steps), [r#"40/market,{"token":"s3cret"}"#]);
    assert!(!p.ready(), "ready only once the namespace is acknowledged");
    let steps = p.text(r#"40/market,{"sid":"b"}"#);
    assert!(matches!(steps[..], [Step::Healthy]), "{steps:?}");
    assert!(p.ready());
    p
}

fn sends(steps: &[Step]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Send(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn channel(name: &str) -> (ChannelName, Vars) {
    let c = ChannelName::parse(name).unwrap();
    let vars = Template::parse("prices.{symbol}")
        .unwrap()
        .capture(name)
        .unwrap();
    (c, vars)
}

fn one_unparsable(steps: &[Step]) -> bool {
    matches!(steps, [Step::Unparsable(_)])
}

#[test]
fn engine_packets() {
    let open = parse_engine(
        r#"0{"sid":"x","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000}"#,
    )
    .unwrap();
    assert_eq!(
        open,
        EnginePacket::Open(Handshake {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            max_payload: 1000,
        })
    );
    assert_eq!(
        parse_engine(r#"0{"sid":"x"}"#).unwrap(),
        EnginePacket::Open(Handshake {
            ping_interval: Duration::from_millis(DEFAULT_PING_INTERVAL_MS),
            ping_timeout: Duration::from_millis(DEFAULT_PING_TIMEOUT_MS),
            max_payload: DEFAULT_MAX_PAYLOAD,
        })
    );
    // Absurd timings are clamped, so that their sum cannot overflow.
    let EnginePacket::Open(h) = parse_engine(
        r#"0{"pingInterval":18446744073709551615,"pingTimeout":18446744073709551615}"#,
    )
    .unwrap() else {
        panic!("an open packet");
    };
    assert_eq!(h.silence_limit(), Duration::from_millis(2 * MAX_TIMING_MS));
    assert_eq!(parse_engine("1").unwrap(), EnginePacket::Close);
    assert_eq!(parse_engine("2").unwrap(), EnginePacket::Ping(""));
    assert_eq!(parse_engine("2probe").unwrap(), EnginePacket::Ping("probe"));
    assert_eq!(parse_engine("3").unwrap(), EnginePacket::Pong);
    assert_eq!(parse_engine("4").unwrap(), EnginePacket::Message(""));
    assert_eq!(
        parse_engine(r#"42["a"]"#).unwrap(),
        EnginePacket::Message(r#"2["a"]"#)
    );
    assert_eq!(parse_engine("5").unwrap(), EnginePacket::Upgrade);
    assert_eq!(parse_engine("6").unwrap(), EnginePacket::Noop);
    for bad in [
        "",
        "7",
        "b4AAA",
        "é",
        "日本",
        " 2",
        "0",
        "0{",
        "0[]",
        r#"0{"pingInterval":-1}"#,
        r#"0{"pingInterval":"25000"}"#,
        r#"0{"maxPayload":1.5}"#,
    ] {
        assert!(parse_engine(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn socketio_packets() {
    let p = |s| parse_packet(s).unwrap();
    let packet = |kind, namespace, id, data| Packet {
        kind,
        attachments: 0,
        namespace,
        id,
        data,
    };
    assert_eq!(p("0"), packet(Kind::Connect, "/", None, ""));
    assert_eq!(
        p(r#"0/admin,{"sid":"x"}"#),
        packet(Kind::Connect, "/admin", None, r#"{"sid":"x"}"#)
    );
    assert_eq!(p("1/admin,"), packet(Kind::Disconnect, "/admin", None, ""));
    // socket.io-parser reads the namespace up to a comma or the end.
    assert_eq!(p("1/admin"), packet(Kind::Disconnect, "/admin", None, ""));
    assert_eq!(
        p(r#"2["hello",1]"#),
        packet(Kind::Event, "/", None, r#"["hello",1]"#)
    );
    assert_eq!(
        p(r#"2/admin,13["project:delete",123]"#),
        packet(Kind::Event, "/admin", Some(13), r#"["project:delete",123]"#)
    );
    assert_eq!(
        p("3/admin,13[]"),
        packet(Kind::Ack, "/admin", Some(13), "[]")
    );
    assert_eq!(
        p(r#"4{"message":"Not authorized"}"#),
        packet(
            Kind::ConnectError,
            "/",
            None,
            r#"{"message":"Not authorized"}"#
        )
    );
    assert_eq!(
        p(r#"51-["hello",{"_placeholder":true,"num":0}]"#),
        Packet {
            kind: Kind::BinaryEvent,
            attachments: 1,
            namespace: "/",
            id: None,
            data: r#"["hello",{"_placeholder":true,"num":0}]"#,
        }
    );
    assert_eq!(
        p(r#"62-/admin,15[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
        Packet {
            kind: Kind::BinaryAck,
            attachments: 2,
            namespace: "/admin",
            id: Some(15),
            data: r#"[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        }
    );
    // Unicode and commas: a namespace ends at the first comma; the rest is (bad) data.
    assert_eq!(
        p(r#"2/日本,["é",{"s":"日本"}]"#),
        packet(Kind::Event, "/日本", None, r#"["é",{"s":"日本"}]"#)
    );
    let comma = p(r#"2/a,b,["x"]"#);
    assert_eq!(comma, packet(Kind::Event, "/a", None, r#"b,["x"]"#));
    assert!(parse_event(comma.data).is_err());
    assert_eq!(
        p(&format!("2{}[\"x\"]", "9".repeat(MAX_ID_DIGITS))).id,
        Some(999_999_999_999_999)
    );
    for bad in [
        "",
        "7",
        "é",
        "x2[]",
        "5",
        "5[]",
        "5-[]",
        "50-[]",
        "5x-[]",
        "5é-[]",
        "51001-[]",
        "599999999999999999999999-[]",
        "6-",
    ] {
        assert!(parse_packet(bad).is_err(), "{bad:?}");
    }
    for huge in [
        format!("2{}[\"x\"]", "9".repeat(MAX_ID_DIGITS + 1)),
        format!("3{}[]", "1".repeat(10_000)),
        format!("2/ns,{}[]", "18446744073709551616"),
    ] {
        assert!(parse_packet(&huge).is_err(), "{huge:.40}");
    }
}

#[test]
fn event_and_ack_data() {
    assert_eq!(
        parse_event(r#"["price",{"symbol":"AAPL"},2]"#).unwrap(),
        (
            "price".to_owned(),
            vec![json!({"symbol": "AAPL"}), json!(2)]
        )
    );
    assert_eq!(
        parse_event(r#"["no args"]"#).unwrap(),
        ("no args".to_owned(), vec![])
    );
    for bad in [
        "", "[", r#"["x""#, "[]", "[1]", "[null]", "{}", r#""x""#, "[\"x\"]]", "nul",
    ] {
        assert!(parse_event(bad).is_err(), "{bad:?}");
    }
    let deep = format!("[\"x\",{}{}]", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_event(&deep).is_err(), "deep nesting is refused");
    assert_eq!(parse_ack("[]").unwrap(), Vec::<Value>::new());
    assert!(parse_ack("").is_err() && parse_ack("{}").is_err() && parse_ack("[").is_err());
    assert_eq!(refusal(&[json!(false)]).as_deref(), Some("false"));
    assert_eq!(
        refusal(&[json!({"error": "no such symbol"})]).as_deref(),
        Some("no such symbol")
    );
    assert_eq!(
        refusal(&[json!({"error": {"code": 4}})]).as_deref(),
        Some(r#"{"code":4}"#)
    );
    for fine in [
        vec![],
        vec![json!(true)],
        vec![json!({"ok": true})],
        vec![json!({"error": null, "ok": true})],
        vec![json!("ok")],
        vec![json!(null), json!(false)],
    ] {
        assert_eq!(refusal(&fine), None, "{fine:?}");
    }
}

#[test]
fn encoding() {
    assert_eq!(encode(Kind::Connect, "/", None, ""), "40");
    assert_eq!(
        encode(Kind::Connect, "/", None, r#"{"token":"x"}"#),
        r#"40{"token":"x"}"#
    );
    assert_eq!(encode(Kind::Connect, "/admin", None, ""), "40/admin,");
    assert_eq!(encode(Kind::Ack, "/", Some(7), "[]"), "437[]");
    assert_eq!(encode(Kind::Ack, "/admin", Some(7), "[]"), "43/admin,7[]");
    assert_eq!(
        encode(Kind::Event, "/admin", Some(0), r#"["a"]"#),
        r#"42/admin,0["a"]"#
    );
    // What it encodes, it reads back.
    let text = encode(Kind::Event, "/admin", Some(12), r#"["a",{"b":"日本"}]"#);
    let EnginePacket::Message(m) = parse_engine(&text).unwrap() else {
        panic!("a message");
    };
    assert_eq!(
        parse_packet(m).unwrap(),
        Packet {
            kind: Kind::Event,
            attachments: 0,
            namespace: "/admin",
            id: Some(12),
            data: r#"["a",{"b":"日本"}]"#,
        }
    );
}

#[test]
fn websocket_urls() {
    let url = |u: &str, p: Option<&str>| websocket_url(u, p);
    assert_eq!(
        url("http://127.0.0.1:3000", None).unwrap(),
        "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
    );
    assert_eq!(
        url("https://prices.example.com/", None).unwrap(),
        "wss://prices.example.com/socket.io/?EIO=4&transport=websocket"
    );
    assert_eq!(
        url("HTTPS://prices.example.com:8443/market/", None).unwrap(),
        "wss://prices.example.com:8443/market/socket.io/?EIO=4&transport=websocket"
    );
    assert_eq!(
        url("http://h:1/base", Some("/rt/")).unwrap(),
        "ws://h:1/rt/?EIO=4&transport=websocket"
    );
    assert_eq!(
        url("http://h/?tenant=a", None).unwrap(),
        "ws://h/socket.io/?tenant=a&EIO=4&transport=websocket"
    );
    assert_eq!(
        url("http://[::1]:3000", None).unwrap(),
        "ws://[::1]:3000/socket.io/?EIO=4&transport=websocket"
    );
    for (u, p, key) in [
        ("ws://h", None, "url:"),
        ("h:3000", None, "url:"),
        ("http://", None, "url:"),
        ("http://user:pw@h", None, "url:"),
        ("http://h a", None, "url:"),
        ("http://h", Some("socket.io/"), "path:"),
        ("http://h", Some("/a b/"), "path:"),
        ("http://h", Some("/a?b"), "path:"),
        ("http://h", Some("/a\n"), "path:"),
    ] {
        let e = url(u, p).unwrap_err();
        assert!(e.starts_with(key), "{u} {p:?}: {e}");
    }
}

#[test]
fn configuration_errors_name_the_key() {
    let mut c = config();
    c.namespace = Some("/a,b".into());
    let e = SocketIo::new(&c.check().unwrap()).err().unwrap();
    assert!(e.starts_with("namespace:"), "{e}");
    let mut c = config();
    c.path = Some("no-slash".into());
    let e = SocketIo::new(&c.check().unwrap()).err().unwrap();
    assert!(e.starts_with("path:"), "{e}");
    let mut c = config();
    c.url = "https://u:p@h".into();
    let e = SocketIo::new(&c.check().unwrap()).err().unwrap();
    assert!(e.starts_with("url:"), "{e}");
    // https gives wss, which ws.rs's TLS connector recognizes.
    let mut c = config();
    c.url = "https://h".into();
    assert!(protocol_of(&c).url().starts_with("wss://"));
}

#[test]
fn the_default_namespace_connects_with_40() {
    let mut c = config();
    c.namespace = None;
    c.auth = None;
    let mut p = protocol_of(&c);
    p.opened();
    assert_eq!(sends(&p.text(r#"0{"sid":"a"}"#)), ["40"]);
    assert!(matches!(p.text(r#"40{"sid":"b"}"#)[..], [Step::Healthy]));
    let (aapl, vars) = channel("prices.AAPL");
    assert_eq!(sends(&p.want(&aapl, &vars)), [r#"420["subscribe","AAPL"]"#]);
    let steps = p.text(r#"42["price",{"symbol":"AAPL","price":1}]"#);
    assert!(matches!(&steps[..], [Step::Deliver(Outcome::Event { .. })]));
    c.auth = Some(json!({"token": "t"}));
    let mut p = protocol_of(&c);
    p.opened();
    assert_eq!(sends(&p.text("0{}")), [r#"40{"token":"t"}"#]);
}

#[test]
fn joins_acks_events_and_leaves() {
    let mut p = joined();
    let (aapl, vars) = channel("prices.AAPL");
    assert_eq!(
        sends(&p.want(&aapl, &vars)),
        [r#"42/market,0["subscribe","AAPL"]"#]
    );
    assert!(matches!(
        p.text(r#"43/market,0[{"ok":true}]"#)[..],
        [Step::Healthy]
    ));
    // The ack is consumed: a second one for the same id is ignored.
    assert!(p.text(r#"43/market,0[{"ok":true}]"#).is_empty());
    let steps = p.text(r#"42/market,["price",{"symbol":"AAPL","price":1.5}]"#);
    let [Step::Deliver(Outcome::Event { channel, payload })] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert_eq!(channel.as_str(), "prices.AAPL");
    assert_eq!(&payload[..], br#"{"price":1.5,"symbol":"AAPL"}"#);
    // An event asking for an acknowledgement gets an empty one.
    let steps = p.text(r#"42/market,7["price",{"symbol":"AAPL","price":2}]"#);
    assert!(matches!(steps[0], Step::Deliver(Outcome::Event { .. })));
    assert_eq!(sends(&steps), ["43/market,7[]"]);
    // Unknown events, bad symbols and missing arguments are the rules' to judge.
    assert!(matches!(
        p.text(r#"42/market,["weather",{"t":1}]"#)[..],
        [Step::Deliver(Outcome::Unmatched)]
    ));
    assert!(matches!(
        p.text(r#"42/market,["price",{"symbol":"X.Y","price":1}]"#)[..],
        [Step::Deliver(Outcome::Refused(_))]
    ));
    assert!(matches!(
        p.text(r#"42/market,["price"]"#)[..],
        [Step::Deliver(Outcome::Refused(_))]
    ));
    // Leave has `ack = false`: no id.
    assert_eq!(
        sends(&p.release(&aapl, &vars)),
        [r#"42/market,["unsubscribe","AAPL"]"#]
    );
    assert!(p.conn.pending.is_empty());
    // Pings are answered, noops and pongs ignored.
    assert_eq!(sends(&p.text("2")), ["3"]);
    assert!(p.text("6").is_empty() && p.text("3").is_empty());
}

#[test]
fn refused_and_missing_acks_are_upstream_errors() {
    let mut p = joined();
    let (bad, vars) = channel("prices.BAD");
    assert_eq!(
        sends(&p.want(&bad, &vars)),
        [r#"42/market,0["subscribe","BAD"]"#]
    );
    let steps = p.text(r#"43/market,0[{"error":"no such symbol"}]"#);
    let [Step::UpstreamError(why)] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert!(
        why.contains("no such symbol") && why.contains("prices.BAD"),
        "{why}"
    );
    let (x, vars) = channel("prices.X");
    p.want(&x, &vars);
    assert!(matches!(
        p.text("43/market,1[false]")[..],
        [Step::UpstreamError(_)]
    ));
    // Not acknowledged in time.
    let (slow, vars) = channel("prices.SLOW");
    p.want(&slow, &vars);
    let now = Instant::now();
    assert!(p.tick_at(true, now + ACK_TIMEOUT / 2).is_empty());
    let steps = p.tick_at(true, now + ACK_TIMEOUT + Duration::from_secs(1));
    let [Step::UpstreamError(why)] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert!(
        why.contains("not acknowledged") && why.contains("prices.SLOW"),
        "{why}"
    );
    assert!(p.conn.pending.is_empty());
    // A late ack is ignored.
    assert!(p.text("43/market,2[]").is_empty());
    // Acks without ids or with bad data.
    assert!(one_unparsable(&p.text("43/market,[]")));
    assert!(one_unparsable(&p.text("43/market,3{}")));
}

#[test]
fn the_pending_acks_are_bounded() {
    let mut p = joined();
    let (aapl, vars) = channel("prices.AAPL");
    for _ in 0..MAX_PENDING_ACKS {
        assert_eq!(p.want(&aapl, &vars).len(), 1);
    }
    let steps = p.want(&aapl, &vars);
    assert!(matches!(steps[0], Step::UpstreamError(_)), "{steps:?}");
    assert_eq!(sends(&steps), [r#"42/market,["subscribe","AAPL"]"#]);
    assert_eq!(p.conn.pending.len(), MAX_PENDING_ACKS);
    // A new connection starts afresh.
    p.opened();
    assert!(p.conn.pending.is_empty() && !p.ready());
}

#[test]
fn emits_over_the_servers_max_payload_are_not_sent() {
    let mut p = protocol_of(&config());
    p.opened();
    p.text(r#"0{"maxPayload":20}"#);
    p.text(r#"40/market,{"sid":"b"}"#);
    let (aapl, vars) = channel("prices.AAPL");
    let steps = p.want(&aapl, &vars);
    assert!(matches!(steps[..], [Step::UpstreamError(_)]), "{steps:?}");
    assert!(p.conn.pending.is_empty());
}

#[test]
fn join_arguments_are_rendered_everywhere() {
    let mut c = config();
    c.join = Some(EmitConfig {
        event: "join".into(),
        args: vec![
            json!({"room": "prices:{symbol}", "n": 1, "tags": ["{symbol}", null, {"x": "{}"}]}),
            json!("{symbol}"),
            json!(true),
        ],
        ack: false,
    });
    let mut p = protocol_of(&c);
    p.opened();
    p.text("0{}");
    p.text(r#"40/market,{"sid":"b"}"#);
    let (aapl, vars) = channel("prices.AAPL");
    let steps = p.want(&aapl, &vars);
    let [Step::Send(text)] = &steps[..] else {
        panic!("{steps:?}");
    };
    let data: Value = serde_json::from_str(text.strip_prefix("42/market,").unwrap()).unwrap();
    assert_eq!(
        data,
        json!(["join", {"room": "prices:AAPL", "n": 1, "tags": ["AAPL", null, {"x": "{}"}]}, "AAPL", true])
    );
    // No join configured: nothing is sent.
    c.join = None;
    let mut p = protocol_of(&c);
    assert!(p.want(&aapl, &vars).is_empty());
}

#[test]
fn the_server_ending_things() {
    let mut p = joined();
    let steps = p.text(r#"44/market,{"message":"unauthorized"}"#);
    let [Step::UpstreamError(why), Step::Lost(_)] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert!(why.contains("unauthorized"), "{why}");
    let mut p = joined();
    assert!(
        matches!(p.text(r#"44/market,"nope""#)[..], [Step::UpstreamError(ref w), Step::Lost(_)] if w.contains("nope"))
    );
    let mut p = joined();
    assert!(matches!(
        p.text(r#"44/market,"#)[..],
        [Step::UpstreamError(_), Step::Lost(_)]
    ));
    let mut p = joined();
    assert!(matches!(p.text("41/market,")[..], [Step::Lost(_)]));
    let mut p = joined();
    assert!(matches!(p.text("1")[..], [Step::Lost(_)]));
    // Another namespace's packets are not ours, and cannot end ours.
    let mut p = joined();
    assert!(one_unparsable(&p.text("41")));
    assert!(one_unparsable(&p.text(r#"42/other,["price",{}]"#)));
    assert!(one_unparsable(&p.text(r#"42["price",{"symbol":"AAPL"}]"#)));
    assert!(p.ready());
}

#[test]
fn before_the_handshake() {
    let mut p = protocol_of(&config());
    p.opened();
    // Nothing Socket.IO before the open packet; a CONNECT ack without an object is refused.
    assert!(one_unparsable(&p.text(r#"40/market,{"sid":"x"}"#)));
    assert!(!p.ready());
    assert_eq!(sends(&p.text("0{}")).len(), 1);
    assert!(one_unparsable(&p.text("0{}")), "a second open packet");
    assert!(one_unparsable(&p.text("40/market,")));
    assert!(one_unparsable(&p.text("5")));
    assert!(!p.ready());
}

#[test]
fn deadlines() {
    // The handshake: connect_timeout_ms (2 s by default).
    let mut p = protocol_of(&config());
    p.opened();
    let start = p.conn.started;
    assert!(p.tick_at(false, start + Duration::from_secs(1)).is_empty());
    let steps = p.tick_at(false, start + Duration::from_secs(3));
    assert!(
        matches!(&steps[..], [Step::Lost(w)] if w.contains("open packet")),
        "{steps:?}"
    );
    p.opened();
    let start = p.conn.started;
    p.text("0{}");
    let steps = p.tick_at(false, start + Duration::from_secs(3));
    assert!(
        matches!(&steps[..], [Step::Lost(w)] if w.contains("CONNECT")),
        "{steps:?}"
    );
    // Silence: pingInterval + pingTimeout.
    let mut p = protocol_of(&config());
    p.opened();
    p.text(r#"0{"pingInterval":300,"pingTimeout":200}"#);
    p.text(r#"40/market,{"sid":"b"}"#);
    let heard = p.conn.last_heard;
    assert!(
        p.tick_at(false, heard + Duration::from_millis(450))
            .is_empty()
    );
    let steps = p.tick_at(false, heard + Duration::from_millis(550));
    assert!(
        matches!(&steps[..], [Step::Lost(w)] if w.contains("ping")),
        "{steps:?}"
    );
    // Whatever is heard keeps it alive.
    p.opened();
    p.text(r#"0{"pingInterval":300,"pingTimeout":200}"#);
    p.text(r#"40/market,{"sid":"b"}"#);
    let heard = p.conn.last_heard;
    assert!(
        p.tick_at(true, heard + Duration::from_millis(400))
            .is_empty()
    );
    assert!(
        p.tick_at(false, heard + Duration::from_millis(800))
            .is_empty()
    );
    assert!(
        !p.tick_at(false, heard + Duration::from_millis(1000))
            .is_empty()
    );
}

#[test]
fn binary_packets_and_their_attachments_are_refused_and_skipped() {
    let mut p = joined();
    let steps = p.text(
        r#"452-/market,["price",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
    );
    let [Step::Binary(what)] = &steps[..] else {
        panic!("{steps:?}");
    };
    assert!(
        what.contains("`price`") && what.contains("2 attachment"),
        "{what}"
    );
    assert!(p.binary(1000).is_empty());
    assert!(p.binary(10).is_empty());
    assert!(
        matches!(p.binary(10)[..], [Step::Binary(_)]),
        "a stray binary message"
    );
    assert!(matches!(
        p.text(r#"461-/market,3[{"_placeholder":true,"num":0}]"#)[..],
        [Step::Binary(_)]
    ));
    assert!(p.binary(0).is_empty());
    // Events still flow.
    assert!(matches!(
        p.text(r#"42/market,["price",{"symbol":"AAPL","price":1}]"#)[..],
        [Step::Deliver(Outcome::Event { .. })]
    ));
}

#[test]
fn hostile_text_is_unparsable() {
    let mut p = joined();
    for bad in [
        "",
        "4",
        "42",
        "42[",
        r#"42["x""#,
        "42[]",
        "42{}",
        "42[1]",
        "42/market,",
        "42/market,[",
        r#"42/market,["x""#,
        "42/market,99999999999999999999999999[\"x\"]",
        "42/market,b,[\"x\"]",
        "4é",
        "4x",
        "é",
        "\u{0}",
        "45",
        "45-/market,[]",
        "4\u{feff}2[]",
    ] {
        let steps = p.text(bad);
        assert!(one_unparsable(&steps), "{bad:?}: {steps:?}");
    }
    assert!(p.ready());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn nothing_panics(
        texts in proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                "[0-6]{0,3}[0-9/,\\[\\]{}\"a-z:é-]{0,40}",
                "4[0-6][0-9]{0,25}-?/?(market)?,?[0-9]{0,20}\\[?\"?(price)?\"?,?\\{?",
            ],
            1..12,
        ),
        binaries in proptest::collection::vec(0usize..100, 0..4),
    ) {
        let mut p = joined();
        for t in &texts {
            let _ = p.text(t);
            let _ = p.text(&format!("4{t}"));
            let _ = p.text(&format!("42/market,{t}"));
        }
        for len in binaries {
            let _ = p.binary(len);
        }
        let _ = p.tick_at(false, Instant::now() + Duration::from_secs(3600));
    }
}
