//! The profiles API (admin token): saved browser states by name, their cookies, and
//! importing cookies into one: the operator's way to use a captured login elsewhere.
//! docs/profiles.md has the contract.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use livesession_profiles::{SavedInfo, StateKey, StateMeta, VaultError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::handlers::admin::require_admin;
use crate::proxy::ClientInfo;

/// Cookies one import may carry.
const MAX_IMPORTED_COOKIES: usize = 1000;

/// A profile name as the API takes it: 1–64 of `[A-Za-z0-9._-]`, not starting with `.` or
/// `-`, or 400 `invalid_profile` saying why.
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    livesession_profiles::check_profile_name(name)
        .map_err(|why| ApiError::bad_request("invalid_profile", format!("profile name: {why}")))
}

fn profile_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "profile_not_found", "no profile has this name")
}

fn vault_error(e: VaultError) -> ApiError {
    match e {
        VaultError::Corrupt(_) => ApiError::new(
            StatusCode::CONFLICT,
            "profile_unreadable",
            "the profile's stored state cannot be read (tampered or truncated); delete it and capture it again",
        ),
        VaultError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "profile_too_large",
            format!("the profile would be larger than {} MiB", limit >> 20),
        ),
        VaultError::InvalidName(why) => ApiError::bad_request("invalid_profile", format!("profile name: {why}")),
        e => ApiError::internal("the profile store failed", e),
    }
}

/// Runs a blocking vault call off the async threads.
async fn blocking<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&livesession_profiles::Vault) -> T + Send + 'static,
) -> T {
    let states = app.states.clone();
    tokio::task::spawn_blocking(move || f(states.vault()))
        .await
        .expect("a vault call panicked")
}

/// The session that persists to `name`, if one is live.
async fn writer_of(app: &App, name: &str) -> Result<Option<String>, ApiError> {
    Ok(app.sessions.store().profile_writer(name).await?.map(|s| s.id))
}

/// `409 profile_in_use` while a session's save to the profile is being written.
pub(crate) fn not_being_saved(app: &App, name: &str) -> Result<(), ApiError> {
    if app.states.profile_busy(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "profile_in_use",
            "the session that used this profile is saving it; try again in a few seconds",
        ));
    }
    Ok(())
}

fn profile_json(name: &str, info: &SavedInfo, writer: Option<String>) -> Value {
    json!({
        "name": name,
        "stored_bytes": info.stored_bytes,
        "unpacked_bytes": info.unpacked_bytes,
        "files": info.files,
        "updated_at": info.updated_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "in_use_by": writer,
    })
}

/// `GET /api/profiles`.
#[utoipa::path(get, path = "/api/profiles", tag = "profiles", security(("bearer" = [])),
    responses((status = 200, description = "`{\"profiles\": [...]}`", body = Object), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody)))]
pub async fn list_profiles(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let infos = blocking(&app, |v| v.list_profiles())
        .await
        .map_err(|e| ApiError::internal("the profile store failed", e))?;
    let mut profiles = Vec::with_capacity(infos.len());
    for info in infos {
        let StateKey::Profile(name) = &info.key else { continue };
        let writer = writer_of(&app, name).await?;
        profiles.push(profile_json(name, &info, writer));
    }
    Ok(Json(json!({ "profiles": profiles })))
}

/// `GET /api/profiles/{name}`: sizes, when saved, its tabs and how many cookies.
#[utoipa::path(get, path = "/api/profiles/{name}", tag = "profiles", security(("bearer" = [])), params(("name" = String, Path, description = "The profile's name")),
    responses((status = 200, description = "The profile's sizes, tabs and cookie counts", body = Object), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No profile has this name", body = crate::error::ErrorBody), (status = 409, description = "The profile's stored state cannot be read", body = crate::error::ErrorBody)))]
pub async fn get_profile(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    check_name(&name)?;
    let key = StateKey::Profile(name.clone());
    let (info, meta) = blocking(&app, move |v| (v.info(&key), v.meta(&key))).await;
    let info = info.ok_or_else(profile_not_found)?;
    let meta = meta.map_err(vault_error)?.unwrap_or_default();
    let mut body = profile_json(&name, &info, writer_of(&app, &name).await?);
    body["tabs"] = json!(meta.tabs);
    body["cookies"] = json!(meta.cookies.len());
    body["imported_cookies"] = json!(meta.imported_cookies.len());
    body["saved_at"] = json!(meta.saved_at);
    body["saved_by_session"] = json!(meta.saved_by_session);
    Ok(Json(body))
}

/// `DELETE /api/profiles/{name}`: 409 while a session persists to it.
#[utoipa::path(delete, path = "/api/profiles/{name}", tag = "profiles", security(("bearer" = [])), params(("name" = String, Path, description = "The profile's name")),
    responses((status = 200, description = "`{\"name\", \"deleted\": true}`", body = Object), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No profile has this name", body = crate::error::ErrorBody),
        (status = 409, description = "A session saves to this profile, or it is being saved", body = crate::error::ErrorBody)))]
pub async fn delete_profile(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    check_name(&name)?;
    if let Some(session) = writer_of(&app, &name).await? {
        return Err(in_use(&session));
    }
    not_being_saved(&app, &name)?;
    let key = StateKey::Profile(name.clone());
    let deleted = blocking(&app, move |v| v.delete(&key))
        .await
        .map_err(|e| ApiError::internal("the profile store failed", e))?;
    if !deleted {
        return Err(profile_not_found());
    }
    tracing::info!(profile = %name, "profile deleted");
    Ok(Json(json!({ "name": name, "deleted": true })))
}

