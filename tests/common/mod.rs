//! What the end-to-end tests share: the patience every wait is bounded by, and one module per
//! subject — the stack through the launcher, the cluster fixtures (two instances of a gateway on
//! the real brokers), the deployment files as data, nginx run from a copy of the real
//! configuration, and the fault-injecting proxy with the live clients' tally (`faults.rs`). The
//! fixtures that do not need the gateways' types live in test-support.

// Each test file uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod deploy;
pub mod faults;
pub mod launcher;
pub mod nginx;

use std::time::Duration;

/// Longest wait for anything that should come promptly (a guard against hangs, not a timing).
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A server (gateway or demo service) run in-process on a loopback port, stopped within a bound.
pub type Running = test_support::instance::Instance<anyhow::Error>;
