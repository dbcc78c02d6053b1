//! A session's files (docs/api.md, "Session files"):
//!
//! - `GET /api/sessions/{id}/files`: the list, `{"files": [{name, size, modified}]}`;
//! - `GET /api/sessions/{id}/files/{name}`: one file, streamed as an attachment;
//! - `POST /api/sessions/{id}/files?name=NAME`: the raw body becomes the file NAME
//!   (`201` and its entry).
//!
//! Who: the admin token, or an access token of this session (bearer, `?token=` for
//! reads, or the viewer's cookie from our own pages; CSRF-checked for the upload). View
//! tokens list and download but do not upload. Another session's token gets nothing.
//!
//! An upload also goes into the live desktop's Downloads folder, and every file added
//! (uploaded, or downloaded by the desktop's browser) is announced to the session's
//! control connections as `FILE_ADDED` (downloads.rs).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use livesession_session::SessionState;
use serde::Deserialize;

use crate::app::{App, AppState};
use crate::auth::Role;
use crate::desktops::DesktopStatus;
use crate::error::{ApiError, ApiQuery};
use crate::handlers::TokenQuery;
use crate::handlers::tasks::{Caller, session_caller};
use crate::proxy::ClientInfo;
use crate::session_files::{FilesError, MAX_FILE_BYTES, MAX_FILES, SessionFiles};

/// The server's session files (`<data>/files/`).
pub(crate) fn session_files(app: &App) -> SessionFiles {
    app.desktops.files().files().clone()
}

fn file_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "file_not_found",
        "this session has no file of this name",
    )
}

fn files_error(e: FilesError) -> ApiError {
    match e {
        FilesError::BadName(rule) => ApiError::bad_request("invalid_file_name", rule),
        FilesError::NotFound => file_not_found(),
        FilesError::Exists => ApiError::new(
            StatusCode::CONFLICT,
            "file_exists",
            "the session already has a file of this name; choose another name",
        ),
        FilesError::TooMany => ApiError::new(
            StatusCode::CONFLICT,
            "too_many_files",
            format!("the session already holds {MAX_FILES} files, the most it may hold"),
        ),
        FilesError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
            format!("the file is larger than {MAX_FILE_BYTES} bytes, the most a file may have"),
        ),
        FilesError::Io(e) => ApiError::disk_full(&e).unwrap_or_else(|| ApiError::internal("could not access the session's files", e)),
    }
}

/// The caller, for an existing session that is still active.
async fn authorize(
    app: &App,
    client: &ClientInfo,
    headers: &HeaderMap,
    query_token: Option<&str>,
    id: &str,
) -> Result<Caller, ApiError> {
    let caller = session_caller(app, client, headers, query_token, id).await?;
    let session = crate::handlers::tasks::existing_session(app, id).await?;
    if session.state != SessionState::Active {
        return Err(ApiError::new(
            StatusCode::GONE,
            "session_ended",
            "the session has ended; its files are gone",
        ));
    }
    Ok(caller)
}

/// `GET /api/sessions/{id}/files`.
/// `GET /api/sessions/{id}/files`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FileList {
    files: Vec<crate::session_files::FileEntry>,
}

#[utoipa::path(get, path = "/api/sessions/{id}/files", tag = "files", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id"), crate::handlers::TokenQuery),
    responses((status = 200, description = "The session's files, oldest first", body = FileList), (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody),
        (status = 410, description = "The session has ended", body = crate::error::ErrorBody)))]
