//! The specification, `docs/protocol/mobile-v1.md`, stays true: it shows exactly what the
//! example table renders (`cargo run -p mobile-proto --example wire` prints it), every wire
//! block in it decodes, and it documents every message type, close code and error code.

use std::collections::BTreeSet;

use mobile_proto::examples::{self, Message};
use mobile_proto::{
    ClientMsg, Encoding, FrameKind, SUBPROTOCOL_CBOR, SUBPROTOCOL_JSON, ServerMsg, close, code,
    diag,
};

const MAX: usize = 1 << 20;

fn spec() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol/mobile-v1.md"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The contents of every fenced block with this info string.
fn blocks(doc: &str, info: &str) -> Vec<String> {
    let open = format!("```{info}\n");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let end = body.find("\n```").expect("an unclosed block");
        out.push(body[..end].to_owned());
        rest = &body[end..];
    }
    out
}

/// The example these bytes decode to, as either side would read them.
fn decode(known: &[Message], enc: Encoding, kind: FrameKind, bytes: &[u8]) -> Option<Message> {
    let as_client = enc.decode_client(kind, bytes, MAX).map(Message::Client);
    let as_server = enc.decode_server(kind, bytes, MAX).map(Message::Server);
    [as_client, as_server]
        .into_iter()
        .flatten()
        .find(|m| known.contains(m))
}

#[test]
fn the_spec_shows_every_example_as_generated() {
    let doc = spec();
    for example in examples::all() {
        let rendered = examples::markdown(&example);
        assert!(
            doc.contains(&rendered),
            "docs/protocol/mobile-v1.md does not show example `{}` as generated; \
             run `cargo run -p mobile-proto --example wire` and paste:\n\n{rendered}",
            example.name
        );
    }
    let table = examples::size_table();
    assert!(doc.contains(&table), "the size table changed:\n\n{table}");
}

#[test]
fn every_wire_block_in_the_spec_decodes_to_an_example() {
    let doc = spec();
    let known: Vec<Message> = examples::all().into_iter().map(|e| e.message).collect();
    let hex_blocks = blocks(&doc, "cbor-hex");
    let diag_blocks = blocks(&doc, "cbor-diag");
    assert_eq!(hex_blocks.len(), known.len());
    assert_eq!(diag_blocks.len(), known.len());
    for (hex, diag_text) in hex_blocks.iter().zip(&diag_blocks) {
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|pair| u8::from_str_radix(pair, 16).unwrap())
            .collect();
        let msg = decode(&known, Encoding::Cbor, FrameKind::Binary, &bytes)
            .unwrap_or_else(|| panic!("does not decode to an example:\n{hex}"));
        assert_eq!(msg.encode(Encoding::Cbor).as_bytes(), &bytes[..]);
        assert_eq!(&diag::diagnostic_pretty(&bytes).unwrap(), diag_text);
    }
    let json_blocks: Vec<String> = blocks(&doc, "json")
        .into_iter()
        .filter(|b| b.starts_with("{\"t\":"))
        .collect();
    assert_eq!(json_blocks.len(), known.len());
    for json in json_blocks {
        decode(&known, Encoding::Json, FrameKind::Text, json.as_bytes())
            .unwrap_or_else(|| panic!("does not decode to an example:\n{json}"));
    }
}

#[test]
fn the_spec_documents_every_name_and_code() {
    let doc = spec();
    for name in [SUBPROTOCOL_CBOR, SUBPROTOCOL_JSON] {
        assert!(doc.contains(&format!("`{name}`")), "{name}");
    }
    let types: BTreeSet<&str> = ClientMsg::TYPES
        .into_iter()
        .chain(ServerMsg::TYPES)
        .collect();
    for t in types {
        assert!(
            doc.contains(&format!("### `{t}`")),
            "no section for message `{t}`"
        );
    }
    for (code, name) in close::ALL {
        assert!(
            doc.contains(&format!("| {code} |")),
            "close code {code} ({name})"
        );
    }
    for code in code::ALL {
        assert!(doc.contains(&format!("| `{code}` |")), "error code {code}");
    }
}
