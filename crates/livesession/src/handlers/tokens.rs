//! `POST /api/sessions/{id}/token`: a fresh short-lived access token for a session.
//!
//! Browsers present their refresh cookie (and get both cookies renewed, so their
//! WebSockets authenticate by cookie and no token appears in a URL); a viewer opened with
//! a `#token=` link presents that link's refresh token once as a bearer; operators present
//! the admin token. An access token alone is refused (`401 refresh_required`): it cannot
//! renew itself into a new one and refresh cookies.

use axum::Json;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_session::SessionState;

use crate::app::AppState;
use crate::app::App;
use crate::auth::{
    Role, TokenError, TokenKind, cookie, refresh_cookie_name, session_cookies_for, set_cookies,
};
use crate::handlers::admin::{Bearer, admin_bearer};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::proxy::ClientInfo;

#[utoipa::path(post, path = "/api/sessions/{id}/token", tag = "tokens", security(("bearer" = []), ()), params(("id" = String, Path, description = "The session's id")),
    request_body(content = TokenRequest, description = "Only with the admin token: the role to mint (default interactive)"),
    responses(
        (status = 200, description = "A fresh access token; browsers also get new cookies", body = TokenIssued),
        (status = 401, description = "No refresh credential (cookie or bearer) or admin token, or it is invalid or expired", body = crate::error::ErrorBody),
        (status = 404, description = "No session has this id", body = crate::error::ErrorBody), (status = 410, description = "The session has ended", body = crate::error::ErrorBody),
    ))]
pub async fn issue_token(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    app.limits
        .check(RateClass::Token, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    // The role and viewer link of the credential carry over to the new tokens. Only a
    // refresh credential (or the admin token) renews: an access token never renews
    // itself, so one that leaks (a URL, a log, an agent) ends at its `exp`.
    let presented = admin_bearer(&app, client.ip, &headers)?;
    let by_admin = presented == Bearer::Admin;
    let (role, link) = match presented {
        // The operator may mint any role, e.g. `{"role": "agent"}` for a program that
        // drives the browser over CDP (docs/agents.md).
        Bearer::Admin => (requested_role(&body)?.unwrap_or(Role::Interactive), None),
        // A refresh token as a bearer: a `#token=` link's (POST /api/sessions answers
        // one as `refresh_token`), or a program's.
        Bearer::Other(presented) => refresh_claims(&app, presented, &id, "refresh token")?,
        Bearer::None => match cookie(&headers, &refresh_cookie_name(&id)) {
            // A cookie is sent by the browser on its own: the CSRF layer
            // (`security::csrf`) has already refused this request unless it came from
            // our own pages.
            Some(refresh) => refresh_claims(&app, refresh, &id, "refresh cookie")?,
            None => {
                return Err(unauthorized(
                    "auth_required",
                    "a refresh cookie, a refresh token or the admin token is required",
                ));
            }
        },
    };

    let session = app
        .sessions
        .get(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    match session.state {
        SessionState::Active => {}
        SessionState::Pending => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "session_not_active",
                "the session's payment is not confirmed yet",
            ));
        }
        SessionState::Expired | SessionState::Revoked => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "session_ended",
                format!("the session has ended ({})", session.state.as_str()),
            ));
        }
    }
    // A revoked viewer link's tokens get nothing more.
    if let Some(link_id) = &link {
        crate::handlers::links::check_link(&app, &session.id, link_id)
            .await
            .map_err(|refused| refused.api_error())?;
    }
    let (token, expires_at) = app.tokens.access_for(
        &session.id,
        role,
        link.as_deref(),
        session.expires_at,
    );
    let body = TokenIssued {
        token,
        role,
        expires_at,
        session_expires_at: session.expires_at,
        // The operator also gets a refresh token of that role, to hand on (a person's
        // `viewer_url#token=…`, a program that renews). Browsers renewing by cookie never
        // see theirs in a body: it stays in the HttpOnly cookie.
        refresh_token: by_admin.then(|| app.tokens.refresh(&session.id, role, session.expires_at)),
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    let cookies = session_cookies_for(
        &app.tokens,
        &session.id,
        role,
        link.as_deref(),
        session.expires_at,
        app.secure_cookies_for(&client),
    );
    set_cookies(response.headers_mut(), &cookies);
    Ok(response)
}

/// A fresh access token. No `Debug`: it holds tokens, which must not reach a log.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TokenIssued {
    token: String,
    role: Role,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    session_expires_at: time::OffsetDateTime,
    /// Only to the admin token: a refresh token of the same role.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// An admin request's optional body: the role of the tokens to mint.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    role: Option<Role>,
}

/// The role asked for in an admin request's optional body `{"role": …}`.
fn requested_role(body: &[u8]) -> Result<Option<Role>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<TokenRequest>(body).map(|r| r.role).map_err(|e| {
        ApiError::bad_request(
            "invalid_role",
            format!("expected {{\"role\": \"interactive\" | \"agent\" | \"view\"}}: {e}"),
        )
    })
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The role and viewer link of a refresh credential of session `id`. An access token in
/// its place gets `401 refresh_required`.
fn refresh_claims(
    app: &App,
    presented: &str,
    id: &str,
    what: &str,
) -> Result<(Role, Option<String>), ApiError> {
    // An access token, valid or expired, is told so, whatever its session.
    if app
        .tokens
        .verify_ignoring_expiry(presented, TokenKind::Access)
        .is_ok()
    {
        return Err(unauthorized(
            "refresh_required",
            "an access token cannot renew itself: present the refresh cookie, the \
             session's refresh token, or the admin token",
        ));
    }
    match app.tokens.verify(presented, TokenKind::Refresh) {
        Ok(claims) if claims.sid == id => Ok((claims.role, claims.lnk)),
        Ok(_) => Err(unauthorized(
            "token_invalid",
            &format!("the {what} is for another session"),
        )),
        Err(TokenError::Expired) => Err(unauthorized("token_expired", &format!("the {what} expired"))),
        Err(TokenError::Invalid) => Err(unauthorized("token_invalid", &format!("the {what} is invalid"))),
    }
}
