//! This server as a node of several sharing one store (docs/operations.md, "Nodes"): it
//! registers itself with its internal address, its capacity and its live desktops, and
//! renews that every `--node-heartbeat` seconds; a node whose heartbeat is older than
//! `--node-dead-after` seconds is dead to the others. A graceful stop deregisters; a node
//! killed stays listed, dead, until it is a day old, then is forgotten.

use std::sync::Arc;
use std::time::Duration;

use livesession_session::Node;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// How long a dead node stays listed.
const FORGET_AFTER: time::Duration = time::Duration::days(1);

/// This server's node id: `--node-id`, or the host's name and the listening port.
pub fn node_id(app: &App) -> String {
    app.cluster.node_id().to_owned()
}

/// The address other nodes reach this one at: `--node-addr`, or the listening address.
pub fn node_addr(app: &App) -> String {
    app.config.node_addr.clone().unwrap_or_else(|| app.local_addr.to_string())
}

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).expect("valid millisecond")
}

/// The oldest heartbeat a live node may have now.
pub fn live_since(app: &App) -> OffsetDateTime {
    now() - time::Duration::seconds(app.config.node_dead_after.max(1) as i64)
}

/// Heartbeats until `deregister`. From the server's shutdown on (`app.shutdown`), the
/// heartbeat says the node is draining, at once and then as before: other nodes place
/// nothing new here, and move its sessions once their desktops are saved
/// (docs/scaling.md, "Draining"); the server cancels `deregister` after that.
pub async fn run(app: Arc<App>, deregister: CancellationToken) {
    let id = node_id(&app);
    let started_at = now();
    let every = Duration::from_secs(app.config.node_heartbeat.max(1));
    let store = app.sessions.store().clone();
    let mut logged_failure = false;
    loop {
        let node = Node {
            id: id.clone(),
            addr: node_addr(&app),
            capacity: u32::try_from(app.config.max_desktops()).unwrap_or(u32::MAX),
            live_desktops: u32::try_from(app.desktops.live()).unwrap_or(u32::MAX),
            started_at,
            heartbeat_at: now(),
            draining: app.shutdown.is_cancelled(),
        };
        match store.node_heartbeat(&node).await {
            Ok(()) if logged_failure => {
                tracing::info!(node_id = %id, "node heartbeat recorded again");
                logged_failure = false;
            }
            Ok(()) => {}
            Err(e) if !logged_failure => {
                tracing::warn!(node_id = %id, error = %e, "could not record this node's heartbeat; other nodes may count it dead");
                logged_failure = true;
            }
            Err(_) => {}
        }
        let _ = store.forget_nodes_before(now() - FORGET_AFTER).await;
        if deregister.is_cancelled() {
            break;
        }
        let draining = node.draining;
        tokio::select! {
            _ = deregister.cancelled() => break,
            // Said at once, not at the next beat.
            _ = app.shutdown.cancelled(), if !draining => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
    match store.remove_node(&id).await {
        Ok(_) => tracing::info!(node_id = %id, "node deregistered"),
        Err(e) => tracing::warn!(node_id = %id, error = %e, "could not deregister this node; it will count as dead"),
    }
}
