//! The bff-mobile binary alone, the production shape: started with its example config file, it
//! serves /healthz, reports not ready while its backends are down, and stops cleanly on SIGTERM.

use std::path::Path;
use std::time::Duration;

use test_support::process::Spawned;

#[tokio::test]
async fn runs_alone_from_its_config_file_and_stops_on_sigterm() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/bff-mobile.toml");
    // Backends that are not running: the gateway must still start, serve health, and not be ready.
    let mut gw = Spawned::start(
        env!("CARGO_BIN_EXE_bff-mobile"),
        &config,
        "SWITCHYARD_MOBILE",
        &[(
            "SWITCHYARD_MOBILE__BACKENDS__EXCHANGE__BASE_URL",
            "http://127.0.0.1:9",
        )],
    );
    let health = reqwest::get(format!("{}/healthz", gw.url()))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", gw.url()))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_ne!(body["checks"]["exchange"], "ok", "{body}");
    let status = gw.stop_with("-TERM", Duration::from_secs(15));
    assert!(status.success(), "{status}");
}
