//! Who uses what, by API version × client: the [`Usage`] of a request, the guard of an open
//! socket ([`ConnectionGuard`], which learns the socket's client from its handshake) and of a
//! held poll ([`PollGuard`]). Each is a relaxed increment (and a decrement when dropped) in a
//! table of atomics built at start.

use std::sync::atomic::Ordering;

use super::Metrics;

/// The (API version, client) of a request. The counting middleware puts it in the extensions of
/// socket upgrade requests (those with an `Upgrade` header; others pay no allocation): a socket
/// gateway holds [`Usage::connection`]'s guard for the life of the upgraded socket.
#[derive(Clone, Debug)]
pub struct Usage {
    metrics: Metrics,
    version: usize,
    client: usize,
}

impl Usage {
    pub(super) fn new(metrics: Metrics, version: usize, client: usize) -> Self {
        Self {
            metrics,
            version,
            client,
        }
    }

    /// Its index in the tables by version × client.
    pub(super) fn index(&self) -> usize {
        self.version * self.metrics.inner.clients.len() + self.client
    }

    /// Counts an upgraded socket as open until the guard is dropped, and as opened once its
    /// handshake names its client ([`ConnectionGuard::identify`]) or it closes without one.
    pub fn connection(&self) -> ConnectionGuard {
        if let Some(live) = self.metrics.inner.connections.get(self.index()) {
            live.fetch_add(1, Ordering::Relaxed);
        }
        ConnectionGuard {
            usage: self.clone(),
            identified: false,
        }
    }

    /// Counts a held poll until the guard is dropped.
    pub fn held_poll(&self) -> PollGuard {
        if let Some(held) = self.metrics.inner.held_polls.get(self.index()) {
            held.fetch_add(1, Ordering::Relaxed);
        }
        PollGuard {
            usage: self.clone(),
        }
    }
}

/// An open socket, counted in `switchyard_connections` until dropped, under the client of its
/// upgrade request until its handshake names one.
#[derive(Debug)]
pub struct ConnectionGuard {
    usage: Usage,
    identified: bool,
}

impl ConnectionGuard {
    /// The socket's handshake (graphql-ws `connection_init`, mobile `auth`) was accepted, naming
    /// the client `client` (`name/version`, bounded like `X-Client-App`) or none (the upgrade
    /// request's client stays). The first call counts the socket as opened; later ones (a
    /// re-authentication) change nothing.
    pub fn identify(&mut self, client: Option<&str>) {
        if self.identified {
            return;
        }
        self.identified = true;
        let inner = &self.usage.metrics.inner;
        if let Some(client) = client {
            let index = self.usage.metrics.client_index(Some(client.as_bytes()));
            if index != self.usage.client {
                if let Some(live) = inner.connections.get(self.usage.index()) {
                    live.fetch_sub(1, Ordering::Relaxed);
                }
                self.usage.client = index;
                if let Some(live) = inner.connections.get(self.usage.index()) {
                    live.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(opened) = inner.connections_opened.get(self.usage.index()) {
            opened.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        // A socket that closed before its handshake was opened all the same.
        self.identify(None);
        let inner = &self.usage.metrics.inner;
        if let Some(live) = inner.connections.get(self.usage.index()) {
            live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A held poll, counted in `switchyard_held_polls` until dropped.
#[derive(Debug)]
pub struct PollGuard {
    usage: Usage,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(held) = self.usage.metrics.inner.held_polls.get(self.usage.index()) {
            held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
