//! The PostgreSQL store (`--database-url postgres://…`): the same tables and semantics as
//! the SQLite one, for several servers sharing one database.
//!
//! Statements run at PostgreSQL's default isolation, READ COMMITTED. What must be unique
//! or atomic is kept so by the database itself, as on SQLite: unique indexes (one session
//! per checkout, one persistent writer per profile, event ids, refunds, link secrets),
//! single statements guarded by the row's state (a concurrent UPDATE of the same row waits
//! and re-checks its WHERE against the committed row, so the first end wins), and
//! `INSERT … ON CONFLICT`. The one check that spans rows, the cap on live sessions per
//! address, takes an advisory lock (see `insert_session_capped`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::FromRow;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use time::OffsetDateTime;

use super::rows::{LinkRow, NodeRow, SessionRow, millis};
use super::{CheckoutActivation, SessionCounts, SessionStore, StoreError};
use crate::model::{Session, SessionEnd, ViewerLink};
use crate::nodes::{Node, Placement, choose_node, keeps_placement, sort_by_load};

/// How long a statement may run, and wait for a lock, before PostgreSQL cancels it (as
/// SQLite's busy timeout bounds a write): the request then fails as busy
/// ([`super::Unavailable`]) rather than hanging.
const STATEMENT_TIMEOUT: &str = "5s";
/// The advisory lock that serializes placements (`place_session`): "lsplace" in ASCII.
const PLACEMENT_LOCK: i64 = 0x006c_7370_6c61_6365;
const LOCK_TIMEOUT: &str = "5s";

/// The advisory lock namespace of the per-address session cap (the first key of
/// `pg_advisory_xact_lock(int4, int4)`; the second is the address's hash). Two-key
/// advisory locks do not overlap with one-key ones other code may take.
const CLIENT_CAP_LOCK: i32 = 0x4c53_4361; // "LSCa"

