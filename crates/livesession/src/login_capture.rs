//! Login capture: a session started by `POST /api/logins` is watched over DevTools until
//! its done condition holds (a tab's URL starts with a prefix, or the browser has a
//! cookie of a name); then the browser's state is saved to the login's profile, the
//! session ends ("login captured"), its viewers are told, and a signed `login.captured`
//! event is sent. docs/profiles.md, "Login capture".
//!
//! One watcher task per login session, tracked with the server's tasks. It never starts
//! the desktop (a viewer does); it follows the desktop's status and polls the browser
//! every half second while it runs. A capture into an existing profile starts from that
//! profile (its tabs, its cookies), so the condition may hold at once: what the browser
//! shows at the first look at each desktop is a baseline, and only a condition that
//! becomes true after it counts (`Baseline`); at that look the start URL is opened in the
//! first tab when no tab is at it. The first look is taken before the desktop is
//! published ready ([`FirstLooks`], a [`BeforeReady`] hook), so a person or an agent who
//! signs in at once cannot come before it. Which sessions are login captures is in the
//! store (`logins`), so a restarted server resumes watching them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use livesession_desktop::DesktopHandle;
use livesession_session::store::{DoneCondition, Login, LoginOutcome, LoginStore};
use livesession_session::SessionState;
use livesession_tasks::cdp::{Cdp, CdpError};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::app::App;
use crate::desktops::{BeforeReady, DesktopStatus};

/// The end reason of a session whose login was captured (its profile saved).
pub const LOGIN_CAPTURED_REASON: &str = "login captured";
/// The end reason of a session whose done condition held but whose state could not be
/// saved: the profile keeps what it had.
pub const LOGIN_NOT_SAVED_REASON: &str = "login not saved";

/// How often the browser is asked whether the login is done.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// One DevTools question's bound.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new desktop's publication may wait for the first look; past it the
/// watcher looks once the desktop is ready.
const FIRST_LOOK_BOUND: Duration = Duration::from_secs(15);

/// The logins of this server: where they are stored, which are watched, and which are
/// being saved now.
pub struct Logins {
    store: Arc<dyn LoginStore>,
    /// Sessions whose browser a capture is saving right now: their connections wait for
    /// the session's end instead of reporting the desktop lost (`ws::capture_end`).
    capturing: Mutex<HashSet<String>>,
    /// The watched login sessions: their done condition, and the first look taken at
    /// their newest desktop before it was published ready, until the watcher takes it.
    watched: Mutex<HashMap<String, Watched>>,
}

struct Watched {
    done: DoneCondition,
    look: Option<FirstLook>,
}

/// A look at a desktop's browser taken before the desktop was published ready.
struct FirstLook {
    handle: Arc<DesktopHandle>,
    cdp: Cdp,
    baseline: Baseline,
}

impl Logins {
    pub fn new(store: Arc<dyn LoginStore>) -> Arc<Self> {
        Arc::new(Self { store, capturing: Mutex::default(), watched: Mutex::default() })
    }

    /// The first look at `handle`'s browser, if one was taken before it was published.
    fn take_look(&self, session_id: &str, handle: &Arc<DesktopHandle>) -> Option<(Cdp, Baseline)> {
        let mut watched = self.watched.lock().unwrap();
        let look = watched.get_mut(session_id)?.look.take()?;
        Arc::ptr_eq(&look.handle, handle).then_some((look.cdp, look.baseline))
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

/// Marks a session as watched for as long as it is held: its new desktops get a first
/// look before they are published.
struct WatchedGuard<'a> {
    logins: &'a Logins,
    session_id: String,
}

impl Drop for WatchedGuard<'_> {
    fn drop(&mut self) {
        self.logins.watched.lock().unwrap().remove(&self.session_id);
    }
}

