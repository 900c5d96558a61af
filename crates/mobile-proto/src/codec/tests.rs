//! Tests of the codec: sizes, frame kinds, the data model, message types and keys, in both
//! encodings.

use serde_json::json;

use super::*;
use crate::msg::{Auth, Call, Event, Ping, Sub};

const MAX: usize = 16 * 1024;

fn cbor(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

fn text(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

fn map(entries: Vec<(&str, Cbor)>) -> Cbor {
    Cbor::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

fn client_cbor(bytes: &[u8]) -> Result<ClientMsg, DecodeError> {
    Encoding::Cbor.decode_client(FrameKind::Binary, bytes, MAX)
}

fn client_json(s: &str) -> Result<ClientMsg, DecodeError> {
    Encoding::Json.decode_client(FrameKind::Text, s.as_bytes(), MAX)
}

fn detail(r: Result<ClientMsg, DecodeError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn decodes_a_client_message_in_both_encodings() {
    let want = ClientMsg::Sub(Sub {
        topic: "conversions".into(),
        resume: Some(Position {
            epoch: 7,
            offset: 41,
        }),
    });
    let json = r#"{"t":"sub","topic":"conversions","resume":{"e":7,"o":41}}"#;
    assert_eq!(client_json(json).unwrap(), want);
    let bin = cbor(&map(vec![
        ("t", text("sub")),
        ("topic", text("conversions")),
        (
            "resume",
            map(vec![("e", Cbor::from(7)), ("o", Cbor::from(41))]),
        ),
    ]));
    assert_eq!(client_cbor(&bin).unwrap(), want);
}

#[test]
fn any_valid_cbor_encoding_is_accepted() {
    // An indefinite-length map with an indefinite-length text string and a needlessly
    // long integer (as some encoders write them): `{"t": "ping", "n": 1}`.
    let bytes = b"\xbf\x61t\x7f\x62pi\x62ng\xff\x61n\x1a\x00\x00\x00\x01\xff";
    assert_eq!(client_cbor(bytes).unwrap(), ClientMsg::Ping(Ping { n: 1 }));
    // Floats of any width are floats (and not integers).
    let half = b"\xa2\x61t\x64ping\x61n\xf9\x3c\x00";
    assert_eq!(
        detail(client_cbor(half)),
        "`ping`: `n`: invalid type: floating point `1.0`, expected u32"
    );
}

#[test]
fn size_and_frame_kind_are_checked_first() {
    let frame = Encoding::Json.encode_client(&ClientMsg::Ping(Ping { n: 1 }));
    let err = Encoding::Json
        .decode_client(FrameKind::Text, frame.as_bytes(), frame.len() - 1)
        .unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }));
    assert_eq!(err.close_code(), close::MESSAGE_TOO_BIG);

    let err = Encoding::Json
        .decode_client(FrameKind::Binary, frame.as_bytes(), MAX)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "JSON messages travel in text frames, not binary frames"
    );
    assert_eq!(err.close_code(), close::PROTOCOL_VIOLATION);
    let err = Encoding::Cbor
        .decode_client(FrameKind::Text, b"\xa0", MAX)
        .unwrap_err();
    assert!(matches!(err, DecodeError::WrongFrameKind { .. }));
}

