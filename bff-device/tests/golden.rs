//! v1 is frozen: every file in `tests/golden/v1` is a request and the answer v1 gave to it when
//! it shipped. This test replays them in file-name order against a real gateway on a loopback
//! port (deterministic data: two configured devices, commands and a rate published before the
//! first request) and fails on any difference — status, body byte for byte, and the headers
//! `content-type`, `content-encoding`, `etag` and `cache-control` (present or absent).
//!
//! File format (`NN-name.http`):
//!
//! ```text
//! # publish <topic> <payload>        optional: published on the bus before the request
//! GET /v1/devices/tv-1/events?cursor={{cursor:01-first-poll}}&wait=0
//! x-device-key: tv-1-key-0123456789  request headers, then a blank line, then the body if any
//!
//! HTTP 200                           the answer: status, compared headers, blank line, body
//! content-type: application/json
//!
//! {"n":"{{cursor}}","e":[]}
//! ```
//!
//! Cursors and ETags depend on the bus's random epoch or are opaque, so an answer's `n` is
//! written `{{cursor}}` and bound to the file's name; a later request uses it as
//! `{{cursor:<file name>}}` (and an answer's `etag` header as `{{etag:<file name>}}`).
//!
//! To change v1 deliberately (you should not: add a version instead), run with
//! `UPDATE_GOLDEN=1` to rewrite the answers, and review the diff. The default run only compares.
//! Deliberate changes are listed in `docs/protocol/device-v1.md` ("Changes to v1"): so far one,
//! a security fix (`18-quote-no-limit-for-devices`: a device quote never carries a user's limit).

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use common::{config, start};

const COMPARED: [&str; 4] = ["content-type", "content-encoding", "etag", "cache-control"];

/// Every v1 endpoint; each must have at least one golden file.
const ENDPOINTS: [(&str, &str); 5] = [
    ("GET", "/v1/devices/{id}/events"),
    ("GET", "/v1/devices/{id}/config"),
    ("POST", "/v1/devices/{id}/commands/{cmd}/result"),
    ("POST", "/v1/devices/{id}/telemetry"),
    ("GET", "/v1/quote"),
];

struct Case {
    publish: Vec<(String, String)>,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
    /// Everything from the `HTTP` line on, as written.
    expected: String,
}

fn parse(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).expect("readable golden file");
    let at = text
        .find("\nHTTP ")
        .unwrap_or_else(|| panic!("{}: no `HTTP <status>` line", path.display()));
    let (request, expected) = (&text[..at], &text[at + 1..]);
    let mut lines = request.lines();
    let mut publish = Vec::new();
    let mut first = lines.next().unwrap_or_default();
    while let Some(rest) = first.strip_prefix("# publish ") {
        let (topic, payload) = rest.split_once(' ').expect("# publish <topic> <payload>");
        publish.push((topic.to_owned(), payload.to_owned()));
        first = lines.next().unwrap_or_default();
    }
    let (method, target) = first.split_once(' ').expect("<METHOD> <target>");
    let mut headers = Vec::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(": ").expect("<name>: <value>");
        headers.push((k.to_owned(), v.to_owned()));
    }
    let body = lines.collect::<Vec<_>>().join("\n");
    Case {
        publish,
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body,
        expected: expected.to_owned(),
    }
}

fn substitute(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!out.contains("{{"), "unbound variable in `{out}`");
    out
}

/// The answer in the golden file's form, with its cursor written `{{cursor}}`; also returns
/// the cursor and the etag to bind.
async fn render(res: reqwest::Response) -> (String, Option<String>, Option<String>) {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let raw = res.bytes().await.expect("body");
    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let body = if gzip {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .expect("valid gzip");
        s
    } else {
        String::from_utf8(raw.to_vec()).expect("UTF-8 body")
    };
    let cursor = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["n"].as_str().map(str::to_owned));
    let body = match &cursor {
        Some(c) => body.replacen(&format!("\"n\":\"{c}\""), "\"n\":\"{{cursor}}\"", 1),
        None => body,
    };
    let mut out = format!("HTTP {status}\n");
    for name in COMPARED {
        if let Some(v) = headers.get(name) {
            out.push_str(&format!("{name}: {}\n", v.to_str().expect("ASCII header")));
        }
    }
    out.push('\n');
    if !body.is_empty() {
        out.push_str(&body);
        out.push('\n');
    }
    let etag = headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (out, cursor, etag)
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the golden directory exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .collect();
    files.sort();
    files
}

