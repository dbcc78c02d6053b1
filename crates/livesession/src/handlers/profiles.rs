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
use serde_json::Value;

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

/// A saved profile as the API shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileView {
    name: String,
    /// The encrypted file's size.
    stored_bytes: u64,
    /// The saved files' sizes added up.
    unpacked_bytes: u64,
    files: u64,
    /// RFC 3339.
    updated_at: String,
    /// The session that saves to it now, if any.
    in_use_by: Option<String>,
}

impl ProfileView {
    fn of(name: &str, info: &SavedInfo, writer: Option<String>) -> Self {
        ProfileView {
            name: name.to_owned(),
            stored_bytes: info.stored_bytes,
            unpacked_bytes: info.unpacked_bytes,
            files: info.files,
            updated_at: info.updated_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            in_use_by: writer,
        }
    }
}

/// `GET /api/profiles`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileList {
    profiles: Vec<ProfileView>,
}

/// `GET /api/profiles/{name}`: the profile, what it opens and how many cookies it holds.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileDetails {
    #[serde(flatten)]
    profile: ProfileView,
    /// The tabs it opens (URLs).
    tabs: Vec<String>,
    cookies: usize,
    /// Imported and not yet applied (they are, at the next start).
    imported_cookies: usize,
    saved_at: Option<String>,
    saved_by_session: Option<String>,
}

/// `DELETE /api/profiles/{name}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileDeleted {
    name: String,
    deleted: bool,
}

/// `GET /api/profiles/{name}/cookies`: as CDP's `Network.Cookie` and `Network.CookieParam`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProfileCookies {
    name: String,
    cookies: Vec<Value>,
    imported_cookies: Vec<Value>,
}

/// `POST /api/profiles/{name}/cookies`: the profile, and how many cookies were imported.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CookiesImported {
    #[serde(flatten)]
    profile: ProfileView,
    imported: usize,
}

/// `GET /api/profiles`.
#[utoipa::path(get, path = "/api/profiles", tag = "profiles", security(("bearer" = [])),
    responses((status = 200, description = "The saved profiles", body = ProfileList), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody)))]
pub async fn list_profiles(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Json<ProfileList>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let infos = blocking(&app, |v| v.list_profiles())
        .await
        .map_err(|e| ApiError::internal("the profile store failed", e))?;
    let mut profiles = Vec::with_capacity(infos.len());
    for info in infos {
        let StateKey::Profile(name) = &info.key else { continue };
        let writer = writer_of(&app, name).await?;
        profiles.push(ProfileView::of(name, &info, writer));
    }
    Ok(Json(ProfileList { profiles }))
}

/// `GET /api/profiles/{name}`: sizes, when saved, its tabs and how many cookies.
#[utoipa::path(get, path = "/api/profiles/{name}", tag = "profiles", security(("bearer" = [])), params(("name" = String, Path, description = "The profile's name")),
    responses((status = 200, description = "The profile's sizes, tabs and cookie counts", body = ProfileDetails), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No profile has this name", body = crate::error::ErrorBody), (status = 409, description = "The profile's stored state cannot be read", body = crate::error::ErrorBody)))]
pub async fn get_profile(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ProfileDetails>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    check_name(&name)?;
    let key = StateKey::Profile(name.clone());
    let (info, meta) = blocking(&app, move |v| (v.info(&key), v.meta(&key))).await;
    let info = info.ok_or_else(profile_not_found)?;
    let meta = meta.map_err(vault_error)?.unwrap_or_default();
    Ok(Json(ProfileDetails {
        profile: ProfileView::of(&name, &info, writer_of(&app, &name).await?),
        cookies: meta.cookies.len(),
        imported_cookies: meta.imported_cookies.len(),
        tabs: meta.tabs,
        saved_at: meta.saved_at,
        saved_by_session: meta.saved_by_session,
    }))
}

/// `DELETE /api/profiles/{name}`: 409 while a session persists to it.
#[utoipa::path(delete, path = "/api/profiles/{name}", tag = "profiles", security(("bearer" = [])), params(("name" = String, Path, description = "The profile's name")),
    responses((status = 200, description = "Deleted", body = ProfileDeleted), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No profile has this name", body = crate::error::ErrorBody),
        (status = 409, description = "A session saves to this profile, or it is being saved", body = crate::error::ErrorBody)))]
pub async fn delete_profile(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ProfileDeleted>, ApiError> {
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
    Ok(Json(ProfileDeleted { name, deleted: true }))
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
    responses((status = 200, description = "The saved and the imported cookies", body = ProfileCookies), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody), (status = 404, description = "No profile has this name", body = crate::error::ErrorBody), (status = 409, description = "The profile's stored state cannot be read", body = crate::error::ErrorBody)))]
pub async fn get_cookies(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ProfileCookies>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    check_name(&name)?;
    let key = StateKey::Profile(name.clone());
    let meta = blocking(&app, move |v| v.meta(&key)).await.map_err(vault_error)?;
    let meta = meta.ok_or_else(profile_not_found)?;
    Ok(Json(ProfileCookies { name, cookies: meta.cookies, imported_cookies: meta.imported_cookies }))
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
    responses((status = 200, description = "The profile, with how many cookies were imported", body = CookiesImported), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody),
        (status = 409, description = "A session saves to this profile, or it is being saved", body = crate::error::ErrorBody)))]
pub async fn import_cookies(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CookiesImported>), ApiError> {
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
    Ok((StatusCode::OK, Json(CookiesImported { profile: ProfileView::of(&name, &info, None), imported: count })))
}
