-- Sessions: one row per session, whatever its source. Times are Unix milliseconds (UTC).
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'expired', 'revoked')),
    source      TEXT NOT NULL,
    start_url   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    end_reason  TEXT
);

-- The expiry schedule reads active sessions by deadline.
CREATE INDEX sessions_active_expires_at ON sessions (expires_at) WHERE state = 'active';
