//! The store suite, run against both backends: each test body takes a [`Fixture`] (a
//! fresh store, SQLite in a temporary file or PostgreSQL in a new database on the test
//! process's server) and `on_both_backends!` makes it a test in `sqlite::` and one in
//! `postgres::`. A PostgreSQL that cannot be started fails the tests, never skips them.

use std::sync::Arc;

use time::OffsetDateTime;

use super::logins::{DoneCondition, Login, LoginOutcome, LoginStore, OutgoingEvent};
use super::{
    CheckoutActivation, PgLogins, PgStore, SessionCounts, SessionStore, SqliteLogins, SqliteStore,
    StoreError, Unavailable,
};
use crate::model::{
    LinkRole, NewSession, Session, SessionEnd, SessionSource, SessionState, ViewerLink,
    new_session_id,
};
use crate::Sessions;
use crate::nodes::Node;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh store of one backend, with its login store on the same database.
struct Fixture {
    store: Arc<dyn SessionStore>,
    logins: Arc<dyn LoginStore>,
    database: Database,
}

enum Database {
    Sqlite { _dir: tempfile::TempDir, path: std::path::PathBuf, pool: sqlx::SqlitePool },
    Postgres { url: String, pool: sqlx::PgPool },
}

/// A new, empty PostgreSQL database (livesession-pgtest starts the server on first use,
/// a blocking call).
async fn postgres_url() -> String {
    tokio::task::spawn_blocking(livesession_pgtest::database).await.unwrap()
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("livesession.db");
                let store = SqliteStore::open(&path).await.unwrap();
                let pool = store.pool().clone();
                Fixture {
                    logins: Arc::new(SqliteLogins::new(pool.clone())),
                    store: Arc::new(store),
                    database: Database::Sqlite { _dir: dir, path, pool },
                }
            }
            Backend::Postgres => {
                let url = postgres_url().await;
                let store = PgStore::connect(&url).await.unwrap();
                let pool = store.pool().clone();
                Fixture {
                    logins: Arc::new(PgLogins::new(pool.clone())),
                    store: Arc::new(store),
                    database: Database::Postgres { url, pool },
                }
            }
        }
    }

    /// A second store on the same database, as a restarted server opens it.
    async fn reopen(&self) -> Arc<dyn SessionStore> {
        match &self.database {
            Database::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).await.unwrap()),
            Database::Postgres { url, .. } => Arc::new(PgStore::connect(url).await.unwrap()),
        }
    }

    /// The `secret_hash` column of a viewer link, read past the store.
    async fn stored_secret_hash(&self, link_id: &str) -> String {
        match &self.database {
            Database::Sqlite { pool, .. } => {
                sqlx::query_scalar("SELECT secret_hash FROM viewer_links WHERE id = ?")
                    .bind(link_id)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Database::Postgres { pool, .. } => {
                sqlx::query_scalar("SELECT secret_hash FROM viewer_links WHERE id = $1")
                    .bind(link_id)
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        }
    }
}

/// One test per backend for each body: `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Fixture::new(super::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Fixture::new(super::Backend::Postgres).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    one_persistent_writer_per_profile_and_hibernation_is_recorded,
    sessions_round_trip_and_are_there_after_reopening,
    sessions_are_counted_by_state_with_the_hibernated_among_the_active,
    the_first_end_wins,
    concurrent_activations_of_one_checkout_make_exactly_one_session,
    a_pending_session_is_activated_in_place_and_an_ended_one_stays_ended,
    only_pending_checkouts_older_than_the_cutoff_are_deleted,
    claims_and_events_are_recorded_once_and_expiry_respects_extensions,
    viewer_links_keep_a_hash_and_are_revoked_once_within_their_session,
    a_login_finishes_once_and_its_event_waits_until_delivered,
    concurrent_capped_starts_from_one_address_insert_exactly_the_cap,
    concurrent_ends_of_one_session_have_one_winner,
    concurrent_writers_of_one_profile_have_one_winner,
    concurrent_deliveries_of_one_event_and_one_refund_are_recorded_once,
    concurrent_finishes_of_one_login_record_one_outcome_and_one_event,
    a_node_heartbeat_upserts_keeping_its_start_and_nodes_are_listed_by_id_and_removed,
    live_nodes_leave_out_stale_ones_and_come_least_loaded_first,
    forgetting_nodes_deletes_only_those_silent_since_the_cutoff,
    concurrent_heartbeats_of_one_node_leave_one_row,
    concurrent_placements_spread_exactly_and_a_placement_stays_while_its_node_lives,
    placements_move_off_dead_nodes_and_hibernated_sessions_off_draining_ones,
);

