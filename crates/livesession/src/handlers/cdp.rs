//! The session's DevTools endpoint for agents (`docs/agents.md`):
//!
//! - `GET /api/sessions/{id}/cdp` (WebSocket): the browser-level target;
//! - `GET /api/sessions/{id}/cdp/page/{target}` (WebSocket): one page target;
//! - `GET /api/sessions/{id}/cdp/json/version`, `/json/list`, `/json` (with or without a
//!   trailing slash): Chrome's own discovery JSON, every URL in it rewritten to this
//!   gateway, so `connectOverCDP("http://HOST/api/sessions/ID/cdp?token=T")` works as it
//!   does against Chrome.
//!
//! The token (query, bearer or cookie) is checked before anything touches the desktop, as
//! for VNC; `view` tokens are refused (4013). The relay itself is in [`crate::cdp_relay`].

use std::net::SocketAddr;

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use livesession_desktop::devtools;
use serde_json::Value;

use crate::app::{App, AppState};
use crate::cdp_relay::{self, Target};
use crate::error::ApiError;
use crate::metrics::ConnKind;
use crate::handlers::TokenQuery;
use crate::ws::{self, Authorized, Close, CloseCode};

/// Checks what every CDP request needs: a valid token of a role that may drive the
/// browser, for this live session.
pub(crate) async fn authorize_cdp(
    app: &App,
    peer: SocketAddr,
    id: &str,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Authorized, Close> {
    let auth = ws::authorize(app, peer.ip(), id, headers, token).await?;
    if !auth.claims.role.may_use_cdp() {
        return Err(Close::new(
            CloseCode::CdpForbidden,
            "a view-only token cannot use the DevTools endpoint",
        ));
    }
    Ok(auth)
}

/// A refusal of a plain HTTP request, from the close a WebSocket would have got.
fn http_refusal(close: Close) -> ApiError {
    let (status, code) = match close.code {
        CloseCode::AuthRequired => (StatusCode::UNAUTHORIZED, "auth_required"),
        CloseCode::TokenInvalid => (StatusCode::UNAUTHORIZED, "token_invalid"),
        CloseCode::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
        CloseCode::OriginForbidden => (StatusCode::FORBIDDEN, "origin_forbidden"),
        CloseCode::CdpForbidden => (StatusCode::FORBIDDEN, "role_forbidden"),
        CloseCode::SessionNotFound => (StatusCode::NOT_FOUND, "session_not_found"),
        CloseCode::SessionExpired | CloseCode::SessionRevoked => (StatusCode::GONE, "session_ended"),
        CloseCode::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "desktop_unavailable"),
    };
    ApiError::new(status, code, close.reason)
}

fn websocket_upgrade(
    app: &App,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    let upgrade = upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    let max = app.config.cdp_max_message_bytes;
    Ok(upgrade.max_message_size(max).max_frame_size(max))
}

pub async fn cdp_browser(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = websocket_upgrade(&app, upgrade)?;
    let decision = authorize_cdp(&app, peer, &id, &headers, query.token.as_deref()).await;
    let decision = decision.and_then(|auth| cdp_relay::admit(&app.0, peer.ip(), auth));
    Ok(ws::accept(app.0.clone(), upgrade, ConnKind::Cdp, &id, decision, |app, auth, socket| async move {
        cdp_relay::relay(&app, auth, socket, Target::Browser).await
    }))
}

pub async fn cdp_page(
    State(app): State<AppState>,
    Path((id, target)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Chrome's target ids are hexadecimal; nothing else may reach its URL.
    if target.is_empty() || target.len() > 64 || !target.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request("invalid_target", "a target id is letters and digits"));
    }
    let upgrade = websocket_upgrade(&app, upgrade)?;
    let decision = authorize_cdp(&app, peer, &id, &headers, query.token.as_deref()).await;
    let decision = decision.and_then(|auth| cdp_relay::admit(&app.0, peer.ip(), auth));
    Ok(ws::accept(app.0.clone(), upgrade, ConnKind::Cdp, &id, decision, move |app, auth, socket| async move {
        cdp_relay::relay(&app, auth, socket, Target::Page(target)).await
    }))
}

