//! `/healthz`: the process answers. `/readyz`: it can serve sessions — the store answers,
//! the desktop toolchain and the noVNC client are installed — with counts of live desktops and connections,
//! and the desktops' capacity: live, hibernated, waiting in line, the maxima.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;

#[utoipa::path(get, path = "/healthz", tag = "server", responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "server",
    responses((status = 200, description = "Ready: store, tools and web client present", body = Object),
        (status = 503, description = "Not ready; the body says what is missing", body = Object)))]
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
    let (tasks, degraded) = task_queues(&app).await;
    let status = match (ready, degraded.is_empty()) {
        (false, _) => "not_ready",
        (true, true) => "ready",
        // Degraded still serves sessions: the answer stays 200, the reasons say what waits.
        (true, false) => "degraded",
    };
    let body = json!({
        "status": status,
        "degraded": degraded,
        "tasks": tasks,
        "checks": {
            "store": store,
            "desktop_tools": { "ok": missing.is_empty(), "missing": missing },
            "web_client": { "ok": web_client },
        },
        "desktops": app.desktops.live(),
        "capacity": capacity(&app).await,
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

/// The task queues per kind, and why they are degraded (if they are): a queued task
/// waited past `--task-stall-seconds`, or a kind has queued tasks and no live worker.
async fn task_queues(app: &crate::app::App) -> (Value, Vec<String>) {
    use livesession_tasks::TaskKind;
    let now = time::OffsetDateTime::now_utc();
    let store = app.queue.store();
    let window = worker_alive_window(app);
    let (stats, workers) = match (store.stats(now).await, store.workers_seen_since(now - window).await) {
        (Ok(stats), Ok(workers)) => (stats, workers),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "readiness: task store unreachable");
            return (json!({ "ok": false, "error": "task store unreachable" }), vec!["the task store is unreachable".into()]);
        }
    };
    let stall = time::Duration::seconds(app.config.tasks.task_stall_seconds as i64);
    let mut degraded = Vec::new();
    let mut kinds = serde_json::Map::new();
    for (kind, s) in stats {
        let alive: Vec<&str> = workers.iter().filter(|w| w.kinds.contains(&kind)).map(|w| w.worker.as_str()).collect();
        let builtin = alive.iter().filter(|w| w.starts_with("builtin-")).count();
        let oldest_age = s.oldest_queued_at.map(|t| (now - t).whole_seconds().max(0));
        if s.queued > 0 && alive.is_empty() {
            let hint = match kind {
                TaskKind::Agent if app.runner_settings.agent.is_none() => {
                    " (set LIVESESSION_AGENT_API_BASE, or run an external worker)"
                }
                TaskKind::Agent => " (LIVESESSION_AGENT_RUNNERS is 0; run an external worker)",
                TaskKind::Steps => " (LIVESESSION_STEPS_RUNNERS is 0; run an external worker)",
            };
            degraded.push(format!("{} {} task(s) queued and no worker is alive for them{hint}", s.queued, kind.as_str()));
        }
        if let Some(age) = oldest_age.filter(|&age| age > stall.whole_seconds()) {
            degraded.push(format!("a queued {} task has waited {age} s (more than {} s)", kind.as_str(), stall.whole_seconds()));
        }
        kinds.insert(kind.as_str().into(), json!({
            "queued": s.queued,
            "running": s.running,
            "waiting_for_person": s.waiting_for_person,
            "oldest_queued_seconds": oldest_age,
            "stalled_leases": s.stalled_leases,
            "workers": { "builtin": builtin, "external": alive.len() - builtin },
        }));
    }
    (json!({ "ok": true, "kinds": kinds }), degraded)
}

/// A worker is alive if it claimed or heartbeated within two leases (a claim's long poll
/// repeats well within one), allowing for how stale the store keeps a sighting.
pub(crate) fn worker_alive_window(app: &crate::app::App) -> time::Duration {
    let window = (app.queue.config().lease * 2).max(livesession_tasks::store::SEEN_GRANULARITY * 3);
    time::Duration::try_from(window).unwrap_or(time::Duration::MINUTE)
}

/// Desktops against their cap: live (starting, running, being saved), sessions
/// hibernated (from the store: also those hibernated before a restart), the line.
async fn capacity(app: &crate::app::App) -> Value {
    let hibernated = match app.sessions.store().list_active_sessions().await {
        Ok(sessions) => Some(sessions.iter().filter(|s| s.hibernated_at.is_some()).count()),
        Err(e) => {
            tracing::error!(error = %e, "readiness: could not count hibernated sessions");
            None
        }
    };
    let (queued_sessions, queued) = app.desktops.queued();
    json!({
        "live": app.desktops.live(),
        "max": app.desktops.max(),
        "hibernated": hibernated,
        "queued": queued,
        "queued_sessions": queued_sessions,
        "max_queued": app.desktops.max_queued(),
    })
}
