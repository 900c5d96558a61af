//! Buses for the tests that run against every implementation: the in-memory bus, and the Redis,
//! NATS and RabbitMQ buses on the real servers of this machine (127.0.0.1:6379, :4222 and the
//! RabbitMQ stream port :5552 with its Redis state store, started by `scripts/services`). Each kit has a namespace of its own (test-support's
//! [`test_support::unique_name`]), so tests run in parallel and repeatedly without seeing each
//! other; a test that ends normally deletes its keys and streams. A broker that is down makes the
//! test fail, never skip.
//!
//! [`Kind::NatsChannels`] is the NATS bus with every topic a channel of one pattern (the group
//! layout: one stream for all of them, one subject each), so every suite also runs on it.
//!
//! This is the core's adapter, not a copy of a shared fixture: it builds the core's own bus
//! types, which test-support cannot name (the core's tests depend on it).

#![allow(dead_code, unreachable_pub)]

mod own_broker;
pub mod seen;

use std::sync::{Arc, Mutex};

use switchyard_core::bus::Bus;
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::nats::NatsBus;
use switchyard_core::bus::rabbitmq::{self, RabbitBus};
use switchyard_core::bus::redis::RedisBus;
use switchyard_core::bus::{BusConfig, BusKind, BusStateConfig, Retention};

// Not every test file that includes this module stops a broker of its own.
#[allow(unused_imports)]
pub use own_broker::OwnBroker;

/// Which bus a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
    Nats,
    Rabbitmq,
    /// NATS, every topic a channel of one group ([`Retention::grouped`]).
    NatsChannels,
}

impl Kind {
    /// Whether this is a NATS bus (either layout).
    pub fn is_nats(self) -> bool {
        matches!(self, Kind::Nats | Kind::NatsChannels)
    }
}

/// The group every topic of a [`Kind::NatsChannels`] kit belongs to.
pub const GROUP: &str = "conformance.{topic}";

/// Makes buses of one kind sharing one namespace (for brokers: instances of one deployment).
pub struct Kit {
    pub kind: Kind,
    pub prefix: String,
    pub url: Option<String>,
    made: Mutex<Vec<Made>>,
}

enum Made {
    Memory,
    Redis(Arc<RedisBus>),
    Nats(Arc<NatsBus>),
    Rabbitmq(Arc<RabbitBus>),
}

