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
}
