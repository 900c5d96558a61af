//! The Switchyard server crate: everything that makes a core library into a running HTTP server,
//! shared by the three gateways and the demo services — and nothing of the core itself.
//!
//! - Binaries: [`cli`] (`--config`, `--print-config`, and the one `main` every server binary
//!   calls), [`config`] (the config source: file, environment overrides, strict keys; the
//!   `[server]` and `[log]` sections) and [`telemetry`] (logs, and spans over OTLP when
//!   configured); [`lifecycle`] (each request and socket in its trace, their log lines).
//! - Serving: [`server`] (the bounded accept loop, the drain, signals, `/healthz` and `/readyz`,
//!   body limits), [`websocket`] (closing sockets per RFC 6455), [`ratelimit`] (the core's rate
//!   limits as axum middleware).
//! - [`streaming`]: the streamed pass-through of large bodies to a backend (`[files]`), both
//!   ways with backpressure, for the gateways' file routes.
//! - [`publish`]: the publish API for backends (`POST /v1/publish`), on an internal listener.
//! - [`errors`]: the shared HTTP error contract, the JSON error body of bff-mobile, bff-device
//!   and the demo services.
//! - [`runtime`]: the one gateway runtime — upstreams, the hub with its leased feeds, the
//!   limiter, the router's shared layers, serving with the socket drain.
//!
//! The core (`switchyard-core`) does not depend on this crate, on axum or on any wire format.

pub mod cli;
pub mod config;
pub mod errors;
pub mod lifecycle;
pub mod metrics;
pub mod publish;
pub mod ratelimit;
pub mod runtime;
pub mod server;
mod serving;
pub mod streaming;
pub mod telemetry;
pub mod websocket;

#[doc(hidden)]
pub use switchyard_core as __core;
