//! Every route, in one place, and the layers every request passes through.
//!
//! Route audit (method, path → who may call it, CSRF, rate limit, body limit):
//! - `GET /api/info`, `/`, `/s/{id}`, `/replay/{id}`, `/checkout/success`, `/static/…`, `/vendor/…`,
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

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::app::AppState;
use crate::handlers::{
    cdp, checkout, control, files, health, links, logins, pages, profiles, recording, sessions, stripe, tasks, tokens, vnc, workers,
};
use crate::{error, logging, metrics, proxy, security};

const STRIPE_WEBHOOK_MAX_BODY: usize = 1 << 20;
/// A worker's event may carry a screenshot (base64 of at most 2 MiB), a result 256 KiB.
const WORKER_EVENT_MAX_BODY: usize = 3 << 20;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/info", get(pages::info))
        .route(
            "/api/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/api/sessions/{id}",
            get(sessions::get_session).delete(sessions::revoke_session),
        )
        .route("/api/sessions/{id}/extend", post(sessions::extend_session))
        .route("/api/sessions/{id}/token", post(tokens::issue_token))
        .route(
            "/api/sessions/{id}/links",
            post(links::create_link).get(links::list_links),
        )
        .route(
            "/api/sessions/{id}/links/{link_id}",
            axum::routing::delete(links::revoke_link),
        )
        .route("/api/links/claim", post(links::claim_link))
        .route("/api/logins", post(logins::create_login))
        .route("/api/checkout", post(checkout::start_checkout))
        .route("/api/checkout/claim", post(checkout::claim_checkout))
        .route("/api/sessions/{id}/vnc", get(vnc::vnc_proxy))
        .route(
            "/api/sessions/{id}/control",
            get(control::control_channel).post(cdp::set_control),
        )
        .route("/api/sessions/{id}/recording", get(recording::get_recording))
        // The upload streams its body (up to its own cap, session_files.rs), past the
        // default body limit, which applies only to bodies read whole.
        .route(
            "/api/sessions/{id}/files",
            post(files::upload_file).get(files::list_files),
        )
        .route("/api/sessions/{id}/files/{name}", get(files::get_file))
        .route("/api/sessions/{id}/cdp", get(cdp::cdp_browser))
        .route("/api/sessions/{id}/cdp/page/{target}", get(cdp::cdp_page))
        .route("/api/sessions/{id}/cdp/{*what}", get(cdp::cdp_discovery))
        .route(
            "/api/sessions/{id}/tasks",
            post(tasks::post_task).get(tasks::list_tasks),
        )
        .route("/api/sessions/{id}/tasks/{task_id}", get(tasks::get_session_task))
        .route(
            "/api/sessions/{id}/tasks/{task_id}/cancel",
            post(tasks::cancel_session_task),
        )
        .route(
            "/api/sessions/{id}/tasks/{task_id}/screenshots/{seq}",
            get(tasks::screenshot),
        )
        .route("/api/tasks", get(tasks::list_all_tasks))
        .route("/api/tasks/{id}", get(tasks::get_task))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel_task))
        .route("/api/profiles", get(profiles::list_profiles))
        .route(
            "/api/profiles/{name}",
            get(profiles::get_profile).delete(profiles::delete_profile),
        )
        .route(
            "/api/profiles/{name}/cookies",
            get(profiles::get_cookies).post(profiles::import_cookies),
        )
        .route("/api/workers/tokens", post(workers::mint_worker_token))
        .route("/api/workers/claim", post(workers::claim))
        .route("/api/tasks/{id}/heartbeat", post(workers::heartbeat))
        .route("/api/tasks/{id}/fail", post(workers::fail));
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
    let webhook = Router::new()
        .route("/api/stripe/webhook", post(stripe::stripe_webhook))
        .layer(DefaultBodyLimit::max(STRIPE_WEBHOOK_MAX_BODY));
    let worker_events = Router::new()
        .route("/api/tasks/{id}/events", post(workers::post_event))
        .route("/api/tasks/{id}/complete", post(workers::complete))
        .layer(DefaultBodyLimit::max(WORKER_EVENT_MAX_BODY));
    let health = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::admin_metrics));

    let max_body = state.config.max_body_bytes;
    use axum::middleware::{from_fn, from_fn_with_state, map_response};
    api.merge(pages)
        .merge(health)
        .layer(DefaultBodyLimit::max(max_body))
        .merge(webhook)
        .merge(worker_events)
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
