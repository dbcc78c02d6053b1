//! The application state shared by every handler, and `launch`, which runs the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use livesession_desktop::{DesktopRuntime, LocalRuntime};
use livesession_session::{SessionStore, Sessions, store::{LoginStore, PgLogins, PgStore, SqliteLogins, SqliteStore}};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::config::ServeConfig;
use crate::desktops::Desktops;
use crate::limits::{ConnectionLimits, LimitsConfig, Rate};
use crate::proxy::ClientInfo;
use crate::security::PolicyHeaders;
use crate::{router, secrets, serve, tls};

pub struct App {
    pub config: ServeConfig,
    pub sessions: Arc<Sessions>,
    pub desktops: Arc<Desktops>,
    /// Saved browser state: profiles and hibernated sessions (saved_state.rs).
    pub states: Arc<crate::saved_state::StateKeeper>,
    /// Login captures (`POST /api/logins`) and which of them are saving right now.
    pub logins: Arc<crate::login_capture::Logins>,
    /// Signed events to the operator's endpoint (`LIVESESSION_EVENTS_URL`), if set.
    pub events: Arc<crate::events::Events>,
    /// Screen recordings: the recorders and their files (docs/recordings.md).
    pub recordings: Arc<crate::recording::Recordings>,
    pub tokens: Tokens,
    pub admin_token: String,
    /// Stripe Checkout, when a secret key is configured.
    pub checkout: Option<livesession_billing::CheckoutClient>,
    pub limits: Arc<ConnectionLimits>,
    /// The task queue: tasks, leases, events, live updates per session.
    pub queue: Arc<livesession_tasks::TaskQueue>,
    /// What the built-in steps and agent runners are configured with.
    pub runner_settings: crate::task_runners::RunnerSettings,
    /// Who holds control of each session's browser (agent, person, none).
    pub control: livesession_session::ControlBoard,
    /// Live DevTools connections, under their own caps.
    pub cdp_connections: Arc<crate::limits::ConnectionCaps>,
    /// `GET /metrics` and the counters behind it (metrics.rs).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Scheme, host and port browsers use to reach us, without a trailing slash.
    pub public_url: String,
    /// The address this server listens on (its node address unless `--node-addr`).
    pub local_addr: SocketAddr,
    /// Where secrets, saved states, session files and recordings are kept: the data
    /// directory, or `--shared-dir` when nodes share one.
    pub shared_dir: std::path::PathBuf,
    /// This node among those sharing the store, and the relay to the others
    /// (cluster/): placement and relaying are on only with a cluster secret.
    pub cluster: crate::cluster::Cluster,
    /// Built-in TLS, when `--tls-cert`/`--tls-key` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// CSP (with the configured frame-ancestors) and the other security headers.
    pub policy_headers: PolicyHeaders,
    /// Cancelled when the server begins to shut down: live connections close with
    /// "server shutting down" and new ones are refused.
    pub shutdown: CancellationToken,
    /// Connection tasks and desktop starts; shutdown waits for them.
    pub tasks: TaskTracker,
    connections: AtomicUsize,
    next_conn_id: AtomicU64,
}

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// Counts a live WebSocket connection for as long as it is held (`/readyz`, and
/// `/metrics` by kind).
pub struct ConnectionGuard {
    app: Arc<App>,
    pub id: u64,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.app.connections.fetch_sub(1, Ordering::Relaxed);
        self.open.dec();
    }
}

impl App {
    pub fn live_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn connection(self: &Arc<Self>, kind: crate::metrics::ConnKind) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            app: self.clone(),
            id: self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1,
            open: self.metrics.connection_opened(kind),
        }
    }

    /// Cookies are `Secure` when browsers reach us over TLS: the public URL is https, or
    /// we serve TLS ourselves.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://") || self.tls.is_some()
    }

    /// Whether cookies set in answer to this request are `Secure`: as
    /// [`App::secure_cookies`], or the request came over TLS (a trusted proxy's
    /// `X-Forwarded-Proto: https`).
    pub fn secure_cookies_for(&self, client: &ClientInfo) -> bool {
        self.secure_cookies() || client.https
    }

    /// Whether `origin` (an Origin header value) may open a WebSocket or post a form here.
    ///
    /// Allowed: the public URL's origin, the configured extra origins, and the request's
    /// own origin when it names this machine (`localhost`, `127.0.0.1`, `[::1]`) — a
    /// newcomer may open either name. Any other host that merely equals the `Host`
    /// header is refused: that is what a DNS-rebinding page looks like.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        let loopback_host = |h: &str| {
            let name = h.rsplit_once(':').map_or(h, |(name, _)| name);
            matches!(name, "localhost" | "127.0.0.1" | "[::1]")
        };
        origin == self.public_url
            || self
                .config
                .allowed_origins
                .iter()
                .any(|o| o.trim_end_matches('/') == origin)
            || host.is_some_and(|h| {
                loopback_host(h) && origin.split_once("://").is_some_and(|(_, rest)| rest == h)
            })
    }
}

