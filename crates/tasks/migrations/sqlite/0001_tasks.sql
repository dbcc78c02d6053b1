-- Tasks run in a session's browser, their events and screenshots, and the workers seen.
-- Times are milliseconds since the Unix epoch. These migrations are recorded in
-- `_tasks_migrations` (the session store's are in `_sqlx_migrations` of the same file).

CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    -- Insertion order (timestamps can tie): a session's tasks run in this order.
    position INTEGER NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- JSON: {"steps": [...]} or {"goal": "..."}.
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    -- Set while a worker holds the task (running or waiting_for_person).
    lease_id TEXT,
    lease_worker TEXT,
    lease_until INTEGER,
    -- JSON, once succeeded.
    result TEXT,
    error TEXT,
    -- The seq of the task's latest event.
    seq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);

-- A session's tasks in order (listing; the earlier-task check of a claim).
CREATE INDEX tasks_session ON tasks (session_id, position);
-- A session's open tasks (the per-session cap; the running-task check of a claim).
CREATE INDEX tasks_session_state ON tasks (session_id, state, position);
-- The queue of a kind, oldest first (claim, stats, lease expiry).
CREATE INDEX tasks_claim ON tasks (state, kind, created_at, position);

CREATE TABLE task_events (
    -- The global order of events: a viewer resumes a session's updates after a cursor.
    -- AUTOINCREMENT: never reused, and writers are serialized, so commit order.
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    state TEXT NOT NULL,
    step INTEGER,
    message TEXT,
    has_screenshot INTEGER NOT NULL DEFAULT 0,
    UNIQUE (task_id, seq)
);

CREATE INDEX task_events_session ON task_events (session_id, cursor);

CREATE TABLE task_screenshots (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    image BLOB NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE task_workers (
    worker TEXT PRIMARY KEY NOT NULL,
    -- Comma-separated kinds: "steps,agent".
    kinds TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);
