//! Compare-and-set streams on the NATS server, for the core's other shared state (rate limits,
//! records): a stream of one message per subject, read by subject and written only if the
//! subject's last sequence is still the one read — the same write leases use.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::{Inner, NatsBus, unavailable};
use crate::bus::BusError;

/// Plumbing for the core's other shared state on this server (rate limits, records): a stream
/// of one message per subject, read by subject and written with compare-and-set, like leases.
impl NatsBus {
    /// The stream `P_{name}` on subjects `P.{token}.>` (one message per subject, messages older
    /// than `max_age` dropped when given), created if missing; and the subject prefix
    /// `P.{token}.`. `name` must not be producible by a topic's encoding (use a `_` followed
    /// by a digit in it).
    pub(crate) async fn cas_stream(
        &self,
        name: &str,
        token: &str,
        max_age: Option<Duration>,
    ) -> Result<(stream::Stream, String), BusError> {
        let inner = &self.inner;
        let (_, js) = inner.connected().await?;
        let config = stream::Config {
            name: format!("{}_{name}", inner.prefix),
            subjects: vec![format!("{}.{token}.>", inner.prefix)],
            description: Some("switchyard shared state".into()),
            max_messages_per_subject: 1,
            max_age: max_age.unwrap_or_default(),
            duplicate_window: max_age
                .unwrap_or(Duration::from_secs(120))
                .min(Duration::from_secs(120)),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        };
        let stream = inner.stream_of(js, "state stream lookup", config).await?;
        Ok((stream, format!("{}.{token}.", inner.prefix)))
    }

    /// The last message on `subject` and its sequence, if any.
    pub(crate) async fn cas_get(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<(Bytes, u64)>, BusError> {
        Ok(self
            .inner
            .lease_holder(stream, subject)
            .await?
            .map(|h| (h.holder, h.seq)))
    }

    /// Writes `payload` on `subject` if its last sequence is still `seq` (0: no message yet);
    /// `false` when another writer came first.
    pub(crate) async fn cas_put(
        &self,
        subject: &str,
        payload: &[u8],
        seq: u64,
    ) -> Result<bool, BusError> {
        self.inner
            .write_if_last(subject, payload, seq, "write")
            .await
    }
}

impl Inner {
    /// Writes `payload` on `subject` if the subject's last sequence is still `seq` (0: no
    /// message); `false` when someone else wrote first. `what` names the write in a timeout.
    pub(super) async fn write_if_last(
        &self,
        subject: &str,
        payload: &[u8],
        seq: u64,
        what: &str,
    ) -> Result<bool, BusError> {
        let (_, js) = self.connected().await?;
        let message = jetstream::message::PublishMessage::build()
            .payload(Bytes::copy_from_slice(payload))
            .expected_last_subject_sequence(seq);
        let sent = tokio::time::timeout(self.op_timeout, async {
            js.send_publish(subject.to_owned(), message).await?.await
        })
        .await
        .map_err(|_| BusError::Unavailable(format!("nats: {what} timed out")))?;
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}
