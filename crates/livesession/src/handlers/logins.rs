//! `POST /api/logins` (admin token): a login-capture session. A person logs in to a
//! provider through the viewer link this answers; when the done condition holds, the
//! browser's state is saved to the profile and the session ends (login_capture.rs).
//! docs/profiles.md, "Login capture"; docs/api.md.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_session::SessionSource;
use livesession_session::store::{DoneCondition, Login};
use serde::Serialize;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::handlers::admin::require_admin;
use crate::handlers::sessions::{CreateSession, ProfileRequest, create};
use crate::limits::RateClass;
use crate::proxy::ClientInfo;

/// The longest cookie name or URL prefix taken.
const MAX_CONDITION_LEN: usize = 2048;

/// The request's fields, each checked on its own so a refusal names the one at fault.
struct CreateLogin {
    start_url: String,
    profile: String,
    done: DoneCondition,
    ttl_seconds: Option<u64>,
}

const FIELDS: &str = "start_url, profile, done and ttl_seconds (optional)";
const FIELD_NAMES: [&str; 4] = ["start_url", "profile", "done", "ttl_seconds"];

/// The request's shape, as the OpenAPI spec shows it. It is read field by field
/// (`parse_request`) so that a refusal names the field at fault; a unit test keeps the
/// two to the same fields.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LoginRequest {
    /// The provider's login page (http or https).
    start_url: String,
    /// The profile the login is saved to.
    profile: String,
    /// When the login is done: a tab's URL under a prefix, or a cookie of a name.
    done: DoneCondition,
    /// The session's lifetime; default the server's session TTL.
    ttl_seconds: Option<u64>,
}

fn parse_request(body: &[u8]) -> Result<CreateLogin, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}; expected a JSON object with {FIELDS}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request("invalid_json", format!("request body: expected a JSON object with {FIELDS}")));
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELD_NAMES.contains(&k.as_str())) {
        return Err(ApiError::bad_request("invalid_json", format!("unknown field {unknown}; expected {FIELDS}")));
    }
    let start_url = match fields.remove("start_url") {
        Some(Value::String(url)) => url,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("invalid_start_url", "start_url is required: the provider's login page"));
        }
        Some(_) => return Err(ApiError::bad_request("invalid_start_url", "start_url must be a string: an http(s) URL")),
    };
    let profile = match fields.remove("profile") {
        Some(Value::String(name)) => name,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("invalid_profile", "profile is required: the name the login is saved under"));
        }
        Some(_) => return Err(ApiError::bad_request("invalid_profile", "profile must be a string: the profile's name")),
    };
    let done = done_condition(fields.remove("done"))?;
    let ttl_seconds = match fields.remove("ttl_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request("invalid_ttl", "ttl_seconds must be a whole number of seconds")
        })?),
    };
    Ok(CreateLogin { start_url, profile, done, ttl_seconds })
}

/// No `Debug`: `viewer_url` holds the session's refresh token, which must not reach a log.
#[derive(Serialize, utoipa::ToSchema)]
struct LoginCreated {
    id: String,
    session_id: String,
    /// The link to hand the person: the viewer with the session's refresh token in the
    /// fragment (`#token=`), as for `POST /api/sessions`.
    viewer_url: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
    profile: String,
    done: DoneCondition,
}

fn invalid_done(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_done", message)
}

/// The done condition: exactly one of `url_prefix` (an http(s) URL) and `cookie` (a
/// cookie name: token characters).
fn done_condition(value: Option<Value>) -> Result<DoneCondition, ApiError> {
    let shape = "done must be {\"url_prefix\": \"https://…\"} or {\"cookie\": \"name\"}";
    let Some(Value::Object(fields)) = value else {
        return Err(invalid_done(format!("{shape}: it is missing or not an object")));
    };
    if fields.len() != 1 {
        return Err(invalid_done(format!("{shape}: exactly one of url_prefix and cookie")));
    }
    let (key, value) = fields.into_iter().next().expect("one field");
    let Value::String(text) = value else {
        return Err(invalid_done(format!("done.{key} must be a string")));
    };
    match key.as_str() {
        "url_prefix" => {
            let web = ["http://", "https://"].iter().any(|scheme| {
                text.len() > scheme.len() && text.get(..scheme.len()).is_some_and(|p| p.eq_ignore_ascii_case(scheme))
            });
            // Compared as scheme, host and port exactly, then a path prefix
            // (login_capture::url_matches): it must parse as a URL with a host.
            let parsed = reqwest::Url::parse(&text).ok().filter(|u| u.host_str().is_some_and(|h| !h.is_empty()));
            if !web
                || parsed.is_none()
                || text.len() > MAX_CONDITION_LEN
                || text.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid_done(format!(
                    "done.url_prefix must be an http(s) URL with its host (the path may be cut short) of at most {MAX_CONDITION_LEN} characters"
                )));
            }
            Ok(DoneCondition::UrlPrefix(text))
        }
        "cookie" => {
            // RFC 9110 token characters: what a cookie name may be.
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if text.is_empty() || text.len() > 256 || !text.chars().all(tchar) {
                return Err(invalid_done(
                    "done.cookie must be a cookie name: 1–256 letters, digits or !#$%&'*+-.^_`|~",
                ));
            }
            Ok(DoneCondition::Cookie(text))
        }
        other => Err(invalid_done(format!("{shape}: unknown field done.{other}"))),
    }
}

