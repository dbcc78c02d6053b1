use std::path::Path;
use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use time::OffsetDateTime;

use super::{CheckoutActivation, SessionStore, StoreError};
use crate::model::{LinkRole, Session, SessionEnd, SessionSource, SessionState, ViewerLink};

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
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A request waits at most this for a connection (each holds one for at most
            // the busy timeout while the database is locked), then fails as busy. Not
            // less: 10,000 control connections renewing their tokens together waited up
            // to 9.5 s for one in the soak (docs/performance.md).
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool, shared with the task store (same file, its own tables and
    /// migrations).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

// A macro rather than a const so queries stay `&'static str` (sqlx 0.9 refuses built strings).
macro_rules! columns {
    () => {
        "id, state, source, start_url, created_at, expires_at, ended_at, end_reason, \
         checkout_session_id, payment_intent, activated_at, claimed_at, goal, profile, \
         profile_persist, idle_timeout_seconds, hibernated_at, record"
    };
}

macro_rules! link_columns {
    () => {
        "id, session_id, role, label, created_at, revoked_at"
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
        ended_at: row
            .try_get::<Option<i64>, _>("ended_at")?
            .map(from_millis)
            .transpose()?,
        end_reason: row.try_get("end_reason")?,
        checkout_session_id: row.try_get("checkout_session_id")?,
        payment_intent: row.try_get("payment_intent")?,
        activated_at: row
            .try_get::<Option<i64>, _>("activated_at")?
            .map(from_millis)
            .transpose()?,
        claimed_at: row
            .try_get::<Option<i64>, _>("claimed_at")?
            .map(from_millis)
            .transpose()?,
        goal: row.try_get("goal")?,
        profile: row.try_get("profile")?,
        profile_persist: row.try_get::<i64, _>("profile_persist")? != 0,
        idle_timeout_seconds: row
            .try_get::<Option<i64>, _>("idle_timeout_seconds")?
            .map(|s| u32::try_from(s).map_err(|_| StoreError::Corrupt(format!("idle_timeout_seconds {s}"))))
            .transpose()?,
        hibernated_at: row
            .try_get::<Option<i64>, _>("hibernated_at")?
            .map(from_millis)
            .transpose()?,
        record: row.try_get::<i64, _>("record")? != 0,
    })
}

fn link_from_row(row: &SqliteRow) -> Result<ViewerLink, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(ViewerLink {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        role: LinkRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown link role {role:?}")))?,
        label: row.try_get("label")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(from_millis)
            .transpose()?,
    })
}

/// Binds a session's fields in the order of `columns!()`.
fn bind_session<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    s: &'q Session,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(&s.id)
        .bind(s.state.as_str())
        .bind(s.source.as_str())
        .bind(&s.start_url)
        .bind(millis(s.created_at))
        .bind(millis(s.expires_at))
        .bind(s.ended_at.map(millis))
        .bind(&s.end_reason)
        .bind(&s.checkout_session_id)
        .bind(&s.payment_intent)
        .bind(s.activated_at.map(millis))
        .bind(s.claimed_at.map(millis))
        .bind(&s.goal)
        .bind(&s.profile)
        .bind(i64::from(s.profile_persist))
        .bind(s.idle_timeout_seconds.map(i64::from))
        .bind(s.hibernated_at.map(millis))
        .bind(i64::from(s.record))
}

/// A second writer of a profile: the partial unique index `sessions_one_profile_writer`.
fn profile_conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() && db.message().contains("profile") => {
            StoreError::ProfileInUse
        }
        _ => StoreError::Database(e),
    }
}

#[async_trait::async_trait]
impl SessionStore for SqliteStore {
    async fn insert_session(&self, s: &Session) -> Result<(), StoreError> {
        let insert = sqlx::query(concat!(
            "INSERT INTO sessions (",
            columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ));
        bind_session(insert, s).execute(&self.pool).await.map_err(profile_conflict)?;
        Ok(())
    }

