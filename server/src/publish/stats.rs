//! The publish API's calls by publisher × outcome, for `/metrics`: a table of atomics built from
//! `[publish].keys` at start (publishers are configured names, so the labels are bounded), one
//! relaxed increment per call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The outcomes a call is counted under: `ok`, then every refusal's code.
pub const OUTCOMES: [&str; 9] = [
    "ok",
    "bad_request",
    "not_in_catalog",
    "unauthorized",
    "forbidden",
    "payload_too_large",
    "bus_unavailable",
    "not_found",
    "method_not_allowed",
];

/// The publisher label of a call whose key named no publisher.
pub const UNKNOWN_PUBLISHER: &str = "unknown";

/// Calls by publisher × outcome. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PublishStats {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The configured publishers, sorted, then [`UNKNOWN_PUBLISHER`].
    publishers: Vec<Arc<str>>,
    /// At `publisher * OUTCOMES.len() + outcome`.
    calls: Box<[AtomicU64]>,
}

impl PublishStats {
    /// A table for `publishers` (duplicates are merged).
    pub(super) fn new<'a>(publishers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<Arc<str>> = publishers.into_iter().map(Arc::from).collect();
        names.sort();
        names.dedup();
        names.push(Arc::from(UNKNOWN_PUBLISHER));
        let calls = (0..names.len() * OUTCOMES.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        Self {
            inner: Arc::new(Inner {
                publishers: names,
                calls,
            }),
        }
    }

    /// Counts one call of `publisher` (`None`: no known key) that ended with `outcome` (`ok` or
    /// a refusal's code).
    pub(super) fn count(&self, publisher: Option<&str>, outcome: &str) {
        let names = &self.inner.publishers;
        let unknown = names.len() - 1;
        let p = publisher
            .and_then(|p| names[..unknown].binary_search_by(|n| (**n).cmp(p)).ok())
            .unwrap_or(unknown);
        let o = OUTCOMES.iter().position(|c| *c == outcome).unwrap_or(0);
        if let Some(counter) = self.inner.calls.get(p * OUTCOMES.len() + o) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every (publisher, outcome, count), zeros included.
    pub fn snapshot(&self) -> Vec<(Arc<str>, &'static str, u64)> {
        let mut out = Vec::with_capacity(self.inner.calls.len());
        for (p, name) in self.inner.publishers.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let n = self.inner.calls[p * OUTCOMES.len() + o].load(Ordering::Relaxed);
                out.push((name.clone(), *outcome, n));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_publisher_and_outcome() {
        let stats = PublishStats::new(["orders", "ops", "orders"]);
        stats.count(Some("orders"), "ok");
        stats.count(Some("orders"), "ok");
        stats.count(Some("ops"), "forbidden");
        stats.count(None, "unauthorized");
        stats.count(Some("stranger"), "ok");
        let snap = stats.snapshot();
        let get = |p: &str, o: &str| {
            snap.iter()
                .find(|(n, oc, _)| &**n == p && *oc == o)
                .map(|(_, _, v)| *v)
        };
        assert_eq!(snap.len(), 3 * OUTCOMES.len());
        assert_eq!(get("orders", "ok"), Some(2));
        assert_eq!(get("ops", "forbidden"), Some(1));
        assert_eq!(get("unknown", "unauthorized"), Some(1));
        assert_eq!(get("unknown", "ok"), Some(1));
    }
}
