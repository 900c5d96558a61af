//! The operations running on one socket: subscriptions joined to shared executions
//! ([`crate::fanout`]) and single-result operations (queries, mutations) run on the socket's
//! task, each under the id its client gave it. Which executions a subscription may share is
//! decided in [`super::sharing`], from what its document can reach. The protocol
//! ([`super::protocol`]) decides when an operation starts and what its frames become on the
//! wire; nothing here reads or writes the socket.

use std::collections::HashMap;

use async_graphql::{ObjectType, SubscriptionType};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use switchyard_core::channels::{Catalog, Subscriber};
use tokio_stream::StreamMap;

use super::Socket;
use super::sharing::{Root, Share, root_fields};
use crate::auth::Principal;
use crate::fanout::{Frame, Visibility};
use crate::request::{RequestBody, with_principal};

/// Every operation active on a socket.
#[derive(Default)]
pub(super) struct Running {
    /// The subscriptions.
    pub(super) streams: Streams,
    /// The single-result operations.
    pub(super) singles: Singles,
}

/// A socket's subscriptions, by id.
#[derive(Default)]
pub(super) struct Streams {
    streams: StreamMap<String, SubStream>,
    active: HashMap<String, Active>,
    /// Where skipped state values are counted (the gateway's metrics).
    pub(super) conflations: Option<switchyard_server::metrics::Counter>,
}

struct Active {
    /// Whether it is a state subscription (conflated rather than cut off when the client lags).
    state: bool,
    /// The names of the channels it reads (`None`: a name not known before running).
    channels: Vec<Option<String>>,
}

/// A socket's single-result operations, by id.
#[derive(Default)]
pub(super) struct Singles {
    futures: FuturesUnordered<Single>,
    /// Active single-result operations, by id, with the generation of their future (an id
    /// completed by the client and reused must not receive the old operation's result).
    ids: HashMap<String, u64>,
    next: u64,
}

type Single = BoxFuture<'static, (String, u64, Frame)>;

impl Running {
    /// Whether an operation with this id is active.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.streams.active.contains_key(id) || self.singles.ids.contains_key(id)
    }

    /// Operations active now.
    pub(super) fn len(&self) -> usize {
        self.streams.active.len() + self.singles.ids.len()
    }

    /// The client completed `id`: a subscription leaves its execution; a single-result
    /// operation completes on its own, and its result is dropped.
    pub(super) fn complete(&mut self, id: &str) {
        self.streams.streams.remove(id);
        self.streams.active.remove(id);
        self.singles.ids.remove(id);
    }

    /// Starts an operation: a shared execution for subscriptions, a local future otherwise.
    pub(super) fn start<Q, M, S>(
        &mut self,
        ctx: &Socket<Q, M, S>,
        id: String,
        payload: RequestBody,
        principal: Option<Principal>,
    ) where
        Q: ObjectType + 'static,
        M: ObjectType + 'static,
        S: SubscriptionType + 'static,
    {
        let variables = payload.variables.clone().unwrap_or(Value::Null);
        let root = root_fields(
            &payload.query,
            payload.operation_name.as_deref(),
            &variables,
        );
        let query = payload.query.clone();
        let operation_name = payload.operation_name.clone();
        match root {
            Some(Root::Subscription(reach)) => {
                let share = reach.share(&ctx.limits, &ctx.catalog);
                let state = reach.is_state(&ctx.limits, &ctx.catalog);
                // A public execution runs with no principal at all, so nothing user-scoped can
                // ever end up in results shared across principals; anything else is keyed by
                // the principal (anonymous sockets share only with anonymous ones), and by the
                // token's claims too when a channel's rule may read them.
                let (visibility, principal) = match share {
                    Share::Public => (Visibility::Public, None),
                    Share::Principal => {
                        let visibility = match &principal {
                            Some(p) => Visibility::User {
                                subject: p.user.to_string(),
                                claims: reach
                                    .has_channel()
                                    .then(|| serde_json::to_string(&*p.claims).unwrap_or_default()),
                            },
                            None => Visibility::Anonymous,
                        };
                        (visibility, principal)
                    }
                };
                let make_request = move || with_principal(payload.into_request(), principal);
                let sub = ctx.fanout.subscribe(
                    &query,
                    &variables,
                    operation_name.as_deref(),
                    visibility,
                    (state, reach.starts_after_a_position()),
                    make_request,
                );
                let stream = SubStream {
                    initial: sub.initial.into(),
                    rx: tokio_stream::wrappers::BroadcastStream::new(sub.rx),
                    execution: sub.execution,
                };
                self.streams.streams.insert(id.clone(), stream);
                let channels = reach.channel_names();
                self.streams.active.insert(id, Active { state, channels });
            }
            // Queries, mutations and anything unparsable: one result (syntax errors included).
            _ => {
                let make_request = move || with_principal(payload.into_request(), principal);
                let schema = ctx.schema.clone();
                let singles = &mut self.singles;
                singles.next += 1;
                let generation = singles.next;
                singles.ids.insert(id.clone(), generation);
                singles.futures.push(Box::pin(async move {
                    let response = schema.execute(make_request()).await;
                    (id, generation, crate::fanout::encode(&response, true))
                }));
            }
        }
    }
}

