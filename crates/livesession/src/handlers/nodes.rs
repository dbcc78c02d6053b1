//! `GET /api/nodes`: the servers sharing this store, live or dead (nodes.rs).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;
use crate::handlers::admin::require_admin;
use crate::proxy::ClientInfo;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: livesession_session::Node,
    /// Its last heartbeat is recent enough (`LIVESESSION_NODE_DEAD_AFTER`).
    pub alive: bool,
    /// The node that answered.
    pub this: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeList {
    /// By id.
    pub nodes: Vec<NodeView>,
}

#[utoipa::path(get, path = "/api/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "Every registered node, by id", body = NodeList), (status = 401, description = "The admin token is missing or wrong", body = crate::error::ErrorBody)))]
pub async fn list_nodes(State(app): State<AppState>, client: ClientInfo, headers: HeaderMap) -> Result<Json<NodeList>, ApiError> {
    require_admin(&app, client.ip, &headers)?;
    let since = crate::nodes::live_since(&app);
    let me = crate::nodes::node_id(&app);
    let nodes = app
        .sessions
        .store()
        .list_nodes()
        .await?
        .into_iter()
        .map(|node| NodeView { alive: node.heartbeat_at >= since, this: node.id == me, node })
        .collect();
    Ok(Json(NodeList { nodes }))
}
