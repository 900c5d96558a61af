//! What an upstream message means: the `[[sources.NAME.messages]]` rules, tried in order; the
//! first whose conditions hold decides.
//!
//! A message is JSON (for Socket.IO, the event's arguments as an array; for SSE, the event's
//! `data`; for Redis, the message) with, where the kind has them, an event name (Socket.IO event,
//! SSE event type) and an upstream channel name (Redis). A rule:
//!
//! - `event`: the event name must equal it;
//! - `when`: JSON pointers whose values must equal the given text (a string value compares as
//!   the string, any other value as the JSON the text reads as: `"/ok" = "true"`, `"/n" = "3"`);
//! - `capture`: JSON pointers (or `@event`, `@channel`) whose string values are matched against
//!   a template, capturing placeholders (`"/pair" = "{base}/{quote}"`);
//! - `channel`: the template of the channel the event goes to, rendered from the captured values
//!   (default: the source's `channels` template);
//! - `payload`: the JSON pointer of the event's payload (default `""`, the whole message), or
//!   `fields`: an object built from pointers (`{ pair = "/pair", rate = "/rate" }`);
//! - `ignore = true`: the message is understood and dropped (acknowledgements, heartbeats).
//!
//! No rule holding is `unmatched`; a rule that holds but whose captures fail (a value that is not
//! one channel segment), whose pointer is missing, or whose channel is not a valid name is
//! `refused`. Both are counted by the source and never stop it.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::template::{Template, Vars};
use crate::channels::ChannelName;

/// One rule as configured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The event name the message must have.
    #[serde(default)]
    pub event: Option<String>,
    /// JSON pointer → the text its value must equal.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// JSON pointer (or `@event`, `@channel`) → a template its string value must match.
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// The channel template (default: the source's `channels`).
    #[serde(default)]
    pub channel: Option<String>,
    /// The JSON pointer of the payload (default: the whole message).
    #[serde(default)]
    pub payload: Option<String>,
    /// An object payload built from JSON pointers, instead of `payload`.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, String>>,
    /// Drop the message once matched.
    #[serde(default)]
    pub ignore: bool,
}

/// A message from an upstream, as the rules read it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The event name (Socket.IO event, SSE event type), if the kind has one.
    pub event: Option<&'a str>,
    /// The upstream channel (Redis), if the kind has one.
    pub channel: Option<&'a str>,
    /// The message.
    pub json: &'a Value,
}

/// What the rules make of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Publish `payload` (compact JSON) on `channel`.
    Event {
        /// Where.
        channel: ChannelName,
        /// The payload, compact JSON.
        payload: Bytes,
    },
    /// A rule said to drop it.
    Ignore,
    /// No rule holds.
    Unmatched,
    /// A rule holds but the message cannot be made an event (why).
    Refused(String),
}

/// Where a capture reads from.
#[derive(Debug, Clone)]
enum From {
    Pointer(String),
    Event,
    Channel,
}

#[derive(Debug, Clone)]
enum Payload {
    Pointer(String),
    Fields(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
struct Rule {
    event: Option<String>,
    when: Vec<(String, String)>,
    capture: Vec<(From, Template)>,
    channel: Template,
    payload: Payload,
    ignore: bool,
}

/// The checked rules of a source.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
}

fn pointer(key: &str, p: &str) -> Result<String, String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(p.to_owned())
    } else {
        Err(format!(
            "{key}: `{p}` is not a JSON pointer (write \"\" for the whole message, or start with /)"
        ))
    }
}

