-- Profiles and idle hibernation (docs/profiles.md).
-- profile: the named profile the session's browser starts from; profile_persist: whether
-- the session saves its state back to it (one writer at a time, enforced below).
ALTER TABLE sessions ADD COLUMN profile TEXT;
ALTER TABLE sessions ADD COLUMN profile_persist INTEGER NOT NULL DEFAULT 0;
-- Seconds without a viewer, DevTools client or running task before the desktop
-- hibernates; NULL: the server's default.
ALTER TABLE sessions ADD COLUMN idle_timeout_seconds INTEGER;
-- When the desktop was hibernated (its state saved, the desktop stopped); NULL while it
-- runs or before it first started.
ALTER TABLE sessions ADD COLUMN hibernated_at INTEGER;
-- One writer per profile: at most one pending or active session persists to a profile.
-- The database enforces it, so two nodes (or two requests) cannot both win.
CREATE UNIQUE INDEX sessions_one_profile_writer ON sessions (profile)
    WHERE profile_persist = 1 AND state IN ('pending', 'active');
