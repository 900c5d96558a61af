//! The demo microservices of a currency-conversion system: real axum servers that the gateways
//! call, each runnable alone (its own binary and port) or embedded in one process.
//!
//! - [`limits`]: per-user daily conversion limits, checked and consumed atomically.
//! - [`exchange`]: exchange rates from a deterministic seeded random walk, over REST and over its
//!   own WebSocket ticker protocol ([`demo_api::ticks`]).
//! - [`conversions`]: converts an amount (rate from exchange, limit from limits) and publishes a
//!   [`demo_api::ConversionEvent`] on the bus.
//! - [`statements`]: large files both ways — a user's statement as CSV generated on the fly
//!   (ranges honoured), and receipts streamed to disk — behind the gateways' file routes.
//!
//! Every service serves the types of [`demo_api`] — this crate defines no wire types of its own —
//! and shares the core's server plumbing: `/healthz`, `/readyz`, body limits, JSON errors and a
//! bounded graceful drain. Each module's `run` is what a launcher calls; the binaries in
//! `src/bin` only load configuration, set up logs, bind and call it.
//!
//! Each also serves its own web component at `/ui/{file}` (`ui.rs`), for bff-web's demo page.
//!
//! These are demo backends, not Switchyard: they keep state in memory (bounded, lost on restart)
//! and do not authenticate anyone.

pub mod conversions;
pub mod exchange;
pub mod limits;
pub mod statements;

mod http;
mod splitmix;
mod ui;
