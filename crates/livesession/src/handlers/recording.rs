//! `GET /api/sessions/{id}/recording`: the session's screen recording, as the file it is
//! on disk (`<id>.lsrec.gz`, docs/recordings.md), to the admin or the session's own
//! access token. A recording still being written is served up to what is on disk now;
//! `Range: bytes=N-` (with `If-Range`) fetches what was added since, which is how the
//! replay page follows a live recording.

use std::os::unix::fs::MetadataExt;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::app::{App, AppState};
use crate::auth::{TokenKind, find_access_token};
use crate::error::{ApiError, ApiQuery};
use crate::handlers::TokenQuery;
use crate::proxy::ClientInfo;

/// Whether a recorder is writing the recording now (`1`) or not (`0`): a player
/// following a live recording stops asking once it is `0` and nothing more came.
const LIVE_HEADER: &str = "x-recording-live";

fn recording_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "recording_not_found",
        "this session has no recording",
    )
}

/// The admin token, or an access token of this session (bearer, `?token=`, or the
/// viewer's cookie from our own pages; any role). Another session's token is answered as
/// if there were no recording: it learns nothing about this session.
async fn authorize(
    app: &App,
    client: &ClientInfo,
    headers: &HeaderMap,
    query_token: Option<&str>,
    id: &str,
) -> Result<(), ApiError> {
    if crate::handlers::admin::is_admin(app, client.ip, headers)? {
        return Ok(());
    }
    if let Some((token, _)) = find_access_token(headers, query_token, id)
        && let Ok(claims) = app.tokens.verify_ignoring_expiry(&token, TokenKind::Access)
        && claims.sid != id
    {
        return Err(recording_not_found());
    }
    crate::handlers::tasks::session_caller(app, client, headers, query_token, id).await?;
    Ok(())
}

/// The first byte of a `Range: bytes=N-` request, unless `If-Range` names another version
/// of the file. Other range forms are answered with the whole file.
fn range_start(headers: &HeaderMap, etag: &str) -> Option<u64> {
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return None;
    }
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    let start = range.trim().strip_prefix("bytes=")?.strip_suffix('-')?;
    start.parse().ok()
}

#[utoipa::path(get, path = "/api/sessions/{id}/recording", tag = "recordings", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id"), crate::handlers::TokenQuery),
    responses(
        (status = 200, description = "The recording (docs/recordings.md)", content_type = "application/gzip", body = Vec<u8>),
        (status = 206, description = "From the asked-for offset (`Range: bytes=N-`)", content_type = "application/gzip", body = Vec<u8>),
        (status = 416, description = "The range starts past the end"),
        (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No such session, or it has no recording", body = crate::error::ErrorBody),
    ))]
pub async fn get_recording(
    State(app): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Response, ApiError> {
    authorize(&app, &client, &headers, query.token.as_deref(), &id).await?;
    let path = app.recordings.file(&id).ok_or_else(recording_not_found)?;
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        // Deleted by the retention sweep since it was looked up.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(recording_not_found()),
        Err(e) => return Err(ApiError::internal("could not open the recording", e)),
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal("could not read the recording", e))?;
    // The file as it is now: a live recording grows, but this answer ends here.
    let len = meta.len();
    // A resumed recording is rewritten into a new file (another inode): a player that
    // asks for "more of the same file" then gets the whole new one.
    let etag = format!("\"{:x}-{:x}\"", meta.dev(), meta.ino());
    let live = if app.recordings.is_recording(&id) {
        "1"
    } else {
        "0"
    };

    let start = range_start(&headers, &etag);
    let mut response = if let Some(start) = start {
        if start >= len {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("digits"),
            );
            response
        } else {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::internal("could not read the recording", e))?;
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len - start)));
            let mut response = (StatusCode::PARTIAL_CONTENT, body).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{}/{len}", len - 1)).expect("digits"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len - start));
            response
        }
    } else {
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
        let mut response = (StatusCode::OK, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        response
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{id}.lsrec.gz\"")).expect("hex id"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Private to the session, and it changes while it is recorded.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(LIVE_HEADER, HeaderValue::from_static(live));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_open_ended_ranges_of_the_same_file_are_honoured() {
        let etag = "\"1-2\"";
        let mut h = HeaderMap::new();
        assert_eq!(range_start(&h, etag), None);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=100-"));
        assert_eq!(range_start(&h, etag), Some(100));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"1-2\""));
        assert_eq!(range_start(&h, etag), Some(100));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"1-3\""));
        assert_eq!(
            range_start(&h, etag),
            None,
            "another version of the file: all of it"
        );
        h.remove(header::IF_RANGE);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-10"));
        assert_eq!(range_start(&h, etag), None);
    }
}
