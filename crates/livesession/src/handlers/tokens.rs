//! `POST /api/sessions/{id}/token`: a fresh short-lived access token for a session.
//!
//! Browsers present their refresh cookie (and get both cookies renewed, so their
//! WebSockets authenticate by cookie and no token appears in a URL); agents present a
//! still-valid access token; operators present the admin token.

use axum::Json;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_session::SessionState;
use serde_json::json;

use crate::app::AppState;
use crate::auth::{
    Role, TokenError, TokenKind, bearer, constant_time_eq, cookie, refresh_cookie_name,
    session_cookies_for, set_cookies,
};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::proxy::ClientInfo;

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
    let unauthorized =
        |code: &'static str, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    // The role and viewer link of the credential carry over to the new tokens.
    let (role, link) = if let Some(presented) = bearer(&headers) {
        if constant_time_eq(presented.as_bytes(), app.admin_token.as_bytes()) {
            // The operator may mint any role, e.g. `{"role": "agent"}` for a program that
            // drives the browser over CDP (docs/agents.md).
            (requested_role(&body)?.unwrap_or(Role::Interactive), None)
        } else {
            match app.tokens.verify(presented, TokenKind::Access) {
                Ok(claims) if claims.sid == id => (claims.role, claims.lnk),
                Ok(_) => {
                    return Err(unauthorized(
                        "token_invalid",
                        "the token is for another session",
                    ));
                }
                Err(TokenError::Expired) => {
                    return Err(unauthorized(
                        "token_expired",
                        "the access token expired; refresh with the refresh cookie",
                    ));
                }
                Err(TokenError::Invalid) => {
                    return Err(unauthorized("token_invalid", "the token is invalid"));
                }
            }
        }
    } else if let Some(refresh) = cookie(&headers, &refresh_cookie_name(&id)) {
        // A cookie is sent by the browser on its own: the CSRF layer (`security::csrf`)
        // has already refused this request unless it came from our own pages.
        match app.tokens.verify(refresh, TokenKind::Refresh) {
            Ok(claims) if claims.sid == id => (claims.role, claims.lnk),
            Ok(_) | Err(TokenError::Invalid) => {
                return Err(unauthorized(
                    "token_invalid",
                    "the refresh cookie is invalid",
                ));
            }
            Err(TokenError::Expired) => {
                return Err(unauthorized("token_expired", "the refresh cookie expired"));
            }
        }
    } else {
        return Err(unauthorized(
            "auth_required",
            "a refresh cookie or a bearer token is required",
        ));
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
    let body = json!({
        "token": token,
        "role": role,
        "expires_at": expires_at.format(&time::format_description::well_known::Rfc3339).expect("formattable"),
        "session_expires_at": session.expires_at.format(&time::format_description::well_known::Rfc3339).expect("formattable"),
    });
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

/// The role asked for in an admin request's optional body `{"role": …}`.
fn requested_role(body: &[u8]) -> Result<Option<Role>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        role: Option<Role>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<Request>(body).map(|r| r.role).map_err(|e| {
        ApiError::bad_request(
            "invalid_role",
            format!("expected {{\"role\": \"interactive\" | \"agent\" | \"view\"}}: {e}"),
        )
    })
}