/// Builds the application: data directory, secrets, store, desktop runtime.
type Stores = (
    Arc<dyn SessionStore>,
    Arc<dyn livesession_tasks::TaskStore>,
    Arc<dyn LoginStore>,
    Option<Arc<livesession_session::fanout::PgFanout>>,
);

/// The sessions', tasks' and logins' stores, and the fan-out to other servers where the
/// database is shared: each on the one database, in its own tables
/// (a SQLite file in the data directory, or the PostgreSQL database configured).
async fn open_stores(
    config: &ServeConfig,
    data_dir: &std::path::Path,
) -> Result<Stores, StartupError> {
    let startup = |what: &str, e: &dyn std::fmt::Display| StartupError(format!("cannot open the {what} store: {e}"));
    match &config.database_url {
        None => {
            let sqlite = SqliteStore::open(&data_dir.join("livesession.db")).await.map_err(|e| startup("session", &e))?;
            let tasks = livesession_tasks::SqliteTaskStore::new(sqlite.pool().clone()).await.map_err(|e| startup("task", &e))?;
            let logins = SqliteLogins::new(sqlite.pool().clone());
            Ok((Arc::new(sqlite), Arc::new(tasks), Arc::new(logins), None))
        }
        Some(url) => {
            let postgres = PgStore::connect(url.expose())
                .await
                .map_err(|e| startup("session", &format!("{e} (database {url})")))?;
            let tasks = livesession_tasks::PgTaskStore::new(postgres.pool().clone()).await.map_err(|e| startup("task", &e))?;
            let logins = PgLogins::new(postgres.pool().clone());
            tracing::info!(database = %url, "the store is PostgreSQL");
            let fanout = livesession_session::fanout::PgFanout::new(postgres.pool().clone());
            Ok((Arc::new(postgres), Arc::new(tasks), Arc::new(logins), Some(fanout)))
        }
    }
}

