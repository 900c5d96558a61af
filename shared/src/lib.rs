//! The Switchyard core: what every gateway shares and no gateway's wire format leaks into.
//!
//! - Requests flow down: [`upstream`] (backend registry, pooled HTTP with deadlines, retries and
//!   circuit breaking) and [`compose`] (concurrent fan-out with partial results).
//! - Events flow up: [`event`] (topics, offsets, epochs), [`bus`] (where events are published and
//!   kept) and [`hub`] (local subscribers with bounded queues and shared source subscriptions;
//!   feeders, such as [`sources`], publish a topic onto the bus while it has subscribers).
//! - Channels: [`channels`] (the configured catalog of client channels: strict names, access
//!   rules, the bus topic of each; read by every gateway's runtime and the hub) and [`sources`]
//!   (upstream services that push events — JSON WebSocket, Socket.IO, SSE, Redis pub/sub —
//!   feeding catalog channels by configuration).
//! - Plumbing: [`backoff`] (the one retry policy; each subsystem owns its configuration section's
//!   type, such as `bus::BusConfig`), [`auth`] (bearer tokens), [`keyhash`] (keys kept as
//!   SHA-256, compared in constant time), [`ratelimit`] (GCRA limits,
//!   counted on the broker), [`slots`] (connection and socket caps), [`origin`] (who may open a
//!   socket), [`tls`], [`leased`] and [`records`].
//!
//! The core speaks typed Rust and opaque payload bytes; only gateways know their wire formats. It
//! serves nothing: no axum, no command line, no log output — that is the server crate
//! (`switchyard-server`: CLI, config source, serving, health, telemetry, the shared HTTP error
//! contract, the gateway runtime).

pub mod auth;
pub mod backoff;
pub mod bus;
pub mod channels;
pub mod compose;
pub mod event;
pub mod hub;
pub mod keyhash;
pub mod latency;
pub mod leased;
pub mod logthrottle;
pub mod origin;
pub mod ratelimit;
pub mod records;
pub mod slots;
pub mod sources;
pub mod tls;
pub mod trace;
pub mod upstream;
