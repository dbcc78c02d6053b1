//! Login capture: a session started by `POST /api/logins` is watched over DevTools until
//! its done condition holds (a tab's URL starts with a prefix, or the browser has a
//! cookie of a name); then the browser's state is saved to the login's profile, the
//! session ends ("login captured"), its viewers are told, and a signed `login.captured`
//! event is sent. docs/profiles.md, "Login capture".
//!
//! One watcher task per login session, tracked with the server's tasks. It never starts
//! the desktop (a viewer does); it follows the desktop's status and polls the browser
//! every half second while it runs. Which sessions are login captures is in the store
//! (`logins`), so a restarted server resumes watching them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livesession_desktop::DesktopHandle;
use livesession_session::store::{DoneCondition, Login, LoginOutcome, LoginStore};
use livesession_session::SessionState;
use livesession_tasks::cdp::{Cdp, CdpError};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::app::App;
use crate::desktops::DesktopStatus;

/// The end reason of a session whose login was captured (its profile saved).
pub const LOGIN_CAPTURED_REASON: &str = "login captured";
/// The end reason of a session whose done condition held but whose state could not be
/// saved: the profile keeps what it had.
pub const LOGIN_NOT_SAVED_REASON: &str = "login not saved";

/// How often the browser is asked whether the login is done.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// One DevTools question's bound.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The logins of this server: where they are stored, and which are being saved now.
pub struct Logins {
    store: Arc<dyn LoginStore>,
    /// Sessions whose browser a capture is saving right now: their connections wait for
    /// the session's end instead of reporting the desktop lost (`ws::capture_end`).
    capturing: Mutex<HashSet<String>>,
}

impl Logins {
    pub fn new(store: Arc<dyn LoginStore>) -> Arc<Self> {
        Arc::new(Self { store, capturing: Mutex::default() })
    }

    pub fn store(&self) -> &Arc<dyn LoginStore> {
        &self.store
    }

    /// Whether a login capture is saving this session's browser right now.
    pub fn is_capturing(&self, session_id: &str) -> bool {
        self.capturing.lock().unwrap().contains(session_id)
    }
}

/// Marks a session as being captured for as long as it is held.
struct Capturing<'a> {
    logins: &'a Logins,
    session_id: String,
}

impl<'a> Capturing<'a> {
    fn start(logins: &'a Logins, session_id: &str) -> Self {
        logins.capturing.lock().unwrap().insert(session_id.to_owned());
        Self { logins, session_id: session_id.to_owned() }
    }
}

impl Drop for Capturing<'_> {
    fn drop(&mut self) {
        self.logins.capturing.lock().unwrap().remove(&self.session_id);
    }
}

/// Starts watching a login's session, on the server's tracked tasks.
pub fn watch(app: &Arc<App>, login: Login) {
    let app2 = app.clone();
    app.tasks.spawn(async move { run(app2, login).await });
}

