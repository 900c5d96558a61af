//! A client of bff-device's HTTP API for the tests, over plain HTTP to one base URL: the
//! long-poll (`GET /{version}/devices/{id}/events`), device posts with their key, the admin API
//! with its bearer token, and readers of a v1 answer's events.
//!
//! It speaks only HTTP, so it does not depend on the gateway (whose own tests use it): starting
//! the gateway, publishing on its bus or reading its counters stay in the gateway's tests.

use std::time::Duration;

use serde_json::Value;

use crate::http::{Answer, answer};

/// bff-device's API at one base URL (`http://host:port`).
#[derive(Debug, Clone)]
pub struct DeviceApi {
    base: String,
    admin_token: String,
    patience: Duration,
    /// The client every request goes through (its timeout bounds each request).
    pub http: reqwest::Client,
}

impl DeviceApi {
    /// The API at `base`, administered with `admin_token`. `patience` bounds every request and
    /// every wait of [`DeviceApi::poll_until`]: a guard against hangs, not a timing.
    pub fn new(base: impl Into<String>, admin_token: &str, patience: Duration) -> Self {
        let http = crate::http::client_with_timeout(patience);
        Self::with_client(base, admin_token, patience, http)
    }

    /// [`DeviceApi::new`] through an existing client (a cheap clone: one pool for several
    /// instances).
    pub fn with_client(
        base: impl Into<String>,
        admin_token: &str,
        patience: Duration,
        http: reqwest::Client,
    ) -> Self {
        Self {
            base: base.into(),
            admin_token: admin_token.to_owned(),
            patience,
            http,
        }
    }

    /// `{base}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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

    /// A v1 poll.
    pub async fn poll(&self, id: &str, key: &str, cursor: Option<&str>, wait: u32) -> Answer {
        self.poll_v("v1", id, key, cursor, wait).await
    }

    /// `POST {path}` of `body` with the device key `key`.
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

    /// An admin request (`method path` with a JSON `body`) with the admin token.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Answer {
        let res = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("answered");
        answer(res).await
    }

    /// Polls (wait=0) until an answer satisfies `pred` (events reach the gateway
    /// asynchronously); panics with the last answer after the API's patience.
    pub async fn poll_until(
        &self,
        version: &str,
        id: &str,
        key: &str,
        cursor: Option<&str>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = tokio::time::Instant::now() + self.patience;
        loop {
            let v = self.poll_v(version, id, key, cursor, 0).await.json();
            if pred(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < end, "never satisfied: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// The items of an answer's `channels` (v1 and v2 alike) on `channel`, in order; none when the
/// key is left out.
pub fn channel_items(v: &Value, channel: &str) -> Vec<Value> {
    v.get("channels")
        .map(|c| c.as_array().expect("`channels` is a list"))
        .into_iter()
        .flatten()
        .filter(|e| e["channel"] == channel)
        .cloned()
        .collect()
}

/// The `data` of an answer's events on `channel` (gaps left out), in order.
pub fn channel_data(v: &Value, channel: &str) -> Vec<Value> {
    channel_items(v, channel)
        .into_iter()
        .filter(|e| e.get("gap").is_none())
        .map(|e| e["data"].clone())
        .collect()
}
