//! A user's statement as CSV, generated on the fly from the user and the row count alone, so
//! the same request always gets the same bytes (a stable length and `ETag`, which is what makes
//! ranges and resumable downloads work) and any byte range is produced without the bytes before
//! it.
//!
//! Every row has the same width ([`ROW_BYTES`]): row `r` starts at `HEADER.len() + r ×
//! ROW_BYTES`, so a range is found by arithmetic. Rows are synthetic conversions, one a minute
//! from 2020-01-01: the id and the time come from the row number, the pair and amounts from a
//! table of [`TABLE_ROWS`] drawn once per statement from the user's seed. It never allocates
//! more than the chunk asked for.

use bytes::{Bytes, BytesMut};

use crate::splitmix::SplitMix64;

/// The header line.
pub(crate) const HEADER: &[u8] = b"id,time,pair,amount,rate,converted\n";

/// Bytes of every row, its newline included.
pub(crate) const ROW_BYTES: usize = 83;

/// Distinct pair-and-amount tails per statement, repeated.
const TABLE_ROWS: usize = 1024;

/// Where the tail (`,PAIR,amount,rate,converted\n`) starts in a row: after the id (12 digits),
/// a comma and the time (`YYYY-MM-DDTHH:MM:00Z`, 20 bytes).
const TAIL_AT: usize = 12 + 1 + 20;

/// Bytes of the tail.
const TAIL_BYTES: usize = ROW_BYTES - TAIL_AT;

/// Days from 1970-01-01 to 2020-01-01, the first row's day.
const FIRST_DAY: i64 = 18_262;

const PAIRS: [&str; 6] = [
    "EUR/USD", "USD/EUR", "GBP/USD", "USD/JPY", "EUR/CHF", "USD/CAD",
];

/// One user's statement of `rows` rows.
pub(crate) struct Statement {
    rows: u64,
    tails: Vec<[u8; TAIL_BYTES]>,
}

impl Statement {
    /// The statement of the user whose seed is `seed`, `rows` rows long.
    pub(crate) fn new(seed: u64, rows: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let tails = (0..TABLE_ROWS)
            .map(|_| {
                let pair = PAIRS[(rng.next_u64() % PAIRS.len() as u64) as usize];
                let cents = 100 + rng.next_u64() % 1_000_000;
                // A rate in millionths, 0.5 to 2.
                let micros = 500_000 + rng.next_u64() % 1_500_000;
                let converted = (u128::from(cents) * u128::from(micros) + 500_000) / 1_000_000;
                let text = format!(
                    ",{pair},{:>13},{:>10},{:>15}\n",
                    money(u128::from(cents)),
                    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000),
                    money(converted),
                );
                let mut tail = [0u8; TAIL_BYTES];
                tail.copy_from_slice(text.as_bytes());
                tail
            })
            .collect();
        Self { rows, tails }
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> u64 {
        HEADER.len() as u64 + self.rows * ROW_BYTES as u64
    }

    /// Bytes `from..to` (`to` at most [`Self::len`]).
    pub(crate) fn bytes(&self, from: u64, to: u64) -> Bytes {
        let header = HEADER.len() as u64;
        let capacity = usize::try_from(to.saturating_sub(from)).unwrap_or(0);
        let mut out = BytesMut::with_capacity(capacity);
        let mut at = from;
        if at < header {
            let end = to.min(header);
            out.extend_from_slice(&HEADER[at as usize..end as usize]);
            at = end;
        }
        let mut row = [0u8; ROW_BYTES];
        while at < to {
            let r = (at - header) / ROW_BYTES as u64;
            let within = ((at - header) % ROW_BYTES as u64) as usize;
            self.row(r, &mut row);
            let take = (ROW_BYTES - within).min(usize::try_from(to - at).unwrap_or(usize::MAX));
            out.extend_from_slice(&row[within..within + take]);
            at += take as u64;
        }
        out.freeze()
    }

    /// Writes row `r` into `out`.
    fn row(&self, r: u64, out: &mut [u8; ROW_BYTES]) {
        digits(&mut out[..12], r + 1);
        out[12] = b',';
        let day = FIRST_DAY + (r / 1440) as i64;
        let minute = r % 1440;
        let (y, m, d) = civil(day);
        digits(&mut out[13..17], y as u64);
        out[17] = b'-';
        digits(&mut out[18..20], m);
        out[20] = b'-';
        digits(&mut out[21..23], d);
        out[23] = b'T';
        digits(&mut out[24..26], minute / 60);
        out[26] = b':';
        digits(&mut out[27..29], minute % 60);
        out[29..TAIL_AT].copy_from_slice(b":00Z");
        out[TAIL_AT..].copy_from_slice(&self.tails[(r % TABLE_ROWS as u64) as usize]);
    }
}

/// `cents` as `units.cc`.
fn money(cents: u128) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Writes `n` in decimal into `out`, zero-padded to its width (the lowest digits when wider).
fn digits(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The civil date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_one_width_and_read_as_csv() {
        let s = Statement::new(7, 3000);
        let all = s.bytes(0, s.len());
        assert_eq!(all.len() as u64, s.len());
        let text = std::str::from_utf8(&all).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id,time,pair,amount,rate,converted"));
        let first: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(first[0], "000000000001");
        assert_eq!(first[1], "2020-01-01T00:00:00Z");
        assert!(PAIRS.contains(&first[2]));
        let day_two = text.lines().nth(1441).unwrap();
        assert!(
            day_two.starts_with("000000001441,2020-01-02T00:00:00Z,"),
            "{day_two}"
        );
        for line in text.lines().skip(1) {
            assert_eq!(line.len() + 1, ROW_BYTES, "{line}");
            assert_eq!(line.split(',').count(), 6, "{line}");
        }
    }

    #[test]
    fn any_range_is_the_same_bytes_as_the_whole() {
        let s = Statement::new(42, 500);
        let all = s.bytes(0, s.len());
        for (from, to) in [
            (0, 1),
            (3, 40),
            (35, 36),
            (36, 119),
            (100, 1000),
            (0, s.len()),
        ] {
            assert_eq!(s.bytes(from, to), all.slice(from as usize..to as usize));
        }
        // The same user and rows: the same bytes; another user: others.
        assert_eq!(Statement::new(42, 500).bytes(0, s.len()), all);
        assert_ne!(Statement::new(43, 500).bytes(0, s.len()), all);
    }

    #[test]
    fn dates_follow_the_calendar() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(FIRST_DAY), (2020, 1, 1));
        assert_eq!(civil(FIRST_DAY + 59), (2020, 2, 29));
        assert_eq!(civil(FIRST_DAY + 366), (2021, 1, 1));
    }
}