#[test]
fn malformed_input_is_refused() {
    assert!(matches!(
        client_json("{\"t\":"),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        client_json(r#"{"t":"ping","n":1} {}"#),
        Err(DecodeError::Malformed { .. })
    ));
    // A map announcing two entries that ends after one.
    assert_eq!(
        detail(client_cbor(b"\xa2\x61t\x64ping")),
        "not well-formed CBOR: the frame ends inside an item"
    );
    let mut two = cbor(&map(vec![("t", text("ping")), ("n", Cbor::from(1))]));
    two.push(0xf6);
    assert_eq!(
        detail(client_cbor(&two)),
        "not well-formed CBOR: 1 bytes follow the first item (one message per frame)"
    );
    assert!(matches!(
        client_cbor(b""),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        client_json(""),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn values_outside_the_data_model_are_refused() {
    let with_args = |args: Cbor| {
        cbor(&map(vec![
            ("t", text("call")),
            ("id", Cbor::from(1)),
            ("op", text("quote")),
            ("args", args),
        ]))
    };
    let cases = [
        (
            map(vec![("k", Cbor::Bytes(vec![1]))]),
            "byte strings are not part of the protocol (use text)",
        ),
        (
            map(vec![("k", Cbor::Tag(1, Box::new(Cbor::from(0))))]),
            "CBOR tags are not part of the protocol (tag 1)",
        ),
        (
            Cbor::Map(vec![(Cbor::from(1), Cbor::Null)]),
            "map keys must be text",
        ),
        (
            map(vec![("k", Cbor::Null), ("k", Cbor::Null)]),
            "duplicate map key `k`",
        ),
        (
            map(vec![("k", Cbor::Float(f64::NAN))]),
            "float NaN is not finite",
        ),
        (
            map(vec![(
                "k",
                Cbor::Integer(ciborium::value::Integer::try_from(-(1i128 << 64)).unwrap()),
            )]),
            "integer -18446744073709551616 is out of range (−2^63 to 2^64 − 1)",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(detail(client_cbor(&with_args(args))), want);
    }
    // JSON duplicates are refused too (serde_json alone would keep the last).
    assert_eq!(
        detail(client_json(r#"{"t":"ping","n":1,"n":2}"#)),
        "duplicate map key `n`"
    );
}

#[test]
fn nesting_is_bounded_the_same_way_in_both_encodings() {
    // `args` is level 2; each extra array adds one.
    let nested = |levels: usize| {
        let mut args = Cbor::Array(vec![]);
        for _ in 0..levels {
            args = Cbor::Array(vec![args]);
        }
        let msg = map(vec![
            ("t", text("call")),
            ("id", Cbor::from(1)),
            ("op", text("quote")),
            ("args", map(vec![("k", args)])),
        ]);
        let json: serde_json::Value = msg.deserialized().unwrap();
        (cbor(&msg), json.to_string())
    };
    // The message map is level 1, args 2, the outermost array 3: 29 more reach 32.
    let (ok_cbor, ok_json) = nested(MAX_DEPTH - 3);
    assert!(client_cbor(&ok_cbor).is_ok());
    assert!(client_json(&ok_json).is_ok());
    let (deep_cbor, deep_json) = nested(MAX_DEPTH - 2);
    assert_eq!(
        detail(client_cbor(&deep_cbor)),
        "nested deeper than 32 levels"
    );
    assert_eq!(
        detail(client_json(&deep_json)),
        "nested deeper than 32 levels"
    );
    // Far deeper: the parsers' own limits stop it before the stack is at risk.
    let mut very_cbor = vec![0x81; 8_000];
    very_cbor.push(0x80);
    assert!(matches!(
        client_cbor(&very_cbor),
        Err(DecodeError::Malformed { .. })
    ));
    let very_json = format!("{}{}", "[".repeat(8_000), "]".repeat(8_000));
    assert!(matches!(
        client_json(&very_json),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn messages_are_read_strictly_with_errors_naming_the_key() {
    let cases = [
        ("[]", "a message is a map with a type key `t`, not an array"),
        (r#"{"token":"x"}"#, "the message has no type key `t`"),
        (
            r#"{"t":1,"token":"x"}"#,
            "the type key `t` must be text, not a number",
        ),
        (
            r#"{"t":"welcome"}"#,
            "unknown message type `welcome` (a client sends auth, sub, unsub, call, ping, pong)",
        ),
        (r#"{"t":"auth"}"#, "`auth`: missing field `token`"),
        (
            r#"{"t":"auth","token":"x","tokn":"y"}"#,
            "`auth`: `tokn`: unknown field `tokn`, expected `token` or `client`",
        ),
        (
            r#"{"t":"sub","topic":"conversions","resume":{"e":1,"o":-1}}"#,
            "`sub`: `resume.o`: invalid value: integer `-1`, expected u64",
        ),
        (
            r#"{"t":"call","id":4294967296,"op":"quote","args":{}}"#,
            "`call`: `id`: invalid value: integer `4294967296`, expected u32",
        ),
        (
            r#"{"t":"call","id":1,"op":"quote","args":[]}"#,
            "`call`: `args`: invalid type: sequence, expected a map",
        ),
        (
            r#"{"t":"ping","n":1.5}"#,
            "`ping`: `n`: invalid type: floating point `1.5`, expected u32",
        ),
    ];
    for (json, want) in cases {
        assert_eq!(detail(client_json(json)), want, "{json}");
    }
}

#[test]
fn optional_keys_may_be_left_out_or_null() {
    assert_eq!(
        client_json(r#"{"t":"sub","topic":"rates:EUR/USD","resume":null}"#).unwrap(),
        client_json(r#"{"t":"sub","topic":"rates:EUR/USD"}"#).unwrap(),
    );
    assert_eq!(
        client_json(r#"{"t":"call","id":3,"op":"dashboard"}"#).unwrap(),
        ClientMsg::Call(Call {
            id: 3,
            op: "dashboard".into(),
            args: Map::new()
        })
    );
}

#[test]
fn the_event_fast_path_matches_the_message() {
    let data = json!({"pair": "EUR/USD", "rate": "1.0842", "seq": 7});
    let position = Position {
        epoch: 6_130_412_896_125_523_119,
        offset: 7,
    };
    let msg = ServerMsg::Event(Event {
        topic: "rates:EUR/USD".into(),
        epoch: position.epoch,
        offset: position.offset,
        data: data.clone(),
    });
    for enc in Encoding::ALL {
        let fast = enc.encode_event("rates:EUR/USD", position, &data).unwrap();
        assert_eq!(fast, enc.encode_server(&msg), "{enc}");
        assert_eq!(
            enc.decode_server(enc.frame_kind(), fast.as_bytes(), MAX)
                .unwrap(),
            msg
        );
    }
}

#[test]
fn the_event_fast_path_reports_unencodable_data() {
    struct Unencodable;
    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    for enc in Encoding::ALL {
        let err = enc
            .encode_event(
                "t",
                Position {
                    epoch: 1,
                    offset: 0,
                },
                &Unencodable,
            )
            .unwrap_err();
        assert_eq!(err.encoding, enc);
        assert!(err.to_string().starts_with("cannot encode as"), "{err}");
    }
}

#[test]
fn typed_args_name_the_bad_argument() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Args {
        amount: String,
    }
    let call = Call {
        id: 1,
        op: "quote".into(),
        args: json!({"amount": 5}).as_object().unwrap().clone(),
    };
    assert_eq!(
        call.args_as::<Args>().unwrap_err().to_string(),
        "`args`: `amount`: invalid type: integer `5`, expected a string"
    );
}

#[test]
fn quotes_of_client_input_are_clipped() {
    let long = "x".repeat(1000);
    let err = detail(client_json(&format!(r#"{{"t":"{long}"}}"#)));
    assert!(err.len() < 200, "{err}");
    assert!(err.contains("xxx…"));
    let auth = Encoding::Cbor.encode_client(&ClientMsg::Auth(Auth {
        token: long,
        client: None,
    }));
    assert!(client_cbor(auth.as_bytes()).is_ok());
}
