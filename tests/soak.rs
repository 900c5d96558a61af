//! The soak's CI version (issue 16): `switchyard-bench soak` (crates/bench/src/soak.rs) run small
//! and in-process — 500 graphql-ws and 500 mobile sockets and 100 polling devices for 60 s at
//! 100 events/s over 20 channels, the exchange backend restarted a third of the way in and the
//! bus (a private `redis-server`) two thirds of the way in. Counts only, no timing: no event
//! lost without a signal, no duplicate, every client caught up at the end, and the broker
//! restart signalled as gaps. The full soak (10,000 sockets, 1,000 devices, 10 minutes, RSS) is
//! the bench's: `cargo run --release -p bench -- soak`.
//!
//! Needs `redis-server` on PATH (scripts/services installs it).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_soak_loses_nothing_without_a_signal_and_duplicates_nothing() {
    let report = bench::soak::run(bench::soak::Args::small(500, 500, 100, 60))
        .await
        .expect("the soak runs");
    println!("{report:?}");
    assert!(report.published > 0, "{report:?}");
    // Every client (1,100) got events.
    assert!(report.delivered > 1_100, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(report.silent_losses, 0, "{report:?}");
    assert_eq!(report.behind, 0, "{report:?}");
    // The restarted Redis lost the history: the clients were told.
    assert!(report.gaps > 0, "{report:?}");
}
