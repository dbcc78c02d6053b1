-- The node registry (docs/operations.md, "Nodes"): one row per `livesession serve`
-- process sharing this store, upserted by its heartbeat, removed when it stops
-- gracefully, forgotten once its last heartbeat is long past. Times are Unix
-- milliseconds (UTC).
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY NOT NULL,
    -- Its internal address, host:port.
    addr          TEXT NOT NULL,
    -- How many desktops it may run, and how many run now.
    capacity      INTEGER NOT NULL CHECK (capacity >= 0),
    live_desktops INTEGER NOT NULL CHECK (live_desktops >= 0),
    -- Its first heartbeat (kept by later ones), and its last.
    started_at    BIGINT NOT NULL CHECK (started_at >= 0),
    heartbeat_at  BIGINT NOT NULL CHECK (heartbeat_at >= 0)
);
CREATE INDEX nodes_heartbeat_at ON nodes (heartbeat_at);
