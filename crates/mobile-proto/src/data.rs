//! Payload shapes: the arguments of each operation (`call.args`), its result (`result.d`), and
//! the data of each topic's events (`event.d`).
//!
//! The envelope keeps these as generic values ([`serde_json::Value`]) so the codec needs no
//! knowledge of operations; these types are how both sides read and write them
//! ([`crate::Call::args_as`], [`crate::Event::data_as`], [`crate::CallResult::data_as`]). Keys
//! are readable snake_case words (payloads are not the hot spot the envelope is). Money is always
//! a decimal string (`"1084.20"`), never a number. A part of a result that a backend could not
//! give is null, with an entry in `errors`; every shape rejects unknown keys.

use serde::{Deserialize, Serialize};

/// Arguments of `quote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteArgs {
    /// The currency to convert from (`EUR`).
    pub from: String,
    /// The currency to convert to (`USD`).
    pub to: String,
    /// The amount of `from`, a decimal string.
    pub amount: String,
}

/// Arguments of `dashboard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardArgs {
    /// The pairs whose rates to include (`EUR/USD`), at most 20.
    pub pairs: Vec<String>,
}

/// Arguments of `convert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertArgs {
    /// The currency to convert from.
    pub from: String,
    /// The currency to convert to.
    pub to: String,
    /// The amount of `from`, a decimal string.
    pub amount: String,
}

/// A pair's rate: the data of a `rates:` event, and an entry of a dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// The pair (`EUR/USD`).
    pub pair: String,
    /// The price of one `base` unit in the quote currency, a decimal string.
    pub rate: String,
    /// The exchange's tick number that produced it (grows with every tick).
    pub seq: u64,
}

/// A completed conversion: the data of a `conversions` event, and the result of `convert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversion {
    /// Its unique id.
    pub id: String,
    /// The currency converted from.
    pub from: String,
    /// The currency converted to.
    pub to: String,
    /// The amount of `from`, a decimal string.
    pub amount: String,
    /// The rate used, a decimal string.
    pub rate: String,
    /// The amount of `to` received, a decimal string (rounded half away from zero to 2 places).
    pub converted: String,
    /// When, as RFC 3339 UTC.
    pub at: String,
}

/// The result of `quote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quote {
    /// The pair (`EUR/USD`).
    pub pair: String,
    /// The currency converted from.
    pub from: String,
    /// The currency converted to.
    pub to: String,
    /// The amount of `from`, a decimal string.
    pub amount: String,
    /// The current rate, a decimal string.
    pub rate: String,
    /// `amount × rate`, rounded half away from zero to 2 places, a decimal string.
    pub converted: String,
    /// What is left of the user's daily limit; null when the limits backend did not answer.
    pub remaining_limit: Option<String>,
    /// Whether `amount` is within the remaining limit; null when that is unknown.
    pub within_limit: Option<bool>,
    /// The parts that could not be given (here only `/remaining_limit`); empty when none.
    pub errors: Vec<PartError>,
}

/// A user's daily limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The daily limit, a decimal string.
    pub daily_limit: String,
    /// Used today (UTC day), a decimal string.
    pub used: String,
    /// What is left today, a decimal string.
    pub remaining: String,
}

/// The result of `dashboard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    /// The signed-in user.
    pub user: String,
    /// Their daily limit; null when the limits backend did not answer.
    pub limit: Option<Limit>,
    /// The rates asked for, in the order asked; an entry is null when its rate could not be
    /// fetched.
    pub rates: Vec<Option<Rate>>,
    /// Their most recent conversions, most recent first; null when the conversions backend did
    /// not answer.
    pub recent: Option<Vec<Conversion>>,
    /// The parts that could not be given; empty when none.
    pub errors: Vec<PartError>,
}

/// A part of a result that a backend could not give; the part itself is null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartError {
    /// Which part, as a JSON Pointer (RFC 6901) into the result: `/limit`, `/rates/1`.
    pub part: String,
    /// The backend that failed (`limits`).
    pub backend: String,
    /// Why: [`UPSTREAM_TIMEOUT`](crate::code::UPSTREAM_TIMEOUT) or
    /// [`UPSTREAM_ERROR`](crate::code::UPSTREAM_ERROR).
    pub code: String,
    /// For people (`msg`).
    #[serde(rename = "msg")]
    pub message: String,
}