pub async fn build(config: ServeConfig, local_addr: SocketAddr) -> Result<Arc<App>, StartupError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::load(cert, key).map_err(startup)?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(startup(
                "--tls-cert (LIVESESSION_TLS_CERT) needs --tls-key (LIVESESSION_TLS_KEY), \
                 the certificate's private key",
            ));
        }
        (None, Some(_)) => {
            return Err(startup(
                "--tls-key (LIVESESSION_TLS_KEY) needs --tls-cert (LIVESESSION_TLS_CERT), \
                 the certificate it belongs to",
            ));
        }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        startup(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let data_dir = config
        .data_dir
        .canonicalize()
        .map_err(|e| startup(format!("data directory {}: {e}", config.data_dir.display())))?;
    // What every node must see (secrets, saved states, files, recordings): the data
    // directory, unless a directory the nodes share is configured.
    let shared_dir = match &config.shared_dir {
        None => data_dir.clone(),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .and_then(|()| dir.canonicalize())
                .map_err(|e| startup(format!("shared directory {} (--shared-dir / LIVESESSION_SHARED_DIR): {e}", dir.display())))?
        }
    };
    if let Some(token) = config.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty())
        && let Some(why) = secrets::admin_token_weakness(token)
    {
        // Never the token itself: only why it is refused.
        return Err(startup(format!(
            "the admin token (LIVESESSION_ADMIN_TOKEN / --admin-token) is too weak: {why}. \
             Use at least {} random characters (e.g. `openssl rand -hex 32`), or leave it unset \
             and the server generates one (docs/config.md)",
            secrets::MIN_ADMIN_TOKEN_CHARS
        )));
    }
    let secrets =
        secrets::load_or_create(&shared_dir, config.admin_token.as_deref()).map_err(|e| {
            startup(format!(
                "cannot read or create secrets in {}: {e}",
                shared_dir.display()
            ))
        })?;
    if let Some(path) = &secrets.admin_token_created {
        // Shown once, on the terminal, not through the log.
        println!(
            "Generated an admin token (kept in {}):\n  {}",
            path.display(),
            secrets.admin_token
        );
    }
    let (store, task_store, login_store, fanout) = open_stores(&config, &data_dir).await?;
    let runtime: Arc<dyn DesktopRuntime> = Arc::new(
        LocalRuntime::new(livesession_desktop::LocalRuntimeConfig {
            // Warm desktops show the default start page already.
            warm_url: config.start_url.clone(),
            ..config
                .desktop
                .runtime_config(config.desktop.desktops_root(&data_dir), Duration::from_secs(3))
        })
        .map_err(|e| startup(format!("cannot create the desktops directory: {e}")))?,
    );
    if !config.desktop.sandbox {
        tracing::warn!(
            "desktops are NOT sandboxed (--sandbox false): a session's browser can read this \
             machine's files, including the data directory, and reach its loopback services"
        );
    }
    for check in runtime.check_tools() {
        if !check.found() {
            tracing::error!(piece = %check.piece, binary = %check.binary, fix = %check.fix(),
                "desktop toolchain incomplete: sessions cannot start until it is installed");
        }
    }
    let checkout = match (&config.stripe.secret_key, &config.stripe.webhook_secret) {
        (Some(key), Some(_)) => Some(livesession_billing::CheckoutClient::new(
            &config.stripe.api_base,
            key,
        )),
        (Some(_), None) => {
            return Err(startup(
                "LIVESESSION_STRIPE_WEBHOOK_SECRET is required with LIVESESSION_STRIPE_SECRET_KEY: \
                 without it payments could never be confirmed (see docs/payments.md)",
            ));
        }
        (None, _) => None,
    };
    let events_target = crate::events::EventsTarget::from_config(&config.profiles).map_err(startup)?;
    if let Some(url) = &config.profiles.events_url
        && events_target.is_some()
    {
        tracing::info!(endpoint = %crate::events::redact_url(url), "events are sent, signed, to the configured endpoint");
    }
    let tasks = TaskTracker::new();
    let cluster = crate::cluster::Cluster::new(&config, local_addr);
    let public_url = config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{local_addr}")
        });
    let queue = livesession_tasks::TaskQueue::new(
        task_store,
        livesession_tasks::queue::QueueConfig {
            lease: config.tasks.lease(),
            max_attempts: config.tasks.task_max_attempts.max(1),
            ..Default::default()
        },
    );
    if config.tasks.agent.agent_api_base.is_none() {
        tracing::info!("no model configured (LIVESESSION_AGENT_API_BASE): agent tasks wait for an external worker");
    }
    let states = crate::saved_state::StateKeeper::new(
        runtime.clone(),
        &shared_dir.join("profiles"),
        secrets.profile_key,
        data_dir.join("staging"),
        config.profile_max_bytes(),
    )
    .map_err(|e| startup(format!("cannot open the profiles directory: {e}")))?;
    let shutdown = CancellationToken::new();
    let sessions = Sessions::new(store);
    if let Some(fanout) = fanout {
        // Servers sharing the database hear of each other's ends, link revocations and
        // extensions within a notification's time (fanout.rs).
        sessions.set_fanout(fanout.clone());
        tokio::spawn(fanout.listen(sessions.clone(), shutdown.clone().cancelled_owned()));
        // Task events too: a worker's progress posted to one node reaches the control
        // channels on the node running the session's desktop, and a cancel stops its run.
        let announcer = sessions.clone();
        queue.set_on_publish(Box::new(move |event| {
            let (sessions, id, cursor) = (announcer.clone(), event.session_id.clone(), event.cursor);
            tokio::spawn(async move { sessions.announce_task_event(&id, cursor).await });
        }));
        // After a resynchronisation, announcements may have been lost: followers read again.
        let mut resyncs = sessions.resyncs();
        let rereading = queue.clone();
        tokio::spawn(async move {
            while resyncs.changed().await.is_ok() {
                rereading.ask_followers_to_reread();
            }
        });
        let mut elsewhere = sessions.task_events_elsewhere();
        let queue = queue.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match elsewhere.recv().await {
                    Ok((id, cursor)) => {
                        if let Err(e) = queue.publish_written_elsewhere(&id, cursor).await {
                            tracing::warn!(session_id = %id, error = %e, "could not read another node's task event");
                        }
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }
    let limits = ConnectionLimits::new(LimitsConfig {
        per_ip: config.max_connections_per_ip,
        per_session: config.max_connections_per_session,
        connect: Rate::new(config.connect_rate, config.connect_burst),
        create: Rate::new(config.create_rate, config.create_burst),
        checkout: Rate::new(config.checkout_rate, config.checkout_burst),
        token: Rate::new(config.token_rate, config.token_burst),
        webhook_failures: Rate::new(config.webhook_failure_rate, config.webhook_failure_burst),
        admin_failures: Rate::new(config.admin_failure_rate, config.admin_failure_burst),
    });
    let cdp_connections = crate::limits::ConnectionCaps::new(config.max_cdp_per_ip, config.max_cdp_per_session);
    let metrics = crate::metrics::Metrics::new(limits.clone(), cdp_connections.clone());
    let desktops = Desktops::new(
        runtime,
        states.clone(),
        sessions.clone(),
        queue.clone(),
        crate::desktops::DesktopLimits {
            max: config.max_desktops(),
            max_queued: config.profiles.max_queued,
            size: config.desktop.desktop_size,
            idle_timeout: {
                let config = config.clone();
                Box::new(move |own| config.idle_timeout(own))
            },
        },
        tasks.clone(),
        crate::downloads::DesktopFiles::new(crate::session_files::SessionFiles::new(shared_dir.join("files"))),
        metrics.clone(),
    );
    let events = crate::events::Events::new(events_target, login_store.clone(), tasks.clone(), shutdown.clone());
    let recordings = crate::recording::Recordings::new(
        config.recording.settings(&shared_dir),
        desktops.clone(),
        sessions.clone(),
        shutdown.clone(),
        tasks.clone(),
    )
    .map_err(|e| startup(format!("cannot create the recordings directory: {e}")))?;
    Ok(Arc::new(App {
        recordings,
        queue,
        states,
        logins: crate::login_capture::Logins::new(login_store),
        events,
        runner_settings: crate::task_runners::settings(&config.tasks),
        desktops,
        sessions,
        tokens: Tokens::new(
            &secrets.signing_key,
            time::Duration::seconds(config.access_token_ttl as i64),
        ),
        admin_token: secrets.admin_token,
        checkout,
        limits,
        control: Default::default(),
        cdp_connections,
        metrics,
        public_url,
        local_addr,
        shared_dir,
        cluster,
        tls,
        policy_headers: PolicyHeaders::new(&config.frame_ancestors),
        shutdown,
        tasks,
        connections: AtomicUsize::new(0),
        next_conn_id: AtomicU64::new(0),
        config,
    }))
}

/// Runs the server on `listener` until `shutdown` resolves, then closes every live
/// connection with "server shutting down", hibernates every running desktop (within
/// [`crate::desktops::SHUTDOWN_SAVE_BOUND`]) and stops the rest.
pub async fn launch(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let local_addr = listener.local_addr().map_err(|e| startup(e.to_string()))?;
    // Bound first: a taken address stops the start before anything else is done.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            startup(format!("cannot listen for metrics on {addr} (--metrics-listen / LIVESESSION_METRICS_LISTEN): {e}"))
        })?),
        None => None,
    };
    let app = build(config, local_addr).await?;
    let state = AppState(app.clone());

    // Own saved states (hibernations') of sessions that ended while this server was
    // down, or whose cleanup never finished, are deleted.
    let saved_sessions = app.shared_dir.join("profiles").join("sessions");
    app.desktops.forget_states_of_ended(&app.sessions, &saved_sessions).await;
    // Files of sessions that ended while this server was down go with them.
    let session_files = crate::handlers::files::session_files(&app);
    crate::session_files::remove_of_ended(&session_files, &app.sessions).await;

    // Session ends (expiry, revocation) cancel the session's tasks and stop its desktop.
    let mut ended = app.sessions.ended_events();
    let desktops = app.desktops.clone();
    let sessions = app.sessions.clone();
    let queue = app.queue.clone();
    let stopping = app.shutdown.clone();
    let cleanup = tokio::spawn(async move {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        loop {
            // At shutdown the ends already heard of are still finished (their desktops
            // stopped, or saved to their profile), then the loop ends: a stop cut off
            // half-way would leave the desktop's mounts behind, and the shutdown's
            // hibernation must not save a session that has ended.
            let received = tokio::select! {
                received = ended.recv() => received,
                () = stopping.cancelled() => match ended.try_recv() {
                    Ok(end) => Ok(end),
                    Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                },
            };
            match received {
                Ok((id, end)) => {
                    let reason = match end {
                        livesession_session::SessionEnd::Expired => "the session expired",
                        livesession_session::SessionEnd::Revoked => "the session was revoked",
                    };
                    if let Err(e) = queue.cancel_session(&id, reason).await {
                        tracing::error!(session_id = %id, error = %e, "could not cancel the ended session's tasks");
                    }
                    // A session persisting to a profile saves to it first; its own
                    // saved state (a hibernation's) is deleted.
                    desktops.end_session(&id).await;
                    // The session's files go with it (session_files.rs).
                    let files = session_files.clone();
                    let _ = tokio::task::spawn_blocking(move || files.remove(&id)).await;
                }
                // Ends arrived faster than desktops stopped: sweep instead of giving up.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "desktop cleanup fell behind; sweeping ended sessions"
                    );
                    desktops.end_ended(&sessions).await;
                    // `end_ended` visits desktops only: a hibernated session has none.
                    desktops.forget_states_of_ended(&sessions, &saved_sessions).await;
                    crate::session_files::remove_of_ended(&session_files, &sessions).await;
                    crate::task_runners::cancel_tasks_of_ended_sessions(&sessions, &queue).await;
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let expiry = tokio::spawn(
        app.sessions
            .clone()
            .run_expiry(app.shutdown.clone().cancelled_owned()),
    );
    // This server as a node of those sharing the store: registered, heartbeating.
    let deregister = CancellationToken::new();
    let node = tokio::spawn(crate::nodes::run(app.clone(), deregister.clone()));
    // Checkouts never paid are deleted once older than `--pending-checkout-ttl`.
    let pending_cleanup = tokio::spawn(app.sessions.clone().run_pending_cleanup(
        // At least a second, at most ten years (no date arithmetic overflows).
        time::Duration::seconds(app.config.pending_checkout_ttl.clamp(1, 315_360_000) as i64),
        app.shutdown.clone().cancelled_owned(),
    ));

    // Leases that run out put their tasks back in the queue; the built-in runners claim.
    let sweeper = tokio::spawn(app.queue.clone().run_sweeper(app.shutdown.clone().cancelled_owned()));
    crate::task_runners::spawn(&app);
    // Idle desktops hibernate; while sessions wait in line, idle ones make room.
    let keeper = tokio::spawn(app.desktops.clone().run_keeper(app.shutdown.clone()));
    // Login captures take their first look at a new desktop before it is published; those
    // of active sessions are watched again; events left undelivered resume.
    crate::login_capture::arm(&app);
    crate::login_capture::resume(&app).await;
    // Recorded sessions' recorders start (again), and old recordings are swept.
    let recordings = tokio::spawn(app.recordings.clone().run());

    tracing::info!(listen = %local_addr, public_url = %app.public_url, tls = app.tls.is_some(),
        trusted_proxies = app.config.trusted_proxies.len(), free_mode = app.config.free_mode(),
        checkout = app.checkout.is_some(), "livesession listening");
    // `/metrics` without a token, for a scraper on a private network (metrics.rs).
    let metrics_server = metrics_listener.map(|listener| {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %addr, "metrics listening (no token: keep this address private)");
        tokio::spawn(serve::serve(
            listener,
            crate::metrics::listener_router(state.clone()),
            serve::ServeOptions { header_read_timeout: app.config.header_read_timeout(), tls: None },
            app.shutdown.clone(),
        ))
    });
    // The shutdown future cancels the app's token: the serve loop stops accepting, and
    // live WebSockets close with "server shutting down".
    let token = app.shutdown.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
    serve::serve(
        listener,
        router::router(state),
        serve::ServeOptions {
            header_read_timeout: app.config.header_read_timeout(),
            tls: app.tls.clone().map(|acceptor| serve::TlsOptions {
                acceptor,
                handshake_timeout: app.config.tls_handshake_timeout(),
                handshakes_per_ip: app.config.tls_handshakes_per_ip,
            }),
        },
        app.shutdown.clone(),
    )
    .await;
    signal.abort();
    app.shutdown.cancel();
    tracing::info!("shutting down: closing connections and stopping desktops");
    app.tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), app.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 10 s");
    }
    // Running desktops are saved (hibernated) so a restart resumes them; the rest stop.
    let _ = keeper.await;
    // Sessions that ended just before are finished first (see the cleanup loop).
    if tokio::time::timeout(crate::desktops::SHUTDOWN_SAVE_BOUND, cleanup).await.is_err() {
        tracing::warn!("desktops of sessions that just ended were still stopping after {} s", crate::desktops::SHUTDOWN_SAVE_BOUND.as_secs());
    }
    app.desktops.shut_down(crate::desktops::SHUTDOWN_SAVE_BOUND).await;
    // Drained: its sessions are saved, so other nodes may now take them.
    deregister.cancel();
    // Nothing is being saved or started any more.
    app.states.close();
    let _ = expiry.await;
    let _ = node.await;
    let _ = sweeper.await;
    let _ = pending_cleanup.await;
    let _ = recordings.await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    Ok(())
}

/// A start-up failure, shown to the operator as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

fn startup(msg: impl Into<String>) -> StartupError {
    StartupError(msg.into())
}
