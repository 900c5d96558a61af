//! The demo domain's event sources, as configuration: the exchange service's tick WebSocket
//! ([`demo_api::ticks`]) is a `json-ws` source ([`exchange_source`]) feeding the catalog's
//! `rates.{pair}` state channels (`ch:rates.EUR-USD`, see [`crate::channels`]). No Rust speaks
//! the exchange's protocol: the source's templates and rules describe it, and the core's source
//! engine does the rest — the proof that a team's own service needs configuration only.

use std::collections::BTreeMap;

use demo_api::{Currency, Pair};
use switchyard_core::event::Topic;
use switchyard_core::sources::rules::RuleConfig;
use switchyard_core::sources::{SourceConfig, SourceKind};

use crate::channels;

/// The prefix of the rates channels' bus topics (`ch:rates.EUR-USD`), which the exchange source
/// feeds; the catalog's `rates.{pair}` entry makes them state topics.
pub const RATES_PREFIX: &str = "ch:rates.";

/// The name of the source that is the exchange's ticker.
pub const EXCHANGE_SOURCE: &str = "exchange";

/// The bus topic of a pair's rates: the topic of its channel `rates.{BASE}-{QUOTE}`
/// ([`channels::rates_channel`]), `ch:rates.EUR-USD`.
pub fn rates_topic(pair: &Pair) -> Topic {
    channels::rates_channel(pair).topic()
}

/// The pair of a rates topic (`ch:rates.EUR-USD`), if `topic` is one.
pub fn pair_of(topic: &Topic) -> Option<Pair> {
    let (base, quote) = topic.as_str().strip_prefix(RATES_PREFIX)?.split_once('-')?;
    Pair::new(Currency::parse(base).ok()?, Currency::parse(quote).ok()?).ok()
}

