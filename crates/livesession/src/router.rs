//! Every route, in one place, and the layers every request passes through.
//!
//! Route audit (method, path → who may call it, CSRF, rate limit, body limit):
//! - `GET /api/info`, `/api/openapi.json`, `/`, `/s/{id}`, `/replay/{id}`, `/checkout/success`, `/static/…`, `/vendor/…`,
//!   `/healthz`, `/readyz`: anyone; read-only.
//! - `POST /api/sessions`: admin bearer; create limit; `--max-body-bytes`.
//! - `GET /api/sessions`, `GET|DELETE /api/sessions/{id}`, `POST …/extend`: admin bearer
//!   (a header, never a cookie, so not forgeable cross-site); body limit.
//! - `POST /api/logins`: admin bearer; create limit; body limit (a session, as above).
//! - `POST /api/sessions/{id}/token`: refresh cookie (CSRF-checked) or bearer; token limit.
//! - `POST /start`: free mode, CSRF-checked; create limit.
//! - `POST /api/checkout`, `POST /api/checkout/claim` (claim cookie): CSRF-checked;
//!   checkout limit; body limit.
//! - `POST /api/stripe/webhook`: Stripe's signature; failed signatures limited per
//!   address; its own 1 MiB body limit.
//! - `POST|GET /api/sessions/{id}/links`, `DELETE …/links/{link_id}`: admin bearer, or
//!   the session's access token as bearer or cookie (CSRF-checked).
//! - `POST /api/links/claim`, `GET /join`: a viewer link's secret; CSRF-checked.
//! - `GET /api/sessions/{id}/vnc|control`: WebSockets; Origin checked (4004), connect
//!   limit and per-address/per-session caps (4009) in `ws::authorize`.
//! - `GET /api/sessions/{id}/cdp`, `…/cdp/page/{target}`: DevTools WebSockets for agents
//!   (interactive or agent token; 4013 for view), with their own caps; `GET
//!   …/cdp/json/version|list`: discovery, same token. `POST /api/sessions/{id}/control`:
//!   hand control over (admin, or the session's interactive token; CSRF-checked).
//! - `POST|GET /api/sessions/{id}/tasks`, `GET /api/sessions/{id}/tasks/{task_id}` (+
//!   `/cancel`, `/screenshots/{seq}`), `GET /api/tasks` (admin), `GET /api/tasks/{id}`, `POST …/cancel`: admin
//!   bearer, or the session's access token (bearer, cookie — CSRF-checked — or `?token=`
//!   for reads); view tokens read only.
//! - `GET /api/sessions/{id}/recording`: admin bearer, or the session's access token
//!   (bearer, cookie — same-site only — or `?token=`); another session's token: 404.
//! - `GET|POST /api/sessions/{id}/files`, `GET …/files/{name}`: admin bearer, or the
//!   session's access token (bearer, cookie — CSRF-checked for the upload — or `?token=`
//!   for reads); view tokens list and download only; uploads stream up to their own cap.
//! - `GET /metrics`: admin bearer (Prometheus text; `--metrics-listen` serves it without
//!   a token on its own address, see `metrics.rs`).
//! - `POST /api/workers/tokens`: admin bearer. `POST /api/workers/claim`, `POST
//!   /api/tasks/{id}/heartbeat|events|complete|fail`: a worker token or the admin bearer
//!   (never a cookie); writes name the lease. Events and results have a 3 MiB body limit (screenshots).
//!
//! Layers, outermost first: [`proxy::client_info`] (who the client is), the request log,
//! [`security::security_headers`] (on every response, errors included),
//! [`security::header_limit`] (431), [`error::json_errors`] (rejections as JSON), and
//! [`security::csrf`] (cross-site state-changing requests refused), so no route can be
//! added without them.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::handlers::{
    cdp, checkout, control, files, health, links, logins, nodes, pages, profiles, recording, sessions, stripe, tasks, tokens, vnc, workers,
};
use crate::{error, logging, metrics, proxy, security};

const STRIPE_WEBHOOK_MAX_BODY: usize = 1 << 20;
/// A worker's event may carry a screenshot (base64 of at most 2 MiB), a result 256 KiB.
const WORKER_EVENT_MAX_BODY: usize = 3 << 20;

