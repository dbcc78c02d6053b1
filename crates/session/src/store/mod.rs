//! The session store: a trait with one module per backend, each with its own migrations.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::model::{Session, SessionEnd};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
}

#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn insert_session(&self, session: &Session) -> Result<(), StoreError>;
    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    /// Most recent first.
    async fn list_sessions(&self, limit: u32) -> Result<Vec<Session>, StoreError>;
    async fn list_active_sessions(&self) -> Result<Vec<Session>, StoreError>;
    /// Ends an active session. Returns the updated session, or `None` when no active
    /// session has that id (unknown, or already ended: the first end wins).
    async fn end_session(
        &self,
        id: &str,
        end: SessionEnd,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Session>, StoreError>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
