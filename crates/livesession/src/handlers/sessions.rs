//! The sessions API (admin token) and the free-mode "Start a session" form.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_session::{NewSession, Session, SessionSource};
use serde::{Deserialize, Serialize};

use crate::app::{App, AppState};
use crate::auth::{Role, session_cookies, set_cookies};
use crate::error::{ApiError, ApiQuery};
use crate::limits::{RateClass, client_key};
use crate::proxy::ClientInfo;

use crate::handlers::admin::require_admin;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub start_url: Option<String>,
    pub ttl_seconds: Option<u64>,
    /// A named profile to start from; with `persist`, the session saves back to it.
    pub profile: Option<ProfileRequest>,
    /// Seconds without a viewer, DevTools client or running task before the desktop
    /// hibernates; 0: never. Default: the server's `--idle-timeout`.
    pub idle_timeout_seconds: Option<u32>,
    /// Record the session's screen (docs/recordings.md); a server started with
    /// `--record` records every session.
    #[serde(default)]
    pub record: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    pub name: String,
    #[serde(default)]
    pub persist: bool,
}

/// The longest idle timeout a session may ask for: a week.
const MAX_IDLE_TIMEOUT_SECONDS: u32 = 7 * 24 * 3600;

/// A profile as a session asks for it, checked.
pub(crate) fn profile_use(app: &App, request: Option<ProfileRequest>) -> Result<Option<livesession_session::ProfileUse>, ApiError> {
    let Some(request) = request else { return Ok(None) };
    crate::handlers::profiles::check_name(&request.name)?;
    if request.persist {
        // The profile's last writer may have ended and still be saving it.
        crate::handlers::profiles::not_being_saved(app, &request.name)?;
    }
    Ok(Some(livesession_session::ProfileUse { name: request.name, persist: request.persist }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionCreated {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: time::OffsetDateTime,
    pub token: String,
    /// The session's refresh token (interactive, until the session ends): what a person's
    /// browser needs, as `viewer_url#token=<refresh_token>`, and what renews `token` at
    /// the token endpoint. An access token cannot renew itself.
    pub refresh_token: String,
    pub viewer_url: String,
    pub vnc_url: String,
    pub control_url: String,
    /// The browser-level DevTools WebSocket for agents (add `?token=`; docs/agents.md).
    pub cdp_url: String,
}

/// A session as the API shows it: the stored record plus its desktop's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    #[serde(flatten)]
    pub session: Session,
    pub desktop: &'static str,
}

pub(crate) fn view(app: &App, session: Session) -> SessionView {
    let desktop = app.desktops.status_name(&session);
    SessionView { session, desktop }
}

/// Only web pages may be a start URL: other schemes (file:, chrome:, javascript:) would
/// hand the remote browser something other than a page to show.
fn validate_start_url(url: &str) -> Result<(), ApiError> {
    let ok = url == "about:blank"
        || ["http://", "https://"].iter().any(|scheme| {
            url.len() > scheme.len()
                && url
                    .get(..scheme.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        });
    if !ok || url.len() > 2048 || url.chars().any(char::is_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_start_url",
            "start_url must be an http(s) URL of at most 2048 characters, or about:blank",
        ));
    }
    Ok(())
}

/// Creates a session. With `client` (free mode), the session records the client's
/// address and is refused when that address already has its
/// `--max-free-sessions-per-ip` live sessions. (Also `POST /api/logins`.)
pub(crate) async fn create(
    app: &App,
    source: SessionSource,
    request: CreateSession,
    client: Option<&ClientInfo>,
) -> Result<(Session, String), ApiError> {
    let start_url = request
        .start_url
        .unwrap_or_else(|| app.config.start_url.clone());
    validate_start_url(&start_url)?;
    let ttl = request.ttl_seconds.unwrap_or(app.config.session_ttl);
    if ttl == 0 || ttl > app.config.max_session_ttl {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!(
                "ttl_seconds must be between 1 and {}",
                app.config.max_session_ttl
            ),
        ));
    }
    if request.idle_timeout_seconds.is_some_and(|s| s > MAX_IDLE_TIMEOUT_SECONDS) {
        return Err(ApiError::bad_request(
            "invalid_idle_timeout",
            format!("idle_timeout_seconds must be between 0 (never) and {MAX_IDLE_TIMEOUT_SECONDS}"),
        ));
    }
    // Refused only when not even a place in line is left.
    if app.desktops.queue_full() {
        return Err(desktops_busy());
    }
    let new = NewSession {
        source,
        start_url,
        ttl: time::Duration::seconds(ttl as i64),
        profile: profile_use(app, request.profile)?,
        idle_timeout_seconds: request.idle_timeout_seconds,
        record: request.record,
    };
    let session = match client {
        None => app.sessions.create(new).await?,
        Some(client) => {
            let cap = app.config.max_free_sessions_per_ip;
            // The address as the rate limits count it: IPv6 by its /64.
            let key = client_key(client.ip).to_string();
            app.sessions
                .create_capped(new, &key, if cap == 0 { u32::MAX } else { cap })
                .await?
                .ok_or_else(|| free_session_limit(cap))?
        }
    };
    let (token, _) = app
        .tokens
        .access(&session.id, Role::Interactive, session.expires_at);
    // Its recorder waits for the desktop (it never starts one itself).
    app.recordings.ensure(&session);
    Ok((session, token))
}

