//! W3C Trace Context (`traceparent`): the trace a request or an event belongs to, parsed strictly,
//! carried through a task, sent on to backends, and kept in events.
//!
//! A [`TraceContext`] is the 55-character `traceparent` of the W3C recommendation as 25 bytes
//! (trace id, parent span id, flags): `Copy`, no allocation. A value that breaks the format is
//! not an error anywhere — whoever reads it ignores it and starts a new trace ([`parse`]
//! returns `None`).
//!
//! The context of the work in progress lives in a task-local ([`scope`], [`current`],
//! [`set_current`]): the server's request middleware scopes each request with it, a socket task
//! with the context of its upgrade request (or the one its client gives later). The core reads it
//! where it leaves the process: a backend call sends `traceparent` with the same trace id and the
//! call's own span id ([`outgoing`]), and the publish API keeps it in the event it publishes.
//!
//! This module exports nothing itself and knows no OpenTelemetry: the server crate installs a
//! [`SpanHook`] when it exports spans, so that the span ids sent on are those of the exported
//! spans. Without it, a backend call gets a fresh random span id under the same trace id.
//!
//! [`parse`]: TraceContext::parse

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

use crate::event::Event;

/// The name of the W3C header (and of the NATS message header) carrying a [`TraceContext`].
pub const TRACEPARENT: &str = "traceparent";

/// The length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// A W3C `traceparent`: trace id, parent span id and trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Reads a `traceparent` value strictly: lowercase hex, version `00` exactly 55 characters
    /// (a later version: at least 55, the 56th a `-`, its first four fields read as `00`
    /// would be), version `ff` refused, neither id all zeros. `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff
            || (version == 0 && value.len() != TRACEPARENT_LEN)
            || (value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-')
        {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        Self::from_parts(trace_id, span_id, flags)
    }

    /// A context from its parts; `None` when either id is all zeros (invalid in W3C terms).
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace: random trace and span ids, sampled or not.
    pub fn new_root(sampled: bool) -> Self {
        Self {
            trace_id: nonzero(rand::random()),
            span_id: nonzero(rand::random()),
            flags: u8::from(sampled),
        }
    }

    /// The same trace and flags with a new random span id: the context of a call made on
    /// behalf of this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(rand::random()),
            ..*self
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span id (the parent id of whoever receives this context).
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller may have recorded this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lowercase hex digits, for logs (no allocation).
    pub fn trace_id_hex(&self) -> Hex<'_> {
        Hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits, for logs (no allocation).
    pub fn span_id_hex(&self) -> Hex<'_> {
        Hex(&self.span_id)
    }

    /// The `traceparent` value (version 00), 55 ASCII bytes.
    pub fn to_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[..2].copy_from_slice(b"00");
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    /// The `traceparent` header value.
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.to_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lowercase hex and dashes only: always UTF-8.
        f.write_str(std::str::from_utf8(&self.to_bytes()).unwrap_or_default())
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

/// Bytes shown as lowercase hex.
#[derive(Clone, Copy)]
pub struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Random ids are never all zeros (which W3C reserves as invalid).
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

tokio::task_local! {
    static CURRENT: Cell<TraceContext>;
}

/// Runs `fut` with `context` as its task's trace context ([`current`]).
pub async fn scope<F: Future>(context: TraceContext, fut: F) -> F::Output {
    CURRENT.scope(Cell::new(context), fut).await
}

/// The trace context of the task, when it runs in a [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Cell::get).ok()
}

/// Replaces the task's trace context (a socket whose client names its trace after the upgrade);
/// does nothing outside a [`scope`].
pub fn set_current(context: TraceContext) {
    let _ = CURRENT.try_with(|cell| cell.set(context));
}

/// What the server crate installs when it exports spans: given a new span of the core's (not
/// yet entered) and the task's trace context, make the span a child of that context and return
/// the span's own context — `None` when the span is not recorded.
pub type SpanHook = fn(&tracing::Span, &TraceContext) -> Option<TraceContext>;

static SPAN_HOOK: OnceLock<SpanHook> = OnceLock::new();

