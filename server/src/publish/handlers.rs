//! The two routes: `POST /v1/publish` and `POST /v1/publish/batch`.
//!
//! Every request is authenticated before its body is read (an unknown caller costs one SHA-256
//! of a bounded header), then read whole within `max_body_bytes`, then checked whole — every
//! batch item before any is published — and only then handed to the bus. The publishing runs in
//! a task of its own, so a publisher that hangs up mid-batch does not stop the batch halfway:
//! the events it asked for are published in order, up to the first bus failure.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use switchyard_core::bus::{Bus, BusError, IdempotencyKey};
use switchyard_core::channels::Resolved;
use switchyard_core::event::Topic;
use switchyard_core::trace::TraceContext;

use super::PublishApi;
use super::wire::{Batch, BatchLanded, Landed, Publish, Refusal, compact};

/// Longest `Idempotency-Key` header value accepted (the bus key is `publisher:key`, at most 200
/// bytes, and a publisher name is at most 64).
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// The request's `Idempotency-Key`, scoped by its publisher (`publisher:key`), so that two
/// publishers' keys never collide; `None` without the header. One header, 1 to 128 bytes of
/// visible ASCII, else 400.
fn idempotency_key(request: &Request, publisher: &str) -> Result<Option<String>, Refusal> {
    let mut values = request.headers().get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::bad_request(
            "send one Idempotency-Key header, not several",
        ));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            (1..=MAX_IDEMPOTENCY_KEY_BYTES).contains(&k.len())
                && k.bytes().all(|b| (0x21..=0x7e).contains(&b))
        })
        .ok_or_else(|| {
            Refusal::bad_request(format!(
                "Idempotency-Key: use 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters \
                 (no spaces)"
            ))
        })?;
    Ok(Some(format!("{publisher}:{key}")))
}

/// The bus key of one event: `scoped` as is for a single publish, `scoped:i` for batch item `i`.
fn bus_key(scoped: &str, index: Option<usize>) -> Result<IdempotencyKey, Refusal> {
    let key = match index {
        Some(i) => IdempotencyKey::new(&format!("{scoped}:{i}")),
        None => IdempotencyKey::new(scoped),
    };
    key.map_err(|e| Refusal::bad_request(format!("Idempotency-Key: {e}")))
}

/// Publishes one checked event, once per key when there is one, carrying `trace` (the
/// request's: the publisher's `traceparent`, or the trace started for it).
async fn land(
    bus: &Arc<dyn Bus>,
    item: Checked,
    key: Option<IdempotencyKey>,
    trace: Option<TraceContext>,
) -> Result<Landed, (BusError, String)> {
    match key {
        None => bus
            .publish_traced(&item.topic, item.payload, trace)
            .await
            .map(|event| Landed::new(&item.channel, &event))
            .map_err(|e| (e, item.channel)),
        Some(key) => bus
            .publish_once_traced(&item.topic, item.payload, &key, trace)
            .await
            .map(|published| Landed::once(&item.channel, &published))
            .map_err(|e| (e, item.channel)),
    }
}

/// An event checked and ready for the bus.
struct Checked {
    channel: String,
    topic: Topic,
    payload: Bytes,
}

/// `POST /v1/publish`: `{"channel", "data"}` → `{"channel", "epoch", "offset"}`, answered once
/// the bus has the event.
pub(super) async fn publish(
    State(api): State<PublishApi>,
    request: Request,
) -> Result<Json<Landed>, Refusal> {
    let publisher = api.keys.publisher_of(request.headers());
    let result = match publisher.clone() {
        Some(publisher) => publish_as(&api, publisher, request).await,
        None => Err(Refusal::unauthorized()),
    };
    counted(&api, publisher.as_deref(), &result);
    result
}

/// Counts a call in the API's [`super::PublishStats`].
fn counted<T>(api: &PublishApi, publisher: Option<&str>, result: &Result<T, Refusal>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(refusal) => refusal.code(),
    };
    api.stats.count(publisher, outcome);
}

async fn publish_as(
    api: &PublishApi,
    publisher: Arc<str>,
    request: Request,
) -> Result<Json<Landed>, Refusal> {
    let scoped = idempotency_key(&request, &publisher)?;
    let key = scoped.as_deref().map(|k| bus_key(k, None)).transpose()?;
    let body = read_body(request).await?;
    let item: Publish = parse(&body)?;
    let checked = check(api, &publisher, item)?;
    let bus = api.bus.clone();
    // Read here: the task-local trace does not follow into the spawned task.
    let trace = switchyard_core::trace::current();
    let published = tokio::spawn(async move {
        land(&bus, checked, key, trace)
            .await
            .map_err(|(e, channel)| Refusal::bus(&e, &channel))
    })
    .await
    .map_err(|e| Refusal::bus(&BusError::Unavailable(e.to_string()), ""))??;
    Ok(Json(published))
}

