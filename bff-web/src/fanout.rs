//! Shared subscription executions: identical GraphQL subscriptions (same document, variables and
//! operation name, and the same visibility) share ONE execution, and each result is serialised
//! once; every socket subscribed to it gets the same bytes.
//!
//! Visibility decides what "identical" means: a subscription whose root selection reaches only
//! public fields (rates) is shared by everybody and executed with no principal at all; any other
//! is keyed by its principal as well (the signed-in user, or "anonymous"), so two principals never
//! share an execution, whatever the document's shape (see `ws::sharing`); a `channel`
//! subscription is public only when its catalog entry is, and is keyed by the token's claims as
//! well (claim rules). A state subscription (rates, state channels) also remembers its latest
//! result, so a socket joining an execution that is already running starts with the current
//! value instead of waiting for the next change.
//!
//! A subscription that starts **after a position** (`channel(after:)`) is shared only with
//! identical ones — the same position — and only while its execution has emitted at most
//! [`JOIN_WINDOW`] results: the execution keeps what it emitted until then, and a socket joining
//! it gets all of it first, so it misses nothing a socket of its own would have replayed. This
//! is what a gap does to a shared live execution: every socket of it gets the same `resume`
//! position and subscribes again after it at about the same time — sharing one execution
//! again instead of running one each (which cost every socket tens of KiB and every event one
//! encoding per socket). While it has one reader, such an execution runs at that reader's pace
//! (a replay of a long history never overruns the socket's queue); with more, like a live one,
//! it never waits for a slow reader, which learns it lagged.
//!
//! Each subscriber reads from a bounded broadcast channel: a subscriber that falls more than its
//! capacity behind learns it lagged (the socket layer then conflates or cuts the client off). The
//! execution ends when its last subscriber leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use axum::extract::ws::Utf8Bytes;

use async_graphql::{ObjectType, Schema, SubscriptionType};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;

/// The window of an execution starting after a position: the results it keeps for joiners (or
/// the send queue, if shorter). Sockets told of one gap subscribe again within a few results; a
/// later joiner starts a new execution, whose window the next ones share.
const JOIN_WINDOW: usize = 16;

/// What one execution emits, already serialised.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    /// A result (`ExecutionResult` JSON) for a `next` message, shared by every subscriber.
    Next(Arc<Next>),
    /// Errors (`GraphQLError[]` JSON) for an `error` message: the operation never ran.
    Error(Bytes),
    /// The source stream ended.
    Complete,
}

/// One result of an execution, and its `next` message, built once for the operation id most
/// clients give it: the sockets of one execution get the same bytes without a copy, unless their
/// client named the operation differently (then each builds its own message).
#[derive(Debug)]
pub(crate) struct Next {
    /// The `ExecutionResult` JSON.
    pub(crate) payload: Bytes,
    /// The `next` message for the first operation id it was asked for: (id as JSON, message).
    wire: OnceLock<(Box<str>, Utf8Bytes)>,
}

impl Next {
    pub(crate) fn new(payload: Bytes) -> Self {
        Self {
            payload,
            wire: OnceLock::new(),
        }
    }

    /// The `next` message for the operation whose id, as a JSON string, is `id_json`.
    pub(crate) fn message(&self, id_json: &str, build: impl Fn() -> String) -> Utf8Bytes {
        let (id, message) = self
            .wire
            .get_or_init(|| (id_json.into(), Utf8Bytes::from(build())));
        if &**id == id_json {
            message.clone()
        } else {
            Utf8Bytes::from(build())
        }
    }
}

/// How an operation's results may be shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Visibility {
    /// The same for every client (executed without a principal).
    Public,
    /// Only for sockets that sent no token.
    Anonymous,
    /// Only for this user; with `claims` (the token's claims as JSON) only for tokens with
    /// exactly these claims.
    User {
        /// The user.
        subject: String,
        /// The token's claims, when the subscription's results may depend on them.
        claims: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    query: String,
    variables: String,
    operation_name: Option<String>,
    visibility: Visibility,
    /// Whether it starts after a position (then it is joined only within its window).
    from_position: bool,
}

