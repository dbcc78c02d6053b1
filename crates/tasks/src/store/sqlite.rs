//! Replaced by the SQLite backend.
pub struct SqliteTaskStore;