/// The exchange's ticker at `url` (`ws://127.0.0.1:9102/v1/ticks`) as a `json-ws` source:
///
/// ```toml
/// [sources.exchange]
/// kind = "json-ws"
/// url = "ws://127.0.0.1:9102/v1/ticks"
/// channels = "rates.{base}-{quote}"
/// subscribe = '{"op":"watch","pairs":["{base}/{quote}"]}'
/// unsubscribe = '{"op":"unwatch","pairs":["{base}/{quote}"]}'
///
/// [[sources.exchange.messages]]     # {"kind":"tick","pair":"EUR/USD","rate":"1.08","seq":7}
/// when = { "/kind" = "tick" }
/// capture = { "/pair" = "{base}/{quote}" }
/// fields = { pair = "/pair", rate = "/rate", seq = "/seq" }
///
/// [[sources.exchange.messages]]     # {"kind":"watching","pairs":[...]}: the acknowledgement
/// when = { "/kind" = "watching" }
/// ignore = true
/// ```
///
/// The payload is a `demo_api::Rate` as JSON, which the gateways decode. The exchange's
/// `{"kind":"error",...}` answers match no rule: they are counted and logged.
pub fn exchange_source(url: &str) -> SourceConfig {
    let mut c = SourceConfig::new(SourceKind::JsonWs, url, "rates.{base}-{quote}");
    c.subscribe = Some(r#"{"op":"watch","pairs":["{base}/{quote}"]}"#.to_owned());
    c.unsubscribe = Some(r#"{"op":"unwatch","pairs":["{base}/{quote}"]}"#.to_owned());
    let pointers = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    c.messages = vec![
        RuleConfig {
            when: pointers(&[("/kind", "tick")]),
            capture: pointers(&[("/pair", "{base}/{quote}")]),
            fields: Some(pointers(&[
                ("pair", "/pair"),
                ("rate", "/rate"),
                ("seq", "/seq"),
            ])),
            ..RuleConfig::default()
        },
        RuleConfig {
            when: pointers(&[("/kind", "watching")]),
            ignore: true,
            ..RuleConfig::default()
        },
    ];
    c
}

/// The demo's sources: the exchange's ticker on its default port (what the shipped example
/// configurations hold; the gateways have no source by default).
pub fn demo_sources() -> BTreeMap<String, SourceConfig> {
    BTreeMap::from([(
        EXCHANGE_SOURCE.to_owned(),
        exchange_source("ws://127.0.0.1:9102/v1/ticks"),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use demo_api::ticks::{ClientMsg, ServerMsg};
    use demo_api::{Decimal, Rate};
    use switchyard_core::channels::ChannelName;
    use switchyard_core::sources::rules::{Inbound, Outcome};
    use switchyard_core::sources::template::Template;

    fn eur_usd() -> Pair {
        "EUR/USD".parse().unwrap()
    }

    fn read(frame: &str) -> Outcome {
        let checked = exchange_source("ws://x/v1/ticks").check().unwrap();
        match serde_json::from_str(frame) {
            Ok(json) => checked.rules.apply(Inbound {
                event: None,
                channel: None,
                json: &json,
            }),
            Err(e) => Outcome::Refused(format!("not JSON: {e}")),
        }
    }

    #[test]
    fn topics_name_pairs() {
        assert_eq!(rates_topic(&eur_usd()).as_str(), "ch:rates.EUR-USD");
        assert_eq!(pair_of(&rates_topic(&eur_usd())), Some(eur_usd()));
        assert_eq!(
            demo_sources()[EXCHANGE_SOURCE].url,
            "ws://127.0.0.1:9102/v1/ticks"
        );
    }

    #[test]
    fn requests_are_the_exchange_protocol() {
        let checked = exchange_source("ws://x/v1/ticks").check().unwrap();
        let channels: &Template = &checked.channels;
        let vars = channels.capture("rates.EUR-USD").unwrap();
        let watch = checked.subscribe.as_ref().unwrap().render(&vars).unwrap();
        assert_eq!(watch, r#"{"op":"watch","pairs":["EUR/USD"]}"#);
        // And the exchange reads them back.
        let back: ClientMsg = serde_json::from_str(&watch).unwrap();
        assert_eq!(
            back,
            ClientMsg::Watch {
                pairs: vec!["EUR/USD".into()]
            }
        );
        let unwatch = checked.unsubscribe.as_ref().unwrap().render(&vars).unwrap();
        let back: ClientMsg = serde_json::from_str(&unwatch).unwrap();
        assert_eq!(
            back,
            ClientMsg::Unwatch {
                pairs: vec!["EUR/USD".into()]
            }
        );
        for other in ["conversions.alice", "rates.EURUSD", "rates", "ratesEUR-USD"] {
            assert_eq!(channels.capture(other), None, "{other} is not fed");
        }
    }

    #[test]
    fn ticks_become_rates() {
        let tick = serde_json::to_string(&ServerMsg::Tick {
            pair: "EUR/USD".into(),
            rate: "1.081234".into(),
            seq: 7,
        })
        .unwrap();
        let Outcome::Event { channel, payload } = read(&tick) else {
            panic!("a tick is an event");
        };
        assert_eq!(channel, ChannelName::parse("rates.EUR-USD").unwrap());
        assert_eq!(channel.topic(), rates_topic(&eur_usd()));
        let rate: Rate = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            rate,
            Rate {
                pair: eur_usd(),
                rate: Decimal::new(1_081_234, 6),
                seq: 7
            }
        );
        assert_eq!(
            read(r#"{"kind":"watching","pairs":["EUR/USD"]}"#),
            Outcome::Ignore
        );
        assert_eq!(
            read(r#"{"kind":"error","reason":"unknown_pair","message":"no"}"#),
            Outcome::Unmatched
        );
    }

    #[test]
    fn garbage_is_never_an_event() {
        let long = format!(
            r#"{{"kind":"tick","pair":"{}","rate":"1","seq":1}}"#,
            "X".repeat(10_000)
        );
        for bad in [
            "",
            "garbage",
            "{",
            "null",
            "[]",
            r#"{"kind":"tick"}"#,
            r#"{"kind":"nope"}"#,
            r#"{"kind":"tick","pair":"EUR.X/USD","rate":"1","seq":1}"#,
            r#"{"kind":"tick","pair":"EURUSD","rate":"1","seq":1}"#,
            r#"{"kind":"tick","pair":"ünï/cødé","rate":"1","seq":1}"#,
            r#"{"kind":"tick","pair":"EUR/USD","seq":1}"#,
            &long,
        ] {
            match read(bad) {
                Outcome::Event { .. } | Outcome::Ignore => panic!("{bad:.40} was taken"),
                Outcome::Refused(e) => assert!(e.len() < 400, "detail is bounded: {e}"),
                Outcome::Unmatched => {}
            }
        }
    }
}
