//! Property tests: decoding arbitrary input never panics (both directions, both encodings, both
//! frame kinds), and arbitrary well-formed messages round-trip.
//!
//! Floats in the JSON round-trip are limited to a few decimal digits: serde_json's default float
//! parser is best-effort in the last bit, and the protocol itself carries no floats (money is a
//! decimal string).

use mobile_proto::{
    Auth, Bye, Call, CallResult, ClientMsg, Encoding, ErrorMsg, Event, FrameKind, Gap, Limits,
    Ping, Pong, Position, ServerMsg, Sub, Subbed, Unsub, Unsubbed, Welcome, diag,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const MAX: usize = 1 << 20;

/// Decodes `bytes` every way there is; only a panic can fail this.
fn decode_every_way(bytes: &[u8]) {
    for enc in Encoding::ALL {
        for kind in [FrameKind::Text, FrameKind::Binary] {
            if let Ok(msg) = enc.decode_client(kind, bytes, MAX) {
                let again = enc.encode_client(&msg);
                // What decoded once re-encodes to something that decodes again.
                let back = enc.decode_client(again.kind(), again.as_bytes(), MAX);
                assert!(back.is_ok(), "{msg:?} -> {back:?}");
                if enc == Encoding::Cbor {
                    assert_eq!(back.unwrap(), msg);
                }
            }
            if let Ok(msg) = enc.decode_server(kind, bytes, MAX) {
                let again = enc.encode_server(&msg);
                let back = enc.decode_server(again.kind(), again.as_bytes(), MAX);
                assert!(back.is_ok(), "{msg:?} -> {back:?}");
                if enc == Encoding::Cbor {
                    assert_eq!(back.unwrap(), msg);
                }
            }
            // A small limit is enforced whatever the bytes.
            assert!(
                enc.decode_client(kind, bytes, bytes.len().saturating_sub(1))
                    .is_err()
            );
        }
    }
    let _ = diag::diagnostic(bytes);
    let _ = diag::diagnostic_pretty(bytes);
}

fn float(json: bool) -> BoxedStrategy<f64> {
    if json {
        any::<i32>().prop_map(|m| f64::from(m) / 100.0).boxed()
    } else {
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .boxed()
    }
}

fn value(json: bool) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float(json).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            map(inner).prop_map(Value::Object),
        ]
    })
}

fn map(values: impl Strategy<Value = Value>) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(".{0,8}", values, 0..6).prop_map(|m| m.into_iter().collect())
}

fn position() -> impl Strategy<Value = Position> {
    (any::<u64>(), any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset })
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn client_msg(json: bool) -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (text(), prop::option::of(text()))
            .prop_map(|(token, client)| ClientMsg::Auth(Auth { token, client })),
        (text(), prop::option::of(position()))
            .prop_map(|(topic, resume)| ClientMsg::Sub(Sub { topic, resume })),
        text().prop_map(|topic| ClientMsg::Unsub(Unsub { topic })),
        (any::<u32>(), text(), map(value(json))).prop_map(|(id, op, args)| ClientMsg::Call(Call {
            id,
            op,
            args
        })),
        any::<u32>().prop_map(|n| ClientMsg::Ping(Ping { n })),
        any::<u32>().prop_map(|n| ClientMsg::Pong(Pong { n })),
    ]
}

fn server_msg(json: bool) -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (text(), any::<u32>(), any::<(u32, u32, u32)>()).prop_map(|(user, hb, (s, c, f))| {
            ServerMsg::Welcome(Welcome {
                user,
                heartbeat_ms: hb,
                limits: Limits {
                    max_subscriptions: s,
                    max_calls: c,
                    max_frame_bytes: f,
                },
            })
        }),
        (text(), position()).prop_map(|(topic, p)| ServerMsg::Subbed(Subbed {
            topic,
            epoch: p.epoch,
            offset: p.offset
        })),
        text().prop_map(|topic| ServerMsg::Unsubbed(Unsubbed { topic })),
        (text(), position(), value(json)).prop_map(|(topic, p, data)| ServerMsg::Event(Event {
            topic,
            epoch: p.epoch,
            offset: p.offset,
            data
        })),
        (text(), position()).prop_map(|(topic, p)| ServerMsg::Gap(Gap {
            topic,
            epoch: p.epoch,
            offset: p.offset
        })),
        (any::<u32>(), value(json))
            .prop_map(|(id, data)| ServerMsg::Result(CallResult { id, data })),
        (
            prop::option::of(any::<u32>()),
            prop::option::of(text()),
            text(),
            text(),
            prop::option::of(any::<u32>())
        )
            .prop_map(
                |(id, topic, code, message, retry_ms)| ServerMsg::Error(ErrorMsg {
                    id,
                    topic,
                    code,
                    message,
                    retry_ms
                })
            ),
        any::<u32>().prop_map(|n| ServerMsg::Ping(Ping { n })),
        any::<u32>().prop_map(|n| ServerMsg::Pong(Pong { n })),
        any::<u32>().prop_map(|ms| ServerMsg::Bye(Bye {
            reconnect_within_ms: ms
        })),
    ]
}

/// Where a mutation hits a valid frame: overwrite, insert or delete one byte.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_every_way(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,256}") {
        decode_every_way(s.as_bytes());
    }

    #[test]
    fn json_like_text_never_panics(s in r#"[{}\[\]":, tn0-9a-z.eE+\\-]{0,128}"#) {
        decode_every_way(s.as_bytes());
    }

    #[test]
    fn mutated_messages_never_panic(
        client in client_msg(false),
        server in server_msg(false),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        for enc in Encoding::ALL {
            decode_every_way(&mutate(enc.encode_client(&client).into_bytes(), &mutations));
            decode_every_way(&mutate(enc.encode_server(&server).into_bytes(), &mutations));
        }
    }

    #[test]
    fn client_messages_round_trip_in_cbor(msg in client_msg(false)) {
        let frame = Encoding::Cbor.encode_client(&msg);
        prop_assert_eq!(Encoding::Cbor.decode_client(frame.kind(), frame.as_bytes(), MAX), Ok(msg));
    }

    #[test]
    fn client_messages_round_trip_in_json(msg in client_msg(true)) {
        let frame = Encoding::Json.encode_client(&msg);
        prop_assert_eq!(Encoding::Json.decode_client(frame.kind(), frame.as_bytes(), MAX), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip_in_cbor(msg in server_msg(false)) {
        let frame = Encoding::Cbor.encode_server(&msg);
        prop_assert_eq!(Encoding::Cbor.decode_server(frame.kind(), frame.as_bytes(), MAX), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip_in_json(msg in server_msg(true)) {
        let frame = Encoding::Json.encode_server(&msg);
        prop_assert_eq!(Encoding::Json.decode_server(frame.kind(), frame.as_bytes(), MAX), Ok(msg));
    }

    #[test]
    fn the_event_fast_path_matches_for_any_event(
        topic in text(), p in position(), data in value(false),
    ) {
        for enc in Encoding::ALL {
            let msg = ServerMsg::Event(Event {
                topic: topic.clone(),
                epoch: p.epoch,
                offset: p.offset,
                data: data.clone(),
            });
            prop_assert_eq!(enc.encode_event(&topic, p, &data).unwrap(), enc.encode_server(&msg));
        }
    }
}
