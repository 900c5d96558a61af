//! bff-mobile's streamed file routes (`/v1/files/…`, docs/files.md) against the real binary,
//! started from its shipped configuration, and the statements service in this process: a 1 GiB
//! download and a 512 MiB upload with the gateway's memory flat, a slow reader, a resumed
//! download, a cancel reaching the service, 413 early, 401 and refused names. The scenarios are
//! `test_support::files`, shared with bff-web.

use std::path::PathBuf;

use demo_services::statements;
use test_support::files::{self, Backend, Counters, Gateway};
use test_support::instance::Instance;
use test_support::process::Spawned;

const BIN: &str = env!("CARGO_BIN_EXE_bff-mobile");

/// The statements service, in this process, on a scratch receipts directory.
struct Service {
    instance: Instance<std::io::Error>,
    stats: statements::Stats,
    dir: PathBuf,
}

impl Backend for Service {
    fn counters(&self) -> Counters {
        Counters {
            downloads_dropped: self.stats.downloads_dropped(),
            bytes_sent: self.stats.bytes_sent(),
            receipts_stored: self.stats.receipts_stored(),
            receipts_failed: self.stats.receipts_failed(),
        }
    }
    fn url(&self) -> String {
        self.instance.url("")
    }
    fn receipts_of(&self, user: &str) -> PathBuf {
        self.dir.join(user)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The service, and the gateway binary in front of it (uploads limited to `limit` when given).
async fn start(limit: Option<u64>) -> (Service, Spawned, Gateway) {
    let dir = std::env::temp_dir().join(test_support::unique_name("receipts"));
    let config = statements::Config {
        receipts_dir: dir.clone(),
        ..statements::Config::default()
    };
    let (router, stats) = statements::app(&config).expect("the statements service");
    let server = config.server.clone();
    let instance = Instance::start("statements", move |listener, shutdown| async move {
        switchyard_server::server::serve_with(listener, router, shutdown, &server).await
    })
    .await;
    let (spawned, gateway) =
        files::spawn_gateway(BIN, bff_mobile::ENV_PREFIX, &instance.url(""), limit);
    (
        Service {
            instance,
            stats,
            dir,
        },
        spawned,
        gateway,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_download_streams_with_flat_memory() {
    let (_service, _gw, gateway) = start(None).await;
    let growth = files::large_download(&gateway, 1024 * 1024 * 1024).await;
    eprintln!("bff-mobile: 1 GiB download, peak RSS growth {growth} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_mib_upload_streams_with_flat_memory() {
    let (service, _gw, gateway) = start(None).await;
    let growth = files::large_upload(&gateway, &service, 512 * 1024 * 1024).await;
    eprintln!("bff-mobile: 512 MiB upload, peak RSS growth {growth} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_service_instead_of_filling_the_gateway() {
    let (service, _gw, gateway) = start(None).await;
    let (received, sent, growth) = files::slow_reader(&gateway, &service, 4).await;
    eprintln!(
        "bff-mobile: slow reader got {received} B, service sent {sent} B, growth {growth} KiB"
    );
}

#[tokio::test]
async fn a_cut_download_resumes_with_a_range() {
    let (service, _gw, gateway) = start(None).await;
    files::range_resume(&gateway, &service).await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_download_at_the_service() {
    let (service, _gw, gateway) = start(None).await;
    files::cancel_reaches_backend(&gateway, &service).await;
}

#[tokio::test]
async fn uploads_over_the_limit_get_413_early() {
    let limit = 1024 * 1024;
    let (service, _gw, gateway) = start(Some(limit)).await;
    files::over_limit_is_refused_early(&gateway, &service, limit).await;
}

#[tokio::test]
async fn strangers_get_401_and_paths_are_refused() {
    let (service, _gw, gateway) = start(None).await;
    files::refuses_strangers_and_paths(&gateway, &service).await;
}
