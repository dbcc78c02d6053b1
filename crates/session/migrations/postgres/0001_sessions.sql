-- Sessions: one row per session, whatever its source. The PostgreSQL schema starts where
-- the SQLite one (migrations/sqlite 0001-0009) has arrived, with the same columns and
-- the same meaning, so the row mapping is shared (store/rows.rs): times are Unix
-- milliseconds (UTC) in BIGINT, flags are BOOLEAN (SQLite's 0/1).
CREATE TABLE sessions (
    id                    TEXT PRIMARY KEY NOT NULL,
    state                 TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired', 'revoked')),
    source                TEXT NOT NULL,
    start_url             TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    ended_at              BIGINT,
    end_reason            TEXT,
    -- At most one session per checkout, enforced here rather than by a lock in memory:
    -- concurrent webhook deliveries race on this constraint (INSERT … ON CONFLICT) and
    -- exactly one wins.
    checkout_session_id   TEXT UNIQUE,
    payment_intent        TEXT,
    activated_at          BIGINT,
    claimed_at            BIGINT,
    -- Free-mode sessions record the address that started them (after trusted proxies;
    -- IPv6 by its /64), for the cap on live free sessions per address. NULL for sessions
    -- from the admin API and checkout.
    client_addr           TEXT,
    -- The goal a customer wrote at checkout (the agent task started once paid).
    goal                  TEXT,
    -- The named profile the browser starts from, and whether the session saves its
    -- state back to it (one writer at a time, enforced below).
    profile               TEXT,
    profile_persist       BOOLEAN NOT NULL DEFAULT FALSE,
    -- Seconds without a viewer, DevTools client or running task before the desktop
    -- hibernates; NULL: the server's default. BIGINT: the model's u32 does not fit INTEGER.
    idle_timeout_seconds  BIGINT,
    -- When the desktop was hibernated; NULL while it runs or before it first started.
    hibernated_at         BIGINT,
    -- Whether the session asked to be recorded (docs/recordings.md).
    record                BOOLEAN NOT NULL DEFAULT FALSE
);

-- The expiry schedule reads active sessions by deadline.
CREATE INDEX sessions_active_expires_at ON sessions (expires_at) WHERE state = 'active';
CREATE INDEX sessions_payment_intent ON sessions (payment_intent) WHERE payment_intent IS NOT NULL;
CREATE INDEX sessions_active_client_addr ON sessions (client_addr)
    WHERE state = 'active' AND client_addr IS NOT NULL;
-- One writer per profile: at most one pending or active session persists to a profile.
-- The database enforces it, so two nodes (or two requests) cannot both win.
CREATE UNIQUE INDEX sessions_one_profile_writer ON sessions (profile)
    WHERE profile_persist AND state IN ('pending', 'active');
