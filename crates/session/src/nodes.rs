//! The node registry: the `livesession serve` processes sharing one store, each known by
//! its heartbeat ([`crate::SessionStore::node_heartbeat`]).

use std::cmp::Ordering;

use serde::Serialize;
use time::OffsetDateTime;

/// One `livesession serve` process sharing the store with others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Node {
    pub id: String,
    /// Its internal address, `host:port`.
    pub addr: String,
    /// How many desktops it may run.
    pub capacity: u32,
    /// How many desktops it runs now.
    pub live_desktops: u32,
    /// Its first heartbeat (kept by later ones).
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Its last heartbeat.
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
    /// It is stopping gracefully: it takes no new placements and hibernates its
    /// desktops before it goes.
    pub draining: bool,
}

impl Node {
    /// Least loaded first: by the ratio `live_desktops / capacity` (compared exactly, by
    /// cross-multiplication), then `live_desktops`, then id; nodes of capacity 0 last
    /// (among themselves by `live_desktops`, then id).
    pub fn cmp_load(&self, other: &Node) -> Ordering {
        let by_ratio = match (self.capacity, other.capacity) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Greater,
            (_, 0) => Ordering::Less,
            (a, b) => (u64::from(self.live_desktops) * u64::from(b))
                .cmp(&(u64::from(other.live_desktops) * u64::from(a))),
        };
        by_ratio
            .then(self.live_desktops.cmp(&other.live_desktops))
            .then_with(|| self.id.cmp(&other.id))
    }
}

/// Where a session's desktop runs ([`crate::SessionStore::place_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: Node,
    /// The node it was placed on before, when this placement moved it (that node is
    /// dead, gone, or draining and the session hibernated).
    pub moved_from: Option<String>,
    /// Whether this call recorded the placement (first placement or a move).
    pub placed_now: bool,
}

/// Whether a session keeps its recorded node: while that node is live and not draining;
/// a draining node keeps the sessions whose desktops still run there (`hibernated` false)
/// until they are saved, so a session never runs on two nodes at once.
pub fn keeps_placement(node: Option<&Node>, hibernated: bool) -> bool {
    node.is_some_and(|n| !n.draining || !hibernated)
}

/// The node a session is placed on: of the live nodes not draining, the least loaded by
/// the sessions placed on it whose desktops run (`placed`: active, not hibernated, by
/// node id) per desktop of capacity ([`Node::cmp_load`] on those counts). Counting
/// placements rather than the heartbeat's live desktops makes a burst of placements
/// spread at once, before any heartbeat reports them.
pub fn choose_node(live: Vec<Node>, placed: &std::collections::HashMap<String, u32>) -> Option<Node> {
    let mut candidates: Vec<Node> = live
        .into_iter()
        .filter(|n| !n.draining)
        .map(|mut n| {
            n.live_desktops = placed.get(&n.id).copied().unwrap_or(0);
            n
        })
        .collect();
    sort_by_load(&mut candidates);
    candidates.into_iter().next()
}

/// Sorts nodes least loaded first ([`Node::cmp_load`]).
pub fn sort_by_load(nodes: &mut [Node]) {
    nodes.sort_by(Node::cmp_load);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, capacity: u32, live: u32) -> Node {
        let t = OffsetDateTime::UNIX_EPOCH;
        Node {
            id: id.into(),
            addr: "127.0.0.1:1".into(),
            capacity,
            live_desktops: live,
            started_at: t,
            heartbeat_at: t,
            draining: false,
        }
    }

    #[test]
    fn placement_counts_placed_sessions_and_skips_draining_nodes() {
        use std::collections::HashMap;
        let nodes = || vec![node("a", 4, 0), node("b", 4, 3), node("c", 8, 0)];
        // The heartbeat's counts are ignored: placements are what count.
        let placed: HashMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 1), ("c".to_string(), 3)].into();
        // a: 2/4, b: 1/4, c: 3/8 -> b.
        assert_eq!(choose_node(nodes(), &placed).unwrap().id, "b");
        assert_eq!(choose_node(nodes(), &HashMap::new()).unwrap().id, "a");
        let mut drained = nodes();
        drained[0].draining = true;
        drained[1].draining = true;
        assert_eq!(choose_node(drained, &placed).unwrap().id, "c");
        assert_eq!(choose_node(Vec::new(), &placed), None);
        let mut draining = node("a", 4, 0);
        draining.draining = true;
        assert!(keeps_placement(Some(&node("a", 4, 0)), true));
        assert!(keeps_placement(Some(&draining), false), "a desktop still running stays");
        assert!(!keeps_placement(Some(&draining), true), "a hibernated one moves off a draining node");
        assert!(!keeps_placement(None, false), "a dead or gone node keeps nothing");
    }

    #[test]
    fn least_loaded_first_with_capacity_zero_last() {
        let mut nodes = vec![
            node("z0", 0, 0),
            node("a", 10, 5),
            node("e", 4, 2),
            node("b", 10, 2),
            node("c", 4, 1),
            node("d", 2, 1),
            node("f", 8, 0),
            node("y0", 0, 0),
            node("x0", 0, 3),
        ];
        sort_by_load(&mut nodes);
        let ids: Vec<_> = nodes.iter().map(|n| n.id.as_str()).collect();
        // 0 (f); 0.2 (b); 0.25 (c); 0.5 with 1 live (d), then 2 (e), then 5 (a); capacity 0.
        assert_eq!(ids, ["f", "b", "c", "d", "e", "a", "y0", "z0", "x0"]);
    }
}
