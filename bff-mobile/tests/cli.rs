//! The bff-mobile binary alone, the production shape: started with its example config file, it
//! serves /healthz, reports not ready while its backends are down, and stops cleanly on SIGTERM.

use test_support::process::assert_runs_alone;

#[tokio::test]
async fn runs_alone_from_its_config_file_and_stops_on_sigterm() {
    assert_runs_alone(env!("CARGO_BIN_EXE_bff-mobile"), "SWITCHYARD_MOBILE").await;
}
