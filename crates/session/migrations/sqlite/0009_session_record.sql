-- Screen recording (docs/recordings.md): whether the session asked to be recorded
-- ("record": true at creation). A server started with --record records every session,
-- whatever this says.
ALTER TABLE sessions ADD COLUMN record INTEGER NOT NULL DEFAULT 0;
