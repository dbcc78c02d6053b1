use std::path::Path;
use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use time::OffsetDateTime;

use super::{SessionStore, StoreError};
use crate::model::{Session, SessionEnd, SessionSource, SessionState};

/// The embedded default store: one SQLite file, migrations compiled into the binary.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            // WAL lets /readyz and the API read while a write is in flight.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

// A macro rather than a const so queries stay `&'static str` (sqlx 0.9 refuses built strings).
macro_rules! columns {
    () => {
        "id, state, source, start_url, created_at, expires_at, ended_at, end_reason"
    };
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

fn session_from_row(row: &SqliteRow) -> Result<Session, StoreError> {
    let state: String = row.try_get("state")?;
    let source: String = row.try_get("source")?;
    Ok(Session {
        id: row.try_get("id")?,
        state: SessionState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown state {state:?}")))?,
        source: SessionSource::parse(&source)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown source {source:?}")))?,
        start_url: row.try_get("start_url")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        expires_at: from_millis(row.try_get("expires_at")?)?,
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(from_millis).transpose()?,
        end_reason: row.try_get("end_reason")?,
    })
}

#[async_trait::async_trait]
impl SessionStore for SqliteStore {
    async fn insert_session(&self, s: &Session) -> Result<(), StoreError> {
        sqlx::query(concat!("INSERT INTO sessions (", columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&s.id)
            .bind(s.state.as_str())
            .bind(s.source.as_str())
            .bind(&s.start_url)
            .bind(millis(s.created_at))
            .bind(millis(s.expires_at))
            .bind(s.ended_at.map(millis))
            .bind(&s.end_reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM sessions WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn list_sessions(&self, limit: u32) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ", columns!(), " FROM sessions ORDER BY created_at DESC, id LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn list_active_sessions(&self) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ", columns!(), " FROM sessions WHERE state = 'active' ORDER BY expires_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn end_session(
        &self,
        id: &str,
        end: SessionEnd,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Session>, StoreError> {
        // One statement, guarded by state, so concurrent ends cannot both win.
        let row = sqlx::query(concat!(
            "UPDATE sessions SET state = ?, ended_at = ?, end_reason = ? \
             WHERE id = ? AND state = 'active' RETURNING ", columns!()
        ))
        .bind(end.state().as_str())
        .bind(millis(at))
        .bind(reason)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::new_session_id;

    fn session(expires_in: i64) -> Session {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Session {
            id: new_session_id(),
            state: SessionState::Active,
            source: SessionSource::Api,
            start_url: "http://127.0.0.1/".into(),
            created_at: now,
            expires_at: now + time::Duration::seconds(expires_in),
            ended_at: None,
            end_reason: None,
        }
    }

    #[tokio::test]
    async fn sessions_round_trip_through_a_real_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("livesession.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let s = session(60);
        store.insert_session(&s).await.unwrap();
        assert_eq!(store.get_session(&s.id).await.unwrap(), Some(s.clone()));
        assert_eq!(store.get_session("nope").await.unwrap(), None);
        drop(store);

        // Reopening runs the migrations again (a no-op) and finds the row.
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.list_sessions(10).await.unwrap(), vec![s.clone()]);
        assert_eq!(store.list_active_sessions().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_first_end_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let s = session(60);
        store.insert_session(&s).await.unwrap();
        let at = OffsetDateTime::now_utc();
        let ended = store.end_session(&s.id, SessionEnd::Revoked, "by test", at).await.unwrap();
        let ended = ended.expect("active session ends");
        assert_eq!(ended.state, SessionState::Revoked);
        assert_eq!(ended.end_reason.as_deref(), Some("by test"));
        assert!(ended.ended_at.is_some());
        let again = store.end_session(&s.id, SessionEnd::Expired, "late", at).await.unwrap();
        assert_eq!(again, None);
        assert_eq!(store.get_session(&s.id).await.unwrap().unwrap().state, SessionState::Revoked);
        assert!(store.list_active_sessions().await.unwrap().is_empty());
    }
}