/// Runs `n` copies of `f` at once, each in its own task, and returns their results.
async fn race<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let run = f(i);
            tokio::spawn(async move {
                barrier.wait().await;
                run.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

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
        node: None,
    }
}

async fn one_persistent_writer_per_profile_and_hibernation_is_recorded(f: Fixture) {
    let store = &*f.store;
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

async fn sessions_round_trip_and_are_there_after_reopening(f: Fixture) {
    let store = &*f.store;
    let s = session(60);
    store.insert_session(&s).await.unwrap();
    assert_eq!(store.get_session(&s.id).await.unwrap(), Some(s.clone()));
    assert_eq!(store.get_session("nope").await.unwrap(), None);

    // Every field, at the stores' precision (milliseconds), survives the trip.
    // (`created_at` is on a whole second, so these are on whole milliseconds.)
    let at = |ms: i64| s.created_at + time::Duration::milliseconds(ms);
    let full = Session {
        id: new_session_id(),
        state: SessionState::Revoked,
        source: SessionSource::Checkout,
        start_url: "https://example.com/ünïcode?q=1".into(),
        created_at: at(-1_001),
        expires_at: at(3_600_123),
        ended_at: Some(at(5_007)),
        end_reason: Some("refund".into()),
        checkout_session_id: Some("cs_full".into()),
        payment_intent: Some("pi_full".into()),
        activated_at: Some(at(1)),
        claimed_at: Some(at(2_999)),
        goal: Some("book a table".into()),
        profile: Some("shop".into()),
        profile_persist: true,
        idle_timeout_seconds: Some(u32::MAX),
        hibernated_at: Some(at(4_321)),
        record: true,
        node: Some("node-ü".into()),
    };
    store.insert_session(&full).await.unwrap();
    assert_eq!(store.get_session(&full.id).await.unwrap(), Some(full.clone()));
    assert_eq!(store.find_by_checkout("cs_full").await.unwrap(), Some(full.clone()));
    assert_eq!(store.find_by_payment_intent("pi_full").await.unwrap(), Some(full.clone()));
    assert_eq!(store.profile_writer("shop").await.unwrap(), None, "an ended session writes nothing");

    // Reopening runs the migrations again (a no-op) and finds the rows, newest first.
    let store = f.reopen().await;
    assert_eq!(store.list_sessions(10).await.unwrap(), vec![s.clone(), full.clone()]);
    assert_eq!(store.list_sessions(1).await.unwrap(), vec![s.clone()]);
    assert_eq!(store.list_active_sessions().await.unwrap(), vec![s.clone()]);
}

async fn sessions_are_counted_by_state_with_the_hibernated_among_the_active(f: Fixture) {
    let store = &*f.store;
    assert_eq!(store.count_sessions().await.unwrap(), SessionCounts::default());
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
        SessionCounts { pending: 1, active: 2, expired: 0, revoked: 1, hibernated: 1 }
    );
}

