//! Viewer links: extra links into a session, each with its own role (`interactive` or
//! `view`) and revocable on its own.
//!
//! - `POST/GET /api/sessions/{id}/links`, `DELETE /api/sessions/{id}/links/{link_id}`:
//!   managed with the admin token or the session's own interactive access token (not a
//!   view token, and not a token that itself came through a viewer link: such a holder
//!   could otherwise mint links that outlive the revocation of its own).
//! - `POST /api/links/claim`: the join page trades a link's secret for the session's
//!   cookies, carrying the link's role and id (`lnk`).
//!
//! A link's secret is shown once, in the URL fragment of `/join#<secret>` (fragments never
//! reach the server, so never its logs); the store keeps only its SHA-256. Every use of a
//! link's tokens checks the link (revoked?) and its session (ended?): once per WebSocket
//! connection and per token refresh, never per message. Open connections listen to the
//! link's revocation signal and close with 4008 "viewer link revoked".

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_session::{
    LinkRole, Session, SessionState, StoreError, ViewerLink, link_secret_hash,
};
use serde::Deserialize;
use serde_json::json;

use crate::app::{App, AppState};
use crate::auth::{Role, session_cookies_for, set_cookies};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::proxy::ClientInfo;
use crate::ws::{Close, CloseCode};

/// Links a session may have, revoked ones included: bounds what one session can store.
const MAX_LINKS_PER_SESSION: usize = 100;
/// Characters a label may have.
const MAX_LABEL_CHARS: usize = 100;

/// Why a token issued through a viewer link may not be used.
#[derive(Debug)]
pub enum LinkRefused {
    /// The link was revoked.
    Revoked,
    /// No such link, or it belongs to another session (a token we never issued).
    Unknown,
    Store(StoreError),
}

impl LinkRefused {
    /// The WebSocket close for this refusal.
    pub fn close(self) -> Close {
        match self {
            LinkRefused::Revoked => Close::link_revoked(),
            LinkRefused::Unknown => Close::new(CloseCode::TokenInvalid, "access token invalid"),
            LinkRefused::Store(e) => {
                tracing::error!(error = %e, "session store failed while checking a viewer link");
                Close::new(
                    CloseCode::DesktopUnavailable,
                    "session store unavailable; retry later",
                )
            }
        }
    }

    /// The HTTP answer for this refusal.
    pub fn api_error(self) -> ApiError {
        match self {
            LinkRefused::Revoked => link_revoked(),
            LinkRefused::Unknown => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_invalid",
                "the token is invalid",
            ),
            LinkRefused::Store(e) => e.into(),
        }
    }
}

/// Whether tokens issued through `link_id` still work for `session_id`: the link exists,
/// belongs to that session and is not revoked. (The session's own state is checked by
/// the caller, as for every token.) One store read.
pub async fn check_link(
    app: &App,
    session_id: &str,
    link_id: &str,
) -> Result<ViewerLink, LinkRefused> {
    match app.sessions.store().get_link(link_id).await {
        Err(e) => Err(LinkRefused::Store(e)),
        Ok(Some(link)) if link.session_id != session_id => Err(LinkRefused::Unknown),
        Ok(Some(link)) if link.revoked_at.is_some() => Err(LinkRefused::Revoked),
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(LinkRefused::Unknown),
    }
}

fn link_revoked() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "link_revoked",
        "this viewer link was revoked",
    )
}

fn link_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "link_not_found",
        "this viewer link is not valid",
    )
}

/// A viewer link as the API shows it: never its secret (which the server does not have).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LinkView {
    id: String,
    role: livesession_session::LinkRole,
    label: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<time::OffsetDateTime>,
}

impl LinkView {
    fn of(link: ViewerLink) -> Self {
        LinkView { id: link.id, role: link.role, label: link.label, created_at: link.created_at, revoked_at: link.revoked_at }
    }
}

/// `POST /api/sessions/{id}/links`: the new link, with the URL that carries its secret.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LinkCreated {
    #[serde(flatten)]
    link: LinkView,
    /// `<public URL>/join#<secret>`: shown only here.
    url: String,
}

/// `GET /api/sessions/{id}/links`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct LinkList {
    links: Vec<LinkView>,
}

/// Who is managing a session's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manager {
    Admin,
    /// The session's own interactive access token (header or the viewer's cookie).
    Owner,
}

