//! Tests of the cursor: round trips, strict decoding, version 1 kept byte for byte, and the
//! length bound.

use super::*;

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn sample() -> Cursor {
    Cursor {
        commands: Position {
            epoch: u64::MAX >> 1,
            offset: 17,
        },
        config: Position {
            epoch: 0,
            offset: 0,
        },
        rates: vec![(
            "EUR/USD".parse().unwrap(),
            Position {
                epoch: 3,
                offset: u64::MAX,
            },
        )],
        channels: Vec::new(),
    }
}

fn with_channels() -> Cursor {
    let key = |n: &str| channel_key(&ChannelName::parse(n).unwrap());
    Cursor {
        channels: vec![
            (
                key("announcements"),
                Position {
                    epoch: 7,
                    offset: 42,
                },
            ),
            (
                key("devices.tv-1.firmware"),
                Position {
                    epoch: u64::MAX,
                    offset: 0,
                },
            ),
        ],
        ..sample()
    }
}

#[test]
fn a_cursor_without_channels_is_version_1_byte_for_byte() {
    // Made by the encoder before channels existed (version 1), for `tv-1`: it must still
    // decode, and the same cursor must encode to exactly it.
    let before = "Af__________fxEAAAFFVVJVU0QD____________AVd9824";
    let c = sample();
    assert_eq!(c.encode(&id("tv-1")), before);
    assert_eq!(Cursor::decode(before, &id("tv-1")), Ok(c));
}

#[test]
fn channel_positions_round_trip_as_version_2() {
    let c = with_channels();
    let s = c.encode(&id("tv-1"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&s)
        .unwrap();
    assert_eq!(raw[0], VERSION_CHANNELS);
    assert_eq!(Cursor::decode(&s, &id("tv-1")), Ok(c.clone()));
    assert_eq!(
        c.channel(&channel_key(&ChannelName::parse("announcements").unwrap())),
        Some(Position {
            epoch: 7,
            offset: 42
        })
    );
    // Every truncation and every single-byte change is refused.
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    for n in 0..raw.len() {
        assert!(Cursor::decode(&enc(&raw[..n]), &id("tv-1")).is_err());
        let mut changed = raw.clone();
        changed[n] ^= 0x5a;
        assert!(Cursor::decode(&enc(&changed), &id("tv-1")).is_err());
    }
}

/// A body with a valid check for `tv-1`.
fn signed(body: &[u8]) -> String {
    let mut b = body.to_vec();
    b.extend_from_slice(&check(&id("tv-1"), body));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn bad_channel_sections_are_refused_even_when_signed() {
    let head = [VERSION_CHANNELS, 0, 0, 0, 0, 0];
    let entry = |k: u8| {
        let mut e = vec![k; 8];
        e.extend_from_slice(&[1, 1]);
        e
    };
    let zero = [&head[..], &[0]].concat();
    assert_eq!(
        Cursor::decode(&signed(&zero), &id("tv-1")),
        Err(BadCursor("channel count"))
    );
    let mut many = [&head[..], &[33]].concat();
    for k in 0..33 {
        many.extend(entry(k));
    }
    assert_eq!(
        Cursor::decode(&signed(&many), &id("tv-1")),
        Err(BadCursor("channel count"))
    );
    let twice = [&head[..], &[2], &entry(9), &entry(9)].concat();
    assert_eq!(
        Cursor::decode(&signed(&twice), &id("tv-1")),
        Err(BadCursor("duplicate channel"))
    );
    let one = [&head[..], &[1], &entry(9)].concat();
    assert!(Cursor::decode(&signed(&one), &id("tv-1")).is_ok());
    // Version 1 with a channel section is trailing bytes.
    let mut v1 = one.clone();
    v1[0] = VERSION;
    assert_eq!(
        Cursor::decode(&signed(&v1), &id("tv-1")),
        Err(BadCursor("trailing bytes"))
    );
}

#[test]
fn the_longest_cursor_fits_the_bound() {
    let top = Position {
        epoch: u64::MAX,
        offset: u64::MAX,
    };
    // By arithmetic: every varint at 10 bytes, MAX_RATES pairs, MAX_CHANNELS channels.
    let worst = 1 + 2 * 20 + 1 + MAX_RATES * (6 + 20) + 1 + MAX_CHANNELS * (8 + 20) + CHECK;
    assert!(worst.div_ceil(3) * 4 <= MAX_LEN, "{worst} bytes");
    // And by encoding every pair there is (fewer than MAX_RATES) and MAX_CHANNELS channels.
    let currencies = demo_api::CURRENCIES;
    let mut rates = Vec::new();
    for a in currencies {
        for b in currencies {
            if a != b {
                rates.push((format!("{a}/{b}").parse().unwrap(), top));
            }
        }
    }
    let channels = (0..MAX_CHANNELS)
        .map(|i| {
            (
                channel_key(&ChannelName::parse(&format!("c{i}")).unwrap()),
                top,
            )
        })
        .collect();
    let c = Cursor {
        commands: top,
        config: top,
        rates,
        channels,
    };
    let s = c.encode(&id(&"d".repeat(64)));
    assert!(s.len() <= MAX_LEN, "{}", s.len());
    assert_eq!(Cursor::decode(&s, &id(&"d".repeat(64))), Ok(c));
}

#[test]
fn round_trips_and_is_bound_to_its_device() {
    let c = sample();
    let s = c.encode(&id("tv-1"));
    assert_eq!(Cursor::decode(&s, &id("tv-1")), Ok(c));
    assert_eq!(
        Cursor::decode(&s, &id("tv-2")),
        Err(BadCursor("check failed"))
    );
}

#[test]
fn malformed_cursors_are_refused_without_panicking() {
    let good = sample().encode(&id("tv-1"));
    for bad in [
        "",
        "!!!!",
        "AA",
        &"A".repeat(2000),
        &format!("{good}A"),
        &good[1..],
    ] {
        assert!(Cursor::decode(bad, &id("tv-1")).is_err(), "{bad}");
    }
    // Every truncation and every single-byte change of a valid cursor is refused.
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&good)
        .unwrap();
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    for n in 0..raw.len() {
        assert!(Cursor::decode(&enc(&raw[..n]), &id("tv-1")).is_err());
        let mut changed = raw.clone();
        changed[n] ^= 0x5a;
        assert!(Cursor::decode(&enc(&changed), &id("tv-1")).is_err());
    }
}

#[test]
fn varints_are_canonical() {
    let mut b = Vec::new();
    for v in [0, 1, 127, 128, 300, u64::MAX] {
        b.clear();
        varint(&mut b, v);
        assert_eq!(Reader(&b).varint(), Ok(v));
    }
    assert!(Reader(&[0x80, 0x00]).varint().is_err());
    assert!(Reader(&[0xff; 10]).varint().is_err());
    assert!(
        Reader(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
            .varint()
            .is_err()
    );
}
