//! The fault-injection fixtures of `tests/faults.rs`: a real fault-injecting TCP proxy put
//! between two parts (the `noxious` crate, Toxiproxy's port to Rust, run in-process as a
//! library: its `ProxyRunner` with toxics added and removed at run time), and the tally a live
//! client keeps of what it received by offset (delivered, duplicates, gaps).
//!
//! The proxy injects what Toxiproxy does: latency, a stall without FIN (`timeout` 0, the
//! half-open link), a connection cut after some bytes (`limit_data`, a reset in the middle of
//! a body), and the whole proxy down (listener and every link closed) and up again on the same
//! port. It does not drop single packets (that is `tc netem`'s work, not in this suite).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use noxious::proxy::{ProxyConfig, ProxyRunner, Runner, Toxics};
use noxious::signal::{Stop, Stopper};
use noxious::socket::TcpListener as NoxiousListener;
use noxious::state::SharedProxyInfo;
use noxious::toxic::{
    StreamDirection, Toxic, ToxicEvent, ToxicEventKind, ToxicEventResult, ToxicKind,
};

/// One running noxious proxy from a loopback port of its own to `upstream`.
pub struct FaultProxy {
    listen: SocketAddr,
    upstream: SocketAddr,
    running: Option<Running>,
    /// The toxics in place, removed one by one on heal: noxious's `RemoveAllToxics` clears the
    /// upstream direction's list only (noxious 1.0.4, `update_toxics` stops at the first list
    /// that takes the event), which would leave a downstream toxic in place.
    toxics: std::sync::Mutex<Vec<String>>,
}

struct Running {
    events: bmrng::RequestSender<ToxicEvent, ToxicEventResult>,
    stopper: Stopper,
    info: SharedProxyInfo,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, passing bytes untouched.
    pub async fn start(upstream: SocketAddr) -> Self {
        // noxious binds the address it is given and does not report a port 0's choice: take a
        // free port from the kernel, then hand it over (retried if another process took it).
        for _ in 0..20 {
            let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
            let listen = free.local_addr().expect("its address");
            drop(free);
            let mut proxy = Self {
                listen,
                upstream,
                running: None,
                toxics: std::sync::Mutex::default(),
            };
            if proxy.try_up().await.is_ok() {
                return proxy;
            }
        }
        panic!("no free loopback port for the fault proxy");
    }

