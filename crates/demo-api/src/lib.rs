//! The HTTP API of the demo currency-conversion services, as Rust types.
//!
//! The services serve these shapes and the gateways' operations read them, the way a team would
//! publish a client library for its service. Money is always [`Decimal`], written in JSON as a
//! string (`"100.25"`), never a floating-point number. Validation of identifiers, currencies and
//! amounts lives here too, so every caller rejects the same inputs the same way.
//!
//! The exchange service's WebSocket protocol (its own, deliberately not Switchyard's) is in
//! [`ticks`].
//!
//! Endpoints:
//! - limits: `GET /v1/limits/{user}` → [`Limit`]; `POST /v1/limits/{user}/consume` with
//!   [`ConsumeRequest`] → [`Limit`], or 422 `limit_exceeded`.
//! - exchange: `GET /v1/rates/{from}/{to}` → [`Rate`]; `GET /v1/ticks` (WebSocket, [`ticks`]);
//!   `GET /v1/stats` → [`ExchangeStats`].
//! - conversions: `POST /v1/conversions` with [`ConversionRequest`] → 201 [`Conversion`];
//!   `GET /v1/conversions?user=U&limit=N` → [`ConversionList`]. Each completed conversion is
//!   published on bus topic `ch:conversions.{user}` (channel `conversions.{user}`) as a
//!   [`ConversionEvent`].
//! - statements: `GET /v1/statements/{user}?rows=N` → a CSV (ranges honoured);
//!   `PUT /v1/receipts/{user}/{name}` stores a file named by a [`ReceiptName`] → 201/200
//!   [`Receipt`] (docs/files.md).
//!
//! Errors from every service: a 4xx/5xx status with [`ErrorBody`].

use std::fmt;
use std::str::FromStr;

pub use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Currencies the demo knows.
pub const CURRENCIES: [&str; 6] = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"];

/// Most decimal places an amount may have.
pub const AMOUNT_SCALE: u32 = 2;

/// Largest amount accepted in one conversion.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// A validation failure: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// Stable error code, such as `invalid_amount`.
    pub code: &'static str,
    /// Explanation.
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
    }
}

/// A user id: 1 to 64 of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid(
                "invalid_user",
                "user must be 1 to 64 of A-Z a-z 0-9 _ -",
            ))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest receipt file name, in bytes.
pub const MAX_RECEIPT_NAME_BYTES: usize = 100;

/// A receipt's file name: 1 to [`MAX_RECEIPT_NAME_BYTES`] of `A-Z a-z 0-9 _ - .`, starting
/// with a letter or digit and without `..` — so never a path, a hidden file or a parent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReceiptName(String);

impl ReceiptName {
    /// Validates a receipt name.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=MAX_RECEIPT_NAME_BYTES).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && !s.contains("..")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid(
                "invalid_name",
                "a receipt name must be 1 to 100 of A-Z a-z 0-9 _ - ., start with a letter or \
                 digit and not contain `..`",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReceiptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored receipt: `PUT /v1/receipts/{user}/{name}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Whose it is.
    pub user: UserId,
    /// Its file name.
    pub name: ReceiptName,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A currency code the demo knows (one of [`CURRENCIES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(u8);

impl Currency {
    /// Validates a currency code (upper case, one of [`CURRENCIES`]).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        CURRENCIES
            .iter()
            .position(|c| *c == s)
            .map(|i| Self(i as u8))
            .ok_or_else(|| {
                invalid(
                    "invalid_currency",
                    format!(
                        "unknown currency `{}`; known: {}",
                        s.chars().take(16).collect::<String>(),
                        CURRENCIES.join(", ")
                    ),
                )
            })
    }

