//! A server under test run in the test's own process, the way the launcher runs it: its
//! `run(listener, shutdown)` on a fresh loopback port, stopped through its shutdown token, and
//! awaited within a bound so that a server that does not drain fails the test instead of hanging
//! it.
//!
//! Generic over what runs: a demo service, a gateway instance or a router behind the core's
//! `serve`, whatever its error type. This crate does not know the gateways (they use it in their
//! own tests); the caller passes the closure that starts one.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`Instance::stop`] waits for `run` to return after the shutdown.
pub const STOP_WITHIN: Duration = Duration::from_secs(15);

/// A server running on a loopback port; it is told to stop (without waiting) when dropped.
#[derive(Debug)]
pub struct Instance<E> {
    /// Where it listens.
    pub addr: SocketAddr,
    name: &'static str,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Display + Send + 'static> Instance<E> {
    /// Binds 127.0.0.1:0 and spawns `run(listener, shutdown)`. `name` says which server it is in
    /// failure messages; a `run` that fails is reported on stderr at once (the test may be stuck
    /// waiting on it) and again by [`Instance::stop`].
    pub async fn start<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let stop = CancellationToken::new();
        let running = run(listener, stop.clone());
        let task = tokio::spawn(async move {
            let result = running.await;
            if let Err(e) = &result {
                eprintln!("{name} failed: {e:#}");
            }
            result
        });
        Self {
            addr,
            name,
            stop,
            task: Some(task),
        }
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://{addr}{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Asks the server to stop without waiting.
    pub fn cancel(&self) {
        self.stop.cancel();
    }

    /// Waits (at most `within`) for `run` to return after a cancel, and returns its result.
    /// Panics when it does not return in time or panicked.
    pub async fn finished(mut self, within: Duration) -> Result<(), E> {
        let task = self.task.take().expect("a running server has its task");
        tokio::time::timeout(within, task)
            .await
            .unwrap_or_else(|_| panic!("{} drains within {within:?}", self.name))
            .unwrap_or_else(|e| panic!("{} does not panic: {e}", self.name))
    }

    /// Stops the server and waits (at most [`STOP_WITHIN`]) until `run` has returned, cleanly.
    pub async fn stop(self) {
        self.cancel();
        let name = self.name;
        self.finished(STOP_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{name} ends cleanly: {e:#}"));
    }
}

impl<E> Drop for Instance<E> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
