//! The session store: a trait with one module per backend, each with its own migrations.

pub mod logins;
mod postgres;
mod postgres_logins;
mod rows;
mod sqlite;
#[cfg(test)]
mod suite;

pub use logins::{DoneCondition, Login, LoginOutcome, LoginStore, OutgoingEvent, SqliteLogins};
pub use postgres::PgStore;
pub use postgres_logins::PgLogins;
pub use sqlite::SqliteStore;

use crate::model::{Session, SessionEnd, ViewerLink};
use crate::nodes::Node;
use time::OffsetDateTime;

/// What `activate_checkout` needs: the session to insert if none exists for the checkout.
#[derive(Debug, Clone)]
pub struct CheckoutActivation {
    /// Used if no session exists yet for this checkout.
    pub new_id: String,
    pub checkout_session_id: String,
    pub payment_intent: Option<String>,
    pub start_url: String,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
    /// Another pending or active session already persists to this profile.
    #[error("the profile is in use by another session that saves to it")]
    ProfileInUse,
}

impl StoreError {
    /// Why the database could not be written to, when that is a passing condition the
    /// client should be told about (and may retry) rather than a fault.
    pub fn unavailable(&self) -> Option<Unavailable> {
        match self {
            StoreError::Database(e) => Unavailable::of(e),
            _ => None,
        }
    }
}

/// A database that cannot take a write now: nothing was changed, a retry may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The disk (or the database's file system) is full.
    Full,
    /// Another connection or process holds the database's write lock past the busy
    /// timeout, or every pooled connection is taken.
    Busy,
}

