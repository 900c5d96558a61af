//! The benchmarks' library: what the `switchyard-bench` binary shares with the tests — the soak
//! (`soak`), which `tests/soak.rs` runs small, in-process, as a CI check of its counts.

pub mod soak;
