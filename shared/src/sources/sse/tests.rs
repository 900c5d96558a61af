//! Unit tests of the event-stream parser: the standard's examples, every line end, chunks cut
//! anywhere, the byte order mark, ids and retry, and bounded memory on hostile input.

use proptest::prelude::*;

use super::*;

/// Everything `stream` yields, fed in `cuts` pieces (cut at those offsets).
fn parse_cut(limit: usize, stream: &[u8], cuts: &[usize]) -> (Vec<Parsed>, Parser) {
    let mut p = Parser::new(limit);
    let mut out = Vec::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|c| *c <= stream.len())
        .collect();
    ends.sort_unstable();
    ends.push(stream.len());
    for end in ends {
        if end < at {
            continue;
        }
        p.push(Bytes::copy_from_slice(&stream[at..end]));
        while let Some(item) = p.next_item() {
            out.push(item);
        }
        at = end;
    }
    (out, p)
}

fn parse(stream: &str) -> Vec<Parsed> {
    parse_cut(1 << 20, stream.as_bytes(), &[]).0
}

fn ev(event: &str, data: &str) -> Parsed {
    Parsed::Event {
        event: event.into(),
        data: data.into(),
    }
}

/// A stream with a bit of everything: BOM, comments, every line end, multi-line data, ids,
/// types, retry, fields without a colon, an incomplete event at the end.
const MIXED: &[u8] = b"\xEF\xBB\xBF: hello\r\n\
    retry: 2500\n\
    event: order\r\
    id: 7\r\n\
    data: {\"a\":\r\
    data:1}\n\
    \r\n\
    data\n\
    data\n\
    \n\
    :x\r\r\
    event\n\
    data:  two spaces\n\
    \n\
    data: never dispatched";

fn mixed_expected() -> Vec<Parsed> {
    vec![
        ev("order", "{\"a\":\n1}"),
        ev("message", "\n"),
        ev("message", " two spaces"),
    ]
}

#[test]
fn the_standard_examples() {
    // From the HTML standard's section on event streams.
    assert_eq!(
        parse("data: YHOO\ndata: +2\ndata: 10\n\n"),
        [ev("message", "YHOO\n+2\n10")]
    );
    assert_eq!(
        parse(
            ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n"
        ),
        [ev("message", "first event"), ev("message", "second event")]
    );
    assert_eq!(
        parse("data\n\ndata\ndata\n\ndata:"),
        [ev("message", ""), ev("message", "\n")]
    );
    assert_eq!(
        parse("data:test\n\ndata: test\n\n"),
        [ev("message", "test"), ev("message", "test")]
    );
}

#[test]
fn every_line_end_reads_the_same() {
    let lf = "event: a\ndata: 1\ndata: 2\n\ndata: {}\n\n";
    for stream in [
        lf.to_owned(),
        lf.replace('\n', "\r\n"),
        lf.replace('\n', "\r"),
    ] {
        assert_eq!(
            parse(&stream),
            [ev("a", "1\n2"), ev("message", "{}")],
            "{stream:?}"
        );
    }
    // CR then LF is one line end; LF then CR is two (a blank line).
    assert_eq!(parse("data: x\r\n\r\n"), [ev("message", "x")]);
    assert_eq!(parse("data: x\n\r"), [ev("message", "x")]);
    assert_eq!(parse("data: x\r\r"), [ev("message", "x")]);
}

#[test]
fn a_mixed_stream_cut_anywhere() {
    let whole = parse_cut(1 << 20, MIXED, &[]).0;
    assert_eq!(whole, mixed_expected());
    for i in 0..=MIXED.len() {
        for j in i..=MIXED.len() {
            let (cut, p) = parse_cut(1 << 20, MIXED, &[i, j]);
            assert_eq!(cut, whole, "cut at {i} and {j}");
            assert_eq!(p.retry(), Some(Duration::from_millis(2500)));
        }
    }
    let bytewise: Vec<usize> = (0..MIXED.len()).collect();
    assert_eq!(parse_cut(1 << 20, MIXED, &bytewise).0, whole);
}