    /// The address clients connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    async fn try_up(&mut self) -> std::io::Result<()> {
        let config = ProxyConfig {
            name: format!("faults-{}", self.listen.port()),
            listen: self.listen.to_string(),
            upstream: self.upstream.to_string(),
            enabled: true,
            rand_seed: Some(1),
        };
        let (listener, info) =
            ProxyRunner::initialize_proxy::<NoxiousListener>(config, Toxics::empty()).await?;
        let (events, receiver) = bmrng::channel(8);
        let (stop, stopper) = Stop::new();
        let (_close, closer) = noxious::signal::Close::new();
        let shared = info.clone();
        let task = tokio::spawn(async move {
            let _ = ProxyRunner::run_proxy(listener, shared, receiver, stop, closer).await;
        });
        self.running = Some(Running {
            events,
            stopper,
            info,
            task,
        });
        Ok(())
    }

    /// Takes the proxy down: its listener closes (connections are refused) and every link is
    /// closed on both sides.
    pub async fn down(&mut self) {
        if let Some(running) = self.running.take() {
            running.stopper.stop();
            let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
        }
    }

    /// Brings the proxy up again on the same port, without toxics.
    pub async fn up(&mut self) {
        self.toxics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for _ in 0..100 {
            if self.try_up().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the fault proxy cannot listen on {} again", self.listen);
    }

    /// The links (client connections) open through the proxy now.
    pub fn links(&self) -> Vec<SocketAddr> {
        self.running
            .as_ref()
            .map(|r| r.info.state.lock().clients.keys().copied().collect())
            .unwrap_or_default()
    }

    async fn event(&self, kind: ToxicEventKind) {
        let running = self.running.as_ref().expect("the proxy is up");
        let name = running.info.config.name.clone();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            running.events.send_receive(ToxicEvent::new(name, kind)),
        )
        .await
        .expect("the proxy takes the toxic in time")
        .expect("the proxy is running");
        answer.expect("the proxy accepts the toxic");
    }

    /// Adds the toxic `name` of `kind` in `direction` (downstream: upstream → client), to the
    /// open links and to every new one — except `limit_data`, which noxious applies only to
    /// links opened after it (a link keeps the toxic state it was made with).
    pub async fn add(&self, name: &str, kind: ToxicKind, direction: StreamDirection) {
        self.event(ToxicEventKind::AddToxic(Toxic {
            kind,
            name: name.to_owned(),
            toxicity: 1.0,
            direction,
        }))
        .await;
        self.toxics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_owned());
    }

    /// Removes every toxic: bytes pass untouched again.
    pub async fn heal(&self) {
        let names = std::mem::take(&mut *self.toxics.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names {
            self.event(ToxicEventKind::RemoveToxic(name)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stopper.stop();
            running.task.abort();
        }
    }
}

/// What one live client received, each event named by a key of the test's (its offset, or
/// the id the publisher gave it): delivered, duplicates, explicit gaps or resets.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Keys delivered.
    pub keys: BTreeSet<String>,
    /// Events delivered in all.
    pub delivered: u64,
    /// Events delivered a second time (same key).
    pub duplicates: u64,
    /// Explicit gap or reset signals received.
    pub gaps: u64,
    /// The close code, once the client's connection closed.
    pub closed: Option<u16>,
    /// When each key first arrived.
    pub arrived: std::collections::BTreeMap<String, std::time::Instant>,
}

impl Tally {
    /// Counts an event named `key`.
    pub fn event(&mut self, key: impl Into<String>) {
        let key = key.into();
        self.delivered += 1;
        if self.keys.insert(key.clone()) {
            self.arrived.insert(key, std::time::Instant::now());
        } else {
            self.duplicates += 1;
        }
    }

    /// When the first key starting with `prefix` arrived.
    pub fn first_arrival(&self, prefix: &str) -> Option<std::time::Instant> {
        self.arrived
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, at)| *at)
            .min()
    }

    /// Counts an explicit gap or reset signal.
    pub fn gap(&mut self) {
        self.gaps += 1;
    }

    /// Whether `key` was delivered.
    pub fn has(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// A [`Tally`] a client task fills while the test reads it.
pub type Shared = std::sync::Arc<std::sync::Mutex<Tally>>;

/// A copy of the tally now.
pub fn snapshot(tally: &Shared) -> Tally {
    tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Waits, for at most `patience`, until `done` holds for the tally; the tally then, or a
/// failure saying `what`.
pub async fn until(
    tally: &Shared,
    patience: Duration,
    what: &str,
    done: impl Fn(&Tally) -> bool,
) -> Tally {
    let end = tokio::time::Instant::now() + patience;
    loop {
        let now = snapshot(tally);
        if done(&now) {
            return now;
        }
        assert!(tokio::time::Instant::now() < end, "{what}: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One row of docs/reliability.md, printed by the test that measured it.
pub struct Figures<'a> {
    /// The case.
    pub case: &'a str,
    /// The client.
    pub client: &'a str,
    /// Events published (or sent by the upstream) during the case.
    pub published: u64,
    /// What the client received.
    pub tally: &'a Tally,
    /// From the fault's end (heal) to the first event or whole answer through again.
    pub recovered: String,
}

impl Figures<'_> {
    /// Prints the row, in the table's format.
    pub fn print(&self) {
        println!(
            "FIGURES | {} | {} | {} | {} | {} | {} | {} |",
            self.case,
            self.client,
            self.published,
            self.tally.delivered,
            self.tally.gaps,
            self.tally.duplicates,
            self.recovered
        );
    }
}