/// One running execution.
pub(crate) struct Execution {
    tx: broadcast::Sender<Frame>,
    /// For an execution that starts after a position: signalled each time a reader takes a
    /// result (or leaves), so that while it has one reader it waits for room instead of
    /// running ahead of its socket.
    paced: Option<Arc<Notify>>,
    last: Mutex<Option<Frame>>,
    /// For an execution that starts after a position: every result it has emitted while it may
    /// still be joined (at most its window); `None` once it may not (or for a live one). A result
    /// is logged and sent under this lock, so a joiner gets each exactly once.
    window: Mutex<Option<Vec<Frame>>>,
    task: Mutex<Option<AbortHandle>>,
    registry: Weak<Mutex<HashMap<Key, Weak<Execution>>>>,
    key: Key,
    counts: Arc<Counts>,
}

/// Executions alive and their subscribers, over a registry's life (the registry itself holds
/// only the newest execution of a key: one whose window closed is no longer in it).
#[derive(Default)]
struct Counts {
    executions: AtomicUsize,
    subscribers: AtomicUsize,
}

impl Drop for Execution {
    fn drop(&mut self) {
        self.counts.executions.fetch_sub(1, Ordering::Relaxed);
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        if let Some(registry) = self.registry.upgrade() {
            let mut map = lock(&registry);
            // Only remove our own entry: a new execution may already have taken the key.
            if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&self.key);
            }
        }
    }
}

impl Execution {
    /// Sends `frame` to every reader, and logs it for joiners while the window is open (at
    /// most `window` results).
    fn emit(&self, frame: Frame, window_len: usize) {
        let mut window = lock(&self.window);
        if let Some(emitted) = window.as_mut() {
            if emitted.len() < window_len {
                emitted.push(frame.clone());
            } else {
                *window = None;
            }
        }
        // No receiver right now is fine: the last one is leaving and will drop us.
        let _ = self.tx.send(frame);
    }
}

/// Keeps a shared execution running while held. Drop it after the subscription's receiver.
pub(crate) struct ExecutionGuard(Arc<Execution>);

impl ExecutionGuard {
    fn new(execution: Arc<Execution>) -> Self {
        execution.counts.subscribers.fetch_add(1, Ordering::Relaxed);
        Self(execution)
    }

    /// The subscriber took a result: a paced execution may go on.
    pub(crate) fn taken(&self) {
        if let Some(room) = &self.0.paced {
            room.notify_one();
        }
    }
}

