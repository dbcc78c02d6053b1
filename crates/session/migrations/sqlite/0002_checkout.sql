-- Paid sessions: a session may belong to one Stripe Checkout Session, and starts out
-- 'pending' until the payment is confirmed. SQLite cannot change a CHECK constraint, so
-- the table is rebuilt.
CREATE TABLE sessions_v2 (
    id                   TEXT PRIMARY KEY NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'active', 'expired', 'revoked')),
    source               TEXT NOT NULL,
    start_url            TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    ended_at             INTEGER,
    end_reason           TEXT,
    -- At most one session per checkout, enforced here rather than by a lock in memory:
    -- concurrent webhook deliveries race on this constraint and exactly one wins.
    checkout_session_id  TEXT UNIQUE,
    payment_intent       TEXT,
    activated_at         INTEGER,
    claimed_at           INTEGER
);
INSERT INTO sessions_v2 (id, state, source, start_url, created_at, expires_at, ended_at, end_reason, activated_at)
    SELECT id, state, source, start_url, created_at, expires_at, ended_at, end_reason, created_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;
CREATE INDEX sessions_active_expires_at ON sessions (expires_at) WHERE state = 'active';
CREATE INDEX sessions_payment_intent ON sessions (payment_intent) WHERE payment_intent IS NOT NULL;

-- Every Stripe event id we processed, once.
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY NOT NULL,
    type         TEXT NOT NULL,
    received_at  INTEGER NOT NULL
);
