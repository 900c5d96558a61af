//! What every socket of the gateway shares: the hub, the channel catalog, the operations, the token verifier, the
//! metrics, the configuration, the drain, the rate limiter, the sockets per user and the encoded-once event
//! frames ([`Frames`]). Built once by the gateway's `app`, read by every socket; it holds no
//! per-socket state and runs nothing itself.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::hub::Hub;
use switchyard_core::slots::Slots;
use switchyard_server::server::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::Frames;
use crate::WebSocketConfig;
use crate::auth::Authenticator;

/// What the gateway's sockets share.
pub(crate) struct GatewayParts {
    pub(crate) hub: Hub,
    /// The channel catalog: the channels a `sub` may name beside the demo's topics.
    pub(crate) catalog: Arc<switchyard_core::channels::Catalog>,
    pub(crate) ops: operations::Operations,
    pub(crate) verifier: Authenticator,
    /// Which browser pages may open a socket.
    pub(crate) origins: switchyard_core::origin::OriginPolicy,
    pub(crate) config: WebSocketConfig,
    pub(crate) operation_deadline: Duration,
    pub(crate) drain: Duration,
    pub(crate) sockets: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Message and subscription rate limits.
    pub(crate) limiter: Arc<switchyard_core::ratelimit::RateLimiter>,
    /// The gateway's metrics: sockets by client, cut-offs, conflations, send queue depths.
    pub(crate) metrics: switchyard_server::metrics::Metrics,
}

/// The shared state of every socket.
pub(crate) struct Gateway {
    pub(super) parts: GatewayParts,
    /// Encoded event frames, per route with subscribers.
    pub(super) frames: Frames,
    /// Sockets open per signed-in user (`max_sockets_per_user`).
    pub(super) user_sockets: Slots<String>,
}

impl Gateway {
    pub(crate) fn new(parts: GatewayParts) -> Arc<Self> {
        let user_sockets = Slots::new(parts.config.max_sockets_per_user, 0);
        Arc::new(Self {
            parts,
            frames: Frames::default(),
            user_sockets,
        })
    }

    /// The window announced in `bye`; the socket closes (1001) when it has passed.
    pub(super) fn bye_window(&self) -> Duration {
        self.parts.drain.mul_f64(0.75)
    }
}