pub async fn list_files(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Json<FileList>, ApiError> {
    authorize(&app, &client, &headers, query.token.as_deref(), &id).await?;
    let files = session_files(&app);
    let list = tokio::task::spawn_blocking(move || files.list(&id))
        .await
        .map_err(|e| ApiError::internal("listing the session's files failed", e))?
        .map_err(|e| ApiError::internal("could not list the session's files", e))?;
    Ok(Json(FileList { files: list }))
}

/// A `Content-Disposition` that names the file safely: ASCII fallback plus RFC 5987
/// `filename*` (the name is already free of control characters and separators).
fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '%' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET /api/sessions/{id}/files/{name}`.
#[utoipa::path(get, path = "/api/sessions/{id}/files/{name}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id"), ("name" = String, Path, description = "The file's name"), crate::handlers::TokenQuery),
    responses((status = 200, description = "The file, as an attachment", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No such session or file", body = crate::error::ErrorBody), (status = 410, description = "The session has ended", body = crate::error::ErrorBody)))]
pub async fn get_file(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &client, &headers, query.token.as_deref(), &id).await?;
    let files = session_files(&app);
    let opened_name = name.clone();
    let (file, len) = tokio::task::spawn_blocking(move || files.open(&id, &opened_name))
        .await
        .map_err(|e| ApiError::internal("opening the file failed", e))?
        .map_err(files_error)?;
    let file = tokio::fs::File::from_std(file);
    use tokio::io::AsyncReadExt;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_DISPOSITION, content_disposition(&name));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    pub name: Option<String>,
}

/// `POST /api/sessions/{id}/files?name=NAME`, the file's bytes as the body.
#[utoipa::path(post, path = "/api/sessions/{id}/files", tag = "files", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses((status = 201, description = "Stored, and placed in the live desktop's Downloads", body = crate::session_files::FileEntry),
        (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody), (status = 409, description = "The session has too many files", body = crate::error::ErrorBody), (status = 410, description = "The session has ended", body = crate::error::ErrorBody),
        (status = 507, description = "Not enough space for the file", body = crate::error::ErrorBody)))]
pub async fn upload_file(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Body,
) -> Response {
    let stored: Result<Response, ApiError> = async {
        let caller = authorize(&app, &client, &headers, None, &id).await?;
        if matches!(caller, Caller::Token(Role::View)) {
            return Err(ApiError::forbidden(
                "role_forbidden",
                "a view-only token can list and download the session's files but not upload",
            ));
        }
        let name = query.name.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_file_name",
                "the file name is missing: POST …/files?name=NAME",
            )
        })?;
        // Refused at once when the client says it is too large.
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            && len > MAX_FILE_BYTES
        {
            return Err(files_error(FilesError::TooLarge));
        }
        let files = session_files(&app);
        let (upload_id, upload_name) = (id.clone(), name.clone());
        let mut upload =
            tokio::task::spawn_blocking(move || files.begin_upload(&upload_id, &upload_name))
                .await
                .map_err(|e| ApiError::internal("starting the upload failed", e))?
                .map_err(files_error)?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("bad_body", format!("the upload was interrupted: {e}"))
            })?;
            // Dropping `upload` on any error removes the temporary file.
            upload.write(&chunk).map_err(files_error)?;
        }
        tokio::task::spawn_blocking(move || upload.finish())
            .await
            .map_err(|e| ApiError::internal("finishing the upload failed", e))?
            .map_err(files_error)?;
        let files = session_files(&app);
        let entry = files
            .list(&id)
            .map_err(|e| ApiError::internal("could not list the session's files", e))?
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(file_not_found)?;
        tracing::info!(session_id = %id, bytes = entry.size, "file uploaded");
        // Into the live desktop's Downloads, where a page's file chooser finds it (a desktop
        // started later gets it when it starts: downloads.rs).
        if let DesktopStatus::Ready(handle) | DesktopStatus::Restarting(handle) =
            app.desktops.status(&id)
        {
            app.desktops.files().place(&id, &handle, &name).await;
        }
        app.desktops.files().publish(&id, entry.clone());
        Ok((StatusCode::CREATED, Json(entry)).into_response())    }
    .await;
    // A refusal may come before the body was read: the connection cannot carry another
    // request, and a client must not reuse it (it would see its next request cut off).
    stored.unwrap_or_else(|e| {
        let mut response = e.into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    })
}
