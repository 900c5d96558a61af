//! The bff-device binary alone, the production shape: started with its example config file, it
//! serves /healthz, reports not ready while its backends are down, and stops cleanly on SIGTERM.

#[tokio::test]
async fn runs_alone_from_its_config_file_and_stops_on_sigterm() {
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/bff-device.toml");
    test_support::process::assert_runs_alone(
        env!("CARGO_BIN_EXE_bff-device"),
        &config,
        "SWITCHYARD_DEVICE",
    )
    .await;
}
