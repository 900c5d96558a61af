//! What bff-web serves a browser besides GraphQL: the browser client (`/v1/client.js` and its
//! types at `/v1/client.d.ts`, from `client/` of this crate, compiled in), and — when `[ui]`
//! turns them on, as the launcher does — the demo page at `/` and each demo service's web
//! component at `/ui/{service}/{file}` (docs/browser.md).
//!
//! `/ui/{service}/…` is a proxy, and a narrow one: `service` must be one of `ui.services`, each
//! the name of a configured backend, and the rest of the path must be one to eight segments of
//! `A-Z a-z 0-9 - _ .` not starting with a dot (so no `..`, no encoded slash, nothing hidden),
//! at most 256 bytes; the request goes to `{backend base_url}/ui/{path}`, nowhere else, with no
//! redirects followed. The answer's body is streamed to the browser chunk by chunk as it
//! arrives, never buffered whole, and bounded: at most `ui.max_file_bytes` (a larger declared
//! length is refused before the body is read; an undeclared one is cut off there) and
//! `ui.timeout_ms` from the request to the last byte. It never panics on what it is sent or
//! what the service answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The client module, served at `/v1/client.js`.
const CLIENT_JS: &str = include_str!("../client/switchyard-client.js");
/// Its TypeScript declarations, served at `/v1/client.d.ts`.
const CLIENT_DTS: &str = include_str!("../client/switchyard-client.d.ts");
/// The demo page, served at `/` when `ui.demo_page` is on.
const DEMO_PAGE: &str = include_str!("../client/demo/index.html");

/// Longest path after `/ui/{service}/`, in bytes.
const MAX_PATH_BYTES: usize = 256;
/// Most segments in that path.
const MAX_SEGMENTS: usize = 8;

/// The browser side: the demo page and the demo services' web components.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Backends (names in `backends`) whose web components are served at
    /// `/ui/{service}/{file}`, streamed from the backend's `/ui/{file}`. Empty (the default):
    /// no `/ui/` route. The launcher sets `exchange`, `limits` and `conversions`.
    pub services: Vec<String>,
    /// Whether `/` serves the demo page (off by default; the launcher turns it on).
    pub demo_page: bool,
    /// Largest file passed through from a service, in bytes.
    pub max_file_bytes: u64,
    /// Longest a file may take, from the request to the service to its last byte, in
    /// milliseconds.
    pub timeout_ms: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            demo_page: false,
            max_file_bytes: 1024 * 1024,
            timeout_ms: 5_000,
        }
    }
}

/// What the `/ui/` proxy needs.
struct Proxy {
    /// Base URL of each service, by name.
    services: BTreeMap<String, String>,
    client: reqwest::Client,
    max_bytes: u64,
    timeout: Duration,
}