pub fn router(state: AppState) -> Router {
    // The REST operations are registered with `routes!`, which takes each path from the
    // handler's `#[utoipa::path]`: the OpenAPI spec (`/api/openapi.json`, openapi.rs) is
    // collected from exactly these. WebSockets and pages are plain routes.
    let api = OpenApiRouter::new()
        .routes(routes!(pages::info))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::revoke_session))
        .routes(routes!(sessions::extend_session))
        .routes(routes!(tokens::issue_token))
        .routes(routes!(links::create_link, links::list_links))
        .routes(routes!(links::revoke_link))
        .routes(routes!(links::claim_link))
        .routes(routes!(logins::create_login))
        .routes(routes!(checkout::start_checkout))
        .routes(routes!(checkout::claim_checkout))
        .route("/api/sessions/{id}/vnc", get(vnc::vnc_proxy))
        .route("/api/sessions/{id}/control", get(control::control_channel))
        .routes(routes!(cdp::set_control))
        .routes(routes!(recording::get_recording))
        // The upload streams its body (up to its own cap, session_files.rs), past the
        // default body limit, which applies only to bodies read whole.
        .routes(routes!(files::upload_file, files::list_files))
        .routes(routes!(files::get_file))
        .route("/api/sessions/{id}/cdp", get(cdp::cdp_browser))
        .route("/api/sessions/{id}/cdp/page/{target}", get(cdp::cdp_page))
        .route("/api/sessions/{id}/cdp/{*what}", get(cdp::cdp_discovery))
        .routes(routes!(tasks::post_task, tasks::list_tasks))
        .routes(routes!(tasks::get_session_task))
        .routes(routes!(tasks::cancel_session_task))
        .routes(routes!(tasks::screenshot))
        .routes(routes!(tasks::list_all_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(profiles::list_profiles))
        .routes(routes!(profiles::get_profile, profiles::delete_profile))
        .routes(routes!(profiles::get_cookies, profiles::import_cookies))
        .routes(routes!(workers::mint_worker_token))
        .routes(routes!(workers::claim))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::fail))
        .routes(routes!(nodes::list_nodes));
    let pages = Router::new()
        .route("/", get(pages::landing))
        .route("/start", post(sessions::start_free_session))
        .route("/s/{id}", get(pages::viewer))
        .route("/replay/{id}", get(pages::replay))
        .route("/checkout/success", get(pages::checkout_success))
        .route("/join", get(pages::join))
        .route("/static/{*path}", get(pages::static_file))
        .route("/vendor/novnc/{*path}", get(pages::novnc_file));
    // Stripe's deliveries get their own, larger body limit: a refused delivery is a lost
    // payment confirmation until Stripe retries.
    let webhook = OpenApiRouter::new()
        .routes(routes!(stripe::stripe_webhook))
        .layer(DefaultBodyLimit::max(STRIPE_WEBHOOK_MAX_BODY));
    let worker_events = OpenApiRouter::new()
        .routes(routes!(workers::post_event))
        .routes(routes!(workers::complete))
        .layer(DefaultBodyLimit::max(WORKER_EVENT_MAX_BODY));
    let health = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .route("/metrics", get(metrics::admin_metrics));
    let (api, paths) = api.merge(health).split_for_parts();
    let (webhook, webhook_paths) = webhook.split_for_parts();
    let (worker_events, worker_paths) = worker_events.split_for_parts();
    let spec = Arc::new(crate::openapi::spec(paths.merge_from(webhook_paths).merge_from(worker_paths)));
    let api = api.route("/api/openapi.json", get(move || std::future::ready(Json(spec.clone()))));

    let max_body = state.config.max_body_bytes;
    use axum::middleware::{from_fn, from_fn_with_state, map_response};
    api.merge(pages)
        .layer(DefaultBodyLimit::max(max_body))
        .merge(webhook)
        .merge(worker_events)
        // After the CSRF check, so a relayed request was checked here as well as there.
        .layer(from_fn_with_state(state.clone(), crate::cluster::relay::to_owner))
        .layer(from_fn_with_state(state.clone(), security::csrf))
        .layer(map_response(error::json_errors))
        .layer(from_fn_with_state(state.clone(), security::header_limit))
        .layer(from_fn_with_state(
            state.clone(),
            security::security_headers,
        ))
        .layer(from_fn(logging::log_request))
        .layer(from_fn_with_state(state.clone(), proxy::client_info))
        .with_state(state)
}
