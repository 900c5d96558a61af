//! Live clients that reconnect and resume, as real apps do, for the cases where a client's
//! connection ends (a gateway killed, a slow consumer cut off): each follows one catalog
//! channel, counts events by offset, counts gaps, records how each connection ended, and on an
//! end connects again (a fresh URL each time, from `url`) and resumes after the last position
//! it handled. A failure to connect is retried every 200 ms; it never panics the reader.

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use mobile_proto::{ClientMsg, Position};
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// What a resuming reader saw: its tally (keys are offsets), how many connections it made,
/// and the close codes of those that ended (1006: ended without a close frame).
#[derive(Clone, Default)]
pub(crate) struct Seen {
    pub(crate) tally: Shared,
    pub(crate) connections: Arc<Mutex<u64>>,
    pub(crate) closes: Arc<Mutex<Vec<u16>>>,
}

impl Seen {
    pub(crate) fn connections(&self) -> u64 {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn closes(&self) -> Vec<u16> {
        self.closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn connected(&self) {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn closed(&self, code: u16) {
        self.closes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(code);
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, common::faults::Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A mobile app (JSON twin) signed in as alice with `token`, following `channel` at `url()`.
pub(crate) fn mobile(
    url: impl Fn() -> String + Send + 'static,
    token: String,
    channel: &'static str,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let mine = seen.clone();
    let task = tokio::spawn(async move {
        let mut last: Option<Position> = None;
        loop {
            let (url, token) = (url(), token.clone());
            // The test-support client panics when it cannot connect: in a task of its own, a
            // panic is a failed attempt.
            let attempt = tokio::spawn(async move {
                let mut c = MobileClient::connect_within(
                    &url,
                    &[Encoding::Json.subprotocol()],
                    Duration::from_secs(10),
                )
                .await;
                c.sign_in(token, "alice").await;
                c.send(&ClientMsg::Sub(mobile_proto::Sub {
                    topic: channel.to_owned(),
                    resume: last,
                }))
                .await;
                c
            })
            .await;
            let Ok(mut c) = attempt else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            mine.connected();
            loop {
                match c.recv_within(Duration::from_secs(3600)).await {
                    Ok(ServerMsg::Event(e)) => {
                        last = Some(Position {
                            epoch: e.epoch,
                            offset: e.offset,
                        });
                        mine.tally().event(e.offset.to_string());
                    }
                    Ok(ServerMsg::Gap(g)) => {
                        last = Some(Position {
                            epoch: g.epoch,
                            offset: g.offset,
                        });
                        mine.tally().gap();
                    }
                    // Answered, as an app does: a client silent for 2 × the heartbeat is
                    // closed (4408).
                    Ok(ServerMsg::Ping(p)) => {
                        c.send(&ClientMsg::Pong(mobile_proto::Pong { n: p.n }))
                            .await;
                    }
                    Ok(_) => {}
                    Err(End::Closed(code)) => {
                        mine.closed(code);
                        break;
                    }
                    Err(End::Timeout) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// A graphql-transport-ws client (no token: the channel is public) following `channel` at
/// `url()` with `channel(name, after)`; a `HISTORY_GAP` error (in a `next`, ending the
/// subscription) is a gap, and it subscribes again after the error's `resume`.
pub(crate) fn web(
    url: impl Fn() -> String + Send + 'static,
    channel: &'static str,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let mine = seen.clone();
    let task = tokio::spawn(async move {
        let mut after: Option<Value> = None;
        let query = format!(
            "subscription($after: ChannelPosition) {{ channel(name: \"{channel}\", after: \
             $after) {{ epoch offset data }} }}"
        );
        let mut n = 0u64;
        loop {
            let url = url();
            let attempt = tokio::spawn(async move {
                test_support::graphql_ws::connect_raw(&url, Some("graphql-transport-ws"), None)
                    .await
            })
            .await;
            let Ok(mut ws) = attempt else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let init = serde_json::json!({"type": "connection_init"});
            if ws
                .send(Message::Text(init.to_string().into()))
                .await
                .is_err()
            {
                continue;
            }
            let mut subscribed = false;
            let code = loop {
                let msg = match ws.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => break f.map_or(1005, |f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break 1006,
                };
                let Ok(msg) = serde_json::from_str::<Value>(msg.as_str()) else {
                    continue;
                };
                // A stream channel's subscription ends at a gap: a `next` whose errors hold
                // `HISTORY_GAP` with `extensions.resume` (then `complete`); subscribe again
                // after it. Any other error is the test's failure to see.
                let errors = match msg["type"].as_str() {
                    Some("next") => msg["payload"]["errors"].as_array().cloned(),
                    Some("error") => msg["payload"].as_array().cloned(),
                    _ => None,
                };
                let gap = errors.as_ref().map(|errors| {
                    errors
                        .iter()
                        .find(|e| e["extensions"]["code"] == "HISTORY_GAP")
                        .cloned()
                        .unwrap_or_else(|| panic!("{channel}: an error other than a gap: {msg}"))
                });
                let subscribe = match (msg["type"].as_str(), gap) {
                    (Some("connection_ack"), _) => {
                        mine.connected();
                        !subscribed
                    }
                    (_, Some(gap)) => {
                        mine.tally().gap();
                        after = Some(gap["extensions"]["resume"].clone());
                        true
                    }
                    (Some("next"), None) => {
                        let event = &msg["payload"]["data"]["channel"];
                        if let Some(offset) = event["offset"].as_str() {
                            after = Some(
                                serde_json::json!({"epoch": event["epoch"], "offset": offset}),
                            );
                            mine.tally().event(offset);
                        }
                        false
                    }
                    _ => false,
                };
                if subscribe {
                    subscribed = true;
                    n += 1;
                    let sub = serde_json::json!({"id": format!("c{n}"), "type": "subscribe",
                        "payload": {"query": query, "variables": {"after": after}}});
                    if ws
                        .send(Message::Text(sub.to_string().into()))
                        .await
                        .is_err()
                    {
                        break 1006;
                    }
                }
            };
            mine.closed(code);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (seen, task)
}

/// A device long-polling `device` (key `key`) at `base()` (`http://host:port`), following
/// `channel`, its cursor carried from answer to answer: every item of the channel counted by
/// offset, every gap item and reset answer counted as a gap. A failed poll (no answer, or not
/// 200) is counted as a close (its status, 0 for none) and polled again.
pub(crate) fn device(
    base: impl Fn() -> String + Send + 'static,
    device: &'static str,
    key: &'static str,
    channel: &'static str,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let mine = seen.clone();
    let http = test_support::http::client_with_timeout(Duration::from_secs(60));
    let task = tokio::spawn(async move {
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("wait", "1".to_owned())];
            query.extend(cursor.clone().map(|c| ("cursor", c)));
            let answer = http
                .get(format!("{}/v1/devices/{device}/events", base()))
                .header("x-device-key", key)
                .query(&query)
                .send()
                .await;
            let body = match answer {
                Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                Ok(r) => {
                    mine.closed(r.status().as_u16());
                    None
                }
                Err(_) => {
                    mine.closed(0);
                    None
                }
            };
            let Some(body) = body else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            mine.connected();
            let mut t = mine.tally();
            if body.get("rs").is_some() {
                t.gap();
            }
            for item in channel_items(&body, channel) {
                if item.get("gap").is_some() {
                    t.gap();
                } else if let Some(offset) = item["offset"].as_str() {
                    t.event(offset);
                }
            }
            drop(t);
            cursor = body["n"].as_str().map(str::to_owned);
        }
    });
    (seen, task)
}

/// Offsets `first..=last` as the readers' keys.
pub(crate) fn offsets(first: u64, last: u64) -> Vec<String> {
    (first..=last).map(|o| o.to_string()).collect()
}
