//! Topic names as clients see them. These are gateway-level names: the gateway maps them to its
//! internal topics (`rates:EUR/USD` to the bus's `rates.EUR/USD`, `conversions` to the
//! signed-in user's own `conversions.{user}`), and clients never see the internal names.

/// The signed-in user's completed conversions: a stream topic (every event has an offset and is
/// resumable). Event data: [`Conversion`](crate::data::Conversion).
pub const CONVERSIONS: &str = "conversions";

/// The prefix of rate topics, `rates:EUR/USD`: state topics (only the latest value matters;
/// conflated, resume gives the latest value). Event data: [`Rate`](crate::data::Rate).
pub const RATES_PREFIX: &str = "rates:";

/// The rate topic of a pair written `BASE/QUOTE` (`EUR/USD` gives `rates:EUR/USD`).
pub fn rates(pair: &str) -> String {
    format!("{RATES_PREFIX}{pair}")
}

/// The pair of a rate topic (`rates:EUR/USD` gives `EUR/USD`), unvalidated; `None` for other
/// topics.
pub fn rates_pair(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(RATES_PREFIX)
        .filter(|pair| !pair.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_topics_name_their_pair() {
        assert_eq!(rates("EUR/USD"), "rates:EUR/USD");
        assert_eq!(rates_pair("rates:EUR/USD"), Some("EUR/USD"));
        assert_eq!(rates_pair("rates:"), None);
        assert_eq!(rates_pair(CONVERSIONS), None);
    }
}
