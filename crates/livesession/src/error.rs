//! One error type for the HTTP API: `{"error": {"code", "message"}}` with its status.
//! Messages are written for the client and never carry tokens or internal details;
//! internal causes are logged instead.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(refused: &crate::limits::Refused) -> Self {
        let retry_after = refused.retry_after();
        let message = format!("too many requests from this address; retry in {retry_after} s");
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer …)",
        )
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// A state-changing browser request from another site's page (CSRF).
    pub fn cross_site() -> Self {
        Self::forbidden(
            "cross_site_request",
            "this request must come from this server's own pages",
        )
    }

    pub fn session_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no session has this id",
        )
    }

    /// An unexpected failure: logged with its cause, answered without it.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}; see the server log"),
        )
    }
}

impl From<livesession_session::StoreError> for ApiError {
    fn from(e: livesession_session::StoreError) -> Self {
        match e {
            livesession_session::StoreError::ProfileInUse => ApiError::new(
                StatusCode::CONFLICT,
                "profile_in_use",
                "another session is using this profile with persist: true (one writer at a time); \
                 end that session, or start this one with \"persist\": false to read a copy",
            ),
            e => match e.unavailable() {
                Some(why) => ApiError::store_unavailable(why, &e),
                None => ApiError::internal("the session store failed", e),
            },
        }
    }
}

impl From<livesession_tasks::StoreError> for ApiError {
    fn from(e: livesession_tasks::StoreError) -> Self {
        match e.database().and_then(livesession_session::store::Unavailable::of) {
            Some(why) => ApiError::store_unavailable(why, &e),
            None => ApiError::internal("the task store failed", e),
        }
    }
}

impl ApiError {
    /// The database cannot take a write now (disk full, locked past the busy timeout):
    /// `503` with `Retry-After`, nothing changed. Logged with its cause.
    pub fn store_unavailable(why: livesession_session::store::Unavailable, cause: &dyn std::fmt::Display) -> Self {
        use livesession_session::store::Unavailable;
        let (code, message, retry_after) = match why {
            Unavailable::Full => (
                "storage_full",
                "the server's disk is full, so nothing was changed; try again later (the operator has been told in the log)",
                60,
            ),
            Unavailable::Busy => (
                "store_busy",
                "the server's database is busy, so nothing was changed; try again in a few seconds",
                5,
            ),
        };
        tracing::error!(error = %cause, code, "the store could not take a write");
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// Writing a file failed because the disk is full: `503 storage_full`, like the store.
    pub fn disk_full(cause: &std::io::Error) -> Option<Self> {
        (cause.raw_os_error() == Some(nix::libc::ENOSPC))
            .then(|| Self::store_unavailable(livesession_session::store::Unavailable::Full, cause))
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(status, code, e.body_text())
    }
}

/// `Query<T>` whose rejection is our JSON error (`400 invalid_query`), not axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Turns a plain-text (or empty) error response — an extractor's rejection, the router's
/// 404 or 405 — into the JSON error shape, so every error a client sees has one shape.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are short; anything longer is cut rather than held.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::BAD_REQUEST if text.starts_with("Failed to deserialize query string") => {
            "invalid_query"
        }
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() || status.is_server_error() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut rebuilt = ApiError::new(status, code, message).into_response();
    // Keep what the original said beyond its body (`Allow` on a 405, for one).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().append(name, value.clone());
        }
    }
    rebuilt
}

/// Every error's body: `{"error": {"code", "message"}}` (also its schema in the OpenAPI
/// spec, openapi.rs).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`session_not_found`, `rate_limited`, …).
    pub code: String,
    /// For a person: what went wrong and what to do.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
