//! The Redis bus's command connection: one multiplexed connection, opened lazily and reopened
//! after a failure no sooner than the backoff allows (calls meanwhile fail at once: nothing is
//! queued while Redis is down), and scripts run on it with a deadline. The pub/sub connection is
//! the dispatcher's (`dispatcher.rs`).
//!
//! A call that times out drops the connection only when nothing else was answered on it while
//! that call waited: a dead (or half-open) connection stops answering everything, a slow broker
//! does not, and dropping a slow broker's connection would only turn every call during the
//! reconnect's backoff into a failure too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::{Backoff, Inner, connection_lost, unavailable};
use crate::bus::BusError;

/// When the command connection last answered, in milliseconds since `base` (0: never), so a
/// call that timed out can tell a dead connection (nothing answered while it waited) from a
/// slow broker (other calls were answered meanwhile).
pub(super) struct Replies {
    base: Instant,
    last_ms: AtomicU64,
}

impl Replies {
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Records an answer now.
    pub(super) fn answered(&self) {
        self.last_ms
            .fetch_max(self.ms(Instant::now()), Ordering::Relaxed);
    }

    /// Whether an answer came after `since`.
    pub(super) fn answered_since(&self, since: Instant) -> bool {
        self.last_ms.load(Ordering::Relaxed) > self.ms(since)
    }
}

/// The command connection and when it may next be tried.
pub(super) struct Commands {
    conn: Option<MultiplexedConnection>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Commands {
    /// Not connected; the first call connects.
    pub(super) fn new(backoff: Backoff) -> Self {
        Self {
            conn: None,
            retry_at: None,
            backoff,
        }
    }
}

impl Inner {
    /// The command connection, opened if needed (and allowed by the backoff).
    pub(super) async fn conn(&self) -> Result<MultiplexedConnection, BusError> {
        let client = self.client()?;
        let mut c = self.commands.lock().await;
        if let Some(conn) = &c.conn {
            return Ok(conn.clone());
        }
        if c.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(BusError::Unavailable(
                "redis: not connected (reconnecting)".into(),
            ));
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let opened = tokio::time::timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match opened {
            Ok(Ok(conn)) => {
                c.conn = Some(conn.clone());
                c.retry_at = None;
                c.backoff.reset();
                Ok(conn)
            }
            Ok(Err(e)) => {
                c.retry_at = Some(Instant::now() + c.backoff.delay());
                Err(unavailable(e))
            }
            Err(_) => {
                c.retry_at = Some(Instant::now() + c.backoff.delay());
                Err(BusError::Unavailable("redis: connect timed out".into()))
            }
        }
    }

    /// Handles a call on the command connection that got no answer in time (`started` is when it
    /// was sent): the connection is dropped unless another call was answered meanwhile.
    pub(super) async fn timed_out(&self, started: Instant) {
        if !self.replies.answered_since(started) {
            self.drop_conn().await;
        }
    }

    /// Handles a call's error: a timeout as [`Self::timed_out`], another sign of a lost
    /// connection drops it, a refused command leaves it.
    pub(super) async fn call_failed(&self, started: Instant, e: &redis::RedisError) {
        if e.is_timeout() {
            self.timed_out(started).await;
        } else if connection_lost(e) {
            self.drop_conn().await;
        }
    }

    /// Forgets the command connection after it failed.
    pub(super) async fn drop_conn(&self) {
        let mut c = self.commands.lock().await;
        if c.conn.take().is_some() {
            tracing::warn!("redis bus connection lost; reconnecting");
            self.metrics.connection_lost();
        }
        c.retry_at = Some(Instant::now() + c.backoff.delay());
    }

    /// Runs a script with a deadline, dropping the connection when it proves unusable. `op`
    /// names the operation in the error, so a failure logged far away says what failed.
    pub(super) async fn run(
        &self,
        op: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<Value, BusError> {
        let mut conn = self.conn().await.map_err(|e| match e {
            BusError::Unavailable(why) => BusError::Unavailable(format!(
                "redis: {op}: {}",
                why.trim_start_matches("redis: ")
            )),
            other => other,
        })?;
        let started = Instant::now();
        match tokio::time::timeout(self.op_timeout, inv.invoke_async::<Value>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.replies.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.call_failed(started, &e).await;
                Err(BusError::Unavailable(format!("redis: {op}: {e}")))
            }
            Err(_) => {
                self.timed_out(started).await;
                Err(BusError::Unavailable(format!(
                    "redis: {op} timed out after {} ms",
                    self.op_timeout.as_millis()
                )))
            }
        }
    }
}
