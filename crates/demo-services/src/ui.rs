//! Each demo service's own web component, served at `GET /ui/{file}`: the files of the
//! service's `ui/{service}/` directory of this crate, compiled into the binary (`include_str!`),
//! so a service serves exactly those files and nothing else — there is no filesystem path to
//! traverse. bff-web routes `/ui/{service}/…` of its demo page to them (docs/browser.md).
//!
//! A component imports only the gateway's client (`/v1/client.js`), never another service's
//! component: each is written knowing nothing of the others.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use switchyard_server::errors::JsonError;

/// One static file: its name under `/ui/`, its media type and its bytes.
pub(crate) struct StaticFile {
    pub(crate) name: &'static str,
    pub(crate) media_type: &'static str,
    pub(crate) body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The exchange's component: `<fx-ticker>`, live rates.
pub(crate) const EXCHANGE: &[StaticFile] = &[StaticFile {
    name: "fx-ticker.js",
    media_type: JS,
    body: include_str!("../ui/exchange/fx-ticker.js"),
}];

/// The limits service's component: `<limit-card>`, the signed-in user's remaining limit.
pub(crate) const LIMITS: &[StaticFile] = &[StaticFile {
    name: "limit-card.js",
    media_type: JS,
    body: include_str!("../ui/limits/limit-card.js"),
}];

/// The conversions service's component: `<conversion-feed>`, a convert form and the user's
/// live conversions.
pub(crate) const CONVERSIONS: &[StaticFile] = &[StaticFile {
    name: "conversion-feed.js",
    media_type: JS,
    body: include_str!("../ui/conversions/conversion-feed.js"),
}];

/// `GET /ui/{file}` serving `files` (a JSON 404 for any other name).
pub(crate) fn routes(files: &'static [StaticFile]) -> Router {
    Router::new().route(
        "/ui/{file}",
        get(move |Path(file): Path<String>| async move { serve(files, &file) }),
    )
}

fn serve(files: &'static [StaticFile], name: &str) -> Response {
    match files.iter().find(|f| f.name == name) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, f.media_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            f.body,
        )
            .into_response(),
        None => JsonError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_files_are_served() {
        for files in [EXCHANGE, LIMITS, CONVERSIONS] {
            for f in files {
                assert_eq!(serve(files, f.name).status(), StatusCode::OK);
                assert!(f.body.contains("customElements.define"), "{}", f.name);
            }
            for bad in ["", "..", "../Cargo.toml", "FX-TICKER.JS", "fx-ticker.js/"] {
                assert_eq!(serve(files, bad).status(), StatusCode::NOT_FOUND, "{bad}");
            }
        }
    }
}
