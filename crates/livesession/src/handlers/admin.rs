//! The admin token on every route that takes it, and the limit on guessing it.
//!
//! Every bearer that is neither the admin token nor a token this server signed is a
//! wrong admin token: it takes one from the address's bucket (`--admin-failure-rate`,
//! `--admin-failure-burst`). While the bucket is empty, every request from that address
//! that presents such a bearer, the right admin token included, is answered 429 with
//! `Retry-After` before the token is compared. Tokens this server signed (a viewer's
//! access or refresh token) are not guesses: they are checked as before, never counted.
//! The presented value is never logged.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::app::App;
use crate::auth::{bearer, constant_time_eq};
use crate::error::ApiError;

/// What the `Authorization: Bearer` of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No bearer at all.
    None,
    /// The admin token.
    Admin,
    /// Anything else: a token this server signed, or a wrong admin token (already
    /// counted); the caller checks it as a session token.
    Other(&'a str),
}

/// Reads the request's bearer: the admin token, or something else. `429 rate_limited`
/// while `ip` is locked out for wrong admin tokens.
pub fn admin_bearer<'a>(
    app: &App,
    ip: IpAddr,
    headers: &'a HeaderMap,
) -> Result<Bearer<'a>, ApiError> {
    let Some(presented) = bearer(headers) else {
        return Ok(Bearer::None);
    };
    if app.tokens.signed_here(presented) {
        return Ok(Bearer::Other(presented));
    }
    app.limits
        .admin_locked(ip)
        .map_err(|refused| ApiError::rate_limited(&refused))?;
    if constant_time_eq(presented.as_bytes(), app.admin_token.as_bytes()) {
        return Ok(Bearer::Admin);
    }
    app.limits.admin_failed(ip);
    // The address and nothing of the value: it may be a mistyped real token.
    tracing::warn!(client = %ip, "wrong admin token");
    Ok(Bearer::Other(presented))
}

/// Routes for the admin only: the admin token, or `401 unauthorized` (`429` while locked
/// out).
pub fn require_admin(app: &App, ip: IpAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    match admin_bearer(app, ip, headers)? {
        Bearer::Admin => Ok(()),
        Bearer::None | Bearer::Other(_) => Err(ApiError::unauthorized()),
    }
}

/// Whether the request carries the admin token (counting a wrong one; `429` while
/// locked out), for routes that also take a session's own tokens.
pub fn is_admin(app: &App, ip: IpAddr, headers: &HeaderMap) -> Result<bool, ApiError> {
    Ok(admin_bearer(app, ip, headers)? == Bearer::Admin)
}
