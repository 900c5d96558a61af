//! The body of a bus message on a RabbitMQ stream (the AMQP 1.0 message's data section): a
//! version byte, a flags byte, the publishing instance and its publish number (16 bytes, how a
//! publisher recognises its own message when its tail consumer reads it back), the trace
//! context when flagged, then the payload.
//!
//! A message in the stream that is not in this form (written by another client) is read as an
//! event whose payload is the whole data section, so every offset is still an event.

use bytes::Bytes;

use crate::trace::{TRACEPARENT_LEN, TraceContext};

const VERSION: u8 = 1;
const TRACED: u8 = 1;
const HEAD: usize = 2 + 16;

/// A decoded body.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Body {
    /// The publishing bus instance.
    pub(super) instance: u64,
    /// Its publish number.
    pub(super) seq: u64,
    pub(super) trace: Option<TraceContext>,
    pub(super) payload: Bytes,
}

/// The body of a publish.
pub(super) fn encode(
    instance: u64,
    seq: u64,
    trace: Option<&TraceContext>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + TRACEPARENT_LEN + payload.len());
    out.push(VERSION);
    out.push(if trace.is_some() { TRACED } else { 0 });
    out.extend_from_slice(&instance.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    if let Some(trace) = trace {
        out.extend_from_slice(&trace.to_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Decodes a body written by [`encode`]; `None` for anything else.
pub(super) fn decode(data: &[u8]) -> Option<Body> {
    if data.len() < HEAD || data[0] != VERSION || data[1] & !TRACED != 0 {
        return None;
    }
    let instance = u64::from_be_bytes(data[2..10].try_into().ok()?);
    let seq = u64::from_be_bytes(data[10..18].try_into().ok()?);
    let (trace, payload) = if data[1] & TRACED != 0 {
        let (t, rest) = data[HEAD..].split_at_checked(TRACEPARENT_LEN)?;
        (TraceContext::parse(t), rest)
    } else {
        (None, &data[HEAD..])
    };
    Some(Body {
        instance,
        seq,
        trace,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_with_and_without_a_trace() {
        let plain = decode(&encode(7, 9, None, b"hello")).expect("plain");
        assert_eq!(
            (plain.instance, plain.seq, plain.trace, &plain.payload[..]),
            (7, 9, None, &b"hello"[..])
        );
        let trace = TraceContext::new_root(true);
        let traced = decode(&encode(1, 2, Some(&trace), b"")).expect("traced");
        assert_eq!(traced.trace, Some(trace));
        assert!(traced.payload.is_empty());
        assert_eq!(decode(b"not ours"), None);
        assert_eq!(decode(&[VERSION, TRACED, 0, 0]), None);
    }
}