/// `GET …/cdp/json/version`, `…/json/list`, `…/json`: what Chrome answers, for this
/// session's browser, with its URLs pointing here. Starts the desktop if needed.
pub async fn cdp_discovery(
    State(app): State<AppState>,
    Path((id, what)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = match what.trim_end_matches('/') {
        "json/version" => "/json/version",
        "json/list" | "json" => "/json/list",
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "DevTools discovery has json/version, json/list and json")),
    };
    let mut auth = authorize_cdp(&app, peer, &id, &headers, query.token.as_deref())
        .await
        .map_err(http_refusal)?;
    let handle = ws::desktop_for(&app, &mut auth).await.map_err(http_refusal)?;
    let mut body = devtools::get_json(&handle.devtools_socket, path)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "desktop_unavailable", format!("the browser's DevTools did not answer: {e}")))?;
    // Only a token that came in the query string goes back into URLs: it is what the
    // client's next request needs (Playwright opens the URL it is given). Header and
    // cookie credentials go with the next request by themselves.
    let token = query.token.filter(|t| !t.is_empty());
    rewrite_urls(&mut body, &app.public_url, &id, token.as_deref());
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Rewrites Chrome's discovery JSON to this gateway: `webSocketDebuggerUrl` of the
/// browser to `…/cdp`, of a page to `…/cdp/page/<id>`, and the `ws=` of
/// `devtoolsFrontendUrl` the same way.
pub(crate) fn rewrite_urls(body: &mut Value, public_url: &str, session_id: &str, token: Option<&str>) {
    let secure = public_url.starts_with("https://");
    let host = public_url.split_once("://").map(|(_, h)| h).unwrap_or(public_url);
    let base = format!("{host}/api/sessions/{session_id}/cdp");
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    let scheme = if secure { "wss" } else { "ws" };
    let target_path = |url: &str| -> String {
        match devtools::websocket_path(url).as_deref().and_then(|p| p.strip_prefix("/devtools/page/")) {
            Some(target) => format!("{base}/page/{target}"),
            None => base.clone(),
        }
    };
    let rewrite = |object: &mut serde_json::Map<String, Value>| {
        if let Some(Value::String(url)) = object.get("webSocketDebuggerUrl") {
            let rewritten = format!("{scheme}://{}{query}", target_path(url));
            object.insert("webSocketDebuggerUrl".into(), Value::String(rewritten));
        }
        if let Some(Value::String(front)) = object.get("devtoolsFrontendUrl")
            && let Some((page, ws)) = front.split_once("?ws=").or_else(|| front.split_once("?wss="))
        {
            let target = target_path(&format!("ws://{ws}"));
            let param = if secure { "wss" } else { "ws" };
            // The frontend's own `ws=` parameter carries the target; a token inside it is
            // percent-encoded so it stays part of that parameter.
            let token = token.map(|t| format!("%3Ftoken%3D{t}")).unwrap_or_default();
            let rewritten = format!("{page}?{param}={target}{token}");
            object.insert("devtoolsFrontendUrl".into(), Value::String(rewritten));
        }
    };
    match body {
        Value::Object(object) => rewrite(object),
        Value::Array(targets) => {
            for t in targets.iter_mut() {
                if let Value::Object(object) = t {
                    rewrite(object);
                }
            }
        }
        _ => {}
    }
}

/// Who should drive the session's browser.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct SetControl {
    holder: livesession_session::Holder,
}

/// `POST /api/sessions/{id}/control` `{"holder": "person"|"agent"|"none"}`: hands control
/// over HTTP (admin, or the session's interactive token).
#[utoipa::path(post, path = "/api/sessions/{id}/control", tag = "control", security(("bearer" = [])), params(("id" = String, Path, description = "The session's id")),
    request_body = SetControl,
    responses(
        (status = 200, description = "Who holds control now", body = livesession_session::ControlState),
        (status = 401, description = "No valid admin token or access token of this session", body = crate::error::ErrorBody), (status = 404, description = "No session has this id", body = crate::error::ErrorBody),
        (status = 409, description = "No agent is connected to hand control to", body = crate::error::ErrorBody),
        (status = 410, description = "The session has ended", body = crate::error::ErrorBody),
    ))]
pub async fn set_control(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: crate::proxy::ClientInfo,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // A wrong admin token is counted (and a locked-out address refused) here.
    let admin = crate::handlers::admin::is_admin(&app, client.ip, &headers)?;
    if !admin {
        let auth = ws::authorize(&app, peer.ip(), &id, &headers, None).await.map_err(http_refusal)?;
        if auth.claims.role != crate::auth::Role::Interactive {
            return Err(ApiError::forbidden("role_forbidden", "only an interactive token (or the admin token) hands control over"));
        }
    } else if app.sessions.get(&id).await.map_err(|e| ApiError::internal("session store failed", e))?.is_none() {
        return Err(ApiError::session_not_found());
    }
    let request: SetControl = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_holder", format!("expected {{\"holder\": \"person\" | \"agent\" | \"none\"}}: {e}"))
    })?;
    app.control
        .set(&id, request.holder)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "no_agent", e.to_string()))?;
    tracing::info!(session_id = %id, holder = request.holder.as_str(), "control handed over by API");
    Ok(Json(app.control.current(&id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discovery_urls_point_at_the_gateway_with_the_query_token() {
        let mut version = json!({"Browser": "Chrome/156", "webSocketDebuggerUrl": "ws://127.0.0.1:41233/devtools/browser/abc-def"});
        rewrite_urls(&mut version, "http://10.0.0.5:8080", "s1", Some("T"));
        assert_eq!(version["webSocketDebuggerUrl"], "ws://10.0.0.5:8080/api/sessions/s1/cdp?token=T");
        assert_eq!(version["Browser"], "Chrome/156");

        let mut list = json!([{
            "id": "ABC123", "type": "page",
            "webSocketDebuggerUrl": "ws://127.0.0.1:41233/devtools/page/ABC123",
            "devtoolsFrontendUrl": "https://chrome-devtools-frontend.appspot.com/serve_rev/@1/inspector.html?ws=127.0.0.1:41233/devtools/page/ABC123"
        }]);
        rewrite_urls(&mut list, "https://live.example", "s1", None);
        assert_eq!(list[0]["webSocketDebuggerUrl"], "wss://live.example/api/sessions/s1/cdp/page/ABC123");
        assert_eq!(
            list[0]["devtoolsFrontendUrl"],
            "https://chrome-devtools-frontend.appspot.com/serve_rev/@1/inspector.html?wss=live.example/api/sessions/s1/cdp/page/ABC123"
        );
        let mut list = json!([{"webSocketDebuggerUrl": "ws://127.0.0.1:1/devtools/page/X1",
            "devtoolsFrontendUrl": "/devtools/inspector.html?ws=127.0.0.1:1/devtools/page/X1"}]);
        rewrite_urls(&mut list, "http://h:1", "s2", Some("T"));
        assert_eq!(list[0]["devtoolsFrontendUrl"], "/devtools/inspector.html?ws=h:1/api/sessions/s2/cdp/page/X1%3Ftoken%3DT");
    }
}
