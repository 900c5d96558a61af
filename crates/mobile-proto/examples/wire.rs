//! Prints every example message of the specification in both encodings (JSON text, CBOR hex and
//! diagnostic notation), as `docs/protocol/mobile-v1.md` shows them, then the size table.
//!
//! `cargo run -p mobile-proto --example wire` — paste a changed block into the document; the
//! `spec` test fails until the document matches.

fn main() {
    for example in mobile_proto::examples::all() {
        println!("<!-- example: {} -->\n", example.name);
        println!("{}", mobile_proto::examples::markdown(&example));
    }
    println!("{}", mobile_proto::examples::size_table());
}
