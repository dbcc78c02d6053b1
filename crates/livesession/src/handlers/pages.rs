//! Pages and static files: the landing page, the viewer, our scripts and noVNC.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::web::{NOVNC_PREFIX, asset};

pub async fn landing(headers: HeaderMap) -> Response {
    asset("static/index.html", &headers)
}

/// The viewer page is the same for every session; it learns the id from its URL.
pub async fn viewer(headers: HeaderMap, Path(_id): Path<String>) -> Response {
    asset("static/viewer.html", &headers)
}

pub async fn static_file(headers: HeaderMap, Path(path): Path<String>) -> Response {
    asset(&format!("static/{path}"), &headers)
}

pub async fn novnc_file(headers: HeaderMap, Path(path): Path<String>) -> Response {
    asset(&format!("{NOVNC_PREFIX}{path}"), &headers)
}

/// What the landing page needs to know about this server.
pub async fn info(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "livesession",
        "version": env!("CARGO_PKG_VERSION"),
        "free_mode": app.config.free_mode,
    }))
}
