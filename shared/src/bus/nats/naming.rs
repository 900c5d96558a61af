//! How a topic is named on the NATS server: its encoding as a stream-name and subject token (see
//! the layout in the bus's docs), and the stream and subject of a topic.

use super::Inner;
use crate::event::Topic;

/// A topic name as a stream-name and subject token (see the module docs).
pub(super) fn encode(topic: &Topic) -> String {
    let mut out = String::with_capacity(topic.as_str().len() + 8);
    for c in topic.as_str().chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            ':' => out.push_str("_c"),
            '/' => out.push_str("_s"),
            c => out.push(c),
        }
    }
    if out.len() > 200 {
        // FNV-1a over the whole name keeps long names apart after the cut.
        let hash = topic
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        let mut cut = 150;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("_h{hash:016x}"));
    }
    out
}

/// A group's name (a catalog pattern such as `conversions.{user}`) as a stream-name and subject
/// token: letters, digits and `-` stay, `_` becomes `__`, `.` `_d`, `{` `_l`, `}` `_r`, any other
/// byte `_x` and its two hex digits; longer than 100 characters, cut at 60 and given a 64-bit
/// hash of the whole name.
pub(super) fn encode_group(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        match b {
            b'_' => out.push_str("__"),
            b'.' => out.push_str("_d"),
            b'{' => out.push_str("_l"),
            b'}' => out.push_str("_r"),
            b if b.is_ascii_alphanumeric() || b == b'-' => out.push(char::from(b)),
            b => out.push_str(&format!("_x{b:02x}")),
        }
    }
    if out.len() > 100 {
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        out.truncate(60);
        out.push_str(&format!("_h{hash:016x}"));
    }
    out
}

impl Inner {
    /// The topic's stream: `P_E`.
    pub(super) fn stream_name(&self, topic: &Topic) -> String {
        format!("{}_{}", self.prefix, encode(topic))
    }

    /// The topic's subject: `P.t.E`.
    pub(super) fn subject(&self, topic: &Topic) -> String {
        format!("{}.t.{}", self.prefix, encode(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_encode_apart_and_within_limits() {
        let t = |s: &str| encode(&Topic::new(s).expect("topic"));
        assert_eq!(t("rates.EUR/USD"), "rates_dEUR_sUSD");
        assert_eq!(t("a:b_c-d"), "a_cb__c-d");
        assert_ne!(t("a_d"), t("a.d"));
        assert_ne!(t("a__"), t("a_d_"));
        let long_a = format!("{}a", "_".repeat(199));
        let long_b = format!("{}b", "_".repeat(199));
        assert!(t(&long_a).len() <= 200);
        assert_ne!(t(&long_a), t(&long_b));
        assert!(
            t(&long_a)
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }

    #[test]
    fn group_names_encode_apart_and_within_limits() {
        assert_eq!(encode_group("conversions.{user}"), "conversions_d_luser_r");
        assert_ne!(encode_group("a_b"), encode_group("a.b"));
        assert_ne!(encode_group("a b"), encode_group("a_b"));
        let long = "x".repeat(300);
        assert!(encode_group(&long).len() <= 100);
        assert_ne!(encode_group(&long), encode_group(&format!("{long}y")));
        assert!(
            encode_group("t.{a}.{b_c}.é")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }
}
