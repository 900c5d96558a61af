//! The `publish` benchmark's subscribers: switchyard-mobile.v1 clients in CBOR, each signed in
//! (`auth`) and subscribed (`sub` to each of the benchmark's channels — `announcements` for `publish`
//! — `subbed` awaited), held for the whole benchmark.
//!
//! Every event's data is the publisher's JSON `{"r": run, "k": k, "us": publish time}` as CBOR.
//! A client takes its receive time as soon as it has decoded the frame and records the
//! difference for the current [`Phase`] (one latency run), apart by `k % modes` (an interleaved
//! run publishes its events in `modes` ways, rotating). Within a phase each client must get the
//! events of each `k % modes` in order, each once (the modes' events may interleave differently:
//! with a channel per mode, channels are not ordered among themselves); a lost, repeated or reordered event, an event of another
//! run, a close or a socket error makes the phase (and, for a close, every later one) invalid.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Protocol, Ws};
use crate::publish_serve::now_us;

/// One latency run as the subscribers see it.
pub(crate) struct Phase {
    run: u64,
    events: usize,
    /// Deliveries so far (every client, every event).
    received: AtomicUsize,
    /// Each client's latencies in µs, in event order.
    /// Per client, the latencies of the run's events by `k % modes` (the ways of publishing an
    /// interleaved run), in µs.
    samples: Vec<Mutex<Vec<Vec<u32>>>>,
    modes: usize,
    failure: Mutex<Option<String>>,
}

impl Phase {
    fn fail(&self, why: String) {
        lock(&self.failure).get_or_insert(why);
    }
}