/// At start-up: watches the logins of active sessions again, and ends the sessions of
/// logins that finished (their profile saved, their event stored) just before the server
/// stopped. Then resumes the deliveries of events left undelivered.
pub async fn resume(app: &Arc<App>) {
    match app.logins.store().logins_of_active_sessions().await {
        Ok(logins) => {
            for login in logins {
                match login.outcome {
                    None => {
                        tracing::info!(session_id = %login.session_id, login_id = %login.id, "resuming a login capture");
                        watch(app, login);
                    }
                    Some(outcome) => end_session(app, &login, outcome).await,
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "could not read the login captures to resume"),
    }
    app.events.resume().await;
}

async fn run(app: Arc<App>, login: Login) {
    let id = login.session_id.clone();
    let mut end = app.sessions.subscribe(&id);
    match app.sessions.get(&id).await {
        Ok(Some(s)) if s.state == SessionState::Active && s.end_at(OffsetDateTime::now_utc()).is_none() => {}
        Ok(_) => return,
        Err(e) => {
            tracing::error!(session_id = %id, error = %e, "login capture: the session store failed; not watching");
            return;
        }
    }
    tokio::select! {
        _ = end.ended() => {
            tracing::info!(session_id = %id, login_id = %login.id, "login capture: the session ended before the login was done");
        }
        _ = app.shutdown.cancelled() => {}
        url = wait_until_done(&app, &login) => finish(&app, &login, url).await,
    }
}

/// Follows the session's desktop and polls its browser until the done condition holds;
/// answers the URL to report. Runs until then (the caller stops it at the session's end).
async fn wait_until_done(app: &App, login: &Login) -> String {
    let id = &login.session_id;
    let mut logged_error = false;
    loop {
        let handle = wait_for_desktop(app, id).await;
        let cdp = match open_browser(app, &handle).await {
            Ok(cdp) => cdp,
            Err(why) => {
                if !logged_error {
                    tracing::warn!(session_id = %id, error = %why, "login capture: cannot reach the browser yet; retrying");
                    logged_error = true;
                }
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
        };
        logged_error = false;
        loop {
            if !is_current(app, id, &handle) {
                break; // the desktop went away (hibernated, lost): follow the next one
            }
            match check(&cdp, &login.done).await {
                Ok(Some(url)) => return url,
                Ok(None) => {}
                Err(e) if e.is_closed() => break,
                Err(e) => tracing::debug!(session_id = %id, error = %e, "login capture: a DevTools question failed"),
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Waits until the session's desktop is ready, without starting it.
async fn wait_for_desktop(app: &App, id: &str) -> Arc<DesktopHandle> {
    loop {
        if let DesktopStatus::Ready(handle) = app.desktops.status(id) {
            return handle;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn is_current(app: &App, id: &str, handle: &Arc<DesktopHandle>) -> bool {
    matches!(app.desktops.status(id), DesktopStatus::Ready(h) if Arc::ptr_eq(&h, handle))
}

/// The browser-level DevTools connection of the desktop (as the task runners open it).
async fn open_browser(app: &App, handle: &DesktopHandle) -> Result<Cdp, String> {
    let (stream, path) = crate::cdp_relay::devtools_stream(app, handle, &crate::cdp_relay::Target::Browser)
        .await
        .map_err(|close| close.reason)?;
    Cdp::connect(stream, &format!("ws://localhost{path}"))
        .await
        .map_err(|e| format!("the browser's DevTools refused the connection: {e}"))
}

/// Whether the login is done: `Some(url)` of the page to report if so.
async fn check(cdp: &Cdp, done: &DoneCondition) -> Result<Option<String>, CdpError> {
    let targets = cdp.send_timeout("Target.getTargets", json!({}), None, COMMAND_TIMEOUT).await?;
    let pages: Vec<&str> = targets["targetInfos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "page")
        .filter_map(|t| t["url"].as_str())
        .collect();
    match done {
        DoneCondition::UrlPrefix(prefix) => Ok(pages.iter().find(|url| url.starts_with(prefix.as_str())).map(|u| reportable(u))),
        DoneCondition::Cookie(name) => {
            let cookies = cdp.send_timeout("Storage.getCookies", json!({}), None, COMMAND_TIMEOUT).await?;
            let found = cookies["cookies"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"].as_str() == Some(name.as_str()));
            if !found {
                return Ok(None);
            }
            // The first tab's URL; a tab between two documents may have none for a moment:
            // then the next poll reports it.
            match pages.iter().map(|u| reportable(u)).find(|u| !u.is_empty()) {
                Some(url) => Ok(Some(url)),
                None if pages.is_empty() => Ok(Some(String::new())),
                None => Ok(None),
            }
        }
    }
}

/// A page's URL as events report it: without credentials, query or fragment (where
/// logins put codes and tokens).
fn reportable(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

/// The condition held: save the browser's state to the profile, record the outcome with
/// its event, end the session, send the event.
async fn finish(app: &Arc<App>, login: &Login, url: String) {
    let id = &login.session_id;
    let _capturing = Capturing::start(&app.logins, id);
    let session = match app.sessions.get(id).await {
        Ok(Some(s)) if s.state == SessionState::Active && s.end_at(OffsetDateTime::now_utc()).is_none() => s,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(session_id = %id, error = %e, "login capture: the session store failed");
            return;
        }
    };
    tracing::info!(session_id = %id, login_id = %login.id, profile = %login.profile, "login done; saving the browser's state to the profile");
    // Held while saving: the idle keeper must not start a second save of this desktop
    // should the last viewer leave meanwhile.
    let _held = app.desktops.hold(id);
    let saved = app.states.save_and_stop(&session).await;
    let now = OffsetDateTime::now_utc();
    let at = now.format(&time::format_description::well_known::Rfc3339).expect("formattable");
    let mut data = json!({
        "session_id": id,
        "profile": login.profile,
        "login_id": login.id,
        "url": url,
    });
    let (outcome, kind) = match &saved {
        Ok(()) => {
            data["captured_at"] = Value::String(at);
            (LoginOutcome::Captured, "login.captured")
        }
        Err(e) => {
            tracing::error!(session_id = %id, login_id = %login.id, profile = %login.profile, error = %e,
                "login capture: the browser's state could not be saved; the profile keeps what it had");
            data["failed_at"] = Value::String(at);
            data["error"] = Value::String("the browser's state could not be saved".into());
            (LoginOutcome::Failed, "login.failed")
        }
    };
    let event = app.events.compose(kind, data, now);
    let mut recorded = false;
    for attempt in 0..5 {
        match app.logins.store().finish_login(&login.id, outcome, now, event.as_ref()).await {
            Ok(first) => {
                recorded = first;
                break;
            }
            Err(e) => {
                tracing::error!(session_id = %id, login_id = %login.id, error = %e, attempt, "login capture: could not record the outcome; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    end_session(app, login, outcome).await;
    if recorded && let Some(event) = event {
        app.events.deliver(event);
    }
}

/// Ends a finished login's session with the reason for its outcome.
async fn end_session(app: &App, login: &Login, outcome: LoginOutcome) {
    let reason = match outcome {
        LoginOutcome::Captured => LOGIN_CAPTURED_REASON,
        LoginOutcome::Failed => LOGIN_NOT_SAVED_REASON,
    };
    match app.sessions.revoke(&login.session_id, reason).await {
        Ok(_) => tracing::info!(session_id = %login.session_id, login_id = %login.id, outcome = outcome.as_str(), "login capture finished"),
        Err(e) => tracing::error!(session_id = %login.session_id, login_id = %login.id, error = %e,
            "login capture: could not end the session; it ends at its deadline"),
    }
}

#[cfg(test)]
mod tests {
    use super::reportable;

    #[test]
    fn reported_urls_keep_no_credentials_query_or_fragment() {
        assert_eq!(reportable("https://u:p@a.example/home?code=abc#t=1"), "https://a.example/home");
        assert_eq!(reportable("http://127.0.0.1:8080/home"), "http://127.0.0.1:8080/home");
        assert_eq!(reportable("about:blank"), "about:blank");
        assert_eq!(reportable("not a url"), "");
    }
}