/// The admin token, or an interactive access token of this session that did not come
/// through a viewer link.
fn require_manager(
    app: &App,
    ip: std::net::IpAddr,
    headers: &HeaderMap,
    id: &str,
) -> Result<Manager, ApiError> {
    // A wrong admin token is counted (and a locked-out address refused) here.
    if crate::handlers::admin::is_admin(app, ip, headers)? {
        return Ok(Manager::Admin);
    }
    let claims = crate::handlers::session_token(app, headers, None, id)?;
    if claims.role != Role::Interactive {
        return Err(ApiError::forbidden(
            "forbidden",
            "a view-only token cannot manage viewer links",
        ));
    }
    if claims.lnk.is_some() {
        return Err(ApiError::forbidden(
            "forbidden",
            "a token from a viewer link cannot manage viewer links",
        ));
    }
    Ok(Manager::Owner)
}

/// The session, which must exist; token holders (not the admin) also need it not ended.
async fn managed_session(app: &App, id: &str, manager: Manager) -> Result<Session, ApiError> {
    let session = app
        .sessions
        .get(id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    if manager == Manager::Owner
        && matches!(session.state, SessionState::Expired | SessionState::Revoked)
    {
        return Err(session_ended(&session));
    }
    Ok(session)
}

fn session_ended(session: &Session) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "session_ended",
        format!("the session has ended ({})", session.state.as_str()),
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    pub role: LinkRole,
    #[serde(default)]
    pub label: Option<String>,
}

/// An optional label: at most 100 characters, no control characters; blank is none.
fn validate_label(label: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(label) = label else { return Ok(None) };
    let label = label.trim();
    if label.is_empty() {
        return Ok(None);
    }
    if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_label",
            format!(
                "label must be at most {MAX_LABEL_CHARS} characters, without control characters"
            ),
        ));
    }
    Ok(Some(label.to_owned()))
}

/// `POST /api/sessions/{id}/links`: a new link. Its URL (with the secret) is in this
/// answer only.
#[utoipa::path(post, path = "/api/sessions/{id}/links", tag = "links", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    request_body = CreateLink,
    responses(
        (status = 201, description = "The link; its `url` (with the secret) is shown only here", body = LinkCreated),
        (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The session is not active yet, or has too many links", body = crate::error::ErrorBody),
        (status = 410, description = "The session has ended", body = crate::error::ErrorBody),
    ))]
pub async fn create_link(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let manager = require_manager(&app, client.ip, &headers, &id)?;
    let request: CreateLink = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "request body: {e}; expected {{\"role\": \"view\" or \"interactive\", \"label\": \"…\"}}"
            ),
        )
    })?;
    let label = validate_label(request.label)?;
    let session = managed_session(&app, &id, manager).await?;
    match session.state {
        SessionState::Active => {}
        SessionState::Pending => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "session_not_active",
                "the session's payment is not confirmed yet",
            ));
        }
        SessionState::Expired | SessionState::Revoked => return Err(session_ended(&session)),
    }
    if app.sessions.store().list_links(&id).await?.len() >= MAX_LINKS_PER_SESSION {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_links",
            format!("a session can have at most {MAX_LINKS_PER_SESSION} viewer links"),
        ));
    }
    let (link, secret) = app.sessions.create_link(&id, request.role, label).await?;
    let body = LinkCreated { url: format!("{}/join#{secret}", app.public_url), link: LinkView::of(link) };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /api/sessions/{id}/links`: every link of the session, revoked ones included,
/// oldest first, without secrets.
#[utoipa::path(get, path = "/api/sessions/{id}/links", tag = "links", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, description = "The session's links, revoked ones too, oldest first, without secrets", body = LinkList), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody)))]
pub async fn list_links(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<LinkList>, ApiError> {
    let manager = require_manager(&app, client.ip, &headers, &id)?;
    managed_session(&app, &id, manager).await?;
    let links = app.sessions.store().list_links(&id).await?;
    Ok(Json(LinkList { links: links.into_iter().map(LinkView::of).collect() }))
}

/// `DELETE /api/sessions/{id}/links/{link_id}`: revokes the link. Every connection opened
/// with its tokens is told to close (4008 "viewer link revoked") before this answers, and
/// its tokens are refused from now on. Revoking a revoked link changes nothing.
#[utoipa::path(delete, path = "/api/sessions/{id}/links/{link_id}", tag = "links", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id"), ("link_id" = String, Path, description = "The link's id")),
    responses((status = 200, description = "The revoked link", body = LinkView), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody),
        (status = 404, description = "No such session, or it has no link with this id", body = crate::error::ErrorBody)))]
pub async fn revoke_link(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path((id, link_id)): Path<(String, String)>,
) -> Result<Json<LinkView>, ApiError> {
    let manager = require_manager(&app, client.ip, &headers, &id)?;
    managed_session(&app, &id, manager).await?;
    let link = app
        .sessions
        .revoke_link(&id, &link_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "link_not_found",
                "this session has no viewer link with this id",
            )
        })?;
    Ok(Json(LinkView::of(link)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimLink {
    pub secret: String,
}

/// A secret we could have issued: 64 lowercase hex characters.
fn well_formed_secret(secret: &str) -> bool {
    secret.len() == 64
        && secret
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `POST /api/links/claim` (the join page): trades a link's secret for the session's
/// access and refresh cookies, carrying the link's role and id. Errors never repeat the
/// secret. Cross-site requests were refused by the CSRF layer (`security::csrf`); the
/// attempts count under the same per-address budget as the paid-session claim.
#[utoipa::path(post, path = "/api/links/claim", tag = "links", request_body = ClaimLink,
    responses(
        (status = 200, description = "The session's cookies are set; `{\"session_id\", \"viewer_url\", \"role\"}`", body = Object),
        (status = 404, description = "No link has this secret, or it was revoked, or its session ended", body = crate::error::ErrorBody),
        (status = 410, description = "The session has ended", body = crate::error::ErrorBody),
    ))]
