//! Shared fixtures of the device API tests: a gateway on a loopback port over a memory bus with
//! two configured devices, and a small client.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bff_device::{App, Config, DeviceConfig};
use serde_json::{Value, json};
use switchyard_core::bus::Bus;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::event::{Event, Topic};
use switchyard_core::server::CancellationToken;
use test_support::TestServer;

/// tv-1's key (rates EUR/USD and USD/JPY).
pub const TV1_KEY: &str = "tv-1-key-0123456789";
/// tv-2's key (no rates).
pub const TV2_KEY: &str = "tv-2-key-0123456789";
/// The admin token.
pub const ADMIN: &str = "admin-token-0123456789";

/// A generous bound that only stops a broken test from hanging.
pub const HANG: Duration = Duration::from_secs(20);

/// The test configuration: two devices, the admin API on, no upstream bridge (rates are
/// published on the bus by the tests).
pub fn config() -> Config {
    let mut c = Config::default();
    c.bridges.clear();
    c.admin.token = ADMIN.to_owned();
    c.devices.insert(
        "tv-1".to_owned(),
        DeviceConfig {
            key: TV1_KEY.to_owned(),
            rates: vec!["EUR/USD".to_owned(), "USD/JPY".to_owned()],
            settings: [("volume".to_owned(), json!(7))].into_iter().collect(),
        },
    );
    c.devices.insert(
        "tv-2".to_owned(),
        DeviceConfig {
            key: TV2_KEY.to_owned(),
            ..DeviceConfig::default()
        },
    );
    c
}

/// A running gateway.
pub struct Gateway {
    pub server: TestServer,
    pub bus: Arc<dyn Bus>,
    pub shutdown: CancellationToken,
    pub app: Arc<App>,
    pub http: reqwest::Client,
}

/// Starts a gateway with `config` over a memory bus keeping `history` events per topic.
pub async fn start(config: Config, history: usize) -> Gateway {
    start_on(config, Arc::new(MemoryBus::new(history))).await
}

/// Starts a gateway with `config` over `bus`.
pub async fn start_on(config: Config, bus: Arc<dyn Bus>) -> Gateway {
    let shutdown = CancellationToken::new();
    let app = bff_device::app(&config, bus.clone(), shutdown.clone()).expect("app builds");
    let server = test_support::serve(app.router.clone()).await;
    Gateway {
        server,
        bus,
        shutdown,
        app: Arc::new(app),
        http: reqwest::Client::builder()
            .timeout(HANG)
            .build()
            .expect("client"),
    }
}

/// An answer: status, headers and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

pub async fn answer(res: reqwest::Response) -> Answer {
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.expect("body"),
    }
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// `GET /{version}/devices/{id}/events` with `key`, `cursor` and `wait`.
    pub async fn poll_v(
        &self,
        version: &str,
        id: &str,
        key: &str,
        cursor: Option<&str>,
        wait: u32,
    ) -> Answer {
        let mut q = vec![("wait", wait.to_string())];
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        let res = self
            .http
            .get(self.url(&format!("/{version}/devices/{id}/events")))
            .header("x-device-key", key)
            .query(&q)
            .send()
            .await
            .expect("poll answered");
        answer(res).await
    }

    pub async fn poll(&self, id: &str, key: &str, cursor: Option<&str>, wait: u32) -> Answer {
        self.poll_v("v1", id, key, cursor, wait).await
    }

    pub async fn post(&self, path: &str, key: &str, body: &str) -> Answer {
        let res = self
            .http
            .post(self.url(path))
            .header("x-device-key", key)
            .body(body.to_owned())
            .send()
            .await
            .expect("answered");
        answer(res).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Answer {
        let res = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("answered");
        answer(res).await
    }

    /// Publishes a command for `device` on the bus, as a backend does.
    pub async fn command(&self, device: &str, id: &str, op: &str) -> Event {
        let topic = Topic::new(&format!("devices.{device}.commands")).unwrap();
        let payload = json!({"id": id, "op": op, "args": {"n": 1}}).to_string();
        self.bus.publish(&topic, payload.into()).await.unwrap()
    }

    /// Publishes a rate tick.
    pub async fn rate(&self, pair: &str, rate: &str, seq: u64) -> Event {
        let topic = Topic::new(&format!("rates.{pair}")).unwrap();
        let payload = json!({"pair": pair, "rate": rate, "seq": seq}).to_string();
        self.bus.publish(&topic, payload.into()).await.unwrap()
    }

    /// Polls (wait=0) until an answer satisfies `pred` (rates reach the gateway asynchronously);
    /// panics with the last answer after [`HANG`].
    pub async fn poll_until(
        &self,
        version: &str,
        id: &str,
        key: &str,
        cursor: Option<&str>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = tokio::time::Instant::now() + HANG;
        loop {
            let v = self.poll_v(version, id, key, cursor, 0).await.json();
            if pred(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < end, "never satisfied: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` polls are holding (their reads were empty and their wakes are open).
    pub async fn holding(&self, n: usize) {
        let app = self.app.clone();
        assert!(
            test_support::eventually(HANG, || {
                let app = app.clone();
                async move { app.holding_polls() == n }
            })
            .await,
            "{n} polls holding"
        );
    }
}

/// The kinds (`t`) of a v1 answer's events.
pub fn kinds(v: &Value) -> Vec<String> {
    v["e"]
        .as_array()
        .expect("an event list")
        .iter()
        .map(|e| e["t"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The v1 events of kind `t`.
pub fn of_kind(v: &Value, t: &str) -> Vec<Value> {
    v["e"]
        .as_array()
        .expect("an event list")
        .iter()
        .filter(|e| e["t"] == t)
        .cloned()
        .collect()
}