/// Every desktop is in use and the wait queue is full (docs/profiles.md, "Capacity and
/// the wait queue").
fn desktops_busy() -> ApiError {
    ApiError {
        retry_after: Some(DESKTOPS_BUSY_RETRY_SECONDS),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "desktops_busy",
            "every desktop is in use and the wait queue is full; try again later",
        )
    }
}

/// `Retry-After` of a `503 desktops_busy`.
const DESKTOPS_BUSY_RETRY_SECONDS: u64 = 30;

fn free_session_limit(cap: u32) -> ApiError {
    let sessions = if cap == 1 { "session" } else { "sessions" };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "free_session_limit",
        format!(
            "this address already has {cap} free {sessions} running, the most one address \
             may have at once; close one (or wait for it to end) to start another"
        ),
    )
}

#[utoipa::path(post, path = "/api/sessions", tag = "sessions", security(("bearer" = [])),
    request_body(content = CreateSession, description = "Every field is optional; an empty body takes the defaults"),
    responses(
        (status = 201, description = "Created; `refresh_token` and `viewer_url` are shown only here", body = SessionCreated),
        (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody),
        (status = 409, description = "The profile is being saved by its last writer; retry in a moment", body = crate::error::ErrorBody),
    ))]
pub async fn create_session(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Counted before the token is checked: guessing tokens is limited too.
    app.limits
        .check(RateClass::Create, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    require_admin(&app, client.ip, &headers)?;
    let body = body?;
    let request: CreateSession = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSession::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))?
    };
    let (session, token) = create(&app, SessionSource::Api, request, None).await?;
    let ws_base = app.public_url.replacen("http", "ws", 1);
    let created = SessionCreated {
        refresh_token: app
            .tokens
            .refresh(&session.id, Role::Interactive, session.expires_at),
        viewer_url: format!("{}/s/{}", app.public_url, session.id),
        vnc_url: format!("{ws_base}/api/sessions/{}/vnc", session.id),
        cdp_url: format!("{ws_base}/api/sessions/{}/cdp", session.id),
        control_url: format!("{ws_base}/api/sessions/{}/control", session.id),
        id: session.id,
        expires_at: session.expires_at,
        token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /api/sessions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub limit: Option<u32>,
    /// Find the session a Stripe Checkout Session paid for.
    pub checkout_session_id: Option<String>,
}