impl Streams {
    /// Ends every subscription reading a channel `who` may no longer subscribe to (or one whose
    /// name was not known before running), returning their ids: after a re-authentication
    /// whose token has other claims.
    pub(super) fn recheck(&mut self, catalog: &Catalog, who: &Subscriber) -> Vec<String> {
        let admitted = |name: &Option<String>| {
            name.as_deref()
                .is_some_and(|n| catalog.resolve(n).is_ok_and(|r| r.may_subscribe(who)))
        };
        let refused: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| !a.channels.iter().all(admitted))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &refused {
            self.streams.remove(id);
            self.active.remove(id);
        }
        refused
    }

    /// Whether no subscription is active.
    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The next frame of a subscription (an `error` or `complete` frame ends it), or `Err` with
    /// how many results a stream subscription missed because its client fell behind; a state
    /// subscription that falls behind skips to its newest value instead. `None` when none is
    /// active. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<Result<(String, Frame), u64>> {
        loop {
            let (id, item) = self.streams.next().await?;
            match item {
                Ok(frame) => {
                    if !matches!(frame, Frame::Next(_)) {
                        self.streams.remove(&id);
                        self.active.remove(&id);
                    }
                    return Some(Ok((id, frame)));
                }
                Err(missed) => {
                    if !self.active.get(&id).is_some_and(|a| a.state) {
                        return Some(Err(missed));
                    }
                    // State subscriptions conflate: the next frame is the newest value.
                    if let Some(c) = &self.conflations {
                        c.add(missed);
                    }
                }
            }
        }
    }
}

impl Singles {
    /// Whether no single-result operation is running.
    pub(super) fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

    /// The result of the next single-result operation to finish, unless its client completed
    /// it meanwhile (then it is dropped). `None` when none is running. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<(String, Frame)> {
        loop {
            let (id, generation, frame) = self.futures.next().await?;
            if self.ids.get(&id) == Some(&generation) {
                self.ids.remove(&id);
                return Some((id, frame));
            }
            // Completed by the client meanwhile: its result is dropped.
        }
    }
}

/// A socket's view of a shared execution: the results it joined after (the latest one, or what
/// an execution starting after a position had emitted), then the broadcast. The guard is
/// dropped after the receiver (field order), so a paced execution sees the reader gone.
struct SubStream {
    initial: std::collections::VecDeque<Frame>,
    rx: tokio_stream::wrappers::BroadcastStream<Frame>,
    execution: crate::fanout::ExecutionGuard,
}

impl futures::Stream for SubStream {
    type Item = Result<Frame, u64>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(f) = self.initial.pop_front() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        let polled = self.rx.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.execution.taken();
        }
        polled.map(|o| {
            o.map(|r| {
                r.map_err(|tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)| n)
            })
        })
    }
}
