//! The Redis bus's command connection: one multiplexed connection, opened lazily and reopened
//! after a failure no sooner than the backoff allows (calls meanwhile fail at once: nothing is
//! queued while Redis is down), and scripts run on it with a deadline. The pub/sub connection is
//! the dispatcher's (`dispatcher.rs`).

use std::time::Instant;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::{Backoff, Inner, connection_lost, unavailable};
use crate::bus::BusError;

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
        match tokio::time::timeout(self.op_timeout, inv.invoke_async::<Value>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if connection_lost(&e) {
                    self.drop_conn().await;
                }
                Err(BusError::Unavailable(format!("redis: {op}: {e}")))
            }
            Err(_) => {
                self.drop_conn().await;
                Err(BusError::Unavailable(format!(
                    "redis: {op} timed out after {} ms",
                    self.op_timeout.as_millis()
                )))
            }
        }
    }
}