/// An id for a login: `lg_` and 128 random bits in hex.
fn new_login_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    format!("lg_{}", hex::encode(bytes))
}

#[utoipa::path(post, path = "/api/logins", tag = "logins", security(("bearer" = [])), request_body = LoginRequest,
    responses(
        (status = 201, description = "The login and its session; hand `viewer_url` to the person", body = LoginCreated),
        (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody),
        (status = 409, description = "Another session writes to this profile, or it is being saved", body = crate::error::ErrorBody),
        (status = 503, description = "Login capture needs an events URL and secret, or the store is unavailable", body = crate::error::ErrorBody),
    ))]
pub async fn create_login(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // As `POST /api/sessions`: counted before the token is checked.
    app.limits
        .check(RateClass::Create, client.ip)
        .map_err(|r| ApiError::rate_limited(&r))?;
    require_admin(&app, client.ip, &headers)?;
    let CreateLogin { start_url, profile, done, ttl_seconds } = parse_request(&body?)?;
    // A login's own default lifetime; the sessions' bounds apply.
    let ttl = ttl_seconds.unwrap_or_else(|| app.config.profiles.login_ttl.clamp(1, app.config.max_session_ttl.max(1)));
    let session_request = CreateSession {
        start_url: Some(start_url),
        ttl_seconds: Some(ttl),
        profile: Some(ProfileRequest { name: profile.clone(), persist: true }),
        idle_timeout_seconds: None,
        // A login's screen is recorded only with --record (it shows the person signing in).
        record: false,
    };
    // Checks start_url, ttl_seconds and the profile's name; 409 profile_in_use when
    // another session persists to it.
    let (session, _) = create(&app, SessionSource::Api, session_request, None).await?;
    let login = Login {
        id: new_login_id(),
        session_id: session.id.clone(),
        profile,
        done,
        created_at: session.created_at,
        outcome: None,
        finished_at: None,
    };
    if let Err(e) = app.logins.store().insert_login(&login).await {
        // Not a login without its record: the session goes (and frees the profile).
        let _ = app.sessions.revoke(&session.id, "login capture could not be recorded").await;
        return Err(ApiError::internal("could not record the login capture", e));
    }
    tracing::info!(session_id = %session.id, login_id = %login.id, profile = %login.profile, "login capture started");
    crate::login_capture::watch(&app.0, login.clone());
    let refresh = app.tokens.refresh(&session.id, Role::Interactive, session.expires_at);
    let created = LoginCreated {
        id: login.id,
        viewer_url: format!("{}/s/{}#token={refresh}", app.public_url, session.id),
        session_id: session.id,
        expires_at: session.expires_at,
        profile: login.profile,
        done: login.done,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_done_condition_is_one_url_prefix_or_one_cookie_name() {
        assert_eq!(
            done_condition(Some(json!({"url_prefix": "https://a.example/home"}))).unwrap(),
            DoneCondition::UrlPrefix("https://a.example/home".into())
        );
        assert_eq!(done_condition(Some(json!({"cookie": "__Host-sid"}))).unwrap(), DoneCondition::Cookie("__Host-sid".into()));
        for bad in [
            json!(null),
            json!("https://a.example"),
            json!({}),
            json!({"url_prefix": "https://a.example", "cookie": "sid"}),
            json!({"url_prefix": "ftp://a.example"}),
            json!({"url_prefix": "https://"}),
            json!({"url_prefix": "https://:443/home"}),
            json!({"url_prefix": "https://a b.example/"}),
            json!({"url_prefix": "https://a.example/ x"}),
            json!({"url_prefix": 7}),
            json!({"cookie": ""}),
            json!({"cookie": "a b"}),
            json!({"cookie": "a=b"}),
            json!({"cookie": "a;b"}),
            json!({"title": "Home"}),
        ] {
            let refused = done_condition(Some(bad.clone()));
            assert!(refused.is_err(), "{bad}");
        }
        assert!(done_condition(None).is_err());
    }

    #[test]
    fn the_specs_login_request_has_the_fields_the_parser_takes() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(LoginRequest::schema()).unwrap();
        let mut shown: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        shown.sort_unstable();
        let mut taken = FIELD_NAMES.to_vec();
        taken.sort_unstable();
        assert_eq!(shown, taken);
    }
}
