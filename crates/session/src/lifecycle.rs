//! Session lifecycle: create, end (expire or revoke), and the end signal that every live
//! connection of a session listens to.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast, watch};

use crate::fanout::{Fanout, Notice};

use crate::model::{
    LinkRole, NewSession, Session, SessionEnd, SessionSource, SessionState, ViewerLink,
    link_secret_hash, new_link_secret, new_session_id,
};
use crate::store::{CheckoutActivation, SessionStore, StoreError};

/// A live connection's view of its session's end: resolves once, when the session ends.
pub struct EndSignal(watch::Receiver<Option<SessionEnd>>);

impl EndSignal {
    /// Whether the session has ended already (without waiting).
    pub fn is_ended(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Waits until the session ends. If the `Sessions` that issued it is dropped (the
    /// server is going away), this waits forever; shutdown has its own signal.
    pub async fn ended(&mut self) -> SessionEnd {
        loop {
            if let Some(end) = *self.0.borrow_and_update() {
                return end;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A live connection's view of the viewer link it was opened through: resolves when the
/// link is revoked. A connection opened without a link holds one that never resolves.
pub struct LinkSignal(Option<watch::Receiver<bool>>);

impl LinkSignal {
    /// For a connection that did not come through a viewer link.
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether the link has been revoked already (without waiting).
    pub fn is_revoked(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Waits until the link is revoked; forever for a connection without a link.
    pub async fn revoked(&mut self) {
        if let Some(rx) = &mut self.0 {
            loop {
                if *rx.borrow_and_update() {
                    return;
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    }
}

pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// One sender per session that has live subscribers.
    signals: Mutex<HashMap<String, watch::Sender<Option<SessionEnd>>>>,
    /// One sender per viewer link that has live subscribers.
    link_signals: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Every end, for the parts of the server that clean up after a session (desktops).
    ended: broadcast::Sender<(String, SessionEnd)>,
    /// Deadlines of active sessions, earliest first, read by [`Sessions::run_expiry`].
    deadlines: Mutex<BinaryHeap<Reverse<(OffsetDateTime, String)>>>,
    deadline_added: Notify,
    /// The other servers sharing the store, told of ends, link revocations and
    /// extensions (fanout.rs). Unset with SQLite: one server.
    fanout: std::sync::OnceLock<Arc<dyn Fanout>>,
    /// Other servers' task events (session, cursor), for the task queue (fanout.rs).
    task_events: tokio::sync::broadcast::Sender<(String, u64)>,
    /// Counts resynchronisations: followers of what notices carry (task updates) read
    /// the store again at each.
    resyncs: tokio::sync::watch::Sender<u64>,
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            signals: Mutex::default(),
            link_signals: Mutex::default(),
            ended: broadcast::channel(256).0,
            deadlines: Mutex::default(),
            deadline_added: Notify::new(),
            fanout: std::sync::OnceLock::new(),
            task_events: tokio::sync::broadcast::channel(1024).0,
            resyncs: tokio::sync::watch::channel(0).0,
        })
    }

    /// Tells the other servers sharing the store of what this one records (once, at start).
    pub fn set_fanout(&self, fanout: Arc<dyn Fanout>) {
        if self.fanout.set(fanout).is_err() {
            tracing::warn!("the fan-out was set twice; the first is kept");
        }
    }

    async fn publish(&self, notice: Notice) {
        if let Some(fanout) = self.fanout.get() {
            fanout.publish(notice).await;
        }
    }

    /// Applies another server's notice to this server's subscribers (fanout.rs): what it
    /// recorded is in the store already.
    pub async fn apply(&self, notice: Notice) {
        match notice {
            Notice::SessionEnded { session_id, end } => {
                tracing::info!(session_id = %session_id, end = ?end, "session ended on another server");
                self.signal(&session_id, end.into());
            }
            Notice::LinkRevoked { session_id, link_id } => {
                tracing::info!(session_id = %session_id, link_id = %link_id, "viewer link revoked on another server");
                self.signal_link(&link_id);
            }
            Notice::SessionExtended { session_id } => match self.store.get_session(&session_id).await {
                Ok(Some(session)) if session.state == SessionState::Active => self.schedule(&session),
                Ok(_) => {}
                Err(e) => tracing::warn!(session_id = %session_id, error = %e, "could not read an extended session"),
            },
            Notice::TaskEvent { session_id, cursor } => {
                let _ = self.task_events.send((session_id, cursor));
            }
        }
    }

    /// Tells the other servers that one of a session's tasks has a new event (a no-op
    /// with one server).
    pub async fn announce_task_event(&self, session_id: &str, cursor: u64) {
        self.publish(Notice::TaskEvent { session_id: session_id.to_owned(), cursor }).await;
    }

    /// Changes at every resynchronisation ([`Sessions::resync`]): task events announced
    /// meanwhile may be lost too.
    pub fn resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resyncs.subscribe()
    }

    /// The other servers' task events, as (session, cursor).
    pub fn task_events_elsewhere(&self) -> tokio::sync::broadcast::Receiver<(String, u64)> {
        self.task_events.subscribe()
    }

    /// After notices may have been missed (fanout.rs): every session and link this
    /// server's connections follow is read again from the store and signalled if it
    /// ended, and every active session's deadline is scheduled again.
    pub async fn resync(&self) {
        self.resyncs.send_modify(|n| *n += 1);
        let sessions: Vec<String> = self
            .signals
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(id, _)| id.clone())
            .collect();
        for id in sessions {
            match self.store.get_session(&id).await {
                Ok(Some(session)) => {
                    if let Some(end) = session.end_at(OffsetDateTime::now_utc()).filter(|_| session.state != SessionState::Active) {
                        self.signal(&id, end);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(session_id = %id, error = %e, "resync: could not read a session"),
            }
        }
        let links: Vec<String> = self
            .link_signals
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(id, _)| id.clone())
            .collect();
        for link_id in links {
            match self.store.get_link(&link_id).await {
                Ok(Some(link)) if link.revoked_at.is_some() => self.signal_link(&link_id),
                Ok(_) => {}
                Err(e) => tracing::warn!(link_id = %link_id, error = %e, "resync: could not read a viewer link"),
            }
        }
        match self.store.list_active_sessions().await {
            Ok(active) => active.iter().for_each(|s| self.schedule(s)),
            Err(e) => tracing::warn!(error = %e, "resync: could not read the active sessions"),
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn now() -> OffsetDateTime {
        // Millisecond precision, as the store keeps it: what a call returns equals what a
        // later read returns.
        let now = OffsetDateTime::now_utc();
        now.replace_millisecond(now.millisecond())
            .expect("valid millisecond")
    }

    fn new_active(new: NewSession) -> Session {
        let now = Self::now();
        Session {
            id: new_session_id(),
            state: SessionState::Active,
            source: new.source,
            start_url: new.start_url,
            created_at: now,
            expires_at: now + new.ttl,
            ended_at: None,
            end_reason: None,
            checkout_session_id: None,
            payment_intent: None,
            activated_at: Some(now),
            claimed_at: None,
            goal: None,
            profile: new.profile.as_ref().map(|p| p.name.clone()),
            profile_persist: new.profile.as_ref().is_some_and(|p| p.persist),
            idle_timeout_seconds: new.idle_timeout_seconds,
            hibernated_at: None,
            record: new.record,
            node: None,
        }
    }

    /// Creates an active session (free mode, admin API).
    pub async fn create(&self, new: NewSession) -> Result<Session, StoreError> {
        let session = Self::new_active(new);
        self.store.insert_session(&session).await?;
        self.schedule(&session);
        tracing::info!(session_id = %session.id, source = session.source.as_str(),
            expires_at = %session.expires_at, "session created");
        Ok(session)
    }

    /// Creates an active session for the client at `client_addr` (free mode), unless
    /// that address already has `max_live` live sessions: then `None`. The address is
    /// recorded with the session, so the count holds across restarts, and an ended
    /// (revoked, expired) session no longer counts.
    pub async fn create_capped(
        &self,
        new: NewSession,
        client_addr: &str,
        max_live: u32,
    ) -> Result<Option<Session>, StoreError> {
        let session = Self::new_active(new);
        if !self
            .store
            .insert_session_capped(&session, client_addr, max_live)
            .await?
        {
            return Ok(None);
        }
        self.schedule(&session);
        tracing::info!(session_id = %session.id, source = session.source.as_str(),
            expires_at = %session.expires_at, "session created");
        Ok(Some(session))
    }

    /// Records the pending session of a checkout the server started. Its lifetime starts
    /// when the payment is confirmed ([`Sessions::activate_checkout`]).
    pub async fn create_pending(
        &self,
        id: String,
        checkout_session_id: String,
        start_url: String,
        goal: Option<String>,
    ) -> Result<Session, StoreError> {
        let now = Self::now();
        let session = Session {
            id,
            state: SessionState::Pending,
            source: SessionSource::Checkout,
            start_url,
            created_at: now,
            expires_at: now,
            ended_at: None,
            end_reason: None,
            checkout_session_id: Some(checkout_session_id),
            payment_intent: None,
            activated_at: None,
            claimed_at: None,
            goal,
            profile: None,
            profile_persist: false,
            idle_timeout_seconds: None,
            hibernated_at: None,
            record: false,
            node: None,
        };
        self.store.insert_session(&session).await?;
        tracing::info!(session_id = %session.id, "checkout started; session pending payment");
        Ok(session)
    }

    /// A paid checkout: activates its session (creating it if the server did not start
    /// the checkout). Returns the session if this call activated it; `None` if an earlier
    /// delivery already did, or the session has ended.
    pub async fn activate_checkout(
        &self,
        checkout_session_id: &str,
        payment_intent: Option<&str>,
        start_url: &str,
        ttl: time::Duration,
    ) -> Result<Option<Session>, StoreError> {
        let now = Self::now();
        let activation = CheckoutActivation {
            new_id: new_session_id(),
            checkout_session_id: checkout_session_id.to_owned(),
            payment_intent: payment_intent.map(str::to_owned),
            start_url: start_url.to_owned(),
            now,
            expires_at: now + ttl,
        };
        let activated = self.store.activate_checkout(&activation).await?;
        if let Some(session) = &activated {
            self.schedule(session);
            tracing::info!(session_id = %session.id, expires_at = %session.expires_at, "payment confirmed; session active");
        }
        Ok(activated)
    }

    /// Moves an active session's deadline `by` later. `None` if it is not active.
    pub async fn extend(
        &self,
        id: &str,
        by: time::Duration,
    ) -> Result<Option<Session>, StoreError> {
        let extended = self.store.extend_session(id, by).await?;
        if let Some(s) = &extended {
            self.schedule(s);
            tracing::info!(session_id = %id, expires_at = %s.expires_at, "session extended");
            self.publish(Notice::SessionExtended { session_id: id.to_owned() }).await;
        }
        Ok(extended)
    }

    /// Loads a session, expiring it on the spot if its deadline has passed, so that no
    /// caller ever sees an "active" session that is past its time.
    pub async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let Some(session) = self.store.get_session(id).await? else {
            return Ok(None);
        };
        if session.state == SessionState::Active
            && session.end_at(OffsetDateTime::now_utc()).is_some()
        {
            return Ok(self
                .end(id, SessionEnd::Expired, "time to live elapsed")
                .await?
                .or(Some(session)));
        }
        Ok(Some(session))
    }

    /// Whether the session is over: ended, or unknown to the store. What a session left
    /// behind (a saved state, its files) is removed once it is.
    pub async fn is_over(&self, id: &str) -> Result<bool, StoreError> {
        Ok(!matches!(self.get(id).await?, Some(s) if s.state == SessionState::Active))
    }

    /// Records that the session's desktop hibernated (its state saved, the desktop
    /// stopped; `true`) or resumed (`false`). The session stays active and its deadline is
    /// unchanged. `None` if it is not active.
    pub async fn set_hibernated(&self, id: &str, hibernated: bool) -> Result<Option<Session>, StoreError> {
        let at = hibernated.then(Self::now);
        let session = self.store.set_hibernated(id, at).await?;
        if session.is_some() {
            tracing::info!(session_id = %id, hibernated, "session desktop {}", if hibernated { "hibernated" } else { "resumed" });
        }
        Ok(session)
    }

    pub async fn revoke(&self, id: &str, reason: &str) -> Result<Option<Session>, StoreError> {
        self.end(id, SessionEnd::Revoked, reason).await
    }

    /// Records the end and signals it to every subscriber. Returns `None` if the session
    /// was unknown or had already ended (the first end wins).
    async fn end(
        &self,
        id: &str,
        end: SessionEnd,
        reason: &str,
    ) -> Result<Option<Session>, StoreError> {
        let ended = self
            .store
            .end_session(id, end, reason, OffsetDateTime::now_utc())
            .await?;
        if ended.is_some() {
            self.signal(id, end);
            tracing::info!(session_id = %id, end = ?end, reason, "session ended");
            self.publish(Notice::SessionEnded { session_id: id.to_owned(), end: end.into() }).await;
        }
        Ok(ended)
    }

    fn signal(&self, id: &str, end: SessionEnd) {
        if let Some(tx) = self.signals.lock().unwrap().remove(id) {
            tx.send_replace(Some(end));
        }
        let _ = self.ended.send((id.to_owned(), end));
    }

    /// Subscribes to a session's end. Subscribe *before* checking the session's state:
    /// an end recorded after the check then still reaches the subscriber.
    pub fn subscribe(&self, id: &str) -> EndSignal {
        let mut signals = self.signals.lock().unwrap();
        // Drop senders nobody listens to any more (connections that closed).
        signals.retain(|_, tx| tx.receiver_count() > 0);
        let rx = signals
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        EndSignal(rx)
    }

    /// A stream of every session end, for cleanup (stopping desktops).
    pub fn ended_events(&self) -> broadcast::Receiver<(String, SessionEnd)> {
        self.ended.subscribe()
    }

    /// Number of sessions with at least one live subscriber.
    pub fn subscribed_sessions(&self) -> usize {
        self.signals
            .lock()
            .unwrap()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    /// Creates a viewer link for a session (the caller checks that the session is
    /// active). Returns the link and its secret; only the secret's hash is stored, so this
    /// is the one time the secret is known.
    pub async fn create_link(
        &self,
        session_id: &str,
        role: LinkRole,
        label: Option<String>,
    ) -> Result<(ViewerLink, String), StoreError> {
        let link = ViewerLink {
            id: new_session_id(),
            session_id: session_id.to_owned(),
            role,
            label,
            created_at: Self::now(),
            revoked_at: None,
        };
        let secret = new_link_secret();
        self.store
            .create_link(&link, &link_secret_hash(&secret))
            .await?;
        tracing::info!(session_id, link_id = %link.id, role = role.as_str(), "viewer link created");
        Ok((link, secret))
    }

    /// Revokes a session's viewer link and signals it to every connection opened through
    /// it. `None` if the session has no such link. Revoking a revoked link changes nothing.
    pub async fn revoke_link(
        &self,
        session_id: &str,
        link_id: &str,
    ) -> Result<Option<ViewerLink>, StoreError> {
        let revoked = self
            .store
            .revoke_link(session_id, link_id, Self::now())
            .await?;
        if revoked.is_some() {
            self.signal_link(link_id);
            tracing::info!(session_id, link_id, "viewer link revoked");
            self.publish(Notice::LinkRevoked { session_id: session_id.to_owned(), link_id: link_id.to_owned() }).await;
        }
        Ok(revoked)
    }

    fn signal_link(&self, link_id: &str) {
        if let Some(tx) = self.link_signals.lock().unwrap().remove(link_id) {
            tx.send_replace(true);
        }
    }

    /// Subscribes to a viewer link's revocation. Subscribe *before* checking the link in
    /// the store: a revocation recorded after the check then still reaches the subscriber.
    pub fn subscribe_link(&self, link_id: &str) -> LinkSignal {
        let mut signals = self.link_signals.lock().unwrap();
        signals.retain(|_, tx| tx.receiver_count() > 0);
        let rx = signals
            .entry(link_id.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe();
        LinkSignal(Some(rx))
    }

    /// Stripe says this checkout expired unpaid: its pending session is deleted now.
    /// Returns whether there was one.
    pub async fn forget_expired_checkout(&self, checkout_session_id: &str) -> Result<bool, StoreError> {
        let deleted = self.store.delete_pending_checkout(checkout_session_id).await?;
        if deleted {
            tracing::info!(checkout_session_id, "checkout expired unpaid; pending session deleted");
        }
        Ok(deleted)
    }

    /// Deletes the pending sessions of checkouts never paid once they are older than
    /// `max_age`: at start, then every quarter of `max_age` (at least every 10 minutes,
    /// at most every second). A payment confirmed after the deletion still gets a session
    /// ([`Sessions::activate_checkout`] creates one). Runs until `shutdown` resolves.
    pub async fn run_pending_cleanup(
        self: Arc<Self>,
        max_age: time::Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let every = (max_age / 4_i32)
            .clamp(time::Duration::seconds(1), time::Duration::minutes(10))
            .unsigned_abs();
        tokio::pin!(shutdown);
        loop {
            let cutoff = OffsetDateTime::now_utc() - max_age;
            match self.store.delete_pending_before(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, max_age_s = max_age.whole_seconds(),
                    "deleted checkouts that were never paid"),
                Err(e) => tracing::error!(error = %e, "could not delete unpaid checkouts; trying again later"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    fn schedule(&self, session: &Session) {
        self.deadlines
            .lock()
            .unwrap()
            .push(Reverse((session.expires_at, session.id.clone())));
        self.deadline_added.notify_one();
    }

    /// Expires sessions at their deadline, from the next deadline rather than a periodic
    /// sweep. Sessions that expired while the server was down are expired at once.
    /// Runs until `shutdown` resolves.
    pub async fn run_expiry(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StoreError> {
        for session in self.store.list_active_sessions().await? {
            self.schedule(&session);
        }
        tokio::pin!(shutdown);
        loop {
            let next = self
                .deadlines
                .lock()
                .unwrap()
                .peek()
                .map(|Reverse((at, _))| *at);
            let now = OffsetDateTime::now_utc();
            match next {
                Some(at) if at <= now => {
                    // An extended session's old deadline is still in the heap: the store
                    // refuses an expiry before the current deadline, so it is a no-op.
                    let Reverse((_, id)) = self.deadlines.lock().unwrap().pop().expect("peeked");
                    if let Err(e) = self
                        .end(&id, SessionEnd::Expired, "time to live elapsed")
                        .await
                    {
                        tracing::error!(session_id = %id, error = %e, "could not expire session; retrying in 1 s");
                        self.deadlines
                            .lock()
                            .unwrap()
                            .push(Reverse((now + time::Duration::seconds(1), id)));
                    }
                }
                _ => {
                    let wait = next
                        .map(|at| (at - now).unsigned_abs())
                        .unwrap_or(std::time::Duration::from_secs(3600));
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = self.deadline_added.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionSource;
    use crate::store::SqliteStore;
    use std::time::Duration;

    async fn sessions() -> (tempfile::TempDir, Arc<Sessions>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        (dir, Sessions::new(Arc::new(store)))
    }

    fn new_session(ttl_ms: i64) -> NewSession {
        NewSession {
            source: SessionSource::Api,
            start_url: "about:blank".into(),
            ttl: time::Duration::milliseconds(ttl_ms),
            profile: None,
            idle_timeout_seconds: None,
            record: false,
        }
    }

    #[tokio::test]
    async fn capped_creation_counts_live_sessions_of_one_address_even_when_concurrent() {
        let (_dir, sessions) = sessions().await;
        let free = |ttl_ms| NewSession {
            source: SessionSource::Free,
            ..new_session(ttl_ms)
        };
        // Twenty starts at once from one address: exactly the cap gets through.
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    sessions
                        .create_capped(free(60_000), "198.51.100.1", 3)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut created = Vec::new();
        for t in tasks {
            created.extend(t.await.unwrap());
        }
        assert_eq!(created.len(), 3);
        let store = sessions.store();
        let now = OffsetDateTime::now_utc();
        assert_eq!(store.count_live_for_client("198.51.100.1", now).await.unwrap(), 3);
        // Another address has its own count; sessions without an address count for none.
        sessions.create(free(60_000)).await.unwrap();
        assert!(sessions
            .create_capped(free(60_000), "198.51.100.2", 3)
            .await
            .unwrap()
            .is_some());
        // An ended session frees its slot.
        assert!(sessions
            .create_capped(free(60_000), "198.51.100.1", 3)
            .await
            .unwrap()
            .is_none());
        sessions.revoke(&created[0].id, "test").await.unwrap().unwrap();
        assert!(sessions
            .create_capped(free(60_000), "198.51.100.1", 3)
            .await
            .unwrap()
            .is_some());
        // So does one past its deadline, even before its expiry is recorded.
        let (_dir2, other) = self::sessions().await;
        other.create_capped(free(50), "198.51.100.3", 1).await.unwrap().unwrap();
        assert!(other.create_capped(free(50), "198.51.100.3", 1).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(other.create_capped(free(50), "198.51.100.3", 1).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn revocation_reaches_every_subscriber_and_is_recorded() {
        let (_dir, sessions) = sessions().await;
        let s = sessions.create(new_session(60_000)).await.unwrap();
        let mut a = sessions.subscribe(&s.id);
        let mut b = sessions.subscribe(&s.id);
        let mut events = sessions.ended_events();
        assert_eq!(sessions.subscribed_sessions(), 1);
        let revoked = sessions.revoke(&s.id, "operator").await.unwrap().unwrap();
        assert_eq!(revoked.state, SessionState::Revoked);
        assert_eq!(a.ended().await, SessionEnd::Revoked);
        assert_eq!(b.ended().await, SessionEnd::Revoked);
        assert_eq!(
            events.recv().await.unwrap(),
            (s.id.clone(), SessionEnd::Revoked)
        );
        // A second revoke is a no-op.
        assert!(sessions.revoke(&s.id, "again").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoking_a_link_reaches_its_subscribers_only() {
        let (_dir, sessions) = sessions().await;
        let s = sessions.create(new_session(60_000)).await.unwrap();
        let (view, secret) = sessions
            .create_link(&s.id, LinkRole::View, Some("a".into()))
            .await
            .unwrap();
        let (other, _) = sessions
            .create_link(&s.id, LinkRole::Interactive, None)
            .await
            .unwrap();
        assert_eq!(
            sessions
                .store()
                .find_link_by_secret_hash(&link_secret_hash(&secret))
                .await
                .unwrap()
                .unwrap()
                .id,
            view.id
        );
        let mut a = sessions.subscribe_link(&view.id);
        let mut b = sessions.subscribe_link(&view.id);
        let mut c = sessions.subscribe_link(&other.id);
        let mut none = LinkSignal::none();
        assert!(
            sessions
                .revoke_link("another session", &view.id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!a.is_revoked());
        let revoked = sessions
            .revoke_link(&s.id, &view.id)
            .await
            .unwrap()
            .unwrap();
        assert!(revoked.revoked_at.is_some());
        tokio::time::timeout(Duration::from_secs(1), a.revoked())
            .await
            .expect("signalled");
        tokio::time::timeout(Duration::from_secs(1), b.revoked())
            .await
            .expect("signalled");
        assert!(a.is_revoked());
        assert!(!c.is_revoked());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c.revoked())
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), none.revoked())
                .await
                .is_err()
        );
        // The session itself goes on.
        assert_eq!(
            sessions.get(&s.id).await.unwrap().unwrap().state,
            SessionState::Active
        );
    }

    #[tokio::test]
    async fn sessions_expire_at_their_deadline() {
        let (_dir, sessions) = sessions().await;
        let shutdown = tokio_util_free_shutdown();
        let runner = tokio::spawn(sessions.clone().run_expiry(shutdown.1));
        let s = sessions.create(new_session(300)).await.unwrap();
        let mut signal = sessions.subscribe(&s.id);
        let end = tokio::time::timeout(Duration::from_secs(3), signal.ended())
            .await
            .expect("expired in time");
        assert_eq!(end, SessionEnd::Expired);
        let stored = sessions.store().get_session(&s.id).await.unwrap().unwrap();
        assert_eq!(stored.state, SessionState::Expired);
        let _ = shutdown.0.send(());
        runner.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_extended_session_outlives_its_first_deadline() {
        let (_dir, sessions) = sessions().await;
        let (stop, shutdown) = tokio_util_free_shutdown();
        let runner = tokio::spawn(sessions.clone().run_expiry(shutdown));
        let s = sessions.create(new_session(300)).await.unwrap();
        let extended = sessions
            .extend(&s.id, time::Duration::milliseconds(700))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            extended.expires_at,
            s.expires_at + time::Duration::milliseconds(700)
        );
        let mut signal = sessions.subscribe(&s.id);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            sessions
                .store()
                .get_session(&s.id)
                .await
                .unwrap()
                .unwrap()
                .state,
            SessionState::Active
        );
        let end = tokio::time::timeout(Duration::from_secs(3), signal.ended())
            .await
            .expect("expired at the new deadline");
        assert_eq!(end, SessionEnd::Expired);
        let _ = stop.send(());
        runner.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn get_expires_a_session_past_its_deadline() {
        let (_dir, sessions) = sessions().await;
        let s = sessions.create(new_session(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            sessions.get(&s.id).await.unwrap().unwrap().state,
            SessionState::Expired
        );
    }

    fn tokio_util_free_shutdown() -> (tokio::sync::oneshot::Sender<()>, impl Future<Output = ()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }
}