fn in_use(session: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "profile_in_use",
        format!("session {session} saves to this profile; end it first"),
    )
}

/// `GET /api/profiles/{name}/cookies`: the cookies saved with the profile (as CDP's
/// `Network.Cookie`), and those imported and not yet applied.
#[utoipa::path(get, path = "/api/profiles/{name}/cookies", tag = "profiles", security(("bearer" = [])), params(("name" = String, Path, description = "The profile's name")),
    responses((status = 200, description = "`{\"name\", \"cookies\", \"imported_cookies\"}`", body = Object), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No profile has this name", body = crate::error::ErrorBody), (status = 409, description = "The profile's stored state cannot be read", body = crate::error::ErrorBody)))]
pub async fn get_cookies(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    check_name(&name)?;
    let key = StateKey::Profile(name.clone());
    let meta = blocking(&app, move |v| v.meta(&key)).await.map_err(vault_error)?;
    let meta = meta.ok_or_else(profile_not_found)?;
    Ok(Json(json!({ "name": name, "cookies": meta.cookies, "imported_cookies": meta.imported_cookies })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ImportCookies {
    cookies: Vec<Value>,
}

/// Checks one cookie as CDP's `Network.CookieParam` takes it: a name and a value, and a
/// `url` or a `domain` to scope it.
fn check_cookie(i: usize, c: &Value) -> Result<(), ApiError> {
    let bad = |what: &str| ApiError::bad_request("invalid_cookie", format!("cookies[{i}].{what}"));
    let obj = c.as_object().ok_or_else(|| bad("(the cookie): expected an object"))?;
    let name = obj.get("name").and_then(Value::as_str).ok_or_else(|| bad("name: required, a string"))?;
    if name.is_empty() || name.len() > 256 || name.chars().any(|ch| ch.is_control() || ch == ';' || ch == '=' || ch.is_whitespace()) {
        return Err(bad("name: 1–256 characters, no spaces, ';', '=' or control characters"));
    }
    let value = obj.get("value").and_then(Value::as_str).ok_or_else(|| bad("value: required, a string"))?;
    if value.len() > 4096 || value.chars().any(|ch| ch.is_control() || ch == ';') {
        return Err(bad("value: at most 4096 characters, no ';' or control characters"));
    }
    let url = obj.get("url").and_then(Value::as_str);
    let domain = obj.get("domain").and_then(Value::as_str);
    if url.is_none() && domain.is_none() {
        return Err(bad("url or domain: one is required"));
    }
    if let Some(url) = url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(bad("url: an http(s) URL"));
    }
    const KNOWN: &[&str] = &["name", "value", "url", "domain", "path", "secure", "httpOnly", "sameSite", "expires", "priority", "sameParty", "sourceScheme", "sourcePort", "partitionKey"];
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(&format!("{unknown}: not a field of a cookie")));
    }
    Ok(())
}

/// `POST /api/profiles/{name}/cookies` `{"cookies": [CookieParam, …]}`: kept with the
/// profile and set in its browser before its pages load, the next time a session starts
/// with it. Creates the profile if it does not exist. 409 while a session persists to it
/// (its next save would not carry them).
#[utoipa::path(post, path = "/api/profiles/{name}/cookies", tag = "profiles", security(("bearer" = [])), params(("name" = String, Path, description = "The profile's name")),
    request_body = ImportCookies,
    responses((status = 200, description = "The profile, with `imported`", body = Object), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody),
        (status = 409, description = "A session saves to this profile, or it is being saved", body = crate::error::ErrorBody)))]
pub async fn import_cookies(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&app, client.ip, &headers)?;
    check_name(&name)?;
    let request: ImportCookies = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("request body: {e}; expected {{\"cookies\": [{{\"name\", \"value\", \"domain\" or \"url\", …}}]}}"))
    })?;
    if request.cookies.is_empty() || request.cookies.len() > MAX_IMPORTED_COOKIES {
        return Err(ApiError::bad_request("invalid_cookie", format!("cookies: 1 to {MAX_IMPORTED_COOKIES} cookies")));
    }
    for (i, c) in request.cookies.iter().enumerate() {
        check_cookie(i, c)?;
    }
    if let Some(session) = writer_of(&app, &name).await? {
        return Err(in_use(&session));
    }
    not_being_saved(&app, &name)?;
    let count = request.cookies.len();
    let key = StateKey::Profile(name.clone());
    let info = blocking(&app, move |v| {
        v.update_meta(&key, |meta: &mut StateMeta| {
            for cookie in request.cookies {
                // A newer import of the same cookie replaces the older one.
                let same = |c: &Value| ["name", "domain", "path", "url"].iter().all(|k| c.get(k) == cookie.get(k));
                meta.imported_cookies.retain(|c| !same(c));
                meta.imported_cookies.push(cookie);
            }
        })
    })
    .await
    .map_err(vault_error)?;
    tracing::info!(profile = %name, cookies = count, "cookies imported into a profile");
    let mut body = profile_json(&name, &info, None);
    body["imported"] = json!(count);
    Ok((StatusCode::OK, Json(body)))
}
