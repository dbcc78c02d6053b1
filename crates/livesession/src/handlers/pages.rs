//! Pages and static files: the landing page, the viewer, our scripts and noVNC.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::app::AppState;
use crate::web::{NOVNC_PREFIX, asset};

pub async fn landing(headers: HeaderMap) -> Response {
    asset("static/index.html", &headers)
}

/// The viewer page is the same for every session; it learns the id from its URL.
pub async fn viewer(headers: HeaderMap, Path(_id): Path<String>) -> Response {
    asset("static/viewer.html", &headers)
}

/// The replay page of a session's recording (docs/recordings.md); like the viewer, it
/// learns the id from its URL and authenticates its requests itself.
pub async fn replay(headers: HeaderMap, Path(_id): Path<String>) -> Response {
    asset("static/replay.html", &headers)
}

/// A viewer link's page: `/join#<secret>` trades the secret for the session's cookies.
pub async fn join(headers: HeaderMap) -> Response {
    asset("static/join.html", &headers)
}

/// Where Stripe sends the buyer after paying; the page claims the session.
pub async fn checkout_success(headers: HeaderMap) -> Response {
    asset("static/checkout.html", &headers)
}

pub async fn static_file(headers: HeaderMap, Path(path): Path<String>) -> Response {
    asset(&format!("static/{path}"), &headers)
}

pub async fn novnc_file(headers: HeaderMap, Path(path): Path<String>) -> Response {
    asset(&format!("{NOVNC_PREFIX}{path}"), &headers)
}

/// What the landing page needs to know about this server.
#[utoipa::path(get, path = "/api/info", tag = "server",
    responses((status = 200, description = "What the landing page needs to know", body = ServerInfo)))]
pub async fn info(State(app): State<AppState>) -> Json<ServerInfo> {
    Json(ServerInfo {
        name: "livesession",
        version: env!("CARGO_PKG_VERSION"),
        free_mode: app.config.free_mode(),
        checkout: app.checkout.is_some(),
        agent: app.runner_settings.agent.is_some() && app.config.tasks.agent_runners > 0,
        price: app.checkout.as_ref().map(|_| Price {
            amount_cents: app.config.stripe.price_cents,
            currency: app.config.stripe.currency.clone(),
            product: app.config.stripe.product_name.clone(),
        }),
    })
}

/// What the landing page needs to know about this server.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServerInfo {
    name: &'static str,
    version: &'static str,
    /// Whether `POST /start` starts free sessions.
    free_mode: bool,
    /// Whether sessions are sold (Stripe Checkout).
    checkout: bool,
    /// Whether the built-in agent (a configured model) runs goals; without it a goal
    /// waits for an external agent worker.
    agent: bool,
    /// The price of a session, when sold.
    price: Option<Price>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Price {
    amount_cents: u64,
    currency: String,
    product: String,
}