impl Drop for ExecutionGuard {
    fn drop(&mut self) {
        // A leaving reader no longer holds results back: a paced execution may go on.
        self.taken();
        self.0.counts.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket's subscription to a shared execution.
pub(crate) struct Subscription {
    /// Results to send first: the latest one (state subscriptions joining late), or what an
    /// execution starting after a position has emitted so far.
    pub(crate) initial: Vec<Frame>,
    /// The results from now on.
    pub(crate) rx: broadcast::Receiver<Frame>,
    /// Hold it as long as `rx` is read.
    pub(crate) execution: ExecutionGuard,
}

/// The registry of running executions of one schema.
pub(crate) struct Fanout<Q, M, S> {
    schema: Schema<Q, M, S>,
    executions: Arc<Mutex<HashMap<Key, Weak<Execution>>>>,
    capacity: usize,
    counts: Arc<Counts>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections only insert, remove or clone; poisoning cannot leave torn state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<Q, M, S> Fanout<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    /// A registry executing on `schema`; each subscriber may fall `capacity` results behind.
    pub(crate) fn new(schema: Schema<Q, M, S>, capacity: usize) -> Self {
        Self {
            schema,
            executions: Arc::new(Mutex::new(HashMap::new())),
            capacity: capacity.max(1),
            counts: Arc::new(Counts::default()),
        }
    }

    /// Executions running now.
    pub(crate) fn running(&self) -> usize {
        self.counts.executions.load(Ordering::Relaxed)
    }

    /// Subscribers of every execution running now (each holds its execution: the registry and
    /// the execution's task hold only weak references).
    pub(crate) fn subscribers(&self) -> usize {
        self.counts.subscribers.load(Ordering::Relaxed)
    }

    /// Joins the execution of `request` (built by `make`), starting it if none runs.
    ///
    /// `replay_latest` makes late joiners start with the latest result (state subscriptions);
    /// `from_position` says that the subscription starts after a position (see the module).
    pub(crate) fn subscribe(
        &self,
        query: &str,
        variables: &serde_json::Value,
        operation_name: Option<&str>,
        visibility: Visibility,
        (replay_latest, from_position): (bool, bool),
        make: impl FnOnce() -> async_graphql::Request,
    ) -> Subscription {
        let key = Key {
            query: query.to_owned(),
            variables: variables.to_string(),
            operation_name: operation_name.map(str::to_owned),
            visibility,
            from_position,
        };
        // An execution whose window has closed is released after the lock: its drop takes it.
        let mut closed = Vec::new();
        let mut map = lock(&self.executions);
        if let Some(execution) = map.get(&key).and_then(Weak::upgrade) {
            let joined = if from_position {
                // Within the window: everything it emitted, then the rest; after it: a new one.
                let window = lock(&execution.window);
                window
                    .as_ref()
                    .map(|emitted| (emitted.clone(), execution.tx.subscribe()))
            } else {
                let rx = execution.tx.subscribe();
                let initial = if replay_latest {
                    lock(&execution.last).clone().into_iter().collect()
                } else {
                    Vec::new()
                };
                Some((initial, rx))
            };
            if let Some((initial, rx)) = joined {
                return Subscription {
                    initial,
                    rx,
                    execution: ExecutionGuard::new(execution),
                };
            }
            closed.push(execution);
        }
        // An execution starting after a position runs at its one reader's pace — replaying a
        // long history never overruns the socket's queue — instead of cutting it off for
        // lagging; with more readers it waits for none (one slow socket must not hold back the
        // others), like a live one.
        let capacity = self.capacity;
        let window = capacity.min(JOIN_WINDOW);
        let (tx, rx) = broadcast::channel(capacity);
        let paced = from_position.then(|| Arc::new(Notify::new()));
        self.counts.executions.fetch_add(1, Ordering::Relaxed);
        let execution = Arc::new(Execution {
            paced: paced.clone(),
            tx: tx.clone(),
            last: Mutex::new(None),
            window: Mutex::new(from_position.then(Vec::new)),
            task: Mutex::new(None),
            registry: Arc::downgrade(&self.executions),
            key: key.clone(),
            counts: self.counts.clone(),
        });
        let weak = Arc::downgrade(&execution);
        let stream = self.schema.execute_stream(make());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut first = true;
            while let Some(response) = stream.next().await {
                let frame = encode(&response, first);
                first = false;
                if let Some(room) = &paced {
                    // Wait (holding no strong reference, so a leaving subscriber still ends
                    // the execution) until its one reader has room for one more result.
                    loop {
                        let notified = room.notified();
                        let mut notified = std::pin::pin!(notified);
                        notified.as_mut().enable();
                        match weak.upgrade() {
                            Some(execution)
                                if execution.tx.len() >= capacity
                                    && execution.tx.receiver_count() <= 1 => {}
                            Some(_) => break,
                            None => return,
                        }
                        notified.await;
                    }
                }
                let Some(execution) = weak.upgrade() else {
                    return;
                };
                if replay_latest {
                    *lock(&execution.last) = Some(frame.clone());
                }
                let ended = matches!(frame, Frame::Error(_));
                execution.emit(frame, window);
                if ended {
                    return;
                }
            }
            if let Some(execution) = weak.upgrade() {
                execution.emit(Frame::Complete, window);
            }
        });
        *lock(&execution.task) = Some(task.abort_handle());
        map.insert(key, Arc::downgrade(&execution));
        Subscription {
            initial: Vec::new(),
            rx,
            execution: ExecutionGuard::new(execution),
        }
    }
}

/// Serialises one response. The first response of a stream that never executed (syntax or
/// validation errors: no data, no error paths) is an `error` frame; anything else is `next`.
pub(crate) fn encode(response: &async_graphql::Response, first: bool) -> Frame {
    let not_executed = first
        && response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    if not_executed {
        Frame::Error(to_bytes(&response.errors))
    } else {
        Frame::Next(Arc::new(Next::new(to_bytes(response))))
    }
}

fn to_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // GraphQL responses are trees of strings, numbers and maps with string keys: serialising
    // them cannot fail; if it ever did, the client gets an error result rather than nothing.
    serde_json::to_vec(value)
        .unwrap_or_else(|e| {
            format!(r#"{{"errors":[{{"message":"cannot encode the result: {e}"}}]}}"#).into_bytes()
        })
        .into()
}