#[test]
fn the_byte_order_mark_is_skipped_once() {
    assert_eq!(parse("\u{FEFF}data: 1\n\n"), [ev("message", "1")]);
    // A second mark is text: the field `\u{FEFF}data` is unknown and ignored.
    assert_eq!(
        parse("\u{FEFF}\u{FEFF}data: 1\n\ndata: 2\n\n"),
        [ev("message", "2")]
    );
    // Part of a mark, then something else: those bytes are text (replaced, being no UTF-8).
    let (items, _) = parse_cut(64, b"\xEF\xBBdata: 1\n\ndata: 2\n\n", &[1]);
    assert_eq!(items, [ev("message", "2")]);
    let (items, _) = parse_cut(64, b"\xEFdata: 1\n\n", &[1]);
    assert_eq!(items, []);
}

#[test]
fn ids_are_kept_at_dispatch() {
    let mut p = Parser::new(1024);
    p.push(Bytes::from_static(b"id: 1\ndata: a\n\n"));
    assert_eq!(p.next_item(), Some(ev("message", "a")));
    assert_eq!(p.last_event_id(), Some("1"));
    // An id is taken at dispatch, not when read.
    p.push(Bytes::from_static(b"id: 2\ndata: b\n"));
    assert_eq!(p.next_item(), None);
    assert_eq!(p.last_event_id(), Some("1"));
    // An id with NUL is ignored; a blank line with no data still sets the id.
    p.push(Bytes::from_static(b"\nid: 3\x004\n\nid: 5\n\n"));
    assert_eq!(p.next_item(), Some(ev("message", "b")));
    assert_eq!(p.last_event_id(), Some("2"));
    assert_eq!(p.next_item(), None);
    assert_eq!(p.last_event_id(), Some("5"));
    // An empty id resets it; the buffer outlives events without an id.
    p.push(Bytes::from_static(b"id\ndata: c\n\ndata: d\n\n"));
    assert_eq!(p.next_item(), Some(ev("message", "c")));
    assert_eq!(p.last_event_id(), Some(""));
    assert_eq!(p.next_item(), Some(ev("message", "d")));
    assert_eq!(p.last_event_id(), Some(""));
    assert_eq!(Parser::new(8).last_event_id(), None);
}

#[test]
fn retry_takes_digits_only() {
    let cases: [(&str, Option<u64>); 6] = [
        ("retry: 1000\n", Some(1000)),
        ("retry:0\n", Some(0)),
        ("retry: 10a\n", None),
        ("retry: -5\n", None),
        ("retry:\n", None),
        ("retry: 99999999999999999999999\n", None),
    ];
    for (stream, want) in cases {
        let (_, p) = parse_cut(64, stream.as_bytes(), &[]);
        assert_eq!(p.retry(), want.map(Duration::from_millis), "{stream:?}");
    }
    let (_, p) = parse_cut(64, b"retry: 5\nretry: x\n", &[]);
    assert_eq!(p.retry(), Some(Duration::from_millis(5)));
}

#[test]
fn unknown_fields_and_comments_are_ignored() {
    assert_eq!(
        parse(":comment\nfoo: bar\nData: no\nEVENT: no\nevent: e\n: more\ndata: 1\n\n"),
        [ev("e", "1")]
    );
    // The event type does not outlive its event.
    assert_eq!(
        parse("event: e\ndata: 1\n\ndata: 2\n\n"),
        [ev("e", "1"), ev("message", "2")]
    );
    // An event type without data dispatches nothing and is forgotten.
    assert_eq!(parse("event: e\n\ndata: 2\n\n"), [ev("message", "2")]);
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    assert_eq!(
        parse_cut(64, b"data: \xFF\xFEx\n\n", &[]).0,
        [ev("message", "\u{FFFD}\u{FFFD}x")]
    );
}

