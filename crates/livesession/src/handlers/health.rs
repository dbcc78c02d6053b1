//! `/healthz`: the process answers. `/readyz`: it can serve sessions — the store answers,
//! the desktop toolchain and the noVNC client are installed — with counts of live desktops and connections.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = match app.sessions.store().ping().await {
        Ok(()) => json!({ "ok": true }),
        Err(e) => {
            tracing::error!(error = %e, "readiness: session store unreachable");
            json!({ "ok": false, "error": "session store unreachable" })
        }
    };
    let tools = app.desktops.runtime().check_tools();
    let missing: Vec<Value> = tools
        .iter()
        .filter(|t| !t.found())
        .map(|t| json!({ "piece": t.piece.to_string(), "binary": t.binary, "fix": t.fix() }))
        .collect();
    let web_client = crate::web::novnc_present();
    let ready =
        store["ok"] == true && missing.is_empty() && web_client && !app.shutdown.is_cancelled();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "store": store,
            "desktop_tools": { "ok": missing.is_empty(), "missing": missing },
            "web_client": { "ok": web_client },
        },
        "desktops": app.desktops.live(),
        "warm_desktops": app.desktops.runtime().warm_ready(),
        "connections": app.live_connections(),
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
