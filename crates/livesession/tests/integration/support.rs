//! Test harness: an in-process server with its own data directory, a loopback page server
//! whose page the desktops load, WebSocket and RFB clients, and captured logs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Html;
use clap::Parser;
use futures_util::StreamExt;
use livesession::config::ServeConfig;
use livesession_desktop::rfb::RfbClient;
use serde_json::Value;
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Strong enough for the server to start with (`--admin-token` has a minimum strength).
pub const ADMIN: &str = "it-4d7e1f0a9c2b6e8d3a5f7c1b0e9d2a4f";

// ---------------------------------------------------------------- captured logs

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything every in-process server of this test binary has logged so far (JSON lines,
/// as in production).
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get().expect("logging installed").lock().unwrap()).into_owned()
}

fn install_logging() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(buf.clone());
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter("info,sqlx=warn")
            .with_writer(move || writer.clone())
            .init();
        buf
    });
}

// ---------------------------------------------------------------- the page server

/// A loopback HTTP server with the page desktops open: magenta, with an autofocused input
/// that reports every change back to this server.
pub struct PageServer {
    pub url: String,
    /// The page's port; a sandboxed desktop reaches it only when the server is started
    /// with `--desktop-host-ports <port>` (see [`PageServer::server_args`]).
    pub port: u16,
    /// Every value the page reported (its requests may arrive out of order).
    typed: Arc<Mutex<Vec<String>>>,
    /// The test login: who signed in, and which login pages were served.
    login: Arc<Mutex<LoginLog>>,
}

/// What the test login pages saw (see [`PageServer::login_url`]).
#[derive(Debug, Default, Clone)]
pub struct LoginLog {
    /// `/login` pages served.
    pub login_pages: usize,
    /// The user names submitted, in order.
    pub submitted: Vec<String>,
    /// `/home` pages served, and whether each came with the login cookie.
    pub homes: Vec<bool>,
}

/// The cookie the test login sets (HttpOnly, path /) when its form is submitted.
pub const LOGIN_COOKIE: &str = "ls_test_session";

/// A login page: a blue form (user name, Sign in; Enter submits). Its server answers a
/// cookie `ls_test_visitor` on every load, so a done condition on the login cookie must
/// tell names apart. Submitting posts to /login, which sets the login cookie and
/// redirects to /home.
const LOGIN_PAGE: &str = r#"<!doctype html><html><head><title>livesession test login</title>
<style>html,body{margin:0;height:100%;background:rgb(0,64,255)} input,button{display:block;margin:40px;font-size:32px;width:600px}</style>
</head><body><form method="post" action="/login"><input id="user" name="user" autofocus autocomplete="off"><button id="submit" type="submit">Sign in</button></form>
<script>window.addEventListener('load', () => document.getElementById('user').focus());</script></body></html>"#;

/// The page behind the login: green with "Signed in as NAME" (and a localStorage value)
/// with the login cookie, red "Not signed in" without.
fn home_page(user: Option<&str>) -> String {
    match user {
        Some(user) => format!(
            "<!doctype html><html><head><title>Signed in</title><style>html,body{{margin:0;height:100%;background:rgb(0,160,0)}}</style></head>\
             <body><h1 id=\"who\">Signed in as {user}</h1><script>localStorage.setItem('ls_test_login', {user:?});</script></body></html>"
        ),
        None => "<!doctype html><html><head><title>Not signed in</title><style>html,body{margin:0;height:100%;background:rgb(200,0,0)}</style></head>\
                 <body><h1 id=\"who\">Not signed in</h1></body></html>"
            .to_owned(),
    }
}

/// The page the tests' desktops open (also the three-node harness's).
pub const PAGE: &str = r#"<!doctype html><html><head><title>livesession test page</title>
<style>html,body{margin:0;height:100%;background:rgb(255,0,255)} input{margin:40px;font-size:32px;width:600px}</style>
</head><body><input id="t" autofocus>
<script>
const t = document.getElementById('t');
t.addEventListener('input', () => fetch('/typed?value=' + encodeURIComponent(t.value)));
window.addEventListener('load', () => t.focus());
// ?probe=URL (repeatable): try to reach each URL from inside the desktop and report
// "probe <url> reached|blocked" the same way as typed text.
for (const url of new URLSearchParams(location.search).getAll('probe')) {
  const report = (r) => fetch('/typed?value=' + encodeURIComponent('probe ' + url + ' ' + r));
  fetch(url, { mode: 'no-cors', cache: 'no-store' }).then(() => report('reached'), () => report('blocked'));
}
</script></body></html>"#;