    /// The code.
    pub fn as_str(&self) -> &'static str {
        CURRENCIES[usize::from(self.0)]
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A currency pair such as `EUR/USD`: the price of one `base` in `quote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pair {
    /// The currency being priced.
    pub base: Currency,
    /// The currency the price is in.
    pub quote: Currency,
}

impl Pair {
    /// A pair of two different currencies.
    pub fn new(base: Currency, quote: Currency) -> Result<Self, Invalid> {
        if base == quote {
            return Err(invalid(
                "invalid_pair",
                format!("a pair needs two different currencies, got {base}/{quote}"),
            ));
        }
        Ok(Self { base, quote })
    }

    /// Validates a pair written `BASE/QUOTE` (`EUR/USD`).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let (b, q) = s
            .split_once('/')
            .ok_or_else(|| invalid("invalid_pair", "a pair is written BASE/QUOTE, as EUR/USD"))?;
        Self::new(Currency::parse(b)?, Currency::parse(q)?)
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.quote)
    }
}

/// Text forms: each type is read with its `parse` (also as [`FromStr`] and, for serde,
/// `TryFrom<String>`) and written as it displays (`Into<String>`, for serde), so the JSON form
/// and the validation cannot differ.
macro_rules! text_form {
    ($($ty:ty),* $(,)?) => {$(
        impl FromStr for $ty {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Invalid;
            fn try_from(s: String) -> Result<Self, Invalid> {
                Self::parse(&s)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.to_string()
            }
        }
    )*};
}

text_form!(UserId, ReceiptName, Currency, Pair);

/// Parses an amount: a positive decimal string with at most [`AMOUNT_SCALE`] places, at most
/// [`MAX_AMOUNT`].
pub fn parse_amount(s: &str) -> Result<Decimal, Invalid> {
    let bad = || {
        invalid(
            "invalid_amount",
            format!(
                "amount must be a positive decimal string with at most {AMOUNT_SCALE} places, up to {MAX_AMOUNT}"
            ),
        )
    };
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let d = Decimal::from_str_exact(s).map_err(|_| bad())?;
    if d <= Decimal::ZERO || d.scale() > AMOUNT_SCALE || d > MAX_AMOUNT {
        return Err(bad());
    }
    Ok(d)
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code for programs.
    pub code: String,
    /// Explanation for people.
    pub message: String,
}

/// A user's daily conversion limit. Limits count the amounts converted, in the units of the
/// source amount (the demo does not normalise currencies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// The user.
    pub user: UserId,
    /// The daily limit.
    #[serde(with = "rust_decimal::serde::str")]
    pub daily_limit: Decimal,
    /// Amount used today (UTC day).
    #[serde(with = "rust_decimal::serde::str")]
    pub used: Decimal,
    /// What is left today.
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
}

/// Body of `POST /v1/limits/{user}/consume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeRequest {
    /// The amount to consume, as a decimal string.
    pub amount: String,
}

/// The current rate of a pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// The pair.
    pub pair: Pair,
    /// Price of one base unit in the quote currency.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// The tick number that produced this rate (grows by one per tick).
    pub seq: u64,
}

/// What the exchange service's ticker is serving, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeStats {
    /// Open WebSocket connections.
    pub connections: u64,
    /// Watches per pair across all connections (pairs with none are left out).
    pub watchers: std::collections::BTreeMap<String, u64>,
    /// WebSocket connections accepted since start.
    pub connections_total: u64,
}

/// Body of `POST /v1/conversions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversionRequest {
    /// Who converts.
    pub user: String,
    /// Source currency.
    pub from: String,
    /// Target currency.
    pub to: String,
    /// Amount of `from`, as a decimal string.
    pub amount: String,
}

/// A completed conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// Unique id.
    pub id: String,
    /// Who converted.
    pub user: UserId,
    /// Source currency.
    pub from: Currency,
    /// Target currency.
    pub to: Currency,
    /// Amount of `from`.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Rate used.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// Amount of `to` received: `amount × rate`, rounded half away from zero to 2 places.
    #[serde(with = "rust_decimal::serde::str")]
    pub converted: Decimal,
    /// When, as RFC 3339 UTC.
    pub at: String,
}

