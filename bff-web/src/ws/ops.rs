//! The operations running on one socket: subscriptions joined to shared executions
//! ([`crate::fanout`]) and single-result operations (queries, mutations) run on the socket's
//! task, each under the id its client gave it. Which executions a subscription may share is
//! decided here, from the root fields its document can reach ([`root_fields`]). The protocol
//! ([`super::protocol`]) decides when an operation starts and what its frames become on the
//! wire; nothing here reads or writes the socket.

use std::collections::HashMap;

use async_graphql::{ObjectType, SubscriptionType};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio_stream::StreamMap;

use super::Socket;
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
}

struct Active {
    /// Whether it is a state subscription (conflated rather than cut off when the client lags).
    state: bool,
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
        let root = root_fields(&payload.query, payload.operation_name.as_deref());
        let query = payload.query.clone();
        let operation_name = payload.operation_name.clone();
        match root {
            Some(Root::Subscription(fields)) => {
                let limits = &ctx.limits;
                let public = fields
                    .iter()
                    .all(|f| f == "__typename" || limits.public.contains(&f.as_str()));
                let state = fields.iter().all(|f| limits.state.contains(&f.as_str()));
                // A public execution runs with no principal at all, so nothing user-scoped can
                // ever end up in results shared across principals; anything else is keyed by
                // the principal (anonymous sockets share only with anonymous ones).
                let (visibility, principal) = if public {
                    (Visibility::Public, None)
                } else {
                    let visibility = match &principal {
                        Some(p) => Visibility::User(p.user.to_string()),
                        None => Visibility::Anonymous,
                    };
                    (visibility, principal)
                };
                let make_request = move || with_principal(payload.into_request(), principal);
                let sub = ctx.fanout.subscribe(
                    &query,
                    &variables,
                    operation_name.as_deref(),
                    visibility,
                    state,
                    make_request,
                );
                let stream = SubStream {
                    initial: sub.initial,
                    rx: tokio_stream::wrappers::BroadcastStream::new(sub.rx),
                    _execution: sub.execution,
                };
                self.streams.streams.insert(id.clone(), stream);
                self.streams.active.insert(id, Active { state });
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

/// A socket's view of a shared execution: the replayed latest result, then the broadcast.
struct SubStream {
    initial: Option<Frame>,
    rx: tokio_stream::wrappers::BroadcastStream<Frame>,
    _execution: crate::fanout::ExecutionGuard,
}

impl futures::Stream for SubStream {
    type Item = Result<Frame, u64>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(f) = self.initial.take() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        self.rx.poll_next_unpin(cx).map(|o| {
            o.map(|r| {
                r.map_err(|tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)| n)
            })
        })
    }
}

pub(super) enum Root {
    /// A subscription, with every root field name its selection can reach.
    Subscription(Vec<String>),
    Other,
}

/// The most root field names collected from one subscription; a selection with more is
/// classified as user-scoped (never shared across principals) without looking further.
const MAX_ROOT_FIELDS: usize = 64;

/// The operation to run, and when it is a subscription every root field its selection can
/// reach: fields of the root selection set, of inline fragments in it and of fragments spread
/// into it (recursively), whatever their directives say. Over-approximating is the safe side:
/// a field listed here but skipped at run time can only make an execution less shared.
pub(super) fn root_fields(query: &str, operation_name: Option<&str>) -> Option<Root> {
    use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    if op.node.ty != OperationType::Subscription {
        return Some(Root::Other);
    }
    let mut fields = Vec::new();
    let mut pending = vec![&op.node.selection_set];
    let mut spread = std::collections::HashSet::new();
    while let Some(set) = pending.pop() {
        for item in &set.node.items {
            match &item.node {
                Selection::Field(f) => {
                    let name = f.node.name.node.as_str();
                    if !fields.iter().any(|n: &String| n == name) {
                        fields.push(name.to_owned());
                    }
                }
                Selection::InlineFragment(i) => pending.push(&i.node.selection_set),
                Selection::FragmentSpread(s) => {
                    let name = &s.node.fragment_name.node;
                    // Each fragment once: cycles and repeated spreads end here.
                    if spread.insert(name.clone()) {
                        match doc.fragments.get(name) {
                            Some(fragment) => pending.push(&fragment.node.selection_set),
                            // An unknown fragment fails validation; never share it.
                            None => fields.push(format!("...{name}")),
                        }
                    }
                }
            }
            if fields.len() > MAX_ROOT_FIELDS {
                fields.push("...".to_owned());
                return Some(Root::Subscription(fields));
            }
        }
    }
    Some(Root::Subscription(fields))
}
