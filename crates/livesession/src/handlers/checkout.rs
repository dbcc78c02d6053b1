//! Buying a session: the landing page's button starts a Stripe Checkout, and the page
//! Stripe returns the buyer to claims the paid session for that browser.

use axum::Json;
use axum::body::Bytes;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_billing::CheckoutRequest;
use livesession_session::{Session, SessionState, new_session_id};
use serde::Deserialize;
use serde_json::json;

use crate::app::{App, AppState};
use crate::auth::{Role, TokenKind, cookie, cookie_header, session_cookies, set_cookies};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::proxy::ClientInfo;

/// `POST /api/checkout` (the landing page's form): creates a Checkout Session at Stripe and
/// sends the browser to Stripe's payment page. The session is recorded as pending. Only
/// our own pages may post it (the CSRF layer, `security::csrf`).
#[utoipa::path(post, path = "/api/checkout", tag = "checkout",
    request_body(content = crate::handlers::tasks::GoalForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To Stripe's payment page"),
        (status = 404, description = "This server does not sell sessions", body = crate::error::ErrorBody),
        (status = 502, description = "The payment provider is unavailable", body = crate::error::ErrorBody),
    ))]
pub async fn start_checkout(
    State(app): State<AppState>,
    client: ClientInfo,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.limits
        .check(RateClass::Checkout, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    // An optional goal: the agent task that starts once the payment is confirmed.
    let goal = crate::handlers::tasks::form_goal(&body?)?;
    let Some(checkout) = &app.checkout else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "checkout_off",
            "this server does not sell sessions",
        ));
    };
    let stripe = &app.config.stripe;
    // The pending session's id is our reference: Stripe echoes it back, and as the
    // idempotency key it keeps a retried request from creating a second checkout.
    let reference = new_session_id();
    let request = CheckoutRequest {
        reference: reference.clone(),
        amount_cents: stripe.price_cents,
        currency: stripe.currency.clone(),
        product_name: stripe.product_name.clone(),
        success_url: format!(
            "{}/checkout/success?session_id={{CHECKOUT_SESSION_ID}}",
            app.public_url
        ),
        cancel_url: format!("{}/?checkout=cancelled", app.public_url),
    };
    let created = checkout.create(&request).await.map_err(|e| {
        // Stripe's error messages may quote the key they were given: never log it.
        let error = match app.config.stripe.secret_key.as_deref() {
            Some(key) if !key.is_empty() => e.to_string().replace(key, "[redacted]"),
            _ => e.to_string(),
        };
        tracing::error!(%error, "Stripe Checkout could not be created");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "payment_provider_error",
            "the payment provider is unavailable; try again in a minute",
        )
    })?;
    app.sessions
        .create_pending(reference, created.id.clone(), app.config.start_url.clone(), goal)
        .await?;
    let location = HeaderValue::from_str(&created.url)
        .map_err(|e| ApiError::internal("Stripe returned an unusable URL", e))?;
    Ok((StatusCode::SEE_OTHER, [(LOCATION, location)]).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutClaimRequest {
    pub checkout_session_id: String,
}

/// `POST /api/checkout/claim`: polled by the "confirming your payment" page. Once the
/// webhook has confirmed the payment, the first browser to ask gets the session (a cookie);
/// any other browser is told the session was already claimed.
#[utoipa::path(post, path = "/api/checkout/claim", tag = "checkout", request_body = CheckoutClaimRequest,
    responses(
        (status = 200, description = "This browser has the paid session (cookies set)", body = Object),
        (status = 202, description = "The payment is not confirmed yet (or the checkout is not known yet); ask again", body = Object),
        (status = 409, description = "Another browser claimed this session", body = crate::error::ErrorBody),
        (status = 410, description = "The session has ended", body = crate::error::ErrorBody),
    ))]
pub async fn claim_checkout(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.limits
        .check(RateClass::Checkout, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    let request: CheckoutClaimRequest = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body: {e}; expected {{\"checkout_session_id\": \"cs_…\"}}"),
        )
    })?;
    let pending = || (StatusCode::ACCEPTED, Json(json!({ "status": "pending" }))).into_response();
    // Unknown ids are pending too: a Payment Link's checkout is unknown until its webhook.
    let Some(session) = app
        .sessions
        .store()
        .find_by_checkout(&request.checkout_session_id)
        .await?
    else {
        return Ok(pending());
    };
    let session = app.sessions.get(&session.id).await?.unwrap_or(session);
    match session.state {
        SessionState::Pending => return Ok(pending()),
        SessionState::Expired | SessionState::Revoked => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "session_ended",
                format!("this session has ended ({})", session.state.as_str()),
            ));
        }
        SessionState::Active => {}
    }
    let claimed = |cookies: &[String]| {
        let body = Json(
            json!({ "status": "claimed", "session_id": session.id, "viewer_url": format!("/s/{}", session.id) }),
        );
        let mut response = (StatusCode::OK, body).into_response();
        set_cookies(response.headers_mut(), cookies);
        response
    };
    // The browser that claimed it asks again (a reload of the success page): it holds the
    // claim cookie, scoped to this endpoint, and gets its session cookies renewed. Only a
    // claim credential of this session counts: a refresh token (a view-only or revoked
    // viewer link's, or any other) is no claim, and falls through to the claim below,
    // which a claimed session refuses with 409.
    let claim_cookie = format!("lsc_{}", session.id);
    if let Some(proof) = cookie(&headers, &claim_cookie) {
        match app.tokens.verify_ignoring_expiry(proof, TokenKind::Claim) {
            Ok(c) if c.sid == session.id && c.role == Role::Interactive && c.lnk.is_none() => {
                return Ok(claimed(&browser_cookies(
                    &app,
                    &session,
                    &claim_cookie,
                    app.secure_cookies_for(&client),
                )));
            }
            // Never the cookie's value: it may be a working credential of another kind.
            _ => tracing::warn!(session_id = %session.id, client = %client.ip,
                "a claim cookie that is not this session's claim credential was presented"),
        }
    }
    if !app
        .sessions
        .store()
        .claim_session(&session.id, time::OffsetDateTime::now_utc())
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_claimed",
            "this payment's session was already opened in another browser",
        ));
    }
    tracing::info!(session_id = %session.id, "paid session claimed by a browser");
    Ok(claimed(&browser_cookies(
        &app,
        &session,
        &claim_cookie,
        app.secure_cookies_for(&client),
    )))
}

/// The session's access and refresh cookies, plus the claim cookie (a claim credential,
/// [`TokenKind::Claim`]) that lets this browser claim again.
fn browser_cookies(app: &App, session: &Session, claim_cookie: &str, secure: bool) -> Vec<String> {
    let mut cookies = session_cookies(
        &app.tokens,
        &session.id,
        Role::Interactive,
        session.expires_at,
        secure,
    );
    let proof = app.tokens.claim(&session.id, session.expires_at);
    cookies.push(cookie_header(
        claim_cookie,
        &proof,
        "/api/checkout/claim",
        session.expires_at,
        secure,
    ));
    cookies
}
