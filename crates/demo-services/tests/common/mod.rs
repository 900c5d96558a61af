//! Running the demo services for the tests: each on its own loopback port 0, through the same
//! `run` a launcher calls, stopped through its shutdown token. No mocks.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_core::server::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A service running on a loopback port; it is cancelled when dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// `http://{addr}{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://{addr}{path}`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Asks the service to stop without waiting.
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }

    /// Waits (at most `within`) for `run` to return after a cancel, and returns its result.
    pub(crate) async fn finished(mut self, within: Duration) -> anyhow::Result<()> {
        let task = self.task.take().expect("a running service has its task");
        tokio::time::timeout(within, task)
            .await
            .expect("run returns within the time allowed")
            .expect("run does not panic")
    }

    /// Stops the service and waits until its port is closed.
    pub(crate) async fn stop(self) {
        self.cancel();
        self.finished(Duration::from_secs(15))
            .await
            .expect("run ends cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds 127.0.0.1:0 and spawns `run(listener, shutdown)`.
pub(crate) async fn start<F, Fut>(run: F) -> Running
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(listener, stop.clone()));
    Running {
        addr,
        stop,
        task: Some(task),
    }
}

/// A plain HTTP client for the tests.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build an HTTP client")
}

/// A response's status and JSON body.
pub(crate) async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}