/// PostgreSQL: a pool on one database, migrations compiled into the binary.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database?…`) and brings the
    /// schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("livesession")
            // Sent with the startup packet, so every pooled connection has them.
            .options([("statement_timeout", STATEMENT_TIMEOUT), ("lock_timeout", LOCK_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A request waits at most this for a connection, then fails as busy.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool, shared with the task and login stores (same database, their
    /// own tables).
    pub fn pool(&self) -> &PgPool {
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

macro_rules! placeholders {
    () => {
        "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19"
    };
}

macro_rules! link_columns {
    () => {
        "id, session_id, role, label, created_at, revoked_at"
    };
}

fn session_from_row(row: &PgRow) -> Result<Session, StoreError> {
    SessionRow::from_row(row)?.try_into()
}

fn link_from_row(row: &PgRow) -> Result<ViewerLink, StoreError> {
    LinkRow::from_row(row)?.try_into()
}

macro_rules! node_columns {
    () => {
        "id, addr, capacity, live_desktops, started_at, heartbeat_at, draining"
    };
}

fn node_from_row(row: &PgRow) -> Result<Node, StoreError> {
    NodeRow::from_row(row)?.try_into()
}

/// Binds a session's fields in the order of `columns!()` ($1 to $18).
fn bind_session<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    s: &'q Session,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
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
        sqlx::Error::Database(db)
            if db.is_unique_violation() && db.constraint() == Some("sessions_one_profile_writer") =>
        {
            StoreError::ProfileInUse
        }
        _ => StoreError::Database(e),
    }
}

#[async_trait::async_trait]
impl SessionStore for PgStore {
    async fn insert_session(&self, s: &Session) -> Result<(), StoreError> {
        let insert = sqlx::query(concat!(
            "INSERT INTO sessions (",
            columns!(),
            ") VALUES (",
            placeholders!(),
            ")"
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
        // Unlike SQLite (one writer at a time), READ COMMITTED lets two concurrent
        // count-then-insert statements each count from a snapshot without the other's
        // uncommitted row, so both could slip under the cap, and no unique index can
        // express "at most N". A transaction-scoped advisory lock on the address
        // serializes the starts of one address (others do not wait, but for a hash
        // collision); the INSERT, a later statement, takes its snapshot after the lock,
        // so it counts every session committed by the previous holder. The lock goes
        // with the transaction; its wait is bounded by lock_timeout.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(CLIENT_CAP_LOCK)
            .bind(client_addr)
            .execute(&mut *tx)
            .await?;
        let insert = sqlx::query(concat!(
            "INSERT INTO sessions (",
            columns!(),
            ", client_addr) SELECT ",
            placeholders!(),
            ", $20 WHERE (SELECT COUNT(*) FROM sessions WHERE client_addr = $20 \
             AND state = 'active' AND expires_at > $21) < $22"
        ));
        let done = bind_session(insert, s)
            .bind(client_addr)
            .bind(millis(s.created_at))
            .bind(i64::from(max_live))
            .execute(&mut *tx)
            .await
            .map_err(profile_conflict)?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_live_for_client(
        &self,
        client_addr: &str,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE client_addr = $1 AND state = 'active' \
             AND expires_at > $2",
        )
        .bind(client_addr)
        .bind(millis(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM sessions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn list_sessions(&self, limit: u32) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sessions ORDER BY created_at DESC, id LIMIT $1"
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
        // One statement, guarded by state: a concurrent end (or extension) of the row
        // makes this one wait, then re-check the WHERE against the committed row, so the
        // first end wins and an expiry sees the extended deadline.
        let row = sqlx::query(concat!(
            "UPDATE sessions SET state = $1, ended_at = $2, end_reason = $3 \
             WHERE id = $4 AND (state = 'active' OR (state = 'pending' AND $1 = 'revoked')) \
             AND ($1 = 'revoked' OR expires_at <= $2) RETURNING ",
            columns!()
        ))
        .bind(end.state().as_str())
        .bind(millis(at))
        .bind(reason)
        .bind(id)
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
            "UPDATE sessions SET expires_at = expires_at + $1 WHERE id = $2 AND state = 'active' RETURNING ",
            columns!()
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
        let done = sqlx::query(
            "INSERT INTO refunded_payments (payment_intent, refunded_at) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(payment_intent)
        .bind(millis(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn is_refunded(&self, payment_intent: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM refunded_payments WHERE payment_intent = $1")
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
            " FROM sessions WHERE checkout_session_id = $1"
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
            " FROM sessions WHERE payment_intent = $1 LIMIT 1"
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
        // ended is left alone and nothing is returned. ON CONFLICT is race-free on the
        // unique checkout id: a concurrent insert waits for the first one's transaction
        // and then takes the conflict branch, whose WHERE sees the row active.
        let row = sqlx::query(concat!(
            "INSERT INTO sessions (id, state, source, start_url, created_at, expires_at, \
             checkout_session_id, payment_intent, activated_at) \
             VALUES ($1, 'active', 'checkout', $2, $3, $4, $5, $6, $3) \
             ON CONFLICT (checkout_session_id) DO UPDATE SET \
               state = 'active', expires_at = excluded.expires_at, activated_at = excluded.activated_at, \
               payment_intent = COALESCE(excluded.payment_intent, sessions.payment_intent) \
             WHERE sessions.state = 'pending' \
             RETURNING ",
            columns!()
        ))
        .bind(&a.new_id)
        .bind(&a.start_url)
        .bind(millis(a.now))
        .bind(millis(a.expires_at))
        .bind(&a.checkout_session_id)
        .bind(&a.payment_intent)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_pending_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE state = 'pending' AND created_at < $1")
            .bind(millis(cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_pending_checkout(&self, checkout_session_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE state = 'pending' AND checkout_session_id = $1",
        )
        .bind(checkout_session_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_session(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE sessions SET claimed_at = $1 WHERE id = $2 AND claimed_at IS NULL")
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
        let done = sqlx::query(
            "INSERT INTO stripe_events (id, type, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
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
            ", secret_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)"
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
            " FROM viewer_links WHERE session_id = $1 ORDER BY created_at, id"
        ))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(link_from_row).collect()
    }

    async fn get_link(&self, link_id: &str) -> Result<Option<ViewerLink>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", link_columns!(), " FROM viewer_links WHERE id = $1"))
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
            "UPDATE viewer_links SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND session_id = $3 RETURNING ",
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
            " FROM viewer_links WHERE secret_hash = $1"
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
            "UPDATE sessions SET hibernated_at = $1 WHERE id = $2 AND state = 'active' RETURNING ",
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
            " FROM sessions WHERE profile = $1 AND profile_persist AND state IN ('pending', 'active')"
        ))
        .bind(profile)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn count_sessions(&self) -> Result<SessionCounts, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*), COUNT(hibernated_at) FROM sessions GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts = SessionCounts::default();
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
            ") VALUES ($1, $2, $3, $4, $5, $6, $7) \
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
            " FROM nodes WHERE heartbeat_at >= $1"
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
        let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn forget_nodes_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1")
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
        let mut tx = self.pool.begin().await?;
        // One placement at a time across every node: each reads the others' counts.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PLACEMENT_LOCK)
            .execute(&mut *tx)
            .await?;
        let row: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT state, hibernated_at, node_id FROM sessions WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((state, hibernated_at, current)) = row else { return Ok(None) };
        if state != "active" {
            return Ok(None);
        }
        let rows = sqlx::query(concat!("SELECT ", node_columns!(), " FROM nodes WHERE heartbeat_at >= $1"))
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
        sqlx::query("UPDATE sessions SET node_id = $1 WHERE id = $2")
            .bind(&node.id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Placement { node, moved_from: current, placed_now: true }))
    }
}
