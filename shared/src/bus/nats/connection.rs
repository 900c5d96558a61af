//! The NATS bus's client: created on first use, connecting in the background and reconnecting
//! with the configured backoff; every connect and disconnect moves the bus's generation, which
//! ends the live feeds. While it is not connected, operations fail at once (nothing is queued).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;

use super::{Inner, unavailable};
use crate::bus::BusError;

/// Messages the client buffers per subscription before it drops (and the driver resyncs).
const SUBSCRIPTION_CAPACITY: usize = 4096;

/// How many times the client has connected so far.
pub(super) fn connects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

impl Inner {
    /// The client and JetStream context, created on first use; connected or not.
    pub(super) async fn client(
        &self,
    ) -> Result<&(async_nats::Client, jetstream::Context), BusError> {
        let generation = self.generation.clone();
        let metrics = self.metrics.clone();
        let slow = self.slow.clone();
        let (initial, max) = self.reconnect;
        let made = self
            .conn
            .get_or_init(|| async {
                let options = async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connection_timeout(self.connect_timeout)
                    .request_timeout(Some(self.op_timeout))
                    .subscription_capacity(SUBSCRIPTION_CAPACITY)
                    .reconnect_delay_callback(move |attempts| {
                        let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                        crate::backoff::Backoff::new(initial, max).delay(attempt)
                    })
                    .event_callback(move |event| {
                        let generation = generation.clone();
                        let metrics = metrics.clone();
                        let slow = slow.clone();
                        async move {
                            match event {
                                async_nats::Event::Connected => {
                                    tracing::info!("nats bus connected");
                                    generation.send_modify(|g| *g += 1);
                                }
                                async_nats::Event::Disconnected => {
                                    tracing::warn!("nats bus disconnected; reconnecting");
                                    metrics.connection_lost();
                                    generation.send_modify(|g| *g += 1);
                                }
                                async_nats::Event::SlowConsumer(sid) => {
                                    // A message for subscription `sid` was dropped: its feed
                                    // (a group channel's) resyncs from history.
                                    tracing::debug!(sid, "nats bus: slow consumer, a live message was dropped; resyncing");
                                    if let Some(feed) = super::lock(&slow).get(&sid) {
                                        feed.notify_one();
                                    }
                                }
                                other => tracing::debug!(event = %other, "nats bus event"),
                            }
                        }
                    });
                match options.connect(self.url.as_str()).await {
                    Ok(client) => {
                        // The client connects in the background: give it the connect timeout
                        // (and its connected event) before the first operation is judged.
                        let mut events = self.generation.subscribe();
                        let ready = tokio::time::timeout(self.connect_timeout, async {
                            while client.connection_state() != State::Connected
                                || *events.borrow_and_update() == 0
                            {
                                tokio::select! {
                                    _ = events.changed() => {}
                                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                                }
                            }
                        })
                        .await;
                        if ready.is_err() {
                            tracing::warn!(url = %self.url, "nats bus not connected yet; retrying in the background");
                        }
                        let js = jetstream::new(client.clone());
                        Ok((client, js))
                    }
                    Err(e) => {
                        tracing::error!(url = %self.url, error = %e, "nats bus cannot be set up");
                        Err(e.to_string())
                    }
                }
            })
            .await;
        made.as_ref().map_err(unavailable)
    }

    /// The client and JetStream context if connected right now.
    pub(super) async fn connected(
        &self,
    ) -> Result<&(async_nats::Client, jetstream::Context), BusError> {
        let conn = self.client().await?;
        if conn.0.connection_state() != State::Connected {
            return Err(BusError::Unavailable(
                "nats: not connected (reconnecting)".into(),
            ));
        }
        Ok(conn)
    }

    /// Runs `f` within the operation timeout; a failure or a timeout is unavailability.
    pub(super) async fn deadline<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BusError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(BusError::Unavailable(format!("nats: {what} timed out"))),
        }
    }

    /// The stream of `config`, created if missing. Instances that first use a stream at the same
    /// moment race to create it, and JetStream refuses all but one (`subjects overlap with an
    /// existing stream`): a failed create is followed by one lookup of the stream by name, which
    /// then exists.
    pub(super) async fn stream_of(
        &self,
        js: &jetstream::Context,
        what: &str,
        config: jetstream::stream::Config,
    ) -> Result<jetstream::stream::Stream, BusError> {
        let name = config.name.clone();
        match self.deadline(what, js.get_or_create_stream(config)).await {
            Ok(stream) => Ok(stream),
            Err(created) => match self.deadline(what, js.get_stream(&name)).await {
                Ok(stream) => Ok(stream),
                Err(_) => Err(created),
            },
        }
    }
}
