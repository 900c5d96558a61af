//! Leases in NATS: one JetStream stream per time to live, one message per lease (the holder),
//! expired by the server (`max_age`); every write is a compare-and-set on the subject's last
//! sequence, so two instances never both win.

use std::time::Duration;

use async_nats::jetstream::stream;
use bytes::Bytes;

use super::naming::encode;
use super::{Inner, NatsBus, unavailable};
use crate::bus::BusError;
use crate::bus::lease::Lease;
use crate::event::Topic;

/// A lease's holder and the sequence of the message that says so.
pub(super) struct Held {
    pub(super) holder: Bytes,
    pub(super) seq: u64,
}

impl Inner {
    /// Writes `holder` as the lease's message if the subject's last sequence is still `seq`
    /// (0: no message). `false` when someone else wrote first.
    async fn lease_write(&self, subject: &str, holder: &str, seq: u64) -> Result<bool, BusError> {
        self.write_if_last(subject, holder.as_bytes(), seq, "lease write")
            .await
    }

    /// The lease stream of one time to live (`max_age` is per stream), created if missing, and
    /// the subject of `name` in it.
    async fn lease_stream(
        &self,
        name: &Topic,
        ttl: Duration,
    ) -> Result<(stream::Stream, String), BusError> {
        let (_, js) = self.connected().await?;
        let ttl = ttl.max(Duration::from_millis(100));
        let ttl_ms = ttl.as_millis();
        let config = stream::Config {
            name: format!("{}_lease_{ttl_ms}", self.prefix),
            subjects: vec![format!("{}.lease.{ttl_ms}.>", self.prefix)],
            description: Some("switchyard leases".into()),
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        };
        let stream = self.stream_of(js, "lease stream lookup", config).await?;
        Ok((
            stream,
            format!("{}.lease.{ttl_ms}.{}", self.prefix, encode(name)),
        ))
    }

    /// The holder of the lease on `subject`, if any.
    pub(super) async fn lease_holder(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<Held>, BusError> {
        let last = tokio::time::timeout(
            self.op_timeout,
            stream.get_last_raw_message_by_subject(subject),
        )
        .await
        .map_err(|_| BusError::Unavailable("nats: lease read timed out".into()))?;
        match last {
            Ok(msg) => Ok(Some(Held {
                holder: msg.payload,
                seq: msg.sequence,
            })),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// Leases in NATS: one JetStream stream per time to live, one message per lease (the holder),
/// expired by the server (`max_age`); every write is a compare-and-set on the subject's last
/// sequence, so two instances never both win.
#[async_trait::async_trait]
impl Lease for NatsBus {
    async fn acquire(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        let inner = &self.inner;
        let (stream, subject) = inner.lease_stream(name, ttl).await?;
        match inner.lease_holder(&stream, &subject).await? {
            None => inner.lease_write(&subject, holder, 0).await,
            Some(held) if held.holder == holder.as_bytes() => {
                inner.lease_write(&subject, holder, held.seq).await
            }
            Some(_) => Ok(false),
        }
    }

    async fn renew(&self, name: &Topic, holder: &str, ttl: Duration) -> Result<bool, BusError> {
        let inner = &self.inner;
        let (stream, subject) = inner.lease_stream(name, ttl).await?;
        match inner.lease_holder(&stream, &subject).await? {
            Some(held) if held.holder == holder.as_bytes() => {
                inner.lease_write(&subject, holder, held.seq).await
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, name: &Topic, holder: &str) -> Result<(), BusError> {
        // The time to live is part of the stream's name; release looks in the streams of every
        // time to live this lease could have been taken with.
        let inner = &self.inner;
        let start = format!("{}_lease_", inner.prefix);
        let names = inner.stream_names(&start).await?;
        for stream_name in names {
            let Some(ttl_ms) = stream_name
                .strip_prefix(&start)
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let (stream, subject) = inner
                .lease_stream(name, Duration::from_millis(ttl_ms))
                .await?;
            if let Some(held) = inner.lease_holder(&stream, &subject).await?
                && held.holder == holder.as_bytes()
            {
                inner
                    .deadline("lease release", stream.delete_message(held.seq))
                    .await?;
            }
        }
        Ok(())
    }
}
