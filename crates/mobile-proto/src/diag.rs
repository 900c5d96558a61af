//! CBOR diagnostic notation (RFC 8949 §8): CBOR bytes as readable text, for the specification's
//! examples, logs and debugging proxies.
//!
//! It renders any one well-formed CBOR item (byte strings and tags included), not only valid
//! protocol messages; it does not show how lengths were encoded (indefinite lengths look like
//! definite ones — the protocol's encoders never write them).

use ciborium::Value as Cbor;

use crate::{DecodeError, Encoding};

/// Where [`diagnostic_pretty`] breaks a container over several lines.
const WIDTH: usize = 80;

/// The diagnostic notation of one CBOR item, on one line: `{"t": "ping", "n": 7}`.
pub fn diagnostic(cbor: &[u8]) -> Result<String, DecodeError> {
    let value = crate::codec::parse_raw(Encoding::Cbor, cbor)?;
    let mut out = String::new();
    flat(&value, &mut out);
    Ok(out)
}

/// The diagnostic notation of one CBOR item, a container per line (indented by two spaces)
/// wherever a line would pass 80 columns.
pub fn diagnostic_pretty(cbor: &[u8]) -> Result<String, DecodeError> {
    let value = crate::codec::parse_raw(Encoding::Cbor, cbor)?;
    let mut out = String::new();
    pretty(&value, 0, 0, &mut out);
    Ok(out)
}

fn flat(value: &Cbor, out: &mut String) {
    match value {
        Cbor::Integer(i) => out.push_str(&i128::from(*i).to_string()),
        Cbor::Bytes(bytes) => {
            out.push_str("h'");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out.push('\'');
        }
        Cbor::Float(f) if f.is_nan() => out.push_str("NaN"),
        Cbor::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        // Debug keeps a decimal point or an exponent (`1.0`, `1e300`), as diagnostic notation
        // requires of floats.
        Cbor::Float(f) => out.push_str(&format!("{f:?}")),
        Cbor::Text(s) => out.push_str(&text(s)),
        Cbor::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Cbor::Null => out.push_str("null"),
        Cbor::Tag(tag, inner) => {
            out.push_str(&format!("{tag}("));
            flat(inner, out);
            out.push(')');
        }
        Cbor::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flat(item, out);
            }
            out.push(']');
        }
        Cbor::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flat(k, out);
                out.push_str(": ");
                flat(v, out);
            }
            out.push('}');
        }
        _ => out.push_str("undefined"),
    }
}

/// `column` is where `value` starts on its line; `indent` the indentation of that line.
fn pretty(value: &Cbor, indent: usize, column: usize, out: &mut String) {
    let mut one_line = String::new();
    flat(value, &mut one_line);
    let fits = column + one_line.chars().count() <= WIDTH;
    let pad = |n: usize| " ".repeat(n);
    match value {
        Cbor::Array(items) if !fits && !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                pretty(item, indent + 2, indent + 2, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        Cbor::Map(entries) if !fits && !entries.is_empty() => {
            out.push_str("{\n");
            for (i, (k, v)) in entries.iter().enumerate() {
                let mut key = String::new();
                flat(k, &mut key);
                out.push_str(&pad(indent + 2));
                out.push_str(&key);
                out.push_str(": ");
                pretty(v, indent + 2, indent + 2 + key.chars().count() + 2, out);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        _ => out.push_str(&one_line),
    }
}

/// A text string in diagnostic notation: JSON's string syntax.
fn text(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(value: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).unwrap();
        out
    }

    #[test]
    fn renders_every_kind_of_item() {
        let value = Cbor::Map(vec![
            (Cbor::Text("t".into()), Cbor::Text("x\"y".into())),
            (Cbor::Integer(1.into()), Cbor::Integer((-5).into())),
            (Cbor::Text("b".into()), Cbor::Bytes(vec![0xde, 0xad])),
            (
                Cbor::Text("a".into()),
                Cbor::Array(vec![Cbor::Float(1.0), Cbor::Float(1.5), Cbor::Null]),
            ),
            (
                Cbor::Text("tag".into()),
                Cbor::Tag(1, Box::new(Cbor::Bool(true))),
            ),
            (Cbor::Text("nan".into()), Cbor::Float(f64::NAN)),
        ]);
        assert_eq!(
            diagnostic(&cbor(&value)).unwrap(),
            r#"{"t": "x\"y", 1: -5, "b": h'dead', "a": [1.0, 1.5, null], "tag": 1(true), "nan": NaN}"#
        );
    }

    #[test]
    fn pretty_breaks_only_what_does_not_fit() {
        let long = "x".repeat(70);
        let value = Cbor::Map(vec![
            (Cbor::Text("t".into()), Cbor::Text("event".into())),
            (
                Cbor::Text("d".into()),
                Cbor::Map(vec![(Cbor::Text("k".into()), Cbor::Text(long.clone()))]),
            ),
        ]);
        assert_eq!(
            diagnostic_pretty(&cbor(&value)).unwrap(),
            format!("{{\n  \"t\": \"event\",\n  \"d\": {{\n    \"k\": \"{long}\"\n  }}\n}}")
        );
        let short = Cbor::Map(vec![(Cbor::Text("t".into()), Cbor::Text("ping".into()))]);
        assert_eq!(
            diagnostic_pretty(&cbor(&short)).unwrap(),
            r#"{"t": "ping"}"#
        );
    }

    #[test]
    fn refuses_what_is_not_one_item() {
        assert!(diagnostic(b"").is_err());
        assert!(diagnostic(b"\xf6\xf6").is_err());
        assert!(diagnostic(b"\x82\x01").is_err());
    }
}
