//! Every route, in one place.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::routing::{get, post};

use crate::app::AppState;
use crate::handlers::{checkout, control, health, pages, sessions, stripe, tokens, vnc};
use crate::logging;

const STRIPE_WEBHOOK_MAX_BODY: usize = 1 << 20;

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
        .route("/api/checkout", post(checkout::start_checkout))
        .route("/api/checkout/claim", post(checkout::claim_checkout))
        .route("/api/sessions/{id}/vnc", get(vnc::vnc_proxy))
        .route("/api/sessions/{id}/control", get(control::control_channel));
    let pages = Router::new()
        .route("/", get(pages::landing))
        .route("/start", post(sessions::start_free_session))
        .route("/s/{id}", get(pages::viewer))
        .route("/checkout/success", get(pages::checkout_success))
        .route("/static/{*path}", get(pages::static_file))
        .route("/vendor/novnc/{*path}", get(pages::novnc_file));
    // Stripe's deliveries get their own, larger body limit: a refused delivery is a lost
    // payment confirmation until Stripe retries.
    let webhook = Router::new()
        .route("/api/stripe/webhook", post(stripe::stripe_webhook))
        .layer(DefaultBodyLimit::max(STRIPE_WEBHOOK_MAX_BODY));
    let health = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));

    let max_body = state.config.max_body_bytes;
    api.merge(pages)
        .merge(health)
        .layer(DefaultBodyLimit::max(max_body))
        .merge(webhook)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(logging::log_request))
        .with_state(state)
}

/// Same-origin everything: scripts, styles, WebSockets; no framing by other sites.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: under `no-referrer` Chromium sends `Origin: null`
    // on our own form posts, which the CSRF check must then refuse.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}
