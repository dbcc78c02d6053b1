-- Login capture (docs/profiles.md, "Login capture"): one row per `POST /api/logins`, so a
-- restarted server knows which active sessions it watches, and with what condition.
CREATE TABLE logins (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    profile TEXT NOT NULL,
    -- The done condition, as the API took it: {"url_prefix": "…"} or {"cookie": "…"}.
    done TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Once the condition held: 'captured' (the profile was saved) or 'failed' (saving it
    -- failed); NULL while watched.
    outcome TEXT,
    finished_at BIGINT
);

-- Events for the operator's endpoint (LIVESESSION_EVENTS_URL), kept until delivered or
-- given up, so a restart resumes their retries. The body is dropped once it is done with.
CREATE TABLE outgoing_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at BIGINT,
    given_up_at BIGINT,
    last_error TEXT
);
CREATE INDEX outgoing_events_pending ON outgoing_events (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
