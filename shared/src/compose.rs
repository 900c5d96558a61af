//! Composition: run a set of backend calls concurrently under one deadline and collect every
//! part's value or error.
//!
//! A [`Plan`] lists parts; each is [`Need::Required`] or [`Need::Optional`]. Running it makes the
//! calls concurrently. A failed required part fails the whole at once (the outstanding calls are
//! dropped, which cancels them); a failed optional part is data: [`Composed::get`] returns its
//! error and the other parts stay intact. Identical GETs in one plan are made once. Dropping the
//! future returned by [`Plan::run`] (the client went away) cancels every outstanding call.
//!
//! A plan does not know any wire format: gateways turn [`Composed`] into GraphQL, JSON or frames.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::upstream::{Call, UpstreamError, UpstreamErrorKind, Upstreams};

/// Whether a part's failure fails the whole composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Its failure fails the composition, naming the backend.
    Required,
    /// Its failure is reported beside the other parts' values.
    Optional,
}

/// A typed handle to one part of a plan; redeem it with [`Composed::get`].
#[derive(Debug)]
pub struct Part<T> {
    index: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Part<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Part<T> {}

type Decoded = Box<dyn Any + Send + Sync>;
type Decoder = fn(&Arc<str>, &Bytes) -> Result<Decoded, UpstreamError>;

struct PartSpec {
    call: usize,
    need: Need,
    decode: Decoder,
}

/// The calls to make, and how each part reads its answer.
pub struct Plan<'a> {
    upstreams: &'a Upstreams,
    calls: Vec<Call>,
    parts: Vec<PartSpec>,
    gets: HashMap<(Arc<str>, String), usize>,
}

impl<'a> Plan<'a> {
    /// An empty plan over these backends.
    pub fn new(upstreams: &'a Upstreams) -> Self {
        Self {
            upstreams,
            calls: Vec::new(),
            parts: Vec::new(),
            gets: HashMap::new(),
        }
    }

    /// Adds a GET of `path` at `backend`, decoded as JSON into `T`. An identical GET already in
    /// the plan is reused rather than made twice.
    pub fn get<T>(&mut self, backend: &str, path: impl Into<String>, need: Need) -> Part<T>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let call = Call::get(backend, path);
        let key = (call.backend.clone(), call.path.clone());
        let index = match self.gets.get(&key) {
            Some(&i) => i,
            None => {
                self.calls.push(call);
                self.gets.insert(key, self.calls.len() - 1);
                self.calls.len() - 1
            }
        };
        self.part(index, need)
    }

    /// Adds a POST of a JSON body (never shared, never retried).
    pub fn post<B, T>(
        &mut self,
        backend: &str,
        path: impl Into<String>,
        body: &B,
        need: Need,
    ) -> Part<T>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.calls.push(Call::post_json(backend, path, body));
        self.part(self.calls.len() - 1, need)
    }

    fn part<T>(&mut self, call: usize, need: Need) -> Part<T>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        fn decode<T: DeserializeOwned + Send + Sync + 'static>(
            backend: &Arc<str>,
            body: &Bytes,
        ) -> Result<Decoded, UpstreamError> {
            crate::upstream::decode::<T>(backend, body).map(|v| Box::new(v) as Decoded)
        }
        self.parts.push(PartSpec {
            call,
            need,
            decode: decode::<T>,
        });
        Part {
            index: self.parts.len() - 1,
            _type: PhantomData,
        }
    }

    /// How many distinct calls the plan makes.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Makes every call concurrently; finishes by `deadline`.
    ///
    /// Returns the first required part's error as soon as it is known, or every part's outcome.
    pub async fn run(self, deadline: Instant) -> Result<Composed, UpstreamError> {
        let upstreams = self.upstreams;
        let mut pending: FuturesUnordered<_> = self
            .calls
            .iter()
            .enumerate()
            .map(|(i, call)| async move { (i, upstreams.execute(call, deadline).await) })
            .collect();
        let mut outcomes: Vec<Option<Result<Decoded, UpstreamError>>> =
            self.parts.iter().map(|_| None).collect();
        loop {
            let next = tokio::time::timeout_at(deadline, pending.next()).await;
            let (call, result) = match next {
                Ok(Some(done)) => done,
                Ok(None) => break,
                Err(_) => break, // The deadline passed; what is still missing timed out.
            };
            for (index, spec) in self
                .parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.call == call)
            {
                let backend = &self.calls[call].backend;
                let outcome = match &result {
                    Ok(body) => (spec.decode)(backend, body),
                    Err(e) => Err(e.clone()),
                };
                if let (Err(e), Need::Required) = (&outcome, spec.need) {
                    return Err(e.clone());
                }
                outcomes[index] = Some(outcome);
            }
        }
        let mut parts = Vec::with_capacity(outcomes.len());
        for (spec, outcome) in self.parts.iter().zip(outcomes) {
            let backend = self.calls[spec.call].backend.clone();
            let outcome = outcome.unwrap_or_else(|| {
                Err(UpstreamError {
                    backend: backend.clone(),
                    kind: UpstreamErrorKind::Timeout,
                })
            });
            if let (Err(e), Need::Required) = (&outcome, spec.need) {
                return Err(e.clone());
            }
            parts.push(PartOutcome { backend, outcome });
        }
        Ok(Composed { parts })
    }
}

struct PartOutcome {
    backend: Arc<str>,
    outcome: Result<Decoded, UpstreamError>,
}

/// Every part's value or error.
pub struct Composed {
    parts: Vec<PartOutcome>,
}

impl Composed {
    /// The part's decoded value, or the error that took its place.
    pub fn get<T: 'static>(&self, part: Part<T>) -> Result<&T, &UpstreamError> {
        match &self.parts[part.index].outcome {
            Ok(v) => Ok(v
                .downcast_ref::<T>()
                .unwrap_or_else(|| unreachable!("a Part<T> always decodes into a T"))),
            Err(e) => Err(e),
        }
    }

    /// The errors of the parts that failed (all of them optional), with their backends.
    pub fn errors(&self) -> impl Iterator<Item = &UpstreamError> {
        self.parts.iter().filter_map(|p| p.outcome.as_ref().err())
    }

    /// The backends the parts came from, in plan order.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<str>> {
        self.parts.iter().map(|p| &p.backend)
    }
}
