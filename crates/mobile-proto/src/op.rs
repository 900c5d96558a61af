//! Operation names: the `op` of a `call`. Argument and result shapes are in [`crate::data`].

/// `quote`: what converting an amount gives now, and what is left of the user's daily limit.
/// Args [`QuoteArgs`](crate::data::QuoteArgs), result [`Quote`](crate::data::Quote).
pub const QUOTE: &str = "quote";

/// `dashboard`: the user's limit, some rates and their recent conversions in one call.
/// Args [`DashboardArgs`](crate::data::DashboardArgs), result
/// [`Dashboard`](crate::data::Dashboard).
pub const DASHBOARD: &str = "dashboard";

/// `convert`: converts an amount for the user, within their daily limit. Not idempotent: a
/// convert whose answer was lost may or may not have happened (the `conversions` topic says).
/// Args [`ConvertArgs`](crate::data::ConvertArgs), result
/// [`Conversion`](crate::data::Conversion).
pub const CONVERT: &str = "convert";

/// Every operation of v1.
pub const ALL: [&str; 3] = [QUOTE, DASHBOARD, CONVERT];
