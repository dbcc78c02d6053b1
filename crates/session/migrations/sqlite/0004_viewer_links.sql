-- Viewer links: extra ways into a session, each with its own role and revocable on its
-- own. Only the SHA-256 of a link's secret is kept (the secret is shown once, at
-- creation), so a copy of this file opens no session. No foreign key to `sessions`:
-- rebuilding that table (as 0002 did) would then fail; the code checks the session on
-- every use of a link.
CREATE TABLE viewer_links (
    id           TEXT PRIMARY KEY NOT NULL,
    session_id   TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('interactive', 'view')),
    label        TEXT CHECK (label IS NULL OR length(label) <= 100),
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX viewer_links_session ON viewer_links (session_id, created_at);