impl PageServer {
    pub async fn start() -> Self {
        let typed = Arc::new(Mutex::new(Vec::new()));
        let login = Arc::new(Mutex::new(LoginLog::default()));
        let login_routes = axum::Router::new()
            .route(
                "/login",
                axum::routing::get(|State(log): State<Arc<Mutex<LoginLog>>>| async move {
                    log.lock().unwrap().login_pages += 1;
                    ([(axum::http::header::SET_COOKIE, "ls_test_visitor=1; Path=/")], Html(LOGIN_PAGE))
                })
                .post(|State(log): State<Arc<Mutex<LoginLog>>>, body: String| async move {
                    let user = form_urlencoded::parse(body.as_bytes())
                        .find(|(k, _)| k == "user")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    let user: String = user.chars().filter(char::is_ascii_alphanumeric).take(40).collect();
                    log.lock().unwrap().submitted.push(user.clone());
                    (
                        axum::http::StatusCode::SEE_OTHER,
                        [
                            (axum::http::header::SET_COOKIE, format!("{LOGIN_COOKIE}={user}; Path=/; HttpOnly; SameSite=Lax")),
                            (axum::http::header::LOCATION, "/home".to_owned()),
                        ],
                    )
                }),
            )
            .route(
                "/home",
                axum::routing::get(|State(log): State<Arc<Mutex<LoginLog>>>, headers: axum::http::HeaderMap| async move {
                    let user = headers
                        .get_all(axum::http::header::COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(';'))
                        .find_map(|c| c.trim().strip_prefix(&format!("{LOGIN_COOKIE}=")).map(str::to_owned));
                    log.lock().unwrap().homes.push(user.is_some());
                    Html(home_page(user.as_deref()))
                }),
            )
            .with_state(login.clone());
        let app = axum::Router::new()
            .route("/page", axum::routing::get(|| async { Html(PAGE) }))
            .route(
                "/typed",
                axum::routing::get(|State(t): State<Arc<Mutex<Vec<String>>>>, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    t.lock().unwrap().extend(q.get("value").cloned());
                    "ok"
                }),
            )
            .with_state(typed.clone())
            .merge(login_routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/page");
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, port, typed, login }
    }

    /// The test login page (see [`LoginLog`] for what it records).
    pub fn login_url(&self) -> String {
        format!("http://127.0.0.1:{}/login", self.port)
    }

    /// The page the login redirects to.
    pub fn home_url(&self) -> String {
        format!("http://127.0.0.1:{}/home", self.port)
    }

    /// What the login pages saw so far.
    pub fn login_log(&self) -> LoginLog {
        self.login.lock().unwrap().clone()
    }

    /// Every value the page has reported so far.
    pub fn reports(&self) -> Vec<String> {
        self.typed.lock().unwrap().clone()
    }

    /// The `serve` flags that let desktops open this page.
    pub fn server_args(&self) -> [String; 2] {
        ["--desktop-host-ports".into(), self.port.to_string()]
    }

    /// Waits until the page reports `expected` as its input's value; returns the longest
    /// value it reported.
    pub async fn wait_typed(&self, expected: &str, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.typed.lock().unwrap().clone();
            if seen.iter().any(|v| v == expected) || tokio::time::Instant::now() >= deadline {
                return seen.into_iter().max_by_key(|v| v.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------- the server

/// How to find a desktop's processes: its process group and its sandbox's PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesktopProcs {
    pub pgid: i32,
    pub pidns: Option<u64>,
}

impl DesktopProcs {
    pub fn members(&self) -> Vec<i32> {
        livesession_desktop::members(self.pgid, self.pidns)
    }

    /// The first of the desktop's processes whose command line (its arguments, `argv[0]`
    /// first) `is_it` picks.
    pub fn member_where(&self, is_it: impl Fn(&[String]) -> bool) -> Option<i32> {
        self.members().into_iter().find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv: Vec<String> = cmdline.split(|b| *b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect();
            is_it(&argv)
        })
    }

    /// The desktop's processes, each with its start time: a PID (or a PID namespace's
    /// inode) that is reused by a later desktop is not the same process. Compare with
    /// [`still_running`] later.
    pub fn members_with_start_times(&self) -> Vec<(i32, String)> {
        self.members().into_iter().filter_map(|pid| Some((pid, state_and_start_time(pid)?.1))).collect()
    }
}

/// A process's state and start time (fields 3 and 22 of its stat), if it runs (a zombie
/// has ended: it only waits to be reaped).
fn state_and_start_time(pid: i32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold spaces: count from its end.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    if state == 'Z' {
        return None;
    }
    Some((state, (*fields.get(19)?).to_owned()))
}

/// Those of `processes` (from [`DesktopProcs::members_with_start_times`]) still running,
/// each as "pid state command" for a failure message.
pub fn still_running(processes: &[(i32, String)]) -> Vec<String> {
    processes
        .iter()
        .filter_map(|(pid, start)| {
            let (state, now) = state_and_start_time(*pid)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (now == *start).then(|| format!("{pid} {state} {}", String::from_utf8_lossy(&cmdline[..cmdline.len().min(60)])))
        })
        .collect()
}

#[derive(Parser)]
// A test's own flags come after the defaults and override them (e.g. --warm-desktops).
#[command(args_override_self = true)]
struct ConfigFromArgs {
    #[command(flatten)]
    config: ServeConfig,
}

/// A server's HTTP API as the tests call it, wherever the server runs: in-process
/// ([`TestServer`] derefs to one) or as the real binary (the fault suite's).
#[derive(Clone)]
pub struct ApiClient {
    /// `scheme://host:port`.
    pub base: String,
    pub http: reqwest::Client,
}

impl ApiClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether `/healthz` answers 200 within `limit`.
    pub async fn healthy_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(response) = self.http.get(self.url("/healthz")).send().await {
                if response.status().is_success() {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /api/sessions` as the admin; asserts 201 and returns the body.
    pub async fn create_session(&self, body: Value) -> Value {
        let response = self
            .http
            .post(self.url("/api/sessions"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "create session");
        response.json().await.unwrap()
    }

    pub async fn get_session(&self, id: &str) -> Value {
        let response = self
            .http
            .get(self.url(&format!("/api/sessions/{id}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn revoke(&self, id: &str) -> Value {
        let response = self
            .http
            .delete(self.url(&format!("/api/sessions/{id}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "revoke");
        response.json().await.unwrap()
    }

    /// `POST path` with a JSON body, as the admin.
    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `GET path` as the admin; asserts 200 and returns the body.
    pub async fn admin_get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// The status of a GET with an optional bearer.
    pub async fn http_get_status(&self, path: &str, bearer: Option<&str>) -> u16 {
        let mut request = self.http.get(self.url(path));
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// The status of a DELETE with the admin token.
    pub async fn http_delete_admin(&self, path: &str) -> u16 {
        self.http.delete(self.url(path)).bearer_auth(ADMIN).send().await.unwrap().status().as_u16()
    }

    /// A fresh access token for a session, minted with the admin token.
    pub async fn mint_token(&self, id: &str) -> String {
        let response = self
            .http
            .post(self.url(&format!("/api/sessions/{id}/token")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "mint a token");
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn readyz(&self) -> Value {
        self.http
            .get(self.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    // `data` is returned by `stop`, so the struct cannot implement Drop; an unstopped
    // server simply ends with the test's runtime.
    pub data: tempfile::TempDir,
    api: ApiClient,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), livesession::StartupError>>>,
}

/// The server's API is called on the server itself (`server.get_session(id)`,
/// `server.http`).
impl std::ops::Deref for TestServer {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with a fresh data directory; `args` are extra
    /// `serve` flags.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_in(
            tempfile::Builder::new()
                .prefix("ls")
                .tempdir_in("/tmp")
                .unwrap(),
            args,
        )
        .await
    }

    /// Starts a server on an existing data directory (a restart).
    pub async fn start_in(data: tempfile::TempDir, args: &[&str]) -> Self {
        livesession_billing::install_tls_provider();
        Self::launch(data, args, "http", reqwest::Client::new()).await
    }

    /// Starts a server with built-in TLS from these PEM texts (written into its data
    /// directory); `http` trusts that certificate and no other.
    pub async fn start_tls(cert_pem: &str, key_pem: &str, args: &[&str]) -> Self {
        let data = tempfile::Builder::new()
            .prefix("ls")
            .tempdir_in("/tmp")
            .unwrap();
        let (cert, key) = (data.path().join("cert.pem"), data.path().join("key.pem"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let mut argv = vec!["--tls-cert", cert, "--tls-key", key];
        argv.extend_from_slice(args);
        livesession_billing::install_tls_provider();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        Self::launch(data, &argv, "https", http).await
    }

    async fn launch(
        data: tempfile::TempDir,
        args: &[&str],
        scheme: &str,
        http: reqwest::Client,
    ) -> Self {
        install_logging();
        livesession_billing::install_tls_provider();
        // No warm pool unless a test asks for one: tests start desktops one at a time,
        // and a pool would only add load to a two-core machine.
        let mut argv = vec!["serve", "--admin-token", ADMIN, "--listen", "127.0.0.1:0", "--warm-desktops", "0"];
        argv.extend_from_slice(args);
        let mut config = ConfigFromArgs::try_parse_from(argv)
            .expect("valid test config")
            .config;
        config.data_dir = data.path().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(livesession::launch(config, listener, async move {
            let _ = rx.await;
        }));
        let server = Self {
            addr,
            data,
            api: ApiClient { base: format!("{scheme}://{addr}"), http },
            shutdown: Some(tx),
            task: Some(task),
        };
        assert!(server.healthy_within(Duration::from_secs(10)).await, "server did not answer /healthz");
        server
    }

    /// The data directory, resolved (as the server sees it).
    pub fn data_path(&self) -> std::path::PathBuf {
        self.data.path().canonicalize().unwrap()
    }

    /// Where the server keeps its desktops' directories.
    pub fn desktops_root(&self) -> std::path::PathBuf {
        livesession::config::desktops_root(&self.data.path().canonicalize().unwrap(), true)
    }

    pub fn desktop_dir(&self, id: &str) -> std::path::PathBuf {
        self.desktops_root().join(id)
    }

    /// The processes of a running session desktop, from the files the runtime keeps.
    pub fn desktop_procs(&self, id: &str) -> DesktopProcs {
        let read = |name: &str| std::fs::read_to_string(self.desktop_dir(id).join(name));
        DesktopProcs {
            pgid: read("desktop.pgid").unwrap().trim().parse().unwrap(),
            pidns: read("desktop.pidns").ok().map(|s| s.trim().parse().unwrap()),
        }
    }

    /// Stops the server the way a signal would and waits for it to finish. Returns the
    /// data directory, for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("server stopped in time")
            .unwrap()
            .unwrap();
        self.data
    }
}

// ---------------------------------------------------------------- WebSocket clients

pub use livesession::bench::client::Ws;

/// Opens a WebSocket to `path` on the server with extra request headers.
pub async fn ws_connect(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Ws {
    let mut request = format!("ws://{}{path}", server.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let (ws, _response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket handshake");
    ws
}

/// Reads until the server closes; returns the close code and reason.
pub async fn close_of(ws: &mut Ws, limit: Duration) -> (u16, String) {
    let read = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => {}
                Err(e) => return (1006, e.to_string()),
            }
        }
        (1006, "stream ended".into())
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("server closed the connection in time")
}

/// An RFB client speaking through the VNC proxy (the benchmark's client: the WebSocket
/// bridged to an in-memory pipe by the same relay the server uses).
pub async fn rfb_over_ws(ws: Ws) -> RfbClient<DuplexStream> {
    livesession::bench::client::rfb_over_ws(ws)
        .await
        .expect("RFB handshake through the proxy")
}

/// Requests frames until `share` of the screen is `rgb`; returns the share reached.
pub async fn wait_for_colour(
    rfb: &mut RfbClient<DuplexStream>,
    rgb: (u8, u8, u8),
    share: f64,
    limit: Duration,
) -> f64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = 0.0;
    while tokio::time::Instant::now() < deadline {
        rfb.request_update(false).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), rfb.read_update())
            .await
            .expect("a frame in time")
            .unwrap();
        seen = rfb.share_of_colour(rgb, 8);
        if seen >= share {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if seen < share {
        eprintln!(
            "wait_for_colour: {rgb:?} covers {seen:.2} of the {}x{} screen; its commonest colours: {:?}",
            rfb.width,
            rfb.height,
            rfb.commonest_colours(4)
        );
    }
    seen
}