#[utoipa::path(get, path = "/api/sessions", tag = "sessions", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "The sessions, newest first", body = SessionList), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody)))]
pub async fn list_sessions(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SessionList>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let store = app.sessions.store();
    let found = match &q.checkout_session_id {
        Some(cs) => store.find_by_checkout(cs).await?.into_iter().collect(),
        None => {
            store
                .list_sessions(q.limit.unwrap_or(100).clamp(1, 1000))
                .await?
        }
    };
    let sessions: Vec<SessionView> = found.into_iter().map(|s| view(&app, s)).collect();
    Ok(Json(SessionList { sessions }))
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, description = "The session", body = SessionView), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody)))]
pub async fn get_session(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let session = app
        .sessions
        .get(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    Ok(Json(view(&app, session)))
}

/// Revokes the session: its connections close with "session revoked" and its desktop
/// is stopped before this answers. Revoking an ended session changes nothing.
#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "sessions", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    responses((status = 200, description = "Revoked (or already ended): the session as it is now", body = SessionView), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody)))]
pub async fn revoke_session(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let session = match app.sessions.revoke(&id, "revoked by the operator").await? {
        Some(revoked) => revoked,
        None => app
            .sessions
            .get(&id)
            .await?
            .ok_or_else(ApiError::session_not_found)?,
    };
    // (A profile's writer saves to it first; the cleanup of the end does the same, once.)
    app.desktops.end_session(&id).await;
    Ok(Json(view(&app, session)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendSession {
    pub seconds: u64,
}

/// Moves an active session's deadline later by `seconds`.
#[utoipa::path(post, path = "/api/sessions/{id}/extend", tag = "sessions", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    request_body = ExtendSession,
    responses((status = 200, description = "The session with its new deadline", body = SessionView), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody),
        (status = 409, description = "The session is not active", body = crate::error::ErrorBody)))]
pub async fn extend_session(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SessionView>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let request: ExtendSession = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body: {e}; expected {{\"seconds\": N}}"),
        )
    })?;
    if request.seconds == 0 || request.seconds > app.config.max_session_ttl {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!(
                "seconds must be between 1 and {}",
                app.config.max_session_ttl
            ),
        ));
    }
    match app
        .sessions
        .extend(&id, time::Duration::seconds(request.seconds as i64))
        .await?
    {
        Some(session) => Ok(Json(view(&app, session))),
        None => match app.sessions.get(&id).await? {
            Some(s) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "session_not_active",
                format!("the session is {}", s.state.as_str()),
            )),
            None => Err(ApiError::session_not_found()),
        },
    }
}

/// The landing page's "Start a session" form, in free mode: creates a session, gives this
/// browser its access and refresh cookies, and sends it to the viewer. Only our own pages
/// may post it (the CSRF layer, `security::csrf`).
pub async fn start_free_session(
    State(app): State<AppState>,
    client: ClientInfo,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.limits
        .check(RateClass::Create, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    // An optional goal: an agent task that starts in the new session.
    let goal = crate::handlers::tasks::form_goal(&body?)?;
    if !app.config.free_mode() {
        return Err(ApiError::forbidden(
            "free_mode_off",
            "this server does not start free sessions",
        ));
    }
    // Free sessions are short (`--free-session-ttl`); admin-created ones keep the default.
    let request = CreateSession {
        ttl_seconds: Some(
            (app.config.free_session_ttl).clamp(1, app.config.max_session_ttl.max(1)),
        ),
        ..CreateSession::default()
    };
    let (session, _) = create(&app, SessionSource::Free, request, Some(&client)).await?;
    if let Some(goal) = &goal {
        crate::handlers::tasks::start_goal(&app, &session, goal).await?;
    }
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(
        LOCATION,
        HeaderValue::from_str(&format!("/s/{}", session.id)).expect("hex id"),
    );
    set_cookies(
        headers,
        &session_cookies(
            &app.tokens,
            &session.id,
            Role::Interactive,
            session.expires_at,
            app.secure_cookies_for(&client),
        ),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::validate_start_url;

    #[test]
    fn only_web_pages_are_start_urls() {
        for ok in [
            "http://127.0.0.1:9/x",
            "https://example.org/",
            "about:blank",
            "HTTPS://EXAMPLE.ORG",
        ] {
            assert!(validate_start_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http:/é/x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "chrome://settings",
            "http://",
            "http://a b",
            "",
        ] {
            assert!(validate_start_url(bad).is_err(), "{bad}");
        }
    }
}
