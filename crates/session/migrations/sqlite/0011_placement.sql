-- Placement (docs/scaling.md): the node a session's desktop runs on, recorded when a
-- node first needs the desktop and moved only when that node is dead or gone, or
-- draining and the session hibernated. NULL: never placed (or one node, no cluster).
ALTER TABLE sessions ADD COLUMN node_id TEXT;
CREATE INDEX sessions_active_node ON sessions (node_id) WHERE state = 'active';
-- A draining node (a graceful stop under way) takes no new placements.
ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0 CHECK (draining IN (0, 1));
