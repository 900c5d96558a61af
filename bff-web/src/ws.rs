//! GraphQL over WebSocket with the `graphql-transport-ws` subprotocol, exactly as the graphql-ws
//! library's PROTOCOL.md specifies it. async-graphql is the execution engine; this module owns the
//! protocol: the connection state machine, every close code, auth at `connection_init`, limits.
//!
//! By concern: [`transport`] the close codes, bounded writes and the lingering close;
//! [`protocol`] the graphql-transport-ws state machine of one socket; [`ops`] the operations
//! running on it (shared subscription executions, single results); [`sharing`] which executions
//! a subscription may share (by its root fields and its channels' catalog entries). This file holds what the
//! gateway hands a socket ([`Socket`], [`Limits`]) and [`serve`], the socket task.
//!
//! Close codes: 4400 invalid message, 4401 subscribe before `connection_ack`, 4403 forbidden
//! (bad token at init or at a re-authentication, a re-authentication as another user, or the
//! token's `exp` passed without one), 4406 subprotocol not acceptable, 4408 no `connection_init`
//! in time, 4409 operation id already active, 4429 a second `connection_init` or a user over its
//! socket cap (`max_sockets_per_user`); and outside the graphql-ws set,
//! 1001 when the server drains (reconnect elsewhere), 1009 for a message over the size limit and
//! 1013 for a client too slow to read a stream subscription (reconnect and refetch), 1008 for a
//! client over its socket message rate (the reason says when to retry). A `subscribe` over the
//! subscription rate gets an `error` message (code `RATE_LIMITED`), the socket stays open.
//!
//! One task per socket does everything — reading, the init timer, single-result operations and
//! every subscription — so an idle subscribed socket costs one task, its buffers and one
//! broadcast receiver per subscription. Subscriptions are shared executions ([`crate::fanout`]).
//!
//! A socket authenticated with a token lives until the token's `exp` (plus the leeway), the same
//! timer as the init timeout; a `ping` whose payload carries a token of the same user
//! (`{"token": "…"}`) re-authenticates it and moves that deadline, answered by a `pong` with
//! `{"reauthenticated": true, "exp": …}` (docs/protocol/web.md).

mod ops;
mod protocol;
mod sharing;
pub(crate) mod transport;

use std::time::Duration;

use async_graphql::{ObjectType, Schema, SubscriptionType};
use axum::extract::ws::WebSocket;
use switchyard_core::slots::Slots;
use switchyard_server::lifecycle::SocketEnd;
use switchyard_server::server::CancellationToken;

use crate::auth::Authenticator;
use crate::fanout::Fanout;
use protocol::Connection;
use transport::{Closing, close};

/// The subprotocol.
pub(crate) const PROTOCOL: &str = "graphql-transport-ws";

/// What the socket layer needs to serve one schema.
pub(crate) struct Socket<Q, M, S> {
    pub(crate) schema: Schema<Q, M, S>,
    pub(crate) fanout: std::sync::Arc<Fanout<Q, M, S>>,
    pub(crate) verifier: std::sync::Arc<Authenticator>,
    pub(crate) limits: Limits,
    pub(crate) shutdown: CancellationToken,
    /// Sockets open per signed-in user.
    pub(crate) user_sockets: Slots<String>,
    /// Socket message and subscription rate limits ([`crate::ratelimits`]).
    pub(crate) limiter: std::sync::Arc<switchyard_core::ratelimit::RateLimiter>,
    /// The channel catalog, for what `channel` subscriptions may share ([`sharing`]).
    pub(crate) catalog: std::sync::Arc<switchyard_core::channels::Catalog>,
    /// The gateway's metrics: sockets by client, cut-offs, conflations.
    pub(crate) metrics: switchyard_server::metrics::Metrics,
}

impl<Q, M, S> Clone for Socket<Q, M, S> {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            fanout: self.fanout.clone(),
            verifier: self.verifier.clone(),
            limits: self.limits.clone(),
            shutdown: self.shutdown.clone(),
            user_sockets: self.user_sockets.clone(),
            limiter: self.limiter.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Per-socket limits and the schema's subscription policy.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// How long a socket may stay without `connection_init`.
    pub(crate) init_timeout: Duration,
    /// Operations (subscriptions and single results) active at once per socket.
    pub(crate) max_operations: usize,
    /// Longest time one write may wait for the client to read; then it is cut off (1013).
    pub(crate) write_timeout: Duration,
    /// Root subscription fields whose results are the same for every client (public data).
    /// A subscription selecting anything else, anywhere in its root selection (through
    /// fragments, inline fragments, or under `@skip`), is treated as user-scoped: its
    /// execution is shared only with the same principal's sockets.
    pub(crate) public: &'static [&'static str],
    /// Root subscription fields that are state (latest value only): conflated, replayed to
    /// late joiners, never a reason to cut a slow client off.
    pub(crate) state: &'static [&'static str],
}

/// Serves one upgraded socket until it closes; says how it ended (for its closing log line).
pub(crate) async fn serve<Q, M, S>(
    socket: WebSocket,
    ctx: Socket<Q, M, S>,
    protocol_ok: bool,
    peer: Option<std::net::IpAddr>,
    usage: Option<switchyard_server::metrics::ConnectionGuard>,
) -> SocketEnd
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let mut socket = socket;
    if !protocol_ok {
        close(
            socket,
            Closing::new(
                close::SUBPROTOCOL_NOT_ACCEPTABLE,
                "Subprotocol not acceptable",
            ),
        )
        .await;
        return SocketEnd::Closed(close::SUBPROTOCOL_NOT_ACCEPTABLE);
    }
    let metrics = ctx.metrics.clone();
    let mut conn = Connection::new(ctx, peer, usage);
    let closing = conn.run(&mut socket).await;
    match closing {
        Some(closing) => {
            if let Some(queue_full) = closing.slow_consumer() {
                metrics.cut_off(queue_full);
            }
            let code = closing.code();
            close(socket, closing).await;
            SocketEnd::Closed(code)
        }
        None => SocketEnd::ClientGone,
    }
}
