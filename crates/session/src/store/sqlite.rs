use std::path::Path;
use std::str::FromStr;

use sqlx::FromRow;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use time::OffsetDateTime;

use super::rows::{LinkRow, NodeRow, SessionRow, millis};
use super::{CheckoutActivation, SessionStore, StoreError};
use crate::model::{Session, SessionEnd, ViewerLink};
use crate::nodes::{Node, Placement, choose_node, keeps_placement, sort_by_load};

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
         profile_persist, idle_timeout_seconds, hibernated_at, record, node_id"
    };
}

macro_rules! link_columns {
    () => {
        "id, session_id, role, label, created_at, revoked_at"
    };
}

fn session_from_row(row: &SqliteRow) -> Result<Session, StoreError> {
    SessionRow::from_row(row)?.try_into()
}

fn link_from_row(row: &SqliteRow) -> Result<ViewerLink, StoreError> {
    LinkRow::from_row(row)?.try_into()
}

macro_rules! node_columns {
    () => {
        "id, addr, capacity, live_desktops, started_at, heartbeat_at, draining"
    };
}

fn node_from_row(row: &SqliteRow) -> Result<Node, StoreError> {
    NodeRow::from_row(row)?.try_into()
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
        .bind(s.profile_persist)
        .bind(s.idle_timeout_seconds.map(i64::from))
        .bind(s.hibernated_at.map(millis))
        .bind(s.record)
        .bind(&s.node)
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
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            ", client_addr) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
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

    async fn node_heartbeat(&self, node: &Node) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO nodes (",
            node_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, capacity = excluded.capacity, \
             live_desktops = excluded.live_desktops, heartbeat_at = excluded.heartbeat_at, \
             draining = excluded.draining"
        ))
        .bind(&node.id)
        .bind(&node.addr)
        .bind(i64::from(node.capacity))
        .bind(i64::from(node.live_desktops))
        .bind(millis(node.started_at))
        .bind(millis(node.heartbeat_at))
        .bind(node.draining)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", node_columns!(), " FROM nodes ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_from_row).collect()
    }

    async fn live_nodes(&self, since: OffsetDateTime) -> Result<Vec<Node>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE heartbeat_at >= ?"
        ))
        .bind(millis(since))
        .fetch_all(&self.pool)
        .await?;
        let mut nodes = rows.iter().map(node_from_row).collect::<Result<Vec<_>, _>>()?;
        // The load order is exact in Rust (a ratio compared by cross-multiplication),
        // and the same on both backends.
        sort_by_load(&mut nodes);
        Ok(nodes)
    }

    async fn remove_node(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM nodes WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn forget_nodes_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM nodes WHERE heartbeat_at < ?")
            .bind(millis(cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn place_session(
        &self,
        id: &str,
        live_since: OffsetDateTime,
    ) -> Result<Option<Placement>, StoreError> {
        // SQLite serves one node; its transaction still keeps a placement whole. IMMEDIATE:
        // a read that later writes must hold the write lock from the start, or two
        // placements' upgrades deadlock (SQLITE_BUSY without the busy wait).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT state, hibernated_at, node_id FROM sessions WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((state, hibernated_at, current)) = row else { return Ok(None) };
        if state != "active" {
            return Ok(None);
        }
        let rows = sqlx::query(concat!("SELECT ", node_columns!(), " FROM nodes WHERE heartbeat_at >= ?"))
            .bind(millis(live_since))
            .fetch_all(&mut *tx)
            .await?;
        let live = rows.iter().map(node_from_row).collect::<Result<Vec<_>, _>>()?;
        let recorded = current.as_deref().and_then(|c| live.iter().find(|n| n.id == c));
        if keeps_placement(recorded, hibernated_at.is_some()) {
            let node = recorded.cloned().expect("kept only when live");
            return Ok(Some(Placement { node, moved_from: None, placed_now: false }));
        }
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT node_id, COUNT(*) FROM sessions WHERE state = 'active' \
             AND hibernated_at IS NULL AND node_id IS NOT NULL GROUP BY node_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let placed = counts.into_iter().map(|(n, c)| (n, u32::try_from(c).unwrap_or(u32::MAX))).collect();
        let Some(node) = choose_node(live, &placed) else { return Ok(None) };
        sqlx::query("UPDATE sessions SET node_id = ? WHERE id = ?")
            .bind(&node.id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Placement { node, moved_from: current, placed_now: true }))
    }
}
