//! Several nodes serving any session (docs/scaling.md): each session's desktop is placed
//! on one node, recorded in the store ([`SessionStore::place_session`]), and a request
//! for it that arrives at another node is relayed there (`relay.rs`), authenticated with
//! the cluster secret (`signature.rs`).
//!
//! On only with a cluster secret and a PostgreSQL store: with SQLite there is one node,
//! and without the secret every node serves what it is asked for itself (the operator
//! then routes by session, as before placement existed).
//!
//! [`SessionStore::place_session`]: livesession_session::SessionStore::place_session

pub mod relay;
mod signature;

use std::net::SocketAddr;

use livesession_session::nodes::Placement;

use crate::app::App;
use crate::config::{ClusterSecret, ServeConfig};

pub use signature::{RELAY_HEADER, RelayedFrom, verify_relay};

/// This node among those sharing the store.
pub struct Cluster {
    node_id: String,
    /// Set when placement and relaying are on.
    secret: Option<ClusterSecret>,
}

/// Where a session's request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here: this node runs (or is to run) the session's desktop, or the cluster is off.
    Local,
    /// On the node that runs its desktop.
    Relay { node_id: String, addr: String },
}

impl Cluster {
    pub fn new(config: &ServeConfig, local_addr: SocketAddr) -> Self {
        let node_id = config.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), local_addr.port())
        });
        let secret = match (&config.cluster_secret, &config.database_url) {
            (Some(secret), Some(_)) => Some(secret.clone()),
            (Some(_), None) => {
                tracing::warn!(
                    "--cluster-secret is ignored: nodes share a store only on PostgreSQL (LIVESESSION_DATABASE_URL)"
                );
                None
            }
            (None, _) => None,
        };
        Self { node_id, secret }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether sessions are placed on nodes and relayed to them.
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    pub(crate) fn secret(&self) -> Option<&ClusterSecret> {
        self.secret.as_ref()
    }
}

/// Where a request for `session_id`'s desktop goes. With `place`, the session is placed
/// (or moved off a dead or draining node) first; without, its current placement is
/// followed while that node lives, and anything else is served here (a session never
/// placed, or whose node is gone: its files and recording are in the shared directory).
pub async fn route(app: &App, session_id: &str, place: bool) -> Route {
    if !app.cluster.enabled() {
        return Route::Local;
    }
    let since = crate::nodes::live_since(app);
    let store = app.sessions.store();
    let placed = if place {
        match store.place_session(session_id, since).await {
            Ok(Some(Placement { node, moved_from, placed_now })) => {
                if placed_now {
                    match &moved_from {
                        Some(from) => tracing::info!(session_id, node_id = %node.id, from = %from, "session moved to another node"),
                        None => tracing::info!(session_id, node_id = %node.id, "session placed"),
                    }
                }
                Some(node)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(session_id, error = %e, "could not place the session; serving it here");
                None
            }
        }
    } else {
        let node = match store.get_session(session_id).await {
            Ok(Some(session)) => session.node,
            _ => None,
        };
        match node {
            Some(node) if node != app.cluster.node_id => match store.live_nodes(since).await {
                Ok(live) => live.into_iter().find(|n| n.id == node),
                Err(_) => None,
            },
            _ => None,
        }
    };
    match placed {
        Some(node) if node.id != app.cluster.node_id => Route::Relay { node_id: node.id, addr: node.addr },
        _ => Route::Local,
    }
}

/// `text` with any `token=` value replaced: an error that quotes a URL names no token.
pub fn redact_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("token=") {
        out.push_str(&rest[..at + 6]);
        out.push_str("***");
        rest = &rest[at + 6..];
        let end = rest.find(|c: char| c == '&' || c == ' ' || c == '"' || c == '\'').unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_in_urls_are_redacted() {
        assert_eq!(
            super::redact_token("ws://127.0.0.1:1/api/sessions/s/cdp?token=abc.def&x=1: refused"),
            "ws://127.0.0.1:1/api/sessions/s/cdp?token=***&x=1: refused"
        );
        assert_eq!(super::redact_token("no secret here"), "no secret here");
    }
}
