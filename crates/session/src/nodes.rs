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
        }
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
