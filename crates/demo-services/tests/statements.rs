//! The statements service over real HTTP, on its own: a receipt replaced answers 200, the
//! service's own size limit (413 before the body from `Content-Length`, no file left without
//! one), invalid users, names and rows, and the statement's headers.

use demo_services::statements::{self, Config};
use test_support::http::client;
use test_support::instance::Instance;

struct Service {
    instance: Instance<anyhow::Error>,
    dir: std::path::PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(max_receipt_bytes: u64) -> Service {
    let dir = std::env::temp_dir().join(test_support::unique_name("receipts"));
    let config = Config {
        receipts_dir: dir.clone(),
        max_receipt_bytes,
        max_rows: 1_000,
        ..Config::default()
    };
    let instance = Instance::start("statements", move |listener, stop| {
        statements::run(config, listener, stop)
    })
    .await;
    Service { instance, dir }
}

#[tokio::test]
async fn a_receipt_is_stored_whole_and_replaced() {
    let svc = start(1024).await;
    let put = |body: &'static str| {
        client()
            .put(svc.instance.url("/v1/receipts/alice/taxi.txt"))
            .body(body)
            .send()
    };
    let r = put("first").await.expect("an answer");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(
        v,
        serde_json::json!({"user": "alice", "name": "taxi.txt", "bytes": 5})
    );
    let r = put("second!").await.expect("an answer");
    assert_eq!(r.status(), 200);
    let stored = std::fs::read_to_string(svc.dir.join("alice/taxi.txt")).expect("stored");
    assert_eq!(stored, "second!");
    let names: Vec<_> = std::fs::read_dir(svc.dir.join("alice"))
        .expect("the user's directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["taxi.txt"], "no temporary file left");
}

#[tokio::test]
async fn a_receipt_over_the_limit_is_refused_and_leaves_nothing() {
    let svc = start(1024).await;
    let r = client()
        .put(svc.instance.url("/v1/receipts/alice/big.bin"))
        .body(vec![0u8; 1025])
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(v["error"]["code"], "body_too_large");
    let left = std::fs::read_dir(svc.dir.join("alice"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn bad_users_names_and_rows_are_refused() {
    let svc = start(1024).await;
    for (path, code) in [
        ("/v1/receipts/al%20ice/a.txt", "invalid_user"),
        ("/v1/receipts/alice/..%2Fx", "invalid_name"),
        ("/v1/receipts/alice/.env", "invalid_name"),
    ] {
        let r = client()
            .put(svc.instance.url(path))
            .body("x")
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 400, "{path}");
        let v: serde_json::Value = r.json().await.expect("JSON");
        assert_eq!(v["error"]["code"], code, "{path}");
    }
    for rows in ["0", "1001", "x"] {
        let r = client()
            .get(
                svc.instance
                    .url(&format!("/v1/statements/alice?rows={rows}")),
            )
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 400, "rows={rows}");
    }
}

#[tokio::test]
async fn a_statement_says_its_length_type_and_validator() {
    let svc = start(1024).await;
    let r = client()
        .get(svc.instance.url("/v1/statements/alice?rows=10"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/csv; charset=utf-8");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["etag"], "\"v1-10-alice\"");
    assert_eq!(r.content_length(), Some(35 + 10 * 83));
    let text = r.text().await.expect("the CSV");
    assert_eq!(text.lines().count(), 11);
}