fn matches_endpoint(method: &str, target: &str, (m, pattern): (&str, &str)) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    let (a, b): (Vec<_>, Vec<_>) = (path.split('/').collect(), pattern.split('/').collect());
    method == m && a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| y.starts_with('{') || x == y)
}

#[tokio::test]
async fn v1_answers_are_exactly_the_golden_ones() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    // The quote's backends: a fixed rate; limits answers but must never be called (a device
    // sees no user's limit).
    let exchange = test_support::Scripted::new();
    exchange.reply(
        std::time::Duration::ZERO,
        200,
        r#"{"pair":"EUR/USD","rate":"1.0842","seq":7}"#,
    );
    let limits = test_support::Scripted::new();
    limits.reply(
        std::time::Duration::ZERO,
        200,
        r#"{"user":"alice","daily_limit":"5000","used":"0","remaining":"5000"}"#,
    );
    let (_exchange, _limits) = (exchange.serve().await, limits.serve().await);
    let mut config = config();
    for (name, server) in [("exchange", &_exchange), ("limits", &_limits)] {
        config.backends.insert(
            name.to_owned(),
            switchyard_core::upstream::BackendConfig::new(server.url()),
        );
    }
    let gw = start(config, 100).await;
    // The data every answer depends on, published before the first request.
    gw.command("tv-1", "cmd-1", "reboot").await;
    gw.command("tv-1", "cmd-2", "show-message").await;
    gw.rate("EUR/USD", "1.0842", 7).await;

    let files = files();
    assert!(files.len() >= ENDPOINTS.len(), "golden files are missing");
    let cases: Vec<(String, Case)> = files
        .iter()
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, parse(p))
        })
        .collect();
    for endpoint in ENDPOINTS {
        assert!(
            cases
                .iter()
                .any(|(_, c)| matches_endpoint(&c.method, &c.target, endpoint)),
            "no golden file for {endpoint:?}"
        );
    }

    let mut vars = HashMap::new();
    let mut failures = Vec::new();
    for ((stem, case), path) in cases.iter().zip(&files) {
        for (topic, payload) in &case.publish {
            let topic = switchyard_core::event::Topic::new(topic).expect("a valid topic");
            gw.bus
                .publish(&topic, payload.clone().into_bytes().into())
                .await
                .expect("published");
        }
        let mut req = gw.http.request(
            case.method.parse().expect("a method"),
            gw.url(&substitute(&case.target, &vars)),
        );
        for (k, v) in &case.headers {
            req = req.header(k, substitute(v, &vars));
        }
        if !case.body.is_empty() {
            req = req.body(case.body.clone());
        }
        let (actual, cursor, etag) = render(req.send().await.expect("an answer")).await;
        if let Some(c) = cursor {
            vars.insert(format!("cursor:{stem}"), c);
        }
        if let Some(e) = etag {
            vars.insert(format!("etag:{stem}"), e);
        }
        if actual != case.expected {
            if update {
                let text = std::fs::read_to_string(path).unwrap();
                let at = text.find("\nHTTP ").unwrap();
                std::fs::write(path, format!("{}\n{actual}", &text[..at])).unwrap();
            } else {
                failures.push(format!(
                    "{stem}:\n--- golden\n{}\n--- actual\n{actual}",
                    case.expected
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "v1 answers changed (v1 is frozen; see this file's docs):\n\n{}",
        failures.join("\n")
    );
    assert_eq!(limits.received(), 0, "a device quote never calls limits");
}