pub async fn claim_link(
    State(app): State<AppState>,
    client: ClientInfo,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.limits
        .check(RateClass::Checkout, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    // serde's message could quote part of the body: a fixed one instead.
    let request: ClaimLink = serde_json::from_slice(&body?)
        .map_err(|_| ApiError::bad_request("invalid_json", "expected {\"secret\": \"…\"}"))?;
    if !well_formed_secret(&request.secret) {
        return Err(link_not_found());
    }
    let store = app.sessions.store();
    let Some(link) = store
        .find_link_by_secret_hash(&link_secret_hash(&request.secret))
        .await?
    else {
        return Err(link_not_found());
    };
    if link.revoked_at.is_some() {
        return Err(link_revoked());
    }
    let session = app
        .sessions
        .get(&link.session_id)
        .await?
        .ok_or_else(link_not_found)?;
    match session.state {
        SessionState::Active => {}
        SessionState::Pending => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "session_not_active",
                "the session's payment is not confirmed yet",
            ));
        }
        SessionState::Expired | SessionState::Revoked => return Err(session_ended(&session)),
    }
    let role = Role::from(link.role);
    tracing::info!(session_id = %session.id, link_id = %link.id, role = link.role.as_str(), "viewer link claimed");
    let body = json!({
        "session_id": session.id,
        "role": link.role.as_str(),
        "viewer_url": format!("/s/{}", session.id),
    });
    let mut response = (StatusCode::OK, Json(body)).into_response();
    let h = response.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    set_cookies(
        h,
        &session_cookies_for(
            &app.tokens,
            &session.id,
            role,
            Some(&link.id),
            session.expires_at,
            app.secure_cookies_for(&client),
        ),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secrets_we_could_have_issued_are_looked_up() {
        assert!(well_formed_secret(&livesession_session::new_link_secret()));
        assert!(!well_formed_secret(""));
        assert!(!well_formed_secret(&"A".repeat(64)));
        assert!(!well_formed_secret(&"a".repeat(63)));
        assert!(!well_formed_secret(&"é".repeat(32)));
    }

    #[test]
    fn labels_are_short_printable_text() {
        assert_eq!(validate_label(None).unwrap(), None);
        assert_eq!(validate_label(Some("  ".into())).unwrap(), None);
        assert_eq!(
            validate_label(Some(" for Ann ".into())).unwrap().as_deref(),
            Some("for Ann")
        );
        assert!(validate_label(Some("é".repeat(100))).is_ok());
        assert!(validate_label(Some("é".repeat(101))).is_err());
        assert!(validate_label(Some("a\nb".into())).is_err());
    }
}
