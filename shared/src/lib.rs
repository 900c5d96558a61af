//! The Switchyard core: what every gateway shares and no gateway's wire format leaks into.
//!
//! - Requests flow down: [`upstream`] (backend registry, pooled HTTP with deadlines, retries and
//!   circuit breaking) and [`compose`] (concurrent fan-out with partial results).
//! - Events flow up: [`event`] (topics, offsets, epochs), [`bus`] (where events are published and
//!   kept), [`hub`] (local subscribers with bounded queues and shared source subscriptions) and
//!   [`bridge`] (upstream WebSocket APIs fed onto the bus, one upstream watch per topic).
//! - Plumbing: [`backoff`] (the one retry policy), [`config`], [`cli`], [`server`] (with its bounded accept loop), [`slots`]
//!   (connection and socket caps), [`origin`] (who may open a socket), [`websocket`] (closing
//!   sockets per RFC 6455) and [`telemetry`].
//!
//! The core speaks typed Rust and opaque payload bytes; only gateways know their wire formats.

pub mod auth;
pub mod backoff;
pub mod bridge;
pub mod bus;
pub mod cli;
pub mod compose;
pub mod config;
pub mod event;
pub mod hub;
pub mod leased;
pub mod origin;
pub mod ratelimit;
pub mod records;
pub mod server;
mod serving;
pub mod slots;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod websocket;