/// Starts watching a login's session, on the server's tracked tasks. The session counts as
/// watched from now on, so its first desktop gets its first look even if the watcher
/// task has not run yet.
pub fn watch(app: &Arc<App>, login: Login) {
    app.logins
        .watched
        .lock()
        .unwrap()
        .insert(login.session_id.clone(), Watched { done: login.done.clone(), look: None });
    let app2 = app.clone();
    app.tasks.spawn(async move { run(app2, login).await });
}

/// The [`BeforeReady`] hook of login captures: on a new desktop of a watched session,
/// takes the first look (the start URL opened, the baseline) before anyone can use it.
pub struct FirstLooks(Weak<App>);

/// Installs the login captures' first look on the server's desktops.
pub fn arm(app: &Arc<App>) {
    app.desktops.set_before_ready(Arc::new(FirstLooks(Arc::downgrade(app))));
}

#[async_trait::async_trait]
impl BeforeReady for FirstLooks {
    async fn before_ready(&self, session: &livesession_session::Session, handle: &Arc<DesktopHandle>, resuming: bool) {
        let Some(app) = self.0.upgrade() else { return };
        let id = &session.id;
        if app.cluster.enabled() && !app.logins.watched.lock().unwrap().contains_key(id) {
            // With several nodes the login may have been created on another node, or its
            // desktop moved here: the node running the desktop watches it.
            match app.logins.store().login_for_session(id).await {
                Ok(Some(login)) if login.outcome.is_none() => {
                    tracing::info!(session_id = %id, login_id = %login.id, "login capture: watching here, where its desktop runs");
                    watch(&app, login);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(session_id = %id, error = %e, "login capture: could not read the session's login"),
            }
        }
        let Some(done) = app.logins.watched.lock().unwrap().get(id).map(|w| w.done.clone()) else {
            return;
        };
        // A resumed desktop keeps where the person was; a new one shows the login page.
        let start_url = (!resuming).then_some(session.start_url.as_str());
        let looked = tokio::time::timeout(FIRST_LOOK_BOUND, async {
            let cdp = crate::cdp_relay::browser_client(&app, handle).await?;
            let (baseline, held) = first_look(&cdp, &done, start_url).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((cdp, baseline, held))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", FIRST_LOOK_BOUND.as_secs())));
        match looked {
            Ok((cdp, baseline, held)) => {
                tracing::info!(session_id = %id, tabs = ?logged_tabs(&baseline), resuming,
                    "login capture: first look at the new desktop, before it is published");
                log_held(id, held);
                if let Some(watched) = app.logins.watched.lock().unwrap().get_mut(id) {
                    watched.look = Some(FirstLook { handle: handle.clone(), cdp, baseline });
                }
            }
            Err(why) => tracing::warn!(session_id = %id, error = %why,
                "login capture: no first look at the new desktop's browser; the watcher looks once it is ready"),
        }
    }
}

/// The baseline's tab URLs as a log may show them: without credentials, query or
/// fragment (where logins put codes and tokens).
fn logged_tabs(baseline: &Baseline) -> Vec<String> {
    baseline.tabs.values().map(|u| reportable(u)).collect()
}

fn log_held(session_id: &str, held: bool) {
    if held {
        tracing::info!(session_id = %session_id,
            "login capture: the done condition already holds (the profile's saved state); waiting for it to become true anew");
    }
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
    let _watched = WatchedGuard { logins: &app.logins, session_id: id.clone() };
    let mut end = app.sessions.subscribe(&id);
    let start_url = match app.sessions.get(&id).await {
        Ok(Some(s)) if s.state == SessionState::Active && s.end_at(OffsetDateTime::now_utc()).is_none() => s.start_url,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(session_id = %id, error = %e, "login capture: the session store failed; not watching");
            return;
        }
    };
    tokio::select! {
        _ = end.ended() => {
            tracing::info!(session_id = %id, login_id = %login.id, "login capture: the session ended before the login was done");
        }
        _ = app.shutdown.cancelled() => {}
        url = wait_until_done(&app, &login, &start_url) => finish(&app, &login, url).await,
    }
}

/// Follows the session's desktop and polls its browser until the done condition becomes
/// true; answers the URL to report. Runs until then (the caller stops it at the session's
/// end).
async fn wait_until_done(app: &App, login: &Login, start_url: &str) -> String {
    let id = &login.session_id;
    let mut logged_error = false;
    // Without a first look taken before the desktop was published (the hook gave up, or
    // the browser restarted in the same desktop), the watcher takes it here: the login
    // page is then opened once, in the first desktop of a session that did not hibernate
    // (a resumed one keeps where the person was).
    let mut open_start_url = !app.states.has_own_state(id);
    loop {
        let handle = wait_for_desktop(app, id).await;
        let (cdp, mut baseline) = match app.logins.take_look(id, &handle) {
            Some((cdp, baseline)) => {
                open_start_url = false;
                (cdp, Some(baseline))
            }
            None => match crate::cdp_relay::browser_client(app, &handle).await {
                Ok(cdp) => (cdp, None),
                Err(why) => {
                    if !logged_error {
                        tracing::warn!(session_id = %id, error = %why, "login capture: cannot reach the browser yet; retrying");
                        logged_error = true;
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                    continue;
                }
            },
        };
        logged_error = false;
        loop {
            if !is_current(app, id, &handle) {
                break; // the desktop went away (hibernated, lost): follow the next one
            }
            let looked = match baseline.as_mut() {
                None => first_look(&cdp, &login.done, open_start_url.then_some(start_url)).await.map(|(b, held)| {
                    tracing::info!(session_id = %id, tabs = ?logged_tabs(&b),
                        "login capture: first look at a desktop already published (no look before it)");
                    open_start_url = false;
                    log_held(id, held);
                    baseline = Some(b);
                    None
                }),
                Some(b) => check(&cdp, &login.done, b).await,
            };
            match looked {
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

/// What the browser showed at the watcher's first look at a desktop. The done condition
/// counts only once it becomes true after that: a tab at a URL under the prefix that is
/// new or navigated there; a cookie of the name that appeared or whose value changed.
#[derive(Debug, Default)]
struct Baseline {
    /// Each tab's (target id) URL at the last poll.
    tabs: HashMap<String, String>,
    /// The cookies of the condition's name at the first look: (domain, path, value).
    cookies: HashSet<(String, String, String)>,
}

impl Baseline {
    /// The first URL under `prefix` of a tab that is new since the last poll or navigated
    /// there from another page; remembers the tabs' URLs for the next poll. A tab that was
    /// blank (a restored tab still loading) does not count as navigating.
    fn tab_reaching(&mut self, tabs: &[(String, String)], prefix: &str) -> Option<String> {
        let mut reached = None;
        for (target, url) in tabs {
            let came = match self.tabs.get(target) {
                None => true,
                Some(before) => before != url && !is_blank(before),
            };
            if came && reached.is_none() && url_matches(prefix, url) {
                reached = Some(url.clone());
            }
        }
        // A tab between two documents reports no URL for a moment: it keeps the one it had,
        // or the navigation it is in the middle of would be taken for a blank tab loading.
        let mut next: HashMap<String, String> = tabs.iter().cloned().collect();
        for (target, url) in next.iter_mut() {
            if is_blank(url)
                && let Some(before) = self.tabs.get(target)
            {
                url.clone_from(before);
            }
        }
        self.tabs = next;
        reached
    }

    /// Whether a cookie of the condition's name is there that was not at the first look
    /// (it appeared, or its value changed).
    fn cookie_came(&self, now: &HashSet<(String, String, String)>) -> bool {
        now.iter().any(|c| !self.cookies.contains(c))
    }
}

fn is_blank(url: &str) -> bool {
    url.is_empty() || url == "about:blank"
}

/// The page tabs: (target id, URL), in the browser's order.
async fn page_tabs(cdp: &Cdp) -> Result<Vec<(String, String)>, CdpError> {
    let targets = cdp.send_timeout("Target.getTargets", json!({}), None, COMMAND_TIMEOUT).await?;
    Ok(targets["targetInfos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "page")
        .filter_map(|t| Some((t["targetId"].as_str()?.to_owned(), t["url"].as_str()?.to_owned())))
        .collect())
}

/// The browser's cookies of `name`: (domain, path, value).
async fn cookies_named(cdp: &Cdp, name: &str) -> Result<HashSet<(String, String, String)>, CdpError> {
    let cookies = cdp.send_timeout("Storage.getCookies", json!({}), None, COMMAND_TIMEOUT).await?;
    Ok(cookies_of(&cookies, name))
}

fn cookies_of(reply: &Value, name: &str) -> HashSet<(String, String, String)> {
    let text = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_owned();
    reply["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str() == Some(name))
        .map(|c| (text(c, "domain"), text(c, "path"), text(c, "value")))
        .collect()
}

/// The first look at a desktop's browser: opens `start_url` in the first tab if given and
/// no tab is at it (a restored profile opens its saved tabs instead; the person must see
/// the login page), then takes the baseline. Answers it and whether the done condition
/// already held.
async fn first_look(cdp: &Cdp, done: &DoneCondition, start_url: Option<&str>) -> Result<(Baseline, bool), CdpError> {
    let mut tabs = page_tabs(cdp).await?;
    let held_by_tabs = |tabs: &[(String, String)]| match done {
        DoneCondition::UrlPrefix(prefix) => tabs.iter().any(|(_, url)| url_matches(prefix, url)),
        DoneCondition::Cookie(_) => false,
    };
    let mut held = held_by_tabs(&tabs);
    if let Some(start_url) = start_url
        && !tabs.iter().any(|(_, url)| same_page(url, start_url))
    {
        match tabs.first_mut() {
            Some((target, url)) => {
                let attached = cdp
                    .send_timeout("Target.attachToTarget", json!({"targetId": target, "flatten": true}), None, COMMAND_TIMEOUT)
                    .await?;
                let session = attached["sessionId"].as_str().unwrap_or_default().to_owned();
                let navigated =
                    cdp.send_timeout("Page.navigate", json!({"url": start_url}), Some(&session), COMMAND_TIMEOUT).await;
                let _ = cdp.send_timeout("Target.detachFromTarget", json!({"sessionId": session}), None, COMMAND_TIMEOUT).await;
                navigated?;
                // What the tab shows from now on is a navigation from the login page.
                *url = start_url.to_owned();
            }
            None => {
                let created = cdp.send_timeout("Target.createTarget", json!({"url": start_url}), None, COMMAND_TIMEOUT).await?;
                if let Some(target) = created["targetId"].as_str() {
                    tabs.push((target.to_owned(), start_url.to_owned()));
                }
            }
        }
    }
    let mut baseline = Baseline { tabs: tabs.into_iter().collect(), cookies: HashSet::new() };
    if let DoneCondition::Cookie(name) = done {
        baseline.cookies = cookies_named(cdp, name).await?;
        held = !baseline.cookies.is_empty();
    }
    Ok((baseline, held))
}

/// Whether the login is done since the baseline: `Some(url)` of the page to report if so.
async fn check(cdp: &Cdp, done: &DoneCondition, baseline: &mut Baseline) -> Result<Option<String>, CdpError> {
    let tabs = page_tabs(cdp).await?;
    match done {
        DoneCondition::UrlPrefix(prefix) => Ok(baseline.tab_reaching(&tabs, prefix).map(|u| reportable(&u))),
        DoneCondition::Cookie(name) => {
            if !baseline.cookie_came(&cookies_named(cdp, name).await?) {
                return Ok(None);
            }
            // The first tab's URL; a tab between two documents may have none for a moment:
            // then the next poll reports it.
            match tabs.iter().map(|(_, u)| reportable(u)).find(|u| !u.is_empty()) {
                Some(url) => Ok(Some(url)),
                None if tabs.is_empty() => Ok(Some(String::new())),
                None => Ok(None),
            }
        }
    }
}

/// Whether `url` is under the done condition's `prefix`: the same scheme, host and port
/// exactly, then the path (with query and fragment) starting with the prefix's. So
/// `https://app.example` does not take `https://app.example.evil.test`.
pub(crate) fn url_matches(prefix: &str, url: &str) -> bool {
    let (Ok(prefix), Ok(url)) = (reqwest::Url::parse(prefix), reqwest::Url::parse(url)) else {
        return false;
    };
    if prefix.scheme() != url.scheme()
        || prefix.host().is_none()
        || prefix.host() != url.host()
        || prefix.port_or_known_default() != url.port_or_known_default()
    {
        return false;
    }
    after_origin(&url).starts_with(&after_origin(&prefix))
}

/// A URL's path, query and fragment, as written (`/`, `?`, `#` included).
fn after_origin(url: &reqwest::Url) -> String {
    let mut rest = url.path().to_owned();
    if let Some(query) = url.query() {
        rest.push('?');
        rest.push_str(query);
    }
    if let Some(fragment) = url.fragment() {
        rest.push('#');
        rest.push_str(fragment);
    }
    rest
}

/// Whether a tab at `url` shows the page `start_url` (its query and fragment aside).
fn same_page(url: &str, start_url: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(start_url)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host() == b.host()
                && a.port_or_known_default() == b.port_or_known_default()
                && a.path() == b.path()
        }
        _ => url == start_url,
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
    use super::*;

    #[test]
    fn a_url_prefix_compares_scheme_host_and_port_exactly_then_the_path() {
        for (prefix, url) in [
            ("https://app.example", "https://app.example/"),
            ("https://app.example", "https://app.example/home?x=1"),
            ("https://app.example/home", "https://app.example/home"),
            ("https://app.example/home", "https://app.example/home/inbox"),
            ("https://APP.example/home", "https://app.example/home"),
            ("https://app.example:443/home", "https://app.example/home"),
            ("http://127.0.0.1:8080/home", "http://127.0.0.1:8080/home?next=1"),
            ("https://app.example/#/home", "https://app.example/#/home/inbox"),
        ] {
            assert!(url_matches(prefix, url), "{prefix} takes {url}");
        }
        for (prefix, url) in [
            ("https://app.example", "https://app.example.evil.test/"),
            ("https://app.example", "https://app.example.evil.test"),
            ("https://app.example", "https://app.example@evil.test/"),
            ("https://app.example/home", "https://evil.test/https://app.example/home"),
            ("https://app.example/home", "https://evil.test/?u=https://app.example/home"),
            ("https://app.example/home", "http://app.example/home"),
            ("https://app.example/home", "https://app.example:8443/home"),
            ("https://app.example/home", "https://sub.app.example/home"),
            ("https://app.example/home", "https://app.example/login?next=/home"),
            ("http://127.0.0.1:8080/home", "http://127.0.0.1:8081/home"),
            ("https://app.example/home", "about:blank"),
            ("https://app.example/home", ""),
        ] {
            assert!(!url_matches(prefix, url), "{prefix} must not take {url}");
        }
    }

    fn tabs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(t, u)| (t.to_string(), u.to_string())).collect()
    }

    #[test]
    fn a_url_prefix_counts_only_once_a_tab_reaches_it_after_the_first_look() {
        let home = "https://app.example/home";
        let prefix = "https://app.example/home";
        // A restored profile: one tab already at home, the first navigated to the login page.
        let mut b = Baseline { tabs: tabs(&[("A", "https://id.example/login"), ("B", home)]).into_iter().collect(), ..Default::default() };
        assert_eq!(b.tab_reaching(&tabs(&[("A", "https://id.example/login"), ("B", home)]), prefix), None, "held at the start");
        assert_eq!(b.tab_reaching(&tabs(&[("A", "https://id.example/login"), ("B", home)]), prefix), None);
        // A restored tab that was blank while loading and reaches home: not the person's login.
        let mut c = Baseline { tabs: tabs(&[("A", "https://id.example/login"), ("C", "about:blank")]).into_iter().collect(), ..Default::default() };
        assert_eq!(c.tab_reaching(&tabs(&[("A", "https://id.example/login"), ("C", home)]), prefix), None);
        // The login tab navigates to home: done.
        assert_eq!(b.tab_reaching(&tabs(&[("A", home), ("B", home)]), prefix).as_deref(), Some(home));
        // A new tab at home (a provider's popup flow): done.
        let mut d = Baseline { tabs: tabs(&[("A", "https://id.example/login")]).into_iter().collect(), ..Default::default() };
        assert_eq!(d.tab_reaching(&tabs(&[("A", "https://id.example/login"), ("N", home)]), prefix).as_deref(), Some(home));
        // A look-alike host never counts.
        let mut e = Baseline { tabs: tabs(&[("A", "https://id.example/login")]).into_iter().collect(), ..Default::default() };
        assert_eq!(e.tab_reaching(&tabs(&[("A", "https://app.example.evil.test/home")]), "https://app.example"), None);
        // The login tab seen between two documents (no URL for a moment), then at home:
        // still a navigation from the login page (a CI failure: the sign-in was missed).
        let mut f = Baseline { tabs: tabs(&[("A", "https://id.example/login")]).into_iter().collect(), ..Default::default() };
        assert_eq!(f.tab_reaching(&tabs(&[("A", "")]), prefix), None);
        assert_eq!(f.tab_reaching(&tabs(&[("A", "about:blank")]), prefix), None);
        assert_eq!(f.tab_reaching(&tabs(&[("A", home)]), prefix).as_deref(), Some(home));
    }

    #[test]
    fn a_cookie_counts_once_it_appears_or_its_value_changes() {
        let reply = |value: &str| json!({"cookies": [
            {"name": "sid", "value": value, "domain": "app.example", "path": "/"},
            {"name": "other", "value": "x", "domain": "app.example", "path": "/"},
        ]});
        let baseline = Baseline { cookies: cookies_of(&reply("old"), "sid"), ..Default::default() };
        assert!(!baseline.cookie_came(&cookies_of(&reply("old"), "sid")), "restored, unchanged");
        assert!(baseline.cookie_came(&cookies_of(&reply("new"), "sid")), "a new value");
        assert!(!baseline.cookie_came(&cookies_of(&json!({"cookies": []}), "sid")), "gone");
        let fresh = Baseline::default();
        assert!(!fresh.cookie_came(&cookies_of(&json!({"cookies": [{"name": "other", "value": "1"}]}), "sid")));
        assert!(fresh.cookie_came(&cookies_of(&reply("v"), "sid")), "appeared");
    }

    #[test]
    fn the_start_url_is_the_same_page_whatever_its_query() {
        assert!(same_page("http://127.0.0.1:9/login?next=x", "http://127.0.0.1:9/login"));
        assert!(!same_page("http://127.0.0.1:9/home", "http://127.0.0.1:9/login"));
        assert!(!same_page("about:blank", "http://127.0.0.1:9/login"));
    }

    #[test]
    fn reported_urls_keep_no_credentials_query_or_fragment() {
        assert_eq!(reportable("https://u:p@a.example/home?code=abc#t=1"), "https://a.example/home");
        assert_eq!(reportable("http://127.0.0.1:8080/home"), "http://127.0.0.1:8080/home");
        assert_eq!(reportable("about:blank"), "about:blank");
        assert_eq!(reportable("not a url"), "");
    }
}
