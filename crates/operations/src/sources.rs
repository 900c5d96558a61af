//! The demo domain's event sources: the exchange service's own tick protocol, bridged onto the
//! bus as the topics of the catalog's `rates.{pair}` state channels (`ch:rates.EUR-USD`, see
//! [`crate::channels`]).
//!
//! [`ExchangeTicks`] is the [`UpstreamProtocol`] of the exchange's `GET /v1/ticks` WebSocket
//! ([`demo_api::ticks`]): it turns a topic into the watch and unwatch frames for its pair, and a
//! tick into a [`Rate`] as JSON, the payload every gateway decodes with `demo_api` types.
//! [`exchange_bridge`] starts the core's upstream bridge with it; [`feeds`] hands it to the
//! gateway runtime. This module does not connect, reconnect or count subscribers (the core's
//! bridge and hub do), nor lease (the runtime does), and it does not encode anything for clients.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use demo_api::ticks::{ClientMsg, ServerMsg};
use demo_api::{Currency, Decimal, Pair, Rate};
use switchyard_core::bridge::BridgeConfig;
use switchyard_core::bridge::{Decoded, UpstreamBridge, UpstreamProtocol};
use switchyard_core::bus::Bus;
use switchyard_core::event::Topic;
use switchyard_server::runtime::Feed;

use crate::channels;

/// The prefix of the rates channels' bus topics (`ch:rates.EUR-USD`), which the exchange bridge
/// feeds; the catalog's `rates.{pair}` entry makes them state topics.
pub const RATES_PREFIX: &str = "ch:rates.";

/// The name of the bridge to the exchange's ticker.
pub const EXCHANGE_BRIDGE: &str = "exchange";

/// Characters of an unreadable frame's detail kept in an error.
const SHOWN_CHARS: usize = 64;

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

/// Every bridge name a gateway uses.
pub const BRIDGES: &[&str] = &[EXCHANGE_BRIDGE];

/// Reads a gateway's `[bridges]` (`#[serde(deserialize_with = "operations::sources::known_bridges")]`):
/// a name no gateway uses (`[bridges.exchnage]`) is an error at its key.
pub fn known_bridges<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, BridgeConfig>, D::Error> {
    switchyard_server::config::only_known(deserializer, "bridge", BRIDGES)
}

/// The default bridges: the exchange's ticker on its default port.
pub fn default_bridges() -> BTreeMap<String, BridgeConfig> {
    BTreeMap::from([(
        EXCHANGE_BRIDGE.to_owned(),
        BridgeConfig::new("ws://127.0.0.1:9102/v1/ticks"),
    )])
}

/// Starts the bridge to the exchange's ticker, publishing [`Rate`]s on `bus`. Register it with the
/// hub for [`RATES_PREFIX`].
pub fn exchange_bridge(config: &BridgeConfig, bus: Arc<dyn Bus>) -> UpstreamBridge {
    UpstreamBridge::start(EXCHANGE_BRIDGE, config, Arc::new(ExchangeTicks), bus)
}

/// The demo's hub feeds, from a gateway's `[bridges]` (the gateway runtime's
/// `switchyard_server::runtime::Feeds`): the exchange's ticker feeding [`RATES_PREFIX`] when
/// its bridge is configured. The runtime puts each behind the cluster-wide lease.
pub fn feeds(bridges: &BTreeMap<String, BridgeConfig>, bus: &Arc<dyn Bus>) -> Vec<Feed> {
    bridges
        .get(EXCHANGE_BRIDGE)
        .map(|config| Feed {
            prefix: RATES_PREFIX,
            name: EXCHANGE_BRIDGE,
            feeder: Arc::new(exchange_bridge(config, bus.clone())),
            lease_ttl: std::time::Duration::from_millis(config.lease_ttl_ms),
        })
        .into_iter()
        .collect()
}

/// The exchange service's tick protocol ([`demo_api::ticks`]), one pair per rates topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExchangeTicks;

impl ExchangeTicks {
    fn frame(msg: &ClientMsg) -> String {
        serde_json::to_string(msg).expect("a message of strings always serialises")
    }
}

impl UpstreamProtocol for ExchangeTicks {
    fn watch(&self, topic: &Topic) -> Option<String> {
        let pair = pair_of(topic)?;
        Some(Self::frame(&ClientMsg::Watch {
            pairs: vec![pair.to_string()],
        }))
    }

    fn unwatch(&self, topic: &Topic) -> Option<String> {
        let pair = pair_of(topic)?;
        Some(Self::frame(&ClientMsg::Unwatch {
            pairs: vec![pair.to_string()],
        }))
    }

