//! Every example message of the specification round-trips in both encodings, its payload reads
//! as its typed shape, and the examples cover every message type.

use std::collections::BTreeSet;

use mobile_proto::data::{
    Conversion, ConvertArgs, Dashboard, DashboardArgs, Quote, QuoteArgs, Rate,
};
use mobile_proto::examples::{self, Message};
use mobile_proto::{ClientMsg, Encoding, ServerMsg, close, code};

const MAX: usize = 1 << 20;

#[test]
fn every_example_round_trips_in_both_encodings() {
    for example in examples::all() {
        for enc in Encoding::ALL {
            let frame = example.message.encode(enc);
            assert_eq!(frame.kind(), enc.frame_kind());
            let decoded = match &example.message {
                Message::Client(_) => enc
                    .decode_client(frame.kind(), frame.as_bytes(), MAX)
                    .map(Message::Client),
                Message::Server(_) => enc
                    .decode_server(frame.kind(), frame.as_bytes(), MAX)
                    .map(Message::Server),
            };
            assert_eq!(
                decoded.as_ref(),
                Ok(&example.message),
                "{} in {enc}",
                example.name
            );
        }
    }
}

#[test]
fn a_message_of_the_other_direction_is_refused() {
    for example in examples::all() {
        for enc in Encoding::ALL {
            let frame = example.message.encode(enc);
            let (as_client, as_server) = (
                enc.decode_client(frame.kind(), frame.as_bytes(), MAX),
                enc.decode_server(frame.kind(), frame.as_bytes(), MAX),
            );
            // Ping and pong are the only messages both sides send.
            if matches!(example.name, "ping" | "pong") {
                assert!(as_client.is_ok() && as_server.is_ok());
            } else {
                assert!(as_client.is_ok() != as_server.is_ok(), "{}", example.name);
            }
        }
    }
}

#[test]
fn the_examples_cover_every_message_type() {
    let mut client = BTreeSet::new();
    let mut server = BTreeSet::new();
    for example in examples::all() {
        match example.message {
            Message::Client(m) => client.insert(m.type_name()),
            Message::Server(m) => server.insert(m.type_name()),
        };
    }
    // Ping and pong are shown once, each in one direction.
    client.extend(["ping"]);
    server.extend(["pong"]);
    assert_eq!(client, ClientMsg::TYPES.into_iter().collect());
    assert_eq!(server, ServerMsg::TYPES.into_iter().collect());
}

#[test]
fn example_payloads_read_as_their_shapes() {
    let event = |name| match examples::get(name).map(|e| e.message) {
        Some(Message::Server(ServerMsg::Event(e))) => e,
        other => panic!("{name}: {other:?}"),
    };
    let result = |name| match examples::get(name).map(|e| e.message) {
        Some(Message::Server(ServerMsg::Result(r))) => r,
        other => panic!("{name}: {other:?}"),
    };
    let call = |name| match examples::get(name).map(|e| e.message) {
        Some(Message::Client(ClientMsg::Call(c))) => c,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        event("event-rate").data_as::<Rate>().unwrap(),
        examples::rate()
    );
    assert_eq!(
        event("event-conversion").data_as::<Conversion>().unwrap(),
        examples::conversion()
    );
    assert_eq!(event("event-channel").data, examples::channel_data());
    let quote: Quote = result("result-quote").data_as().unwrap();
    assert_eq!(quote.converted, "1084.20");
    let dashboard: Dashboard = result("result-dashboard").data_as().unwrap();
    assert_eq!(dashboard.rates, vec![Some(examples::rate()), None]);
    assert_eq!(dashboard.errors[0].part, "/rates/1");
    assert_eq!(
        result("result-convert").data_as::<Conversion>().unwrap(),
        examples::conversion()
    );
    assert_eq!(
        call("call-quote").args_as::<QuoteArgs>().unwrap().amount,
        "1000.00"
    );
    assert_eq!(
        call("call-dashboard")
            .args_as::<DashboardArgs>()
            .unwrap()
            .pairs,
        ["EUR/USD", "GBP/USD"]
    );
    assert_eq!(
        call("call-convert").args_as::<ConvertArgs>().unwrap().to,
        "USD"
    );
    // A shape refuses what it does not know.
    assert!(call("call-quote").args_as::<DashboardArgs>().is_err());
}

#[test]
fn codes_are_unique() {
    let closes: BTreeSet<_> = close::ALL.iter().map(|(c, _)| *c).collect();
    assert_eq!(closes.len(), close::ALL.len());
    let errors: BTreeSet<_> = code::ALL.into_iter().collect();
    assert_eq!(errors.len(), code::ALL.len());
}

#[test]
fn a_rate_tick_is_smaller_in_cbor() {
    let tick = examples::get("event-rate").unwrap().message;
    let cbor = tick.encode(Encoding::Cbor).len();
    let json = tick.encode(Encoding::Json).len();
    println!("rate tick event: CBOR {cbor} bytes, JSON {json} bytes");
    assert!(cbor * 10 <= json * 7, "CBOR {cbor} vs JSON {json}");
}