    async fn insert_session_capped(
        &self,
        s: &Session,
        client_addr: &str,
        max_live: u32,
    ) -> Result<bool, StoreError> {
        let insert = sqlx::query(concat!(
            "INSERT INTO sessions (",
            columns!(),
            ", client_addr) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
             WHERE (SELECT COUNT(*) FROM sessions WHERE client_addr = ? AND state = 'active' \
             AND expires_at > ?) < ?"
        ));
        let done = bind_session(insert, s)
            .bind(client_addr)
            .bind(client_addr)
            .bind(millis(s.created_at))
            .bind(i64::from(max_live))
            .execute(&self.pool)
            .await
            .map_err(profile_conflict)?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_live_for_client(
        &self,
        client_addr: &str,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE client_addr = ? AND state = 'active' \
             AND expires_at > ?",
        )
        .bind(client_addr)
        .bind(millis(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn list_sessions(&self, limit: u32) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions ORDER BY created_at DESC, id LIMIT ?"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn list_active_sessions(&self) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions WHERE state = 'active' ORDER BY expires_at"
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
             WHERE id = ? AND (state = 'active' OR (state = 'pending' AND ? = 'revoked')) \
             AND (? = 'revoked' OR expires_at <= ?) RETURNING ",
            columns!()
        ))
        .bind(end.state().as_str())
        .bind(millis(at))
        .bind(reason)
        .bind(id)
        .bind(end.state().as_str())
        .bind(end.state().as_str())
        .bind(millis(at))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn extend_session(
        &self,
        id: &str,
        by: time::Duration,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE sessions SET expires_at = expires_at + ? WHERE id = ? AND state = 'active' RETURNING ", columns!()
        ))
        .bind(by.whole_milliseconds() as i64)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn record_refund(
        &self,
        payment_intent: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO refunded_payments (payment_intent, refunded_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(payment_intent)
            .bind(millis(at))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn is_refunded(&self, payment_intent: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM refunded_payments WHERE payment_intent = ?")
            .bind(payment_intent)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn find_by_checkout(
        &self,
        checkout_session_id: &str,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions WHERE checkout_session_id = ?"
        ))
        .bind(checkout_session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn find_by_payment_intent(
        &self,
        payment_intent: &str,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions WHERE payment_intent = ? LIMIT 1"
        ))
        .bind(payment_intent)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn activate_checkout(
        &self,
        a: &CheckoutActivation,
    ) -> Result<Option<Session>, StoreError> {
        // Insert, or flip the pending row to active; a row that is already active or has
        // ended is left alone and nothing is returned.
        let row = sqlx::query(concat!(
            "INSERT INTO sessions (id, state, source, start_url, created_at, expires_at, \
             checkout_session_id, payment_intent, activated_at) \
             VALUES (?, 'active', 'checkout', ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (checkout_session_id) DO UPDATE SET \
               state = 'active', expires_at = excluded.expires_at, activated_at = excluded.activated_at, \
               payment_intent = COALESCE(excluded.payment_intent, sessions.payment_intent) \
             WHERE sessions.state = 'pending' \
             RETURNING ", columns!()
        ))
        .bind(&a.new_id)
        .bind(&a.start_url)
        .bind(millis(a.now))
        .bind(millis(a.expires_at))
        .bind(&a.checkout_session_id)
        .bind(&a.payment_intent)
        .bind(millis(a.now))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_pending_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE state = 'pending' AND created_at < ?")
            .bind(millis(cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_pending_checkout(&self, checkout_session_id: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM sessions WHERE state = 'pending' AND checkout_session_id = ?")
                .bind(checkout_session_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_session(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE sessions SET claimed_at = ? WHERE id = ? AND claimed_at IS NULL")
                .bind(millis(at))
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_event(
        &self,
        event_id: &str,
        kind: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO stripe_events (id, type, received_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING")
            .bind(event_id)
            .bind(kind)
            .bind(millis(at))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_link(&self, link: &ViewerLink, secret_hash: &str) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO viewer_links (",
            link_columns!(),
            ", secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&link.id)
        .bind(&link.session_id)
        .bind(link.role.as_str())
        .bind(&link.label)
        .bind(millis(link.created_at))
        .bind(link.revoked_at.map(millis))
        .bind(secret_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_links(&self, session_id: &str) -> Result<Vec<ViewerLink>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM viewer_links WHERE session_id = ? ORDER BY created_at, id"
        ))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(link_from_row).collect()
    }

    async fn get_link(&self, link_id: &str) -> Result<Option<ViewerLink>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM viewer_links WHERE id = ?"
        ))
        .bind(link_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(link_from_row).transpose()
    }

    async fn revoke_link(
        &self,
        session_id: &str,
        link_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<ViewerLink>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE viewer_links SET revoked_at = COALESCE(revoked_at, ?) \
             WHERE id = ? AND session_id = ? RETURNING ",
            link_columns!()
        ))
        .bind(millis(at))
        .bind(link_id)
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(link_from_row).transpose()
    }

    async fn find_link_by_secret_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<ViewerLink>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM viewer_links WHERE secret_hash = ?"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(link_from_row).transpose()
    }

    async fn set_hibernated(
        &self,
        id: &str,
        at: Option<OffsetDateTime>,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE sessions SET hibernated_at = ? WHERE id = ? AND state = 'active' RETURNING ",
            columns!()
        ))
        .bind(at.map(millis))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn profile_writer(&self, profile: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions WHERE profile = ? AND profile_persist = 1 AND state IN ('pending', 'active')"
        ))
        .bind(profile)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn count_sessions(&self) -> Result<super::SessionCounts, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*), COUNT(hibernated_at) FROM sessions GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts = super::SessionCounts::default();
        for (state, n, hibernated) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "pending" => counts.pending = n,
                "active" => {
                    counts.active = n;
                    counts.hibernated = u64::try_from(hibernated).unwrap_or(0);
                }
                "expired" => counts.expired = n,
                "revoked" => counts.revoked = n,
                _ => {}
            }
        }
        Ok(counts)
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
            checkout_session_id: None,
            payment_intent: None,
            activated_at: Some(now),
            claimed_at: None,
            goal: None,
            profile: None,
            profile_persist: false,
            idle_timeout_seconds: None,
            hibernated_at: None,
            record: false,
        }
    }

    #[tokio::test]
    async fn one_persistent_writer_per_profile_and_hibernation_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("livesession.db")).await.unwrap();
        let with_profile = |persist| Session { profile: Some("shop".into()), profile_persist: persist, idle_timeout_seconds: Some(30), ..session(60) };
        let writer = with_profile(true);
        store.insert_session(&writer).await.unwrap();
        assert_eq!(store.get_session(&writer.id).await.unwrap(), Some(writer.clone()));
        // A second writer is refused by the database; readers are not.
        assert!(matches!(store.insert_session(&with_profile(true)).await, Err(StoreError::ProfileInUse)));
        assert!(matches!(
            store.insert_session_capped(&with_profile(true), "10.0.0.1", 5).await,
            Err(StoreError::ProfileInUse)
        ));
        store.insert_session(&with_profile(false)).await.unwrap();
        assert_eq!(store.profile_writer("shop").await.unwrap().map(|s| s.id), Some(writer.id.clone()));
        assert_eq!(store.profile_writer("other").await.unwrap(), None);

        let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let hibernated = store.set_hibernated(&writer.id, Some(at)).await.unwrap().unwrap();
        assert_eq!(hibernated.hibernated_at, Some(at));
        assert_eq!(store.get_session(&writer.id).await.unwrap().unwrap().hibernated_at, Some(at));
        assert_eq!(store.set_hibernated(&writer.id, None).await.unwrap().unwrap().hibernated_at, None);

        // Once the writer ends, the profile is free for the next one.
        store
            .end_session(&writer.id, SessionEnd::Revoked, "done", OffsetDateTime::now_utc())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.set_hibernated(&writer.id, Some(at)).await.unwrap(), None, "only active sessions hibernate");
        store.insert_session(&with_profile(true)).await.unwrap();
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
    async fn sessions_are_counted_by_state_with_the_hibernated_among_the_active() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        assert_eq!(store.count_sessions().await.unwrap(), super::super::SessionCounts::default());
        let (a, b, c) = (session(60), session(60), session(60));
        let mut pending = session(60);
        pending.state = SessionState::Pending;
        for s in [&a, &b, &c, &pending] {
            store.insert_session(s).await.unwrap();
        }
        let at = OffsetDateTime::now_utc();
        store.set_hibernated(&b.id, Some(at)).await.unwrap().unwrap();
        store.end_session(&c.id, SessionEnd::Revoked, "by test", at).await.unwrap().unwrap();
        assert_eq!(
            store.count_sessions().await.unwrap(),
            super::super::SessionCounts { pending: 1, active: 2, expired: 0, revoked: 1, hibernated: 1 }
        );
    }

    #[tokio::test]
    async fn the_first_end_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let s = session(60);
        store.insert_session(&s).await.unwrap();
        let at = OffsetDateTime::now_utc();
        let ended = store
            .end_session(&s.id, SessionEnd::Revoked, "by test", at)
            .await
            .unwrap();
        let ended = ended.expect("active session ends");
        assert_eq!(ended.state, SessionState::Revoked);
        assert_eq!(ended.end_reason.as_deref(), Some("by test"));
        assert!(ended.ended_at.is_some());
        let again = store
            .end_session(&s.id, SessionEnd::Expired, "late", at)
            .await
            .unwrap();
        assert_eq!(again, None);
        assert_eq!(
            store.get_session(&s.id).await.unwrap().unwrap().state,
            SessionState::Revoked
        );
        assert!(store.list_active_sessions().await.unwrap().is_empty());
    }

    fn activation(cs: &str) -> CheckoutActivation {
        let now = OffsetDateTime::now_utc();
        CheckoutActivation {
            new_id: crate::model::new_session_id(),
            checkout_session_id: cs.into(),
            payment_intent: Some("pi_1".into()),
            start_url: "about:blank".into(),
            now,
            expires_at: now + time::Duration::hours(24),
        }
    }

    #[tokio::test]
    async fn concurrent_activations_of_one_checkout_make_exactly_one_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .activate_checkout(&activation("cs_race"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut activated = 0;
        for t in tasks {
            activated += t.await.unwrap().is_some() as usize;
        }
        assert_eq!(activated, 1, "exactly one delivery activates");
        assert_eq!(
            store.list_sessions(100).await.unwrap().len(),
            1,
            "exactly one row"
        );
        let s = store.find_by_checkout("cs_race").await.unwrap().unwrap();
        assert_eq!(
            (s.state, s.source),
            (SessionState::Active, SessionSource::Checkout)
        );
        assert_eq!(
            store
                .find_by_payment_intent("pi_1")
                .await
                .unwrap()
                .unwrap()
                .id,
            s.id
        );
    }

    #[tokio::test]
    async fn a_pending_session_is_activated_in_place_and_an_ended_one_stays_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let mut pending = session(60);
        pending.state = SessionState::Pending;
        pending.source = SessionSource::Checkout;
        pending.checkout_session_id = Some("cs_p".into());
        pending.activated_at = None;
        store.insert_session(&pending).await.unwrap();
        let active = store
            .activate_checkout(&activation("cs_p"))
            .await
            .unwrap()
            .expect("activated");
        assert_eq!(active.id, pending.id);
        assert_eq!(active.state, SessionState::Active);
        assert!(active.activated_at.is_some());
        store
            .end_session(
                &active.id,
                SessionEnd::Revoked,
                "refund",
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .activate_checkout(&activation("cs_p"))
                .await
                .unwrap()
                .is_none(),
            "a retried event cannot revive it"
        );
        assert!(
            store
                .record_refund("pi_1", OffsetDateTime::now_utc())
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_refund("pi_1", OffsetDateTime::now_utc())
                .await
                .unwrap()
        );
        assert!(
            store.is_refunded("pi_1").await.unwrap() && !store.is_refunded("pi_2").await.unwrap()
        );
        // A pending session can be revoked; its payment can then no longer activate it.
        let mut abandoned = session(60);
        abandoned.state = SessionState::Pending;
        abandoned.checkout_session_id = Some("cs_q".into());
        store.insert_session(&abandoned).await.unwrap();
        let revoked = store
            .end_session(
                &abandoned.id,
                SessionEnd::Revoked,
                "operator",
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        assert_eq!(revoked.unwrap().state, SessionState::Revoked);
        assert!(
            store
                .activate_checkout(&activation("cs_q"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.get_session(&pending.id).await.unwrap().unwrap().state,
            SessionState::Revoked
        );
    }

    #[tokio::test]
    async fn only_pending_checkouts_older_than_the_cutoff_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let pending = |cs: &str, age_s: i64| {
            let mut s = session(60);
            s.state = SessionState::Pending;
            s.source = SessionSource::Checkout;
            s.checkout_session_id = Some(cs.into());
            s.activated_at = None;
            s.created_at -= time::Duration::seconds(age_s);
            s
        };
        let (old, young, expired) = (
            pending("cs_old", 100),
            pending("cs_young", 1),
            pending("cs_gone", 1),
        );
        let mut ended = pending("cs_ended", 100);
        ended.state = SessionState::Revoked;
        let mut active = session(60);
        active.created_at -= time::Duration::seconds(100);
        for s in [&old, &young, &expired, &ended, &active] {
            store.insert_session(s).await.unwrap();
        }
        let cutoff = OffsetDateTime::now_utc() - time::Duration::seconds(50);
        assert_eq!(store.delete_pending_before(cutoff).await.unwrap(), 1);
        assert_eq!(store.get_session(&old.id).await.unwrap(), None);
        for kept in [&young, &ended, &active] {
            assert!(store.get_session(&kept.id).await.unwrap().is_some());
        }
        assert!(store.delete_pending_checkout("cs_gone").await.unwrap());
        assert!(!store.delete_pending_checkout("cs_gone").await.unwrap());
        assert!(
            !store.delete_pending_checkout("cs_ended").await.unwrap(),
            "ended ones stay"
        );
        // A payment for a deleted checkout still makes its session (as for a Payment Link).
        let made = store
            .activate_checkout(&activation("cs_old"))
            .await
            .unwrap()
            .expect("a new session");
        assert_eq!(made.state, SessionState::Active);
    }

    #[tokio::test]
    async fn claims_and_events_are_recorded_once_and_expiry_respects_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let s = session(60);
        store.insert_session(&s).await.unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(store.claim_session(&s.id, now).await.unwrap());
        assert!(!store.claim_session(&s.id, now).await.unwrap());
        assert!(
            store
                .record_event("evt_1", "checkout.session.completed", now)
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_event("evt_1", "checkout.session.completed", now)
                .await
                .unwrap()
        );
        // Not yet due: an expiry is refused; after the deadline it applies.
        assert!(
            store
                .end_session(&s.id, SessionEnd::Expired, "ttl", now)
                .await
                .unwrap()
                .is_none()
        );
        let later = s.expires_at + time::Duration::seconds(1);
        let extended = store
            .extend_session(&s.id, time::Duration::hours(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(extended.expires_at, s.expires_at + time::Duration::hours(1));
        assert!(
            store
                .end_session(&s.id, SessionEnd::Expired, "ttl", later)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .end_session(&s.id, SessionEnd::Expired, "ttl", extended.expires_at)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn viewer_links_keep_a_hash_and_are_revoked_once_within_their_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let s = session(60);
        store.insert_session(&s).await.unwrap();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let link = |role, label: Option<&str>| ViewerLink {
            id: new_session_id(),
            session_id: s.id.clone(),
            role,
            label: label.map(str::to_owned),
            created_at: now,
            revoked_at: None,
        };
        let view = link(LinkRole::View, Some("for Ann"));
        let drive = link(LinkRole::Interactive, None);
        let secret = crate::model::new_link_secret();
        let hash = crate::model::link_secret_hash(&secret);
        store.create_link(&view, &hash).await.unwrap();
        store
            .create_link(&drive, &crate::model::link_secret_hash("other"))
            .await
            .unwrap();
        // The secret itself is nowhere in the row.
        let stored: String =
            sqlx::query_scalar("SELECT secret_hash FROM viewer_links WHERE id = ?")
                .bind(&view.id)
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(stored, hash);
        assert_ne!(stored, secret);
        assert_eq!(
            store.find_link_by_secret_hash(&hash).await.unwrap(),
            Some(view.clone())
        );
        assert_eq!(store.find_link_by_secret_hash(&secret).await.unwrap(), None);
        let mut listed = store.list_links(&s.id).await.unwrap();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        let mut expected = vec![view.clone(), drive.clone()];
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(listed, expected);
        assert!(store.list_links("other").await.unwrap().is_empty());

        // Only within its own session; the first revocation's time stays.
        assert_eq!(
            store.revoke_link("other", &view.id, now).await.unwrap(),
            None
        );
        let revoked = store
            .revoke_link(&s.id, &view.id, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked.revoked_at, Some(now));
        let later = now + time::Duration::seconds(5);
        let again = store
            .revoke_link(&s.id, &view.id, later)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.revoked_at, Some(now));
        assert_eq!(
            store.get_link(&view.id).await.unwrap().unwrap().revoked_at,
            Some(now)
        );
        assert_eq!(
            store.get_link(&drive.id).await.unwrap().unwrap().revoked_at,
            None
        );
        assert_eq!(store.revoke_link(&s.id, "nope", now).await.unwrap(), None);

        // The table refuses over-long labels, whatever the API checks.
        let long = link(LinkRole::View, Some(&"x".repeat(101)));
        assert!(store.create_link(&long, "h").await.is_err());
    }
}
