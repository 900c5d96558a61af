//! `redis-pubsub`: backends that already `PUBLISH` on Redis (socket.io-emitter, a NestJS app, a
//! script). The source opens one pub/sub connection to `url`, `PSUBSCRIBE`s every pattern of
//! `patterns`, and gives each message, its payload parsed as JSON, with its Redis channel name
//! (which rules capture with `"@channel" = "shop:{tenant}:orders"`) to the rules. The bus assigns
//! each event its offset when the engine publishes it.
//!
//! Redis sends every message of the patterns, so nothing is asked for per channel: the
//! connection is open while any channel is wanted and closed when none is, and messages for
//! channels nobody wants are dropped. A connection that ends (a restarted Redis, `CLIENT KILL`)
//! or stops answering the `PING` sent every `keepalive_ms` is reopened with the engine's backoff
//! and subscribes again. Messages published while it was down are lost: Redis pub/sub keeps
//! nothing.
//!
//! Limits: a payload over `max_message_bytes` is counted and dropped, but only once the Redis
//! client has read it whole (the Redis server's `client-output-buffer-limit pubsub` bounds what
//! it sends). `rediss://` (TLS) is refused when the source starts: the workspace's Redis client
//! is built without TLS.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::time::Instant;

use super::rules::Inbound;
use super::{End, LOGGED_CHARS, SourceState};

/// Starts the source's task; errors name the key (`sources.NAME.url`, …).
pub(super) fn spawn(state: Arc<SourceState>) -> Result<(), String> {
    let config = &state.checked.config;
    let name = &state.name;
    if config
        .url
        .get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
    {
        return Err(format!(
            "sources.{name}.url: `rediss://` (Redis over TLS) is not supported by redis-pubsub \
             sources; use `redis://` on a trusted network or through a TLS tunnel"
        ));
    }
    if config.tls.is_set() {
        return Err(format!(
            "sources.{name}.tls: redis-pubsub sources do not use TLS (`redis://` only)"
        ));
    }
    if let Some(i) = config.patterns.iter().position(String::is_empty) {
        return Err(format!("sources.{name}.patterns[{i}]: must not be empty"));
    }
    let client = redis::Client::open(config.url.as_str())
        .map_err(|e| format!("sources.{name}.url: `{}`: {e}", config.url))?;
    tokio::spawn(state.run(move |state| {
        let client = client.clone();
        async move {
            let (sink, stream) = connect(&state, &client).await?;
            state.opened();
            Ok(serve(&state, sink, stream).await)
        }
    }));
    Ok(())
}

/// Opens the pub/sub connection and subscribes the patterns, within `connect_timeout_ms`.
async fn connect(
    state: &SourceState,
    client: &redis::Client,
) -> Result<(PubSubSink, PubSubStream), String> {
    let config = &state.checked.config;
    let timeout = config.connect_timeout();
    let open = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.psubscribe(&config.patterns).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    match tokio::time::timeout(timeout, open).await {
        Err(_) => Err(format!("not connected and subscribed within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(pair)) => Ok(pair),
    }
}

/// Serves one connection until the source stops, nothing is wanted, or it fails.
async fn serve(state: &SourceState, mut sink: PubSubSink, mut stream: PubSubStream) -> End {
    let config = &state.checked.config;
    let name = state.name.as_str();
    let every = Duration::from_millis(config.keepalive_ms.max(10));
    let mut ping_at = Instant::now() + every;
    // A subscribed connection is fine; it is healthy once Redis has said something since.
    let mut healthy = false;
    loop {
        if state.is_idle() {
            // Dropping the sink and the stream closes the connection.
            return End::Idle;
        }
        tokio::select! {
            () = state.stop.cancelled() => return End::Stopped,
            () = state.changed.notified() => {}
            () = tokio::time::sleep_until(ping_at) => {
                // In subscribed mode (RESP2) Redis answers PING with the array ["pong", ""], not
                // "PONG": any answer will do.
                match tokio::time::timeout(config.connect_timeout(), sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => healthy = true,
                    Ok(Err(error)) => {
                        tracing::warn!(source = %name, %error, "upstream Redis ping failed; reconnecting");
                        return End::Lost { healthy };
                    }
                    Err(_) => {
                        tracing::warn!(source = %name, "upstream Redis did not answer a ping; reconnecting");
                        return End::Lost { healthy };
                    }
                }
                ping_at = Instant::now() + every;
            }
            msg = stream.next() => match msg {
                None => {
                    tracing::warn!(source = %name, "upstream Redis connection lost; reconnecting");
                    return End::Lost { healthy };
                }
                Some(msg) => {
                    healthy = true;
                    message(state, &msg).await;
                }
            },
        }
    }
}

/// One message of a pattern: checked, parsed, read by the rules, delivered.
async fn message(state: &SourceState, msg: &redis::Msg) {
    let payload = msg.get_payload_bytes();
    if payload.len() > state.checked.config.max_message_bytes {
        state.oversized(payload.len());
        return;
    }
    let channel = msg.get_channel_name();
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(json) => {
            let outcome = state.checked.rules.apply(Inbound {
                event: None,
                channel: Some(channel),
                json: &json,
            });
            if matches!(outcome, super::rules::Outcome::Event { .. }) {
                state.deliver(outcome, "").await;
            } else {
                state.deliver(outcome, &raw(channel, payload)).await;
            }
        }
        Err(e) => state.unparsable(
            &format!("message on `{channel}` is not JSON: {e}"),
            &raw(channel, payload),
        ),
    }
}

/// A message as logged: its channel and the start of its payload.
fn raw(channel: &str, payload: &[u8]) -> String {
    let start = &payload[..payload.len().min(LOGGED_CHARS * 4)];
    format!("{channel}: {}", String::from_utf8_lossy(start))
}
