//! `json-ws`: any plain JSON WebSocket protocol, described by templates. `subscribe` is sent when
//! a channel gains its first subscriber and `unsubscribe` when it loses its last (rendered from
//! the channel's placeholders: `{"op":"watch","pair":"{base}/{quote}"}`); every text message is
//! parsed as JSON and read by the source's rules; every `keepalive_ms` the `keepalive` text (when
//! set) and a WebSocket ping are sent, and a connection silent for two intervals is reopened.

use std::time::Duration;

use super::Checked;
use super::rules::Inbound;
use super::template::{Template, Vars};
use super::ws::{Step, WsProtocol};
use crate::channels::ChannelName;

/// The `json-ws` protocol of one source.
pub(super) struct JsonWs {
    url: String,
    subscribe: Option<Template>,
    unsubscribe: Option<Template>,
    keepalive: Option<String>,
    every: Duration,
    rules: super::rules::Rules,
    /// Ticks in a row with nothing heard.
    silent: u32,
}

impl JsonWs {
    pub(super) fn new(checked: &Checked) -> Self {
        Self {
            url: checked.config.url.clone(),
            subscribe: checked.subscribe.clone(),
            unsubscribe: checked.unsubscribe.clone(),
            keepalive: checked.config.keepalive.clone(),
            every: Duration::from_millis(checked.config.keepalive_ms.max(10)),
            rules: checked.rules.clone(),
            silent: 0,
        }
    }
}

fn render(template: &Option<Template>, vars: &Vars) -> Vec<Step> {
    template
        .as_ref()
        .and_then(|t| t.render(vars))
        .map(Step::Send)
        .into_iter()
        .collect()
}

impl WsProtocol for JsonWs {
    fn url(&self) -> &str {
        &self.url
    }

    fn opened(&mut self) -> Vec<Step> {
        self.silent = 0;
        Vec::new()
    }

    fn ready(&self) -> bool {
        true
    }

    fn want(&mut self, _channel: &ChannelName, vars: &Vars) -> Vec<Step> {
        render(&self.subscribe, vars)
    }

    fn release(&mut self, _channel: &ChannelName, vars: &Vars) -> Vec<Step> {
        render(&self.unsubscribe, vars)
    }

    fn text(&mut self, text: &str) -> Vec<Step> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(json) => vec![Step::Deliver(self.rules.apply(Inbound {
                event: None,
                channel: None,
                json: &json,
            }))],
            Err(e) => vec![Step::Unparsable(format!("not JSON: {e}"))],
        }
    }

    fn tick_every(&self) -> Duration {
        self.every
    }

    fn tick(&mut self, heard: bool) -> Vec<Step> {
        self.silent = if heard { 0 } else { self.silent + 1 };
        if self.silent >= 2 {
            return vec![Step::Lost(
                "the upstream has been silent; reconnecting".into(),
            )];
        }
        // The ping proves the connection alive even when the keep-alive text gets no answer.
        let mut steps: Vec<Step> = self.keepalive.iter().cloned().map(Step::Send).collect();
        steps.push(Step::Ping);
        steps
    }
}