    fn decode(&self, frame: &str) -> Decoded {
        let (pair, rate, seq) = match serde_json::from_str::<ServerMsg>(frame) {
            Ok(ServerMsg::Tick { pair, rate, seq }) => (pair, rate, seq),
            Ok(ServerMsg::Watching { .. }) => return Decoded::Ignore,
            Ok(ServerMsg::Error { reason, message }) => {
                return Decoded::Error(format!("exchange refused a request: {reason}: {message}"));
            }
            Err(e) => return Decoded::Error(format!("unreadable exchange message: {e}")),
        };
        let pair: Pair = match pair.parse() {
            Ok(p) => p,
            Err(e) => {
                let shown: String = pair.chars().take(SHOWN_CHARS).collect();
                return Decoded::Error(format!("tick for unknown pair `{shown}`: {e}"));
            }
        };
        let rate = match Decimal::from_str_exact(&rate) {
            Ok(r) if r > Decimal::ZERO => r,
            _ => {
                let shown: String = rate.chars().take(SHOWN_CHARS).collect();
                return Decoded::Error(format!("tick for {pair} with invalid rate `{shown}`"));
            }
        };
        let payload = serde_json::to_vec(&Rate { pair, rate, seq })
            .expect("a rate of a pair, a decimal and a number always serialises");
        Decoded::Event {
            topic: rates_topic(&pair),
            payload: Bytes::from(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur_usd() -> Pair {
        "EUR/USD".parse().unwrap()
    }

    #[test]
    fn topics_name_pairs() {
        assert_eq!(rates_topic(&eur_usd()).as_str(), "ch:rates.EUR-USD");
        assert_eq!(pair_of(&rates_topic(&eur_usd())), Some(eur_usd()));
        assert_eq!(
            default_bridges()[EXCHANGE_BRIDGE].url,
            "ws://127.0.0.1:9102/v1/ticks"
        );
    }

    #[test]
    fn watches_encode_the_exchange_protocol() {
        let t = rates_topic(&eur_usd());
        assert_eq!(
            ExchangeTicks.watch(&t).unwrap(),
            r#"{"op":"watch","pairs":["EUR/USD"]}"#
        );
        assert_eq!(
            ExchangeTicks.unwatch(&t).unwrap(),
            r#"{"op":"unwatch","pairs":["EUR/USD"]}"#
        );
        // And the exchange reads them back.
        let back: ClientMsg = serde_json::from_str(&ExchangeTicks.watch(&t).unwrap()).unwrap();
        assert_eq!(
            back,
            ClientMsg::Watch {
                pairs: vec!["EUR/USD".into()]
            }
        );
        for other in [
            "ch:conversions.alice",
            "ch:rates.EURUSD",
            "ch:rates.EUR-EUR",
            "ch:rates.eur-usd",
            "ch:rates.EUR-USD-GBP",
            "ch:rates.EUR/USD",
            "ch:rates.-USD",
            "ch:rates.",
            "ch:ratesEUR-USD",
            "rates.EUR-USD",
            "rates.EUR/USD",
        ] {
            let t = Topic::new(other).unwrap();
            assert_eq!(ExchangeTicks.watch(&t), None, "{other} is not served");
            assert_eq!(ExchangeTicks.unwatch(&t), None, "{other} is not served");
        }
    }

    #[test]
    fn ticks_decode_to_rates() {
        let Decoded::Event { topic, payload } =
            ExchangeTicks.decode(r#"{"kind":"tick","pair":"EUR/USD","rate":"1.081234","seq":7}"#)
        else {
            panic!("a tick is an event");
        };
        assert_eq!(topic, rates_topic(&eur_usd()));
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
            ExchangeTicks.decode(r#"{"kind":"watching","pairs":["EUR/USD"]}"#),
            Decoded::Ignore
        );
        assert!(matches!(
            ExchangeTicks.decode(r#"{"kind":"error","reason":"unknown_pair","message":"no"}"#),
            Decoded::Error(e) if e.contains("unknown_pair")
        ));
    }

    #[test]
    fn garbage_decodes_to_errors() {
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
            r#"{"kind":"tick","pair":"EUR/USD","rate":1.08,"seq":1}"#,
            r#"{"kind":"tick","pair":"EUR/USD","rate":"abc","seq":1}"#,
            r#"{"kind":"tick","pair":"EUR/USD","rate":"-1","seq":1}"#,
            r#"{"kind":"tick","pair":"EUR/USD","rate":"0","seq":1}"#,
            r#"{"kind":"tick","pair":"EUR/USD","rate":"1e400","seq":1}"#,
            r#"{"kind":"tick","pair":"EUR/USD","rate":"1","seq":-1}"#,
            r#"{"kind":"tick","pair":"EUR/EUR","rate":"1","seq":1}"#,
            r#"{"kind":"tick","pair":"ünï/cødé","rate":"1","seq":1}"#,
            &long,
        ] {
            match ExchangeTicks.decode(bad) {
                Decoded::Error(e) => assert!(e.len() < 400, "error detail is bounded: {e}"),
                other => panic!("{bad:.40} decoded to {other:?}"),
            }
        }
    }
}