/// The routes: always the client under `/v1`; the demo page and `/ui/` as configured.
/// Fails on a `ui.services` name that is not a configured backend.
pub(crate) fn routes(
    config: &UiConfig,
    backends: &BTreeMap<String, switchyard_core::upstream::BackendConfig>,
) -> anyhow::Result<Router> {
    let mut router = Router::new()
        .route(
            "/v1/client.js",
            get(|| async { asset(CLIENT_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/v1/client.d.ts",
            get(|| async { asset(CLIENT_DTS, "application/typescript; charset=utf-8") }),
        );
    if config.demo_page {
        router = router.route("/", get(|| async { Html(DEMO_PAGE) }));
    }
    if config.services.is_empty() {
        return Ok(router);
    }
    let mut services = BTreeMap::new();
    for name in &config.services {
        let Some(backend) = backends.get(name) else {
            anyhow::bail!("ui.services: `{name}` is not a configured backend");
        };
        services.insert(
            name.clone(),
            backend.base_url.trim_end_matches('/').to_owned(),
        );
    }
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .build()?;
    let proxy = Arc::new(Proxy {
        services,
        client,
        max_bytes: config.max_file_bytes,
        timeout,
    });
    Ok(router.route("/ui/{service}/{*path}", get(proxy_file).with_state(proxy)))
}

fn asset(body: &'static str, media_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, media_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `path` when it is a safe relative path (module docs), else `None`. It is the decoded path,
/// checked byte by byte, so nothing in it needs encoding again.
fn clean_path(path: &str) -> Option<&str> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return None;
    }
    let mut segments = 0;
    for segment in path.split('/') {
        segments += 1;
        let ok = segments <= MAX_SEGMENTS
            && !segment.is_empty()
            && !segment.starts_with('.')
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return None;
        }
    }
    Some(path)
}

/// The media types passed through; anything else goes out as `application/octet-stream`.
fn media_type(upstream: Option<&HeaderValue>) -> HeaderValue {
    const KNOWN: [&str; 7] = [
        "text/javascript",
        "text/css",
        "text/html",
        "application/json",
        "image/svg+xml",
        "image/png",
        "application/typescript",
    ];
    let essence = upstream
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence {
        Some(e) if KNOWN.contains(&e.as_str()) => {
            let text = e.starts_with("text/") || e == "application/json";
            let value = if text {
                format!("{e}; charset=utf-8")
            } else {
                e
            };
            HeaderValue::from_str(&value)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"))
        }
        _ => HeaderValue::from_static("application/octet-stream"),
    }
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

async fn proxy_file(
    State(proxy): State<Arc<Proxy>>,
    Path((service, path)): Path<(String, String)>,
) -> Response {
    let (Some(base), Some(path)) = (proxy.services.get(&service), clean_path(&path)) else {
        return refuse(StatusCode::NOT_FOUND, "no such file");
    };
    let deadline = Instant::now() + proxy.timeout;
    let url = format!("{base}/ui/{path}");
    let answer = match tokio::time::timeout_at(deadline, proxy.client.get(&url).send()).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::warn!(%service, error = %e, "ui: the service did not answer");
            return refuse(StatusCode::BAD_GATEWAY, "the service did not answer");
        }
        Err(_) => {
            return refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "the service did not answer in time",
            );
        }
    };
    match answer.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return refuse(StatusCode::NOT_FOUND, "no such file"),
        status => {
            tracing::warn!(%service, %status, "ui: the service refused a file");
            return refuse(StatusCode::BAD_GATEWAY, "the service refused");
        }
    }
    if answer.content_length().is_some_and(|n| n > proxy.max_bytes) {
        return refuse(StatusCode::BAD_GATEWAY, "the file is too large");
    }
    let content_type = media_type(answer.headers().get(header::CONTENT_TYPE));
    let max = proxy.max_bytes;
    // Chunk by chunk as the service sends them; an error ends the body early, which the browser
    // sees as a failed load (the status line has gone out already).
    let body = futures::stream::unfold(Some((answer, 0u64)), move |state| async move {
        let (mut answer, sent) = state?;
        match tokio::time::timeout_at(deadline, answer.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                let sent = sent + chunk.len() as u64;
                if sent > max {
                    return Some((Err(std::io::Error::other("the file is too large")), None));
                }
                Some((Ok::<Bytes, std::io::Error>(chunk), Some((answer, sent))))
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some((Err(std::io::Error::other(e)), None)),
            Err(_) => Some((
                Err(std::io::Error::other("the service took too long")),
                None,
            )),
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_pass() {
        for good in ["fx-ticker.js", "a/b.css", "x_1/y-2/z.min.js"] {
            assert_eq!(clean_path(good), Some(good), "{good}");
        }
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        let deep = ["a"; MAX_SEGMENTS + 1].join("/");
        for bad in [
            "",
            "..",
            "../x",
            "a/../b",
            "./a",
            ".env",
            "a/.git/config",
            "a//b",
            "a/",
            "/a",
            "a\\b",
            "a%2fb",
            "a b",
            "a\0b",
            "é.js",
            "a?b",
            "a#b",
            "a:b",
            &long,
            &deep,
        ] {
            assert_eq!(clean_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_media_types_are_opaque() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            media_type(Some(&v("text/javascript"))),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            media_type(Some(&v("Text/JavaScript; charset=latin1"))),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(media_type(Some(&v("image/png"))), "image/png");
        assert_eq!(media_type(Some(&v("text/xml"))), "application/octet-stream");
        assert_eq!(media_type(None), "application/octet-stream");
    }
}
