//! Request handlers, grouped by resource.

pub mod admin;
pub mod cdp;
pub mod checkout;
pub mod control;
pub mod files;
pub mod health;
pub mod links;
pub mod logins;
pub mod nodes;
pub mod pages;
pub mod profiles;
pub mod recording;
pub mod sessions;
pub mod stripe;
pub mod tasks;
pub mod tokens;
pub mod vnc;
pub mod workers;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::app::App;
use crate::auth::{AccessClaims, TokenError, TokenKind, TokenSource, find_access_token, same_site_request};
use crate::error::ApiError;

/// The `token` query parameter of WebSocket requests (noVNC cannot set headers).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    pub token: Option<String>,
}

/// The claims of a valid access token of session `id` on a plain HTTP request: a bearer,
/// `query_token`, or the viewer's cookie (only from this server's own pages). The caller
/// checks the role and, if it matters, the token's viewer link.
pub(crate) fn session_token(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
    id: &str,
) -> Result<AccessClaims, ApiError> {
    let unauthorized =
        |code: &'static str, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    let Some((token, source)) = find_access_token(headers, query_token, id) else {
        return Err(unauthorized(
            "auth_required",
            "the admin token or the session's access token is required",
        ));
    };
    // A cookie is sent by the browser on its own: only our own pages may use it. (The
    // CSRF layer covers the state-changing methods; this also covers reads.)
    if source == TokenSource::Cookie && !same_site_request(headers, |o, h| app.origin_allowed(o, h)) {
        return Err(ApiError::cross_site());
    }
    let claims = match app.tokens.verify(&token, TokenKind::Access) {
        Ok(claims) => claims,
        Err(TokenError::Expired) => {
            return Err(unauthorized(
                "token_expired",
                "the access token expired; get a fresh one from the token endpoint",
            ));
        }
        Err(TokenError::Invalid) => return Err(unauthorized("token_invalid", "the token is invalid")),
    };
    if claims.sid != id {
        return Err(unauthorized("token_invalid", "the token is for another session"));
    }
    Ok(claims)
}