/// The held subscribers.
pub(crate) struct Subscribers {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the bench and every client task share.
struct Shared {
    current: RwLock<Option<Arc<Phase>>>,
    /// Why a client stopped (a close or a socket error): no later phase can be complete.
    broken: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscribers {
    /// Opens `clients` sockets to `url`, signs each in and subscribes it to `channels`, at most
    /// `concurrency` at a time.
    pub(crate) async fn connect(
        url: &str,
        clients: usize,
        concurrency: usize,
        channels: &[&str],
    ) -> anyhow::Result<Self> {
        let token = client::token();
        let token = token.as_str();
        let sockets: Vec<Ws> = futures::stream::iter(0..clients)
            .map(|i| async move {
                let connect = async {
                    let mut ws = client::open(url, Protocol::Mobile).await?;
                    client::init(&mut ws, Protocol::Mobile, token).await?;
                    for channel in channels {
                        client::subscribe_topic(&mut ws, channel).await?;
                    }
                    anyhow::Ok(ws)
                };
                connect.await.with_context(|| format!("subscriber {i}"))
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let shared = Arc::new(Shared {
            current: RwLock::new(None),
            broken: Mutex::new(None),
        });
        let tasks = sockets
            .into_iter()
            .enumerate()
            .map(|(i, ws)| tokio::spawn(receive(ws, i, shared.clone())))
            .collect();
        Ok(Self { shared, tasks })
    }

    /// Starts a latency run: the events of run `run`, `events` of them, are expected next.
    /// A latency run of `events` events whose latencies are kept apart by `k % modes`.
    pub(crate) fn begin(&self, run: u64, events: usize, modes: usize) -> Arc<Phase> {
        let modes = modes.max(1);
        let phase = Arc::new(Phase {
            run,
            events,
            received: AtomicUsize::new(0),
            samples: (0..self.tasks.len())
                .map(|_| {
                    Mutex::new(
                        (0..modes)
                            .map(|_| Vec::with_capacity(events / modes + 1))
                            .collect(),
                    )
                })
                .collect(),
            failure: Mutex::new(None),
            modes,
        });
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(phase.clone());
        phase
    }

    /// Waits until every client has every event of `phase` (or `timeout` passes, or the phase
    /// fails); returns the latencies in µs of the events of each `k % modes`, each sorted, or why
    /// the phase is invalid.
    pub(crate) async fn finish(
        &self,
        phase: &Phase,
        timeout: Duration,
    ) -> Result<Vec<Vec<u32>>, String> {
        let expected = self.tasks.len() * phase.events;
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(why) = lock(&self.shared.broken).clone() {
                return Err(why);
            }
            if let Some(why) = lock(&phase.failure).clone() {
                return Err(why);
            }
            let received = phase.received.load(Ordering::Acquire);
            if received == expected {
                break;
            }
            if tokio::time::Instant::now() > end {
                return Err(format!(
                    "{received} of {expected} deliveries within {timeout:?} after the last publish"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut all: Vec<Vec<u32>> = (0..phase.modes)
            .map(|_| Vec::with_capacity(expected / phase.modes + 1))
            .collect();
        for samples in &phase.samples {
            let mut samples = lock(samples);
            for (all, mine) in all.iter_mut().zip(samples.iter_mut()) {
                all.append(mine);
            }
        }
        for all in &mut all {
            all.sort_unstable();
        }
        Ok(all)
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The parts of a server message a subscriber reads (CBOR; other keys are skipped).
#[derive(Deserialize)]
struct ServerMessage {
    t: String,
    #[serde(default)]
    d: Option<Stamp>,
    #[serde(default)]
    n: Option<u32>,
}

/// An event's data: run, sequence number, publish time (µs since the epoch).
#[derive(Deserialize)]
struct Stamp {
    r: u64,
    k: u64,
    us: u64,
}

/// One subscriber: reads until its socket ends, recording each event's latency in the current
/// phase.
async fn receive(mut ws: Ws, index: usize, shared: Arc<Shared>) {
    // The run this client is in and, per `k % modes` (each mode has its own channel in a run
    // over several channels, and channels are not ordered among themselves), the next event it
    // expects in it.
    let (mut run, mut next) = (u64::MAX, Vec::<u64>::new());
    let why = loop {
        let msg = match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or("none".to_owned(), |f| u16::from(f.code).to_string());
                break format!("subscriber {index} closed by the server with code {code}");
            }
            Some(Ok(Message::Text(t))) => {
                break format!("subscriber {index}: unexpected text frame {}", t.as_str());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break format!("subscriber {index}: socket error: {e}"),
            None => break format!("subscriber {index}: connection ended without a close"),
        };
        let now = now_us();
        let message = match ciborium::from_reader::<ServerMessage, _>(msg.as_ref()) {
            Ok(m) => m,
            Err(e) => break format!("subscriber {index}: undecodable frame: {e}"),
        };
        match (message.t.as_str(), message.d, message.n) {
            ("event", Some(stamp), _) => {
                let phase = shared
                    .current
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let phase = match phase {
                    Some(p) if p.run == stamp.r => p,
                    Some(p) => {
                        p.fail(format!(
                            "subscriber {index} received an event of run {} during run {}",
                            stamp.r, p.run
                        ));
                        continue;
                    }
                    None => continue,
                };
                let modes = phase.modes as u64;
                if stamp.r != run {
                    (run, next) = (stamp.r, (0..modes).collect());
                }
                let mode = (stamp.k % modes) as usize;
                let expected = next.get(mode).copied().unwrap_or(u64::MAX);
                if stamp.k != expected || stamp.k >= phase.events as u64 {
                    phase.fail(format!(
                        "subscriber {index} expected event {expected}, received event {}",
                        stamp.k
                    ));
                    continue;
                }
                next[mode] += modes;
                let latency = now.saturating_sub(stamp.us).min(u64::from(u32::MAX)) as u32;
                lock(&phase.samples[index])[mode].push(latency);
                phase.received.fetch_add(1, Ordering::AcqRel);
            }
            ("ping", _, Some(n)) => {
                let pong = mobile_proto::ClientMsg::Pong(mobile_proto::Pong { n });
                let pong = client::mobile_message(client::MOBILE.encode_client(&pong));
                if let Err(e) = ws.send(pong).await {
                    break format!("subscriber {index}: socket error: {e}");
                }
            }
            _ => {
                let text = mobile_proto::diag::diagnostic(&msg).unwrap_or_default();
                break format!("subscriber {index}: unexpected message {text}");
            }
        }
    };
    lock(&shared.broken).get_or_insert(why);
}