/// Installs the process's [`SpanHook`] (once; later calls are ignored).
pub fn install_span_hook(hook: SpanHook) {
    let _ = SPAN_HOOK.set(hook);
}

/// The context to send with a call made under `span` (the call's span): the task's trace with
/// the exported span's id when spans are exported, else with a fresh span id; `None` outside a
/// traced task.
pub fn outgoing(span: &tracing::Span) -> Option<TraceContext> {
    let current = current()?;
    let exported = SPAN_HOOK
        .get()
        .and_then(|hook| hook(span, &current))
        .filter(|c| c.trace_id == current.trace_id);
    Some(exported.unwrap_or_else(|| current.child()))
}

/// Marks the delivery of an event that carries the trace of the write that caused it: a `debug`
/// log line (target `switchyard::delivery`) and, when that trace is sampled and spans are
/// exported, a `deliver` span in that trace. Once per event per process (the hub's fan-out),
/// never per subscriber; nothing at all, not even a branch past the first, for an event without
/// a trace.
#[inline]
pub fn delivered(event: &Event) {
    if let Some(trace) = &event.trace {
        delivered_traced(event, trace);
    }
}

fn delivered_traced(event: &Event, trace: &TraceContext) {
    if trace.sampled()
        && let Some(hook) = SPAN_HOOK.get()
    {
        let span = tracing::debug_span!(
            target: "switchyard::delivery",
            "deliver",
            otel.kind = "consumer",
            topic = %event.topic,
            offset = event.offset,
        );
        if !span.is_disabled() {
            hook(&span, trace);
            let _entered = span.enter();
            tracing::debug!(target: "switchyard::delivery", trace_id = %trace.trace_id_hex(), topic = %event.topic, offset = event.offset, "event delivered");
            return;
        }
    }
    tracing::debug!(target: "switchyard::delivery", trace_id = %trace.trace_id_hex(), topic = %event.topic, offset = event.offset, "event delivered");
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_reads_and_writes_back() {
        let t = TraceContext::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(t.to_string(), GOOD);
        assert!(t.sampled());
        assert_eq!(
            t.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(t.span_id_hex().to_string(), "00f067aa0ba902b7");
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!TraceContext::parse(unsampled.as_bytes()).unwrap().sampled());
    }

    #[test]
    fn anything_else_is_refused() {
        let bad = [
            "",
            "00",
            &GOOD.to_uppercase(),
            &GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &GOOD.replacen("00-", "ff-", 1),
            &format!("{GOOD}-extra"), // version 00 is exactly 55 characters
            &GOOD.replace('-', "_"),
            &GOOD.replacen('4', "g", 1),
            &GOOD[..54],
            &format!(" {GOOD}"),
            &GOOD.replacen("-01", "-1", 1),
        ];
        for value in bad {
            assert_eq!(TraceContext::parse(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let later = GOOD.replacen("00-", "01-", 1);
        assert!(TraceContext::parse(later.as_bytes()).is_some());
        assert!(TraceContext::parse(format!("{later}-what-follows").as_bytes()).is_some());
        assert!(TraceContext::parse(format!("{later}x").as_bytes()).is_none());
    }

    #[test]
    fn children_keep_the_trace_and_change_the_span() {
        let root = TraceContext::new_root(true);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_eq!(child.flags(), root.flags());
        assert_eq!(TraceContext::parse(&child.to_bytes()), Some(child));
    }

    #[tokio::test]
    async fn the_task_carries_its_context() {
        assert_eq!(current(), None);
        assert_eq!(outgoing(&tracing::Span::none()), None);
        let root = TraceContext::new_root(false);
        scope(root, async move {
            assert_eq!(current(), Some(root));
            let out = outgoing(&tracing::Span::none()).unwrap();
            assert_eq!(out.trace_id(), root.trace_id());
            assert_ne!(out.span_id(), root.span_id());
            let other = TraceContext::new_root(true);
            set_current(other);
            assert_eq!(current(), Some(other));
        })
        .await;
        assert_eq!(current(), None);
    }
}
