//! The browser client, embedded in the binary: our pages from `web/static/` and the noVNC
//! client from `web/node_modules/@novnc/novnc` (installed from npm by the build, never
//! copied into the repository).

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../../web/"]
#[include = "static/*"]
#[include = "node_modules/@novnc/novnc/core/**/*.js"]
#[include = "node_modules/@novnc/novnc/vendor/**/*.js"]
struct Assets;

pub const NOVNC_PREFIX: &str = "node_modules/@novnc/novnc/";

/// Serves one embedded file, with an ETag so browsers revalidate instead of refetching.
pub fn asset(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mime = file.metadata.mimetype();
    let mut response = Response::new(Body::from(file.data.into_owned()));
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(ETAG, HeaderValue::from_str(&etag).expect("hex"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Whether the noVNC client was installed into `web/node_modules` before the build.
pub fn novnc_present() -> bool {
    Assets::get(&format!("{NOVNC_PREFIX}core/rfb.js")).is_some()
}