impl Rules {
    /// Checks `configs` (`messages[i]` names a bad one); `channels` is the source's channel
    /// template, the default of every rule. A rule's channel template may only use placeholders
    /// its captures give.
    pub fn new(configs: &[RuleConfig], channels: &Template) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let at = format!("messages[{i}]");
            let when = c
                .when
                .iter()
                .map(|(p, v)| Ok((pointer(&format!("{at}.when"), p)?, v.clone())))
                .collect::<Result<Vec<_>, String>>()?;
            let capture = c
                .capture
                .iter()
                .map(|(from, t)| {
                    let source = match from.as_str() {
                        "@event" => From::Event,
                        "@channel" => From::Channel,
                        p => From::Pointer(pointer(&format!("{at}.capture"), p)?),
                    };
                    let t =
                        Template::parse(t).map_err(|e| format!("{at}.capture.\"{from}\": {e}"))?;
                    Ok((source, t))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let channel = match &c.channel {
                Some(t) => Template::parse(t).map_err(|e| format!("{at}.channel: {e}"))?,
                None => channels.clone(),
            };
            let payload = match (&c.payload, &c.fields) {
                (Some(_), Some(_)) => {
                    return Err(format!("{at}: set `payload` or `fields`, not both"));
                }
                (Some(p), None) => Payload::Pointer(pointer(&format!("{at}.payload"), p)?),
                (None, Some(f)) => Payload::Fields(
                    f.iter()
                        .map(|(k, p)| Ok((k.clone(), pointer(&format!("{at}.fields.{k}"), p)?)))
                        .collect::<Result<Vec<_>, String>>()?,
                ),
                (None, None) => Payload::Pointer(String::new()),
            };
            if !c.ignore {
                let captured = |v: &str| capture.iter().any(|(_, t)| t.vars().any(|n| n == v));
                if let Some(missing) = channel.vars().find(|v| !captured(v)) {
                    return Err(format!(
                        "{at}: the channel `{channel}` needs `{{{missing}}}`, which no capture gives"
                    ));
                }
            }
            rules.push(Rule {
                event: c.event.clone(),
                when,
                capture,
                channel,
                payload,
                ignore: c.ignore,
            });
        }
        Ok(Self { rules })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What `msg` means.
    pub fn apply(&self, msg: Inbound<'_>) -> Outcome {
        for rule in &self.rules {
            if let Some(event) = &rule.event
                && msg.event != Some(event.as_str())
            {
                continue;
            }
            if !rule.when.iter().all(|(p, want)| {
                msg.json.pointer(p).is_some_and(|v| match v {
                    Value::String(s) => s == want,
                    other => serde_json::from_str::<Value>(want).is_ok_and(|w| w == *other),
                })
            }) {
                continue;
            }
            if rule.ignore {
                return Outcome::Ignore;
            }
            return rule.event_of(msg);
        }
        Outcome::Unmatched
    }
}

impl Rule {
    fn event_of(&self, msg: Inbound<'_>) -> Outcome {
        let mut vars = Vars::new();
        for (from, template) in &self.capture {
            let text = match from {
                From::Event => msg.event,
                From::Channel => msg.channel,
                From::Pointer(p) => msg.json.pointer(p).and_then(Value::as_str),
            };
            let Some(text) = text else {
                return Outcome::Refused(format!("no text to match `{template}` against"));
            };
            match template.capture(text) {
                Some(captured) => vars.extend(captured),
                None => {
                    let shown: String = text.chars().take(64).collect();
                    return Outcome::Refused(format!(
                        "`{shown}` does not match `{template}` (each value: 1 to 64 of A-Z a-z 0-9 - _)"
                    ));
                }
            }
        }
        let Some(name) = self.channel.render(&vars) else {
            return Outcome::Refused(format!("the channel `{}` lacks a value", self.channel));
        };
        let channel = match ChannelName::parse(&name) {
            Ok(c) => c,
            Err(e) => return Outcome::Refused(format!("channel `{name}`: {e}")),
        };
        let payload = match &self.payload {
            Payload::Pointer(p) => match msg.json.pointer(p) {
                Some(v) => v.to_string(),
                None => return Outcome::Refused(format!("no payload at `{p}`")),
            },
            Payload::Fields(fields) => {
                let mut object = serde_json::Map::with_capacity(fields.len());
                for (key, p) in fields {
                    match msg.json.pointer(p) {
                        Some(v) => {
                            object.insert(key.clone(), v.clone());
                        }
                        None => return Outcome::Refused(format!("no `{key}` at `{p}`")),
                    }
                }
                Value::Object(object).to_string()
            }
        };
        Outcome::Event {
            channel,
            payload: Bytes::from(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_text: &str, channels: &str) -> Result<Rules, String> {
        #[derive(Deserialize)]
        struct Doc {
            messages: Vec<RuleConfig>,
        }
        let doc: Doc = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Rules::new(&doc.messages, &Template::parse(channels).unwrap())
    }

    fn msg(json: &Value) -> Inbound<'_> {
        Inbound {
            event: None,
            channel: None,
            json,
        }
    }

    fn event(channel: &str, payload: &str) -> Outcome {
        Outcome::Event {
            channel: ChannelName::parse(channel).unwrap(),
            payload: Bytes::from(payload.to_owned()),
        }
    }

    const EXCHANGE: &str = r#"
        [[messages]]
        when = { "/kind" = "tick" }
        capture = { "/pair" = "{base}/{quote}" }
        fields = { pair = "/pair", rate = "/rate", seq = "/seq" }
        [[messages]]
        when = { "/kind" = "watching" }
        ignore = true
    "#;

    #[test]
    fn the_exchange_ticks() {
        let r = rules(EXCHANGE, "rates.{base}-{quote}").unwrap();
        let tick = json!({"kind": "tick", "pair": "EUR/USD", "rate": "1.08", "seq": 7});
        assert_eq!(
            r.apply(msg(&tick)),
            event(
                "rates.EUR-USD",
                r#"{"pair":"EUR/USD","rate":"1.08","seq":7}"#
            )
        );
        assert_eq!(
            r.apply(msg(&json!({"kind": "watching", "pairs": []}))),
            Outcome::Ignore
        );
        assert_eq!(r.apply(msg(&json!({"kind": "other"}))), Outcome::Unmatched);
        assert_eq!(r.apply(msg(&json!([1, 2]))), Outcome::Unmatched);
    }

    #[test]
    fn hostile_values_are_refused() {
        let r = rules(EXCHANGE, "rates.{base}-{quote}").unwrap();
        for pair in [
            "EUR.X/USD",
            "EUR/US D",
            "/USD",
            "EUR/",
            "EURUSD",
            "É/U",
            "*/>",
        ] {
            let tick = json!({"kind": "tick", "pair": pair, "rate": "1", "seq": 1});
            assert!(matches!(r.apply(msg(&tick)), Outcome::Refused(_)), "{pair}");
        }
        let no_rate = json!({"kind": "tick", "pair": "EUR/USD", "seq": 1});
        assert!(matches!(r.apply(msg(&no_rate)), Outcome::Refused(e) if e.contains("rate")));
        let number = json!({"kind": "tick", "pair": 5, "rate": "1", "seq": 1});
        assert!(matches!(r.apply(msg(&number)), Outcome::Refused(_)));
    }

    #[test]
    fn events_channels_and_whole_payloads() {
        let r = rules(
            r#"
            [[messages]]
            event = "price"
            capture = { "/0/symbol" = "{symbol}" }
            payload = "/0"
            [[messages]]
            capture = { "@channel" = "orders:{user}" }
            channel = "orders.{user}"
            "#,
            "prices.{symbol}",
        )
        .unwrap();
        let args = json!([{"symbol": "AAPL", "p": 1.5}]);
        let price = Inbound {
            event: Some("price"),
            channel: None,
            json: &args,
        };
        assert_eq!(
            r.apply(price),
            event("prices.AAPL", r#"{"p":1.5,"symbol":"AAPL"}"#)
        );
        let order = json!({"id": 1});
        let redis = Inbound {
            event: None,
            channel: Some("orders:alice"),
            json: &order,
        };
        assert_eq!(r.apply(redis), event("orders.alice", r#"{"id":1}"#));
        let wrong = Inbound {
            event: None,
            channel: Some("orders:a.b"),
            json: &order,
        };
        assert!(matches!(r.apply(wrong), Outcome::Refused(_)));
    }

    #[test]
    fn bad_rules_name_their_key() {
        let e = rules(
            r#"
            [[messages]]
            capture = { "/x" = "{a}" }
            "#,
            "prices.{symbol}",
        )
        .unwrap_err();
        assert!(e.contains("messages[0]") && e.contains("{symbol}"), "{e}");
        let e = rules(
            r#"
            [[messages]]
            when = { "kind" = "x" }
            ignore = true
            "#,
            "a",
        )
        .unwrap_err();
        assert!(
            e.contains("messages[0].when") && e.contains("pointer"),
            "{e}"
        );
        let e = rules(
            r#"
            [[messages]]
            payload = "/a"
            fields = { a = "/a" }
            "#,
            "a",
        )
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = rules(
            r#"
            [[messages]]
            nope = 1
            "#,
            "a",
        )
        .unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}