/// `POST /v1/publish/batch`: `{"events": [{"channel", "data"}, ...]}` → `{"results": [...]}`.
/// Any bad item refuses the whole batch (nothing published); a bus failure midway answers 503
/// with the results that landed and the index that failed.
pub(super) async fn batch(
    State(api): State<PublishApi>,
    request: Request,
) -> Result<Json<BatchLanded>, Refusal> {
    let publisher = api.keys.publisher_of(request.headers());
    let result = match publisher.clone() {
        Some(publisher) => batch_as(&api, publisher, request).await,
        None => Err(Refusal::unauthorized()),
    };
    counted(&api, publisher.as_deref(), &result);
    result
}

async fn batch_as(
    api: &PublishApi,
    publisher: Arc<str>,
    request: Request,
) -> Result<Json<BatchLanded>, Refusal> {
    let scoped = idempotency_key(&request, &publisher)?;
    let body = read_body(request).await?;
    let batch: Batch = parse(&body)?;
    let count = batch.events.len();
    if count == 0 {
        return Err(Refusal::bad_request(
            "events: a batch needs at least one event",
        ));
    }
    if count > api.max_batch {
        return Err(Refusal::too_large(format!(
            "events: {count} events is over the most of {} in one batch",
            api.max_batch
        )));
    }
    let checked = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, item)| check(api, &publisher, item).map_err(|r| r.at(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = (0..checked.len())
        .map(|i| scoped.as_deref().map(|k| bus_key(k, Some(i))).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let bus = api.bus.clone();
    let trace = switchyard_core::trace::current();
    let done = tokio::spawn(async move {
        let mut results = Vec::with_capacity(checked.len());
        for (i, (item, key)) in checked.into_iter().zip(keys).enumerate() {
            match land(&bus, item, key, trace).await {
                Ok(landed) => results.push(landed),
                Err((e, channel)) => {
                    return Err(Refusal::bus(&e, &channel).at(i).with_results(results));
                }
            }
        }
        Ok(results)
    })
    .await
    .map_err(|e| Refusal::bus(&BusError::Unavailable(e.to_string()), ""))??;
    Ok(Json(BatchLanded { results: done }))
}

/// The body, whole, within the router's body limit (413 over it).
async fn read_body(request: Request) -> Result<Bytes, Refusal> {
    Bytes::from_request(request, &()).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::too_large(format!("the request body is over the limit: {e}"))
        } else {
            Refusal::bad_request(format!("the request body could not be read: {e}"))
        }
    })
}

/// A JSON body, strictly: unknown or missing fields, trailing text and bad JSON are 400
/// `bad_request` naming where (`events[2].data: missing field`), and the batch item's index.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let index = e.path().iter().find_map(|s| match s {
            Segment::Seq { index } => Some(*index),
            _ => None,
        });
        let path = e.path().to_string();
        let refusal = if path == "." {
            Refusal::bad_request(format!("malformed JSON body: {}", e.inner()))
        } else {
            Refusal::bad_request(format!("{path}: {}", e.inner()))
        };
        match index {
            Some(i) => refusal.indexed(i),
            None => refusal,
        }
    })?;
    de.end()
        .map_err(|e| Refusal::bad_request(format!("malformed JSON body: {e}")))?;
    Ok(value)
}

/// Checks one event for `publisher`: the channel's name and catalog entry, the publisher's
/// right to it, and `data`'s compact size against the channel's limit.
fn check(api: &PublishApi, publisher: &Arc<str>, item: Publish) -> Result<Checked, Refusal> {
    let resolved: Resolved = api
        .catalog
        .resolve(&item.channel)
        .map_err(|e| Refusal::channel(&e))?;
    if !resolved.may_publish(publisher) {
        return Err(Refusal::forbidden(publisher, resolved.name().as_str()));
    }
    let payload = compact(&item.data);
    resolved
        .check_payload(payload.len())
        .map_err(|e| Refusal::payload(&e))?;
    Ok(Checked {
        channel: resolved.name().as_str().to_owned(),
        topic: resolved.topic(),
        payload,
    })
}