#[test]
fn oversized_lines_and_events_are_skipped_in_bounded_memory() {
    let limit = 16;
    let huge = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100_000));
    let cuts: Vec<usize> = (0..huge.len()).step_by(7).collect();
    let mut p = Parser::new(limit);
    let mut out = Vec::new();
    let mut at = 0;
    for end in cuts.into_iter().chain([huge.len()]) {
        p.push(Bytes::copy_from_slice(&huge.as_bytes()[at..end]));
        while let Some(item) = p.next_item() {
            out.push(item);
        }
        assert!(p.line.capacity() <= 64 && p.data.capacity() <= 64);
        at = end;
    }
    assert_eq!(out, [Parsed::Oversized(100_008), ev("message", "ok")]);
    // Data lines that fit one by one but not together.
    let many = "data: 0123456789\n".repeat(3) + "\ndata: ok\n\n";
    assert_eq!(
        parse_cut(limit + 6, many.as_bytes(), &[]).0,
        [Parsed::Oversized(52), ev("message", "ok")]
    );
    // A line of exactly the limit fits.
    assert_eq!(
        parse_cut(limit + 6, b"data: 0123456789012345\n\n", &[]).0,
        [ev("message", "0123456789012345")]
    );
    // An over-long comment harms nothing; an over-long id or type spoils its event.
    let comment = format!(":{}\ndata: 1\n\n", "c".repeat(100));
    assert_eq!(
        parse_cut(limit, comment.as_bytes(), &[3]).0,
        [ev("message", "1")]
    );
    let id = format!("id: {}\ndata: 1\n\ndata: 2\n\n", "9".repeat(100));
    let (items, p) = parse_cut(limit, id.as_bytes(), &[3]);
    assert!(matches!(items[..], [Parsed::Oversized(_), ref e] if *e == ev("message", "2")));
    assert_eq!(p.last_event_id(), Some(""));
    // A line never ended is never buffered past the limit.
    let mut p = Parser::new(limit);
    for _ in 0..1000 {
        p.push(Bytes::from_static(b"data: aaaaaaaaaaaaaaaaaaaaaaaa"));
        assert_eq!(p.next_item(), None);
    }
    assert!(p.line.len() <= limit);
}

#[test]
fn unread_bytes_survive_a_push() {
    let mut p = Parser::new(64);
    p.push(Bytes::from_static(b"data: 1\n\ndata: 2\n\n"));
    assert_eq!(p.next_item(), Some(ev("message", "1")));
    p.push(Bytes::from_static(b"data: 3\n\n"));
    assert_eq!(p.next_item(), Some(ev("message", "2")));
    assert_eq!(p.next_item(), Some(ev("message", "3")));
    assert_eq!(p.next_item(), None);
}

proptest! {
    #[test]
    fn any_bytes_cut_anywhere_read_the_same(
        stream in proptest::collection::vec(
            prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), Just(0xEF), Just(0xBB), Just(0xBF),
                Just(b'd'), Just(b'a'), Just(b't'), Just(0), any::<u8>(),
            ],
            0..300,
        ),
        cuts in proptest::collection::vec(0usize..300, 0..6),
        limit in 1usize..40,
    ) {
        let (whole, a) = parse_cut(limit, &stream, &[]);
        let (cut, b) = parse_cut(limit, &stream, &cuts);
        prop_assert_eq!(whole, cut);
        prop_assert_eq!(a.last_event_id(), b.last_event_id());
        prop_assert_eq!(a.retry(), b.retry());
        prop_assert!(a.line.len() <= limit);
    }

    #[test]
    fn field_streams_cut_anywhere_read_the_same(
        lines in proptest::collection::vec(
            (prop_oneof![Just("data"), Just("event"), Just("id"), Just("retry"), Just(""), Just("x")],
             "[ a-z0-9{}\":\u{0}]{0,12}",
             prop_oneof![Just("\n"), Just("\r"), Just("\r\n")]),
            0..30,
        ),
        cuts in proptest::collection::vec(0usize..400, 0..6),
    ) {
        let stream: String = lines
            .iter()
            .map(|(f, v, end)| if f.is_empty() { (*end).to_owned() } else { format!("{f}:{v}{end}") })
            .collect();
        let (whole, _) = parse_cut(1 << 10, stream.as_bytes(), &[]);
        let (cut, _) = parse_cut(1 << 10, stream.as_bytes(), &cuts);
        prop_assert_eq!(whole, cut);
    }
}