impl Kit {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            prefix: test_support::unique_name("test"),
            url: None,
            made: Mutex::new(Vec::new()),
        }
    }

    /// A kit on a broker of its own at `url`.
    pub fn at(kind: Kind, url: &str) -> Self {
        Self {
            url: Some(url.to_owned()),
            ..Self::new(kind)
        }
    }

    pub fn config(&self, history: usize) -> BusConfig {
        BusConfig {
            kind: match self.kind {
                Kind::Memory => BusKind::Memory,
                Kind::Redis => BusKind::Redis,
                Kind::Nats | Kind::NatsChannels => BusKind::Nats,
                Kind::Rabbitmq => BusKind::Rabbitmq,
            },
            url: self.url.clone().unwrap_or_default(),
            prefix: self.prefix.clone(),
            history_events: history,
            connect_timeout_ms: 1_000,
            operation_timeout_ms: 2_000,
            reconnect_initial_ms: 20,
            reconnect_max_ms: 200,
            idempotency_window_ms: 120_000,
            state: (self.kind == Kind::Rabbitmq).then(|| BusStateConfig::redis("")),
            // Buses built here are `NatsBus::with` a retention that says the layout itself.
            nats_pattern_streams: self.kind == Kind::NatsChannels,
        }
    }

    /// A new bus instance of `config` (from [`Self::config`]) keeping what `retention` says.
    pub fn configured(&self, config: &BusConfig, retention: Retention) -> Arc<dyn Bus> {
        match self.kind {
            Kind::Memory => {
                self.made.lock().expect("kit").push(Made::Memory);
                Arc::new(MemoryBus::with(retention, config.idempotency_window()))
            }
            Kind::Redis => {
                let bus = Arc::new(RedisBus::with(config, retention));
                self.made
                    .lock()
                    .expect("kit")
                    .push(Made::Redis(bus.clone()));
                bus
            }
            Kind::Nats | Kind::NatsChannels => {
                let retention = if self.kind == Kind::NatsChannels {
                    retention.grouped(GROUP)
                } else {
                    retention
                };
                let bus = Arc::new(NatsBus::with(config, retention));
                self.made.lock().expect("kit").push(Made::Nats(bus.clone()));
                bus
            }
            Kind::Rabbitmq => {
                let state = rabbitmq::state_store(config, retention.clone());
                let bus = Arc::new(RabbitBus::with(config, retention, state));
                self.made
                    .lock()
                    .expect("kit")
                    .push(Made::Rabbitmq(bus.clone()));
                bus
            }
        }
    }

    /// A new bus instance keeping `history` events per topic.
    pub fn bus(&self, history: usize) -> Arc<dyn Bus> {
        self.typed(history).0
    }

    /// A Redis bus instance (the kit must be a Redis kit).
    pub fn redis(&self, history: usize) -> Arc<RedisBus> {
        let bus = Arc::new(RedisBus::new(&self.config(history)));
        self.made
            .lock()
            .expect("kit")
            .push(Made::Redis(bus.clone()));
        bus
    }

    /// A NATS bus instance (the kit must be a NATS kit).
    pub fn nats(&self, history: usize) -> Arc<NatsBus> {
        let mut retention = Retention::new(history, None);
        if self.kind == Kind::NatsChannels {
            retention = retention.grouped(GROUP);
        }
        let bus = Arc::new(NatsBus::with(&self.config(history), retention));
        self.made.lock().expect("kit").push(Made::Nats(bus.clone()));
        bus
    }

    /// A RabbitMQ bus instance (the kit must be a RabbitMQ kit); its state store
    /// ([`RabbitBus::state`]) is its lease service.
    pub fn rabbitmq(&self, history: usize) -> Arc<RabbitBus> {
        let bus = Arc::new(RabbitBus::new(&self.config(history)));
        self.made
            .lock()
            .expect("kit")
            .push(Made::Rabbitmq(bus.clone()));
        bus
    }

    /// A new bus instance and its received-message counter.
    pub fn typed(&self, history: usize) -> (Arc<dyn Bus>, Box<dyn Fn() -> u64 + Send + Sync>) {
        match self.kind {
            Kind::Memory => {
                self.made.lock().expect("kit").push(Made::Memory);
                (Arc::new(MemoryBus::new(history)), Box::new(|| 0))
            }
            Kind::Redis => {
                let bus = self.redis(history);
                let b = bus.clone();
                (bus, Box::new(move || b.stats().received))
            }
            Kind::Nats | Kind::NatsChannels => {
                let bus = self.nats(history);
                let b = bus.clone();
                (bus, Box::new(move || b.stats().received))
            }
            Kind::Rabbitmq => {
                let bus = self.rabbitmq(history);
                let b = bus.clone();
                (bus, Box::new(move || b.stats().received))
            }
        }
    }

    /// Deletes what this kit's buses stored on the broker.
    pub async fn cleanup(&self) {
        // Each RabbitMQ instance deletes the streams it used (the protocol cannot list them).
        let rabbits: Vec<Arc<RabbitBus>> = self
            .made
            .lock()
            .expect("kit")
            .iter()
            .filter_map(|m| match m {
                Made::Rabbitmq(b) => Some(b.clone()),
                _ => None,
            })
            .collect();
        for bus in rabbits {
            bus.delete_all().await.expect("delete test streams");
        }
        let first = self.made.lock().expect("kit").first().map(|m| match m {
            Made::Memory => None,
            Made::Redis(b) => Some(Made::Redis(b.clone())),
            Made::Nats(b) => Some(Made::Nats(b.clone())),
            Made::Rabbitmq(_) => None,
        });
        match first.flatten() {
            Some(Made::Redis(b)) => {
                b.delete_all().await.expect("delete test keys");
            }
            Some(Made::Nats(b)) => {
                b.delete_all().await.expect("delete test streams");
            }
            _ => {}
        }
    }
}

/// Declares, for each test function `name(Kind)` given, one test per bus kind:
/// `memory::name`, `redis::name`, `nats::name`, `nats_channels::name`, `rabbitmq::name`.
#[macro_export]
macro_rules! for_every_bus {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() { super::$name($crate::common::Kind::Memory).await })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() { super::$name($crate::common::Kind::Redis).await })*
        }
        mod nats {
            $(#[tokio::test]
            async fn $name() { super::$name($crate::common::Kind::Nats).await })*
        }
        mod rabbitmq {
            $(#[tokio::test]
            async fn $name() { super::$name($crate::common::Kind::Rabbitmq).await })*
        }
        mod nats_channels {
            $(#[tokio::test]
            async fn $name() { super::$name($crate::common::Kind::NatsChannels).await })*
        }
    };
}
