//! A Redis bus subscription's live feed, for the shared driver (`live.rs`): registered with the
//! dispatcher (whose SUBSCRIBE is confirmed before the feed is handed out), a bounded queue of
//! channel messages and a resync signal, unregistered when dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Notify, mpsc, oneshot};

use super::Inner;
use super::dispatcher::{Ctl, Target};
use crate::bus::live::{self, LiveFeed, LiveItem};
use crate::bus::{BusError, Read};
use crate::event::{Event, Position, Topic};

/// Live events queued per subscription before it is told to resync from the stream.
const FEED_QUEUE: usize = 1024;

#[async_trait::async_trait]
impl live::Source for Inner {
    fn metrics(&self) -> &crate::bus::BusMetrics {
        &self.metrics
    }

    async fn read(&self, topic: &Topic, after: Position, max: usize) -> Result<Read, BusError> {
        let view = self.view(topic, after.offset, max, false).await?;
        Ok(view.read(after))
    }

    async fn open(
        &self,
        topic: &Topic,
        after: Option<Position>,
    ) -> Result<(LiveFeed, Position), BusError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let resync = Arc::new(Notify::new());
        let (done_tx, done_rx) = oneshot::channel();
        let dispatcher = self.dispatcher();
        let channel = self.channel(topic);
        let target = Target {
            topic: topic.clone(),
            tx,
            resync: resync.clone(),
        };
        dispatcher
            .send(Ctl::Subscribe {
                channel: channel.clone(),
                id,
                target,
                done: done_tx,
            })
            .map_err(|_| BusError::Closed)?;
        // The guard unsubscribes when the feed is dropped, whatever happens from here on.
        let guard = Unsubscribe {
            dispatcher,
            channel,
            id,
        };
        match tokio::time::timeout(self.op_timeout + self.connect_timeout, done_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(BusError::Closed),
            Err(_) => return Err(BusError::Unavailable("redis: subscribe timed out".into())),
        }
        // Subscribed before the head is read: nothing published from here on can be missed.
        let cursor = match after {
            Some(p) => p,
            None => {
                let view = self.view(topic, 0, 0, false).await?;
                Position {
                    epoch: view.epoch,
                    offset: view.head,
                }
            }
        };
        let feed = Feed {
            rx,
            resync,
            _guard: guard,
        };
        let stream = futures::stream::unfold(feed, |mut feed| async move {
            let item = tokio::select! {
                biased;
                item = feed.rx.recv() => LiveItem::Event(item?),
                () = feed.resync.notified() => LiveItem::Resync,
            };
            Some((item, feed))
        });
        Ok((Box::pin(stream), cursor))
    }
}

/// One subscription's end of the dispatcher.
struct Feed {
    rx: mpsc::Receiver<Event>,
    resync: Arc<Notify>,
    _guard: Unsubscribe,
}

struct Unsubscribe {
    dispatcher: mpsc::UnboundedSender<Ctl>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self.dispatcher.send(Ctl::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}