async fn the_first_end_wins(f: Fixture) {
    let store = &*f.store;
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

async fn concurrent_activations_of_one_checkout_make_exactly_one_session(f: Fixture) {
    let store = f.store.clone();
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

async fn a_pending_session_is_activated_in_place_and_an_ended_one_stays_ended(f: Fixture) {
    let store = &*f.store;
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

async fn only_pending_checkouts_older_than_the_cutoff_are_deleted(f: Fixture) {
    let store = &*f.store;
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

async fn claims_and_events_are_recorded_once_and_expiry_respects_extensions(f: Fixture) {
    let store = &*f.store;
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

async fn viewer_links_keep_a_hash_and_are_revoked_once_within_their_session(f: Fixture) {
    let store = &*f.store;
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
    let stored = f.stored_secret_hash(&view.id).await;
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

async fn a_login_finishes_once_and_its_event_waits_until_delivered(f: Fixture) {
    let logins = f.logins.clone();
    let sessions = Sessions::new(f.store.clone());
    let session = sessions
        .create(NewSession {
            source: SessionSource::Api,
            start_url: "about:blank".into(),
            ttl: time::Duration::minutes(5),
            profile: None,
            idle_timeout_seconds: None,
            record: false,
        })
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc().replace_millisecond(0).unwrap();
    let login = Login {
        id: "lg_1".into(),
        session_id: session.id.clone(),
        profile: "p".into(),
        done: DoneCondition::Cookie("sid".into()),
        created_at: now,
        outcome: None,
        finished_at: None,
    };
    logins.insert_login(&login).await.unwrap();
    assert_eq!(logins.login_for_session(&session.id).await.unwrap(), Some(login.clone()));
    assert_eq!(logins.logins_of_active_sessions().await.unwrap(), vec![login.clone()]);
    assert!(logins.insert_login(&Login { id: "lg_2".into(), ..login.clone() }).await.is_err(), "one login per session");

    let event = OutgoingEvent {
        id: "evt_1".into(),
        kind: "login.captured".into(),
        body: "{}".into(),
        created_at: now,
        attempts: 0,
        next_attempt_at: now,
    };
    assert!(logins.finish_login("lg_1", LoginOutcome::Captured, now, Some(&event)).await.unwrap());
    assert!(!logins.finish_login("lg_1", LoginOutcome::Failed, now, None).await.unwrap(), "the first outcome stays");
    assert_eq!(logins.pending_events().await.unwrap(), vec![event.clone()]);
    logins.event_attempt_failed("evt_1", 1, now + time::Duration::seconds(1), "HTTP 500").await.unwrap();
    let pending = logins.pending_events().await.unwrap();
    assert_eq!((pending[0].attempts, pending[0].next_attempt_at), (1, now + time::Duration::seconds(1)));
    logins.event_delivered("evt_1", 2, now).await.unwrap();
    assert!(logins.pending_events().await.unwrap().is_empty());

    // A second login's event is given up: it leaves the queue too.
    let other = sessions
        .create(NewSession {
            source: SessionSource::Api,
            start_url: "about:blank".into(),
            ttl: time::Duration::minutes(5),
            profile: None,
            idle_timeout_seconds: None,
            record: false,
        })
        .await
        .unwrap();
    logins.insert_login(&Login { id: "lg_3".into(), session_id: other.id.clone(), ..login.clone() }).await.unwrap();
    let failed = OutgoingEvent { id: "evt_2".into(), kind: "login.failed".into(), ..event.clone() };
    assert!(logins.finish_login("lg_3", LoginOutcome::Failed, now, Some(&failed)).await.unwrap());
    assert_eq!(logins.pending_events().await.unwrap(), vec![failed]);
    logins.event_given_up("evt_2", 5, now, "HTTP 500").await.unwrap();
    assert!(logins.pending_events().await.unwrap().is_empty());

    sessions.revoke(&session.id, "login captured").await.unwrap();
    let finished = logins.login_for_session(&session.id).await.unwrap().unwrap();
    assert_eq!((finished.outcome, finished.finished_at), (Some(LoginOutcome::Captured), Some(now)));
    let watched = logins.logins_of_active_sessions().await.unwrap();
    assert_eq!(watched.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), ["lg_3"]);
    sessions.revoke(&other.id, "done").await.unwrap();
    assert!(logins.logins_of_active_sessions().await.unwrap().is_empty());
}

/// Forty starts at once from one address under a cap of five: exactly five sessions (in
/// four rounds, from four addresses, for a race that shows).
async fn concurrent_capped_starts_from_one_address_insert_exactly_the_cap(f: Fixture) {
    let store = f.store.clone();
    let mut inserted = Vec::new();
    for addr in ["198.51.100.4", "198.51.100.5", "198.51.100.6", "198.51.100.7"] {
        let round = race(40, |_| {
            let store = store.clone();
            async move {
                let s = Session { source: SessionSource::Free, ..session(60) };
                store.insert_session_capped(&s, addr, 5).await.unwrap().then_some(s.id)
            }
        })
        .await;
        inserted = round.into_iter().flatten().collect::<Vec<String>>();
        assert_eq!(inserted.len(), 5, "exactly the cap gets through from {addr}");
    }
    let now = OffsetDateTime::now_utc();
    assert_eq!(store.count_live_for_client("198.51.100.7", now).await.unwrap(), 5);
    assert_eq!(store.list_sessions(100).await.unwrap().len(), 20);
    // Another address has its own count, and an ended session frees its slot.
    assert!(store.insert_session_capped(&session(60), "198.51.100.8", 5).await.unwrap());
    assert_eq!(store.count_live_for_client("198.51.100.8", now).await.unwrap(), 1);
    assert!(!store.insert_session_capped(&session(60), "198.51.100.7", 5).await.unwrap());
    store.end_session(&inserted[0], SessionEnd::Revoked, "test", now).await.unwrap().unwrap();
    assert!(store.insert_session_capped(&session(60), "198.51.100.7", 5).await.unwrap());
    assert!(!store.insert_session_capped(&session(60), "198.51.100.7", 5).await.unwrap());
    // So does a session past its deadline, even before its expiry is recorded.
    let mut late = session(60);
    late.created_at += time::Duration::seconds(61);
    assert!(store.insert_session_capped(&late, "198.51.100.7", 1).await.unwrap());
}

/// Twenty ends of one session at once (revocations and due expiries): one wins, and the
/// stored end is the winner's.
async fn concurrent_ends_of_one_session_have_one_winner(f: Fixture) {
    let store = f.store.clone();
    let s = session(1);
    store.insert_session(&s).await.unwrap();
    let due = s.expires_at + time::Duration::seconds(1);
    let ended = race(20, |i| {
        let (store, id) = (store.clone(), s.id.clone());
        async move {
            let end = if i % 2 == 0 { SessionEnd::Revoked } else { SessionEnd::Expired };
            store.end_session(&id, end, &format!("end {i}"), due).await.unwrap()
        }
    })
    .await;
    let winners: Vec<_> = ended.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "the first end wins");
    assert_eq!(store.get_session(&s.id).await.unwrap().unwrap(), winners[0]);
}

/// Twenty persistent writers of one profile at once: the unique index lets one in.
async fn concurrent_writers_of_one_profile_have_one_winner(f: Fixture) {
    let store = f.store.clone();
    let results = race(20, |i| {
        let store = store.clone();
        async move {
            let s = Session { profile: Some("shared".into()), profile_persist: true, ..session(60) };
            if i % 2 == 0 {
                store.insert_session(&s).await.map(|()| true)
            } else {
                store.insert_session_capped(&s, &format!("203.0.113.{i}"), 5).await
            }
        }
    })
    .await;
    let mut won = 0;
    for r in results {
        match r {
            Ok(inserted) => {
                assert!(inserted);
                won += 1;
            }
            Err(StoreError::ProfileInUse) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won, 1, "one writer per profile");
    assert!(store.profile_writer("shared").await.unwrap().is_some());
}

/// Stripe delivers an event (and a refund) several times at once: recorded once.
async fn concurrent_deliveries_of_one_event_and_one_refund_are_recorded_once(f: Fixture) {
    let store = f.store.clone();
    let now = OffsetDateTime::now_utc();
    let recorded = race(20, |i| {
        let store = store.clone();
        async move {
            if i % 2 == 0 {
                store.record_event("evt_race", "charge.refunded", now).await.unwrap()
            } else {
                store.record_refund("pi_race", now).await.unwrap()
            }
        }
    })
    .await;
    let (events, refunds): (Vec<_>, Vec<_>) = recorded.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    assert_eq!(events.iter().filter(|(_, r)| **r).count(), 1);
    assert_eq!(refunds.iter().filter(|(_, r)| **r).count(), 1);
    assert!(store.is_refunded("pi_race").await.unwrap());
}

/// Ten finishes of one login at once: one outcome, and only its event is queued.
async fn concurrent_finishes_of_one_login_record_one_outcome_and_one_event(f: Fixture) {
    let s = session(60);
    f.store.insert_session(&s).await.unwrap();
    let now = OffsetDateTime::now_utc().replace_millisecond(0).unwrap();
    let login = Login {
        id: "lg_race".into(),
        session_id: s.id.clone(),
        profile: "p".into(),
        done: DoneCondition::UrlPrefix("https://a.example/".into()),
        created_at: now,
        outcome: None,
        finished_at: None,
    };
    f.logins.insert_login(&login).await.unwrap();
    let logins = f.logins.clone();
    let finished = race(10, |i| {
        let logins = logins.clone();
        async move {
            let event = OutgoingEvent {
                id: format!("evt_{i}"),
                kind: "login.captured".into(),
                body: "{}".into(),
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
            };
            logins.finish_login("lg_race", LoginOutcome::Captured, now, Some(&event)).await.unwrap()
        }
    })
    .await;
    assert_eq!(finished.iter().filter(|f| **f).count(), 1);
    let winner = finished.iter().position(|f| *f).unwrap();
    let pending = f.logins.pending_events().await.unwrap();
    assert_eq!(pending.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [format!("evt_{winner}")]);
}

/// A whole second in the past, so that millisecond offsets from it stay exact.
fn node_epoch() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::seconds(60)
}

fn node(id: &str, capacity: u32, live_desktops: u32, started_at: OffsetDateTime, heartbeat_at: OffsetDateTime) -> Node {
    Node {
        id: id.into(),
        addr: format!("10.0.0.1:{}", 8000 + capacity),
        capacity,
        live_desktops,
        started_at,
        heartbeat_at,
        draining: false,
    }
}

fn ids(nodes: &[Node]) -> Vec<&str> {
    nodes.iter().map(|n| n.id.as_str()).collect()
}

async fn a_node_heartbeat_upserts_keeping_its_start_and_nodes_are_listed_by_id_and_removed(f: Fixture) {
    let t0 = node_epoch();
    let ms = time::Duration::milliseconds;
    assert!(f.store.list_nodes().await.unwrap().is_empty());

    // Millisecond times survive the round trip.
    let first = node("n-b", 4, 1, t0 + ms(123), t0 + ms(123));
    f.store.node_heartbeat(&first).await.unwrap();
    assert_eq!(f.store.list_nodes().await.unwrap(), vec![first.clone()]);

    // A later heartbeat updates everything but the first start (a restarted node
    // reporting another start time keeps the registered one).
    let later = Node {
        id: "n-b".into(),
        addr: "10.0.0.2:9000".into(),
        capacity: 8,
        live_desktops: 3,
        started_at: t0 + ms(5_000),
        heartbeat_at: t0 + ms(2_456),
        draining: true,
    };
    f.store.node_heartbeat(&later).await.unwrap();
    let listed = f.store.list_nodes().await.unwrap();
    assert_eq!(listed, vec![Node { started_at: first.started_at, ..later.clone() }]);

    // Listed by id, whatever the order of registration.
    for id in ["n-c", "n-a"] {
        f.store.node_heartbeat(&node(id, 2, 0, t0, t0 + ms(1))).await.unwrap();
    }
    assert_eq!(ids(&f.store.list_nodes().await.unwrap()), ["n-a", "n-b", "n-c"]);

    // A graceful stop deregisters, once; the others stay, also for a reopened store.
    assert!(f.store.remove_node("n-b").await.unwrap());
    assert!(!f.store.remove_node("n-b").await.unwrap());
    assert!(!f.store.remove_node("n-unknown").await.unwrap());
    assert_eq!(ids(&f.reopen().await.list_nodes().await.unwrap()), ["n-a", "n-c"]);
}

async fn live_nodes_leave_out_stale_ones_and_come_least_loaded_first(f: Fixture) {
    let t0 = node_epoch();
    let ms = time::Duration::milliseconds;
    let since = t0 + ms(10_000);
    // Ratios 0.5 (a), 0.2 (b), 0.25 (c); d has the lowest load but is stale by 1 ms;
    // e is exactly at `since` (included); z has capacity 0 and comes last.
    let nodes = [
        node("a", 10, 5, t0, since + ms(1)),
        node("b", 10, 2, t0, since + ms(2)),
        node("c", 4, 1, t0, since + ms(3)),
        node("d", 10, 0, t0, since - ms(1)),
        node("e", 2, 1, t0, since),
        node("z", 0, 0, t0, since + ms(4)),
    ];
    for n in &nodes {
        f.store.node_heartbeat(n).await.unwrap();
    }
    let live = f.store.live_nodes(since).await.unwrap();
    // e (0.5 with 1 live) before a (0.5 with 5 live).
    assert_eq!(ids(&live), ["b", "c", "e", "a", "z"]);
    assert_eq!(live[0], nodes[1]);

    // Without e and z: the example of capacities 10/10/4 with 5/2/1 live.
    assert!(f.store.remove_node("e").await.unwrap());
    assert!(f.store.remove_node("z").await.unwrap());
    assert_eq!(ids(&f.store.live_nodes(since).await.unwrap()), ["b", "c", "a"]);

    // A load change reorders: a, now idle, first; d's heartbeat brings it back.
    f.store.node_heartbeat(&node("a", 10, 0, t0, since + ms(5))).await.unwrap();
    f.store.node_heartbeat(&node("d", 10, 9, t0, since + ms(6))).await.unwrap();
    assert_eq!(ids(&f.store.live_nodes(since).await.unwrap()), ["a", "b", "c", "d"]);

    // Nobody after the last heartbeat.
    assert!(f.store.live_nodes(since + ms(7)).await.unwrap().is_empty());
    // Everybody from long before, still ordered by load.
    assert_eq!(ids(&f.store.live_nodes(t0).await.unwrap()), ["a", "b", "c", "d"]);
}

async fn forgetting_nodes_deletes_only_those_silent_since_the_cutoff(f: Fixture) {
    let t0 = node_epoch();
    let ms = time::Duration::milliseconds;
    let cutoff = t0 + ms(30_000);
    f.store.node_heartbeat(&node("old", 1, 0, t0, t0)).await.unwrap();
    f.store.node_heartbeat(&node("just-old", 1, 0, t0, cutoff - ms(1))).await.unwrap();
    f.store.node_heartbeat(&node("at-cutoff", 1, 0, t0, cutoff)).await.unwrap();
    f.store.node_heartbeat(&node("recent", 1, 0, t0, cutoff + ms(1))).await.unwrap();
    // A node started long ago but heard from recently is kept: the last heartbeat counts.
    f.store.node_heartbeat(&node("revived", 1, 0, t0, t0)).await.unwrap();
    f.store.node_heartbeat(&node("revived", 1, 0, t0, cutoff + ms(2))).await.unwrap();

    assert_eq!(f.store.forget_nodes_before(cutoff).await.unwrap(), 2);
    assert_eq!(ids(&f.store.list_nodes().await.unwrap()), ["at-cutoff", "recent", "revived"]);
    assert_eq!(f.store.forget_nodes_before(cutoff).await.unwrap(), 0);
    assert_eq!(f.store.forget_nodes_before(t0).await.unwrap(), 0);
    assert_eq!(f.store.list_nodes().await.unwrap().len(), 3);
}

async fn concurrent_heartbeats_of_one_node_leave_one_row(f: Fixture) {
    let t0 = node_epoch();
    let sent = |i: u32| Node {
        id: "n-racy".into(),
        addr: format!("10.0.1.{i}:8080"),
        capacity: 100 + i,
        live_desktops: i,
        started_at: t0 + time::Duration::seconds(i64::from(i)),
        heartbeat_at: t0 + time::Duration::milliseconds(i64::from(i)),
        draining: i % 2 == 1,
    };
    let results = race(20, |i| {
        let store = f.store.clone();
        let node = sent(i as u32);
        async move { store.node_heartbeat(&node).await }
    })
    .await;
    for r in results {
        r.unwrap();
    }
    let listed = f.store.list_nodes().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let row = &listed[0];
    // One heartbeat's values throughout (each is one statement), and one heartbeat's start.
    let last = row.live_desktops;
    assert!(last < 20);
    assert_eq!(Node { started_at: row.started_at, ..sent(last) }, *row);
    assert!((0..20).any(|i| sent(i).started_at == row.started_at), "{row:?}");
    assert_eq!(f.store.live_nodes(t0).await.unwrap(), listed);
}

async fn concurrent_placements_spread_exactly_and_a_placement_stays_while_its_node_lives(f: Fixture) {
    let now = OffsetDateTime::now_utc();
    let since = now - time::Duration::seconds(10);
    for (id, capacity) in [("n-a", 4), ("n-b", 4), ("n-c", 8)] {
        f.store.node_heartbeat(&node(id, capacity, 0, now, now)).await.unwrap();
    }
    let sessions: Vec<Session> = (0..16).map(|_| session(600)).collect();
    for s in &sessions {
        f.store.insert_session(s).await.unwrap();
    }
    let placed = race(sessions.len(), |i| {
        let store = f.store.clone();
        let id = sessions[i].id.clone();
        async move { store.place_session(&id, since).await }
    })
    .await;
    let mut per_node = std::collections::BTreeMap::<String, u32>::new();
    for p in placed {
        let p = p.unwrap().expect("a live node takes it");
        assert!(p.placed_now && p.moved_from.is_none(), "{p:?}");
        *per_node.entry(p.node.id).or_default() += 1;
    }
    // Capacity 4, 4 and 8: 16 sessions fill each to the same share.
    assert_eq!(per_node, [("n-a".into(), 4), ("n-b".into(), 4), ("n-c".into(), 8)].into());

    // Placed again: the same node, nothing recorded anew; the session shows it.
    let first = &sessions[0].id;
    let node = f.store.get_session(first).await.unwrap().unwrap().node.expect("recorded");
    let again = f.store.place_session(first, since).await.unwrap().unwrap();
    assert_eq!((again.node.id.as_str(), again.placed_now), (node.as_str(), false));

    // An ended session, or an unknown one, is not placed.
    f.store.end_session(first, SessionEnd::Revoked, "test", now).await.unwrap();
    assert_eq!(f.store.place_session(first, since).await.unwrap(), None);
    assert_eq!(f.store.place_session("no-such-session", since).await.unwrap(), None);
}

async fn placements_move_off_dead_nodes_and_hibernated_sessions_off_draining_ones(f: Fixture) {
    let now = OffsetDateTime::now_utc();
    let since = now - time::Duration::seconds(10);
    f.store.node_heartbeat(&node("n-a", 4, 0, now, now)).await.unwrap();
    let (running, hibernated) = (session(600), session(600));
    for s in [&running, &hibernated] {
        f.store.insert_session(s).await.unwrap();
        assert_eq!(f.store.place_session(&s.id, since).await.unwrap().unwrap().node.id, "n-a");
    }
    f.store.set_hibernated(&hibernated.id, Some(now)).await.unwrap();

    // n-a drains, n-b is up: the running desktop stays until saved, the hibernated one moves.
    f.store.node_heartbeat(&Node { draining: true, ..node("n-a", 4, 0, now, now) }).await.unwrap();
    f.store.node_heartbeat(&node("n-b", 4, 0, now, now)).await.unwrap();
    let stays = f.store.place_session(&running.id, since).await.unwrap().unwrap();
    assert_eq!((stays.node.id.as_str(), stays.placed_now), ("n-a", false));
    let moved = f.store.place_session(&hibernated.id, since).await.unwrap().unwrap();
    assert_eq!((moved.node.id.as_str(), moved.moved_from.as_deref()), ("n-b", Some("n-a")));

    // n-a's heartbeat goes stale (it died): its running session moves too.
    let stale = now - time::Duration::seconds(60);
    f.store.node_heartbeat(&Node { draining: false, ..node("n-a", 4, 0, now, stale) }).await.unwrap();
    let moved = f.store.place_session(&running.id, since).await.unwrap().unwrap();
    assert_eq!((moved.node.id.as_str(), moved.moved_from.as_deref()), ("n-b", Some("n-a")));
    assert_eq!(f.store.get_session(&running.id).await.unwrap().unwrap().node.as_deref(), Some("n-b"));

    // No live node that takes placements: none.
    f.store.node_heartbeat(&Node { draining: true, ..node("n-b", 4, 0, now, now) }).await.unwrap();
    let fresh = session(600);
    f.store.insert_session(&fresh).await.unwrap();
    assert_eq!(f.store.place_session(&fresh.id, since).await.unwrap(), None);
}

/// PostgreSQL only: what a bounded wait and the server's errors become.
mod postgres_only {
    use super::*;

    async fn pg() -> (PgStore, String) {
        let url = postgres_url().await;
        (PgStore::connect(&url).await.unwrap(), url)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_bounds_its_statements_and_lock_waits() {
        let (store, _) = pg().await;
        let mut seen = Vec::new();
        // More than one connection: the settings come with each, not with the first.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = store.pool().acquire().await.unwrap();
            let settings: (String, String) =
                sqlx::query_as("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            seen.push(settings);
            held.push(conn);
        }
        assert!(seen.iter().all(|s| *s == ("5s".to_owned(), "5s".to_owned())), "{seen:?}");
        let migrated: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(migrated, 6);
    }

    /// A write blocked by another transaction's row lock fails as busy within the lock
    /// timeout, rather than hanging; once the lock is gone the same write succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_blocked_past_the_lock_timeout_fails_as_busy() {
        let (store, url) = pg().await;
        let s = session(60);
        store.insert_session(&s).await.unwrap();
        let other = sqlx::PgPool::connect(&url).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE")
            .bind(&s.id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = store
            .end_session(&s.id, SessionEnd::Revoked, "blocked", OffsetDateTime::now_utc())
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.unavailable(), Some(Unavailable::Busy), "{err}");
        assert!(waited < std::time::Duration::from_secs(10), "waited {waited:?}");
        tx.rollback().await.unwrap();
        assert!(store
            .end_session(&s.id, SessionEnd::Revoked, "free", OffsetDateTime::now_utc())
            .await
            .unwrap()
            .is_some());
    }

    /// The SQLSTATEs the server raises, as `Unavailable::of` reads them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_errors_are_classified_by_sqlstate() {
        let (store, _) = pg().await;
        let cases = [
            ("disk_full", "53100", Some(Unavailable::Full)),
            ("lock_not_available", "55P03", Some(Unavailable::Busy)),
            ("query_canceled", "57014", Some(Unavailable::Busy)),
            ("serialization_failure", "40001", Some(Unavailable::Busy)),
            ("deadlock_detected", "40P01", Some(Unavailable::Busy)),
            ("too_many_connections", "53300", Some(Unavailable::Busy)),
            ("cannot_connect_now", "57P03", Some(Unavailable::Busy)),
            // The rest of class 53 is not a full disk.
            ("out_of_memory", "53200", None),
            ("insufficient_resources", "53000", None),
            ("unique_violation", "23505", None),
            ("raise_exception", "P0001", None),
        ];
        for (name, code, expected) in cases {
            // PL/pgSQL raises any condition by name: the server's own error, SQLSTATE and all.
            let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{name}'; END $$");
            let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(store.pool()).await.unwrap_err();
            let sqlx::Error::Database(db) = &err else { panic!("{name}: {err}") };
            assert_eq!(db.code().as_deref(), Some(code), "{name}");
            assert_eq!(Unavailable::of(&err), expected, "{name} ({code})");
            assert_eq!(StoreError::Database(err).unavailable(), expected, "{name} ({code})");
        }
        // A real statement timeout, on a connection where it is short.
        let mut conn = store.pool().acquire().await.unwrap();
        sqlx::query("SET statement_timeout = '50ms'").execute(&mut *conn).await.unwrap();
        let err = sqlx::query("SELECT pg_sleep(5)").execute(&mut *conn).await.unwrap_err();
        assert_eq!(Unavailable::of(&err), Some(Unavailable::Busy), "{err}");
        sqlx::query("RESET statement_timeout").execute(&mut *conn).await.unwrap();
    }

    /// Fifty deliveries of one checkout through separate pools (as from separate
    /// servers): one session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn activations_from_several_servers_make_one_session() {
        let (first, url) = pg().await;
        let second = PgStore::connect(&url).await.unwrap();
        let stores: [Arc<dyn SessionStore>; 2] = [Arc::new(first), Arc::new(second)];
        let activated = race(50, |i| {
            let store = stores[i % 2].clone();
            async move { store.activate_checkout(&activation("cs_two_servers")).await.unwrap() }
        })
        .await;
        assert_eq!(activated.iter().flatten().count(), 1);
        assert_eq!(stores[0].list_sessions(100).await.unwrap().len(), 1);
    }
}

/// SQLite only: its result codes, from real errors.
mod sqlite_only {
    use super::*;
    use std::str::FromStr;

    #[tokio::test]
    async fn sqlite_errors_are_classified_by_result_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(&path)
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(2).connect_with(options).await.unwrap();
        sqlx::query("CREATE TABLE t (x BLOB)").execute(&pool).await.unwrap();

        // SQLITE_BUSY: another connection holds the write lock.
        let mut holder = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *holder).await.unwrap();
        let err = sqlx::query("INSERT INTO t VALUES (1)").execute(&pool).await.unwrap_err();
        assert_eq!(Unavailable::of(&err), Some(Unavailable::Busy), "{err}");
        sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
        drop(holder);

        // SQLITE_FULL: the database may not grow.
        let mut conn = pool.acquire().await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA max_page_count = {pages}"))).execute(&mut *conn).await.unwrap();
        let err = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))").execute(&mut *conn).await.unwrap_err();
        assert_eq!(Unavailable::of(&err), Some(Unavailable::Full), "{err}");

        // Any other error is no passing condition.
        let err = sqlx::query("INSERT INTO nope VALUES (1)").execute(&mut *conn).await.unwrap_err();
        assert_eq!(Unavailable::of(&err), None, "{err}");
        assert_eq!(Unavailable::of(&sqlx::Error::PoolTimedOut), Some(Unavailable::Busy));
    }
}