/// Answer of `GET /v1/conversions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionList {
    /// Most recent first.
    pub conversions: Vec<Conversion>,
}

/// The payload published on channel `conversions.{user}` after a conversion completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionEvent {
    /// Always `conversion.completed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The conversion.
    pub conversion: Conversion,
}

/// The event type name of [`ConversionEvent`].
pub const CONVERSION_COMPLETED: &str = "conversion.completed";

/// The bus topic a user's conversion events are published on: `ch:conversions.{user}`, the topic
/// of the channel catalog's `conversions.{user}` channel (a channel's topic is `ch:` + its name).
pub fn conversions_topic(user: &UserId) -> String {
    format!("ch:conversions.{user}")
}

/// Rounds a converted amount the way the demo does: half away from zero, 2 places.
pub fn round_money(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(
        AMOUNT_SCALE,
        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
    )
}

pub mod ticks {
    //! The exchange service's own WebSocket protocol at `GET /v1/ticks` — JSON text frames,
    //! deliberately not Switchyard's. A client sends [`ClientMsg`]s; the service answers each
    //! with [`ServerMsg::Watching`] (the connection's full watch list) or [`ServerMsg::Error`],
    //! and streams [`ServerMsg::Tick`] for every watched pair at the configured tick rate.

    use serde::{Deserialize, Serialize};

    /// From client to service.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
    pub enum ClientMsg {
        /// Start receiving ticks for these pairs (`"EUR/USD"`).
        Watch {
            /// Pairs.
            pairs: Vec<String>,
        },
        /// Stop receiving ticks for these pairs.
        Unwatch {
            /// Pairs.
            pairs: Vec<String>,
        },
    }

    /// From service to client.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    pub enum ServerMsg {
        /// The connection's watch list after a watch or unwatch.
        Watching {
            /// Pairs watched now.
            pairs: Vec<String>,
        },
        /// A new rate.
        Tick {
            /// The pair.
            pair: String,
            /// The rate, as a decimal string.
            rate: String,
            /// The tick number.
            seq: u64,
        },
        /// The last message was refused.
        Error {
            /// Stable reason code (`bad_message`, `unknown_pair`, `too_many_pairs`).
            reason: String,
            /// Explanation.
            message: String,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_names_are_plain_file_names() {
        for good in [
            "a",
            "receipt.pdf",
            "2025-03-01_taxi.jpg",
            "A.b.c",
            &"x".repeat(100),
        ] {
            assert_eq!(ReceiptName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            ".env",
            "../x",
            "a/b",
            "a\\b",
            "a..b",
            "-a",
            "_a",
            "a b",
            "a%2fb",
            "a\0b",
            "é.pdf",
            "a:b",
            "a?b",
            &"x".repeat(101),
        ] {
            assert!(ReceiptName::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn amounts_are_exact_decimals() {
        assert_eq!(parse_amount("100.25").unwrap().to_string(), "100.25");
        assert_eq!(
            parse_amount("0.1").unwrap() + parse_amount("0.2").unwrap(),
            parse_amount("0.3").unwrap()
        );
        for bad in [
            "",
            "0",
            "-1",
            "1.234",
            "1e3",
            "abc",
            "1,5",
            " 1",
            "1000000000.01",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn pairs_and_currencies_are_validated() {
        let p: Pair = "EUR/USD".parse().unwrap();
        assert_eq!(p.to_string(), "EUR/USD");
        assert!("EUR/EUR".parse::<Pair>().is_err());
        assert!("eur/usd".parse::<Pair>().is_err());
        assert!("EURUSD".parse::<Pair>().is_err());
        assert!(UserId::parse("alice_1").is_ok());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn money_rounds_half_away_from_zero() {
        assert_eq!(round_money(Decimal::new(10005, 3)).to_string(), "10.01");
        assert_eq!(round_money(Decimal::new(10004, 3)).to_string(), "10.00");
    }
}
