-- Viewer links: extra ways into a session, each with its own role and revocable on its
-- own. Only the SHA-256 of a link's secret is kept (the secret is shown once, at
-- creation). No foreign key to `sessions`, as on SQLite: deleting a pending session
-- leaves its links behind there too, and the code checks the session on every use of a
-- link.
CREATE TABLE viewer_links (
    id           TEXT PRIMARY KEY NOT NULL,
    session_id   TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('interactive', 'view')),
    -- Characters, as SQLite's length() counts them for text.
    label        TEXT CHECK (label IS NULL OR char_length(label) <= 100),
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX viewer_links_session ON viewer_links (session_id, created_at);