impl Unavailable {
    /// Classifies a database error: SQLite's result codes, PostgreSQL's SQLSTATEs, and
    /// the pool's own timeout.
    pub fn of(e: &sqlx::Error) -> Option<Self> {
        const ENOSPC: i32 = 28;
        match e {
            sqlx::Error::PoolTimedOut => Some(Unavailable::Busy),
            sqlx::Error::Io(io) if io.raw_os_error() == Some(ENOSPC) => Some(Unavailable::Full),
            sqlx::Error::Database(db) => {
                // PostgreSQL's codes are five-character SQLSTATEs, some all digits
                // ("53100"): told apart from SQLite's numeric codes by the error's type,
                // not by the code's shape.
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return Self::of_sqlstate(pg.code());
                }
                // SQLite's extended result code; the primary code is its low byte.
                let code: i32 = db.code()?.parse().ok()?;
                match code & 0xff {
                    // SQLITE_FULL
                    13 => Some(Unavailable::Full),
                    // SQLITE_BUSY, SQLITE_LOCKED
                    5 | 6 => Some(Unavailable::Busy),
                    // SQLITE_IOERR: a write the file system refused for want of space.
                    10 if db.message().contains("disk is full") || db.message().contains("No space") => Some(Unavailable::Full),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A PostgreSQL SQLSTATE (appendix A of its manual).
    fn of_sqlstate(code: &str) -> Option<Self> {
        match code {
            // disk_full. Not the rest of class 53 (insufficient resources: out of memory,
            // too many connections): those are the server's, not a full disk.
            "53100" => Some(Unavailable::Full),
            // lock_not_available (lock_timeout), query_canceled (statement_timeout): a
            // write blocked past the bound PgStore sets on every connection.
            "55P03" | "57014" => Some(Unavailable::Busy),
            // serialization_failure, deadlock_detected: the transaction was rolled back
            // and may be retried.
            "40001" | "40P01" => Some(Unavailable::Busy),
            // too_many_connections: the server is at max_connections.
            "53300" => Some(Unavailable::Busy),
            // cannot_connect_now: the server is starting up or shutting down.
            "57P03" => Some(Unavailable::Busy),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn insert_session(&self, session: &Session) -> Result<(), StoreError>;
    /// Inserts a session started by the client at `client_addr`, unless that address
    /// already has `max_live` sessions that are active and not past their deadline at
    /// `session.created_at`. One statement: concurrent starts from one address cannot
    /// both slip under the cap. Returns whether the session was inserted.
    async fn insert_session_capped(
        &self,
        session: &Session,
        client_addr: &str,
        max_live: u32,
    ) -> Result<bool, StoreError>;
    /// How many sessions started by `client_addr` are active and before their deadline at `now`.
    async fn count_live_for_client(
        &self,
        client_addr: &str,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError>;
    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    /// Most recent first.
    async fn list_sessions(&self, limit: u32) -> Result<Vec<Session>, StoreError>;
    async fn list_active_sessions(&self) -> Result<Vec<Session>, StoreError>;
    /// Ends an active session (a revocation also ends a pending one). Returns the updated
    /// session, or `None` when no such session has that id (unknown, or already ended: the
    /// first end wins). An expiry only applies once the session's deadline has passed (it
    /// may have been extended).
    async fn end_session(
        &self,
        id: &str,
        end: SessionEnd,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Session>, StoreError>;
    /// Moves an active session's deadline later by `by`, atomically. `None` if it is not active.
    async fn extend_session(
        &self,
        id: &str,
        by: time::Duration,
    ) -> Result<Option<Session>, StoreError>;
    /// Records a full refund of a payment; returns whether it was new.
    async fn record_refund(
        &self,
        payment_intent: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    async fn is_refunded(&self, payment_intent: &str) -> Result<bool, StoreError>;
    async fn find_by_checkout(
        &self,
        checkout_session_id: &str,
    ) -> Result<Option<Session>, StoreError>;
    async fn find_by_payment_intent(
        &self,
        payment_intent: &str,
    ) -> Result<Option<Session>, StoreError>;
    /// Activates the session of a paid checkout in one statement: the pending session the
    /// server created for it, or a new one (a checkout the server did not start, such as a
    /// Payment Link). Returns the session if this call activated it; `None` if it was
    /// already active or had ended. The unique checkout id makes concurrent calls safe.
    async fn activate_checkout(
        &self,
        activation: &CheckoutActivation,
    ) -> Result<Option<Session>, StoreError>;
    /// Deletes the pending sessions (checkouts never paid) created before `cutoff`;
    /// returns how many. Active and ended sessions are never touched.
    async fn delete_pending_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;
    /// Deletes the session of this checkout if it is still pending (Stripe says the
    /// checkout expired); returns whether one was deleted.
    async fn delete_pending_checkout(&self, checkout_session_id: &str) -> Result<bool, StoreError>;
    /// Marks a session claimed by a browser; `false` if it already was.
    async fn claim_session(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError>;
    /// Records a Stripe event id; `false` if it was already recorded.
    async fn record_event(
        &self,
        event_id: &str,
        kind: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Records a new viewer link with the SHA-256 of its secret (never the secret).
    async fn create_link(&self, link: &ViewerLink, secret_hash: &str) -> Result<(), StoreError>;
    /// A session's viewer links, revoked ones included, oldest first.
    async fn list_links(&self, session_id: &str) -> Result<Vec<ViewerLink>, StoreError>;
    async fn get_link(&self, link_id: &str) -> Result<Option<ViewerLink>, StoreError>;
    /// Revokes a link of this session; the first revocation's time is kept. Returns the
    /// link (revoked), or `None` if the session has no such link.
    async fn revoke_link(
        &self,
        session_id: &str,
        link_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<ViewerLink>, StoreError>;
    /// The link whose secret hashes to this, revoked or not.
    async fn find_link_by_secret_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<ViewerLink>, StoreError>;
    /// Records that an active session's desktop was hibernated (`Some`) or resumed
    /// (`None`). Returns the session, or `None` if it is not active.
    async fn set_hibernated(
        &self,
        id: &str,
        at: Option<OffsetDateTime>,
    ) -> Result<Option<Session>, StoreError>;
    /// The pending or active session that persists to this profile, if any.
    async fn profile_writer(&self, profile: &str) -> Result<Option<Session>, StoreError>;
    /// How many sessions are in each state, and how many active ones are hibernated
    /// (`/metrics`). Reads every row's state: cheap next to a scrape interval.
    async fn count_sessions(&self) -> Result<SessionCounts, StoreError>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Records a node's heartbeat: inserts it, or updates its address, capacity, live
    /// desktops and heartbeat time, keeping the first `started_at`. One statement
    /// (`INSERT … ON CONFLICT`): concurrent heartbeats of one id leave one row.
    async fn node_heartbeat(&self, node: &Node) -> Result<(), StoreError>;
    /// Every registered node, alive or not, by id.
    async fn list_nodes(&self) -> Result<Vec<Node>, StoreError>;
    /// The nodes whose last heartbeat is at or after `since`, least loaded first
    /// ([`Node::cmp_load`]).
    async fn live_nodes(&self, since: OffsetDateTime) -> Result<Vec<Node>, StoreError>;
    /// Deregisters a node (a graceful stop); returns whether it was registered.
    async fn remove_node(&self, id: &str) -> Result<bool, StoreError>;
    /// Deletes the nodes whose last heartbeat is before `cutoff` (long dead); returns how many.
    async fn forget_nodes_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;
    /// Places an active session's desktop on a node and returns where: the recorded node
    /// while it is live (a heartbeat at or after `live_since`) and keeps the session
    /// ([`crate::nodes::keeps_placement`]), else the node [`crate::nodes::choose_node`]
    /// picks, recorded. `None` when the session is not active or no live node takes
    /// placements. Placements are serialized by the database (one transaction, and on
    /// PostgreSQL an advisory lock), so concurrent ones spread exactly.
    async fn place_session(
        &self,
        id: &str,
        live_since: OffsetDateTime,
    ) -> Result<Option<crate::nodes::Placement>, StoreError>;
}

/// Sessions by state ([`SessionStore::count_sessions`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts {
    pub pending: u64,
    pub active: u64,
    pub expired: u64,
    pub revoked: u64,
    /// Active sessions whose desktop is hibernated (`hibernated_at` set).
    pub hibernated: u64,
}
