//! Shared by the integration tests: a real headless Chromium, and test pages served on
//! loopback. Use with `mod support;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The browser the tests drive. Debian's `chromium` package.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium with its own profile, killed (and waited for) on drop.
pub struct Chromium {
    child: Child,
    /// The browser's DevTools WebSocket (`ws://127.0.0.1:<port>/devtools/browser/<id>`).
    pub ws_url: String,
    pub port: u16,
    profile: tempfile::TempDir,
}

impl Chromium {
    /// The end of Chromium's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        log_tail(self.profile.path())
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Chromium with a blank tab (`about:blank`) and waits until its DevTools endpoint
/// answers. Panics (the test fails, it is not skipped) if Chromium is missing or does not
/// start within a minute.
pub async fn launch_chromium() -> Chromium {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package"
    );
    let profile = tempfile::tempdir().expect("a temporary profile directory");
    let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
    let child = Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--remote-debugging-port=0",
            &format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ),
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--window-size=1280,720",
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {CHROMIUM}: {e}"));
    let mut chromium = Chromium {
        child,
        ws_url: String::new(),
        port: 0,
        profile,
    };

    // Chromium writes the port it chose to DevToolsActivePort once it listens.
    let active_port = chromium
        .profile
        .path()
        .join("profile")
        .join("DevToolsActivePort");
    let started = std::time::Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(&active_port).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u16>().ok())
        {
            break port;
        }
        if let Ok(Some(status)) = chromium.child.try_wait() {
            panic!(
                "Chromium exited ({status}) before listening:\n{}",
                chromium.log_tail()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Chromium did not write DevToolsActivePort within 60 s:\n{}",
            chromium.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    chromium.port = port;
    let version = http_get_json(port, "/json/version").await;
    chromium.ws_url = version["webSocketDebuggerUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("/json/version has no webSocketDebuggerUrl: {version}"))
        .to_owned();
    chromium
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `GET path` of the DevTools HTTP endpoint on 127.0.0.1:`port`, as JSON. Chromium keeps
/// the connection open, so the body is read by its Content-Length.
pub async fn http_get_json(port: u16, path: &str) -> serde_json::Value {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "DevTools closed the connection early");
            response.extend_from_slice(&chunk[..n]);
            let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a Content-Length");
            if response.len() >= split + 4 + length {
                return serde_json::from_slice(&response[split + 4..split + 4 + length])
                    .expect("JSON");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("DevTools did not answer GET {path}"))
}

/// An HTTP server on 127.0.0.1 serving a router, stopped on drop.
pub struct Served {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(router: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Served { addr, task }
}

/// A URL on 127.0.0.1 where nothing listens (the port was just released).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/")
}

/// The test site:
/// - `/form`: a form (`#name`, a colour `select`, a checkbox, a "Submit" button) that posts
///   to `/submit`; the page is tall enough to scroll;
/// - `/submit`: "Thanks, <name>! Your code is <n>" in `#answer` (n: 7 times the name's
///   length in characters);
/// - `/blank`: an empty page titled "Blank".
pub fn demo_site() -> Router {
    Router::new()
        .route("/form", get(|| async { Html(FORM_PAGE) }))
        .route("/submit", post(submit))
        .route(
            "/blank",
            get(|| async { Html("<!doctype html><title>Blank</title><body></body>") }),
        )
}

const FORM_PAGE: &str = r#"<!doctype html>
<html><head><title>Sign up</title>
<style>body { font: 16px sans-serif; margin: 20px } #filler { height: 3000px }</style></head>
<body>
<h1>Sign up</h1>
<form method="post" action="/submit">
  <p><label>Name <input id="name" name="name" autocomplete="off"></label></p>
  <p><label>Colour <select name="colour"><option>red</option><option>blue</option></select></label></p>
  <p><label><input type="checkbox" name="agree"> I agree</label></p>
  <p><button type="submit">Submit</button></p>
</form>
<div id="filler">Below the form</div>
<p id="bottom">The end</p>
</body></html>"#;

async fn submit(
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> Html<String> {
    let name = form.get("name").cloned().unwrap_or_default();
    let code = name.chars().count() * 7;
    Html(format!(
        "<!doctype html><html><head><title>Thanks</title></head><body>\
         <p id=\"answer\">Thanks, {}! Your code is {code}</p>\
         <input id=\"note\" value=\"\"></body></html>",
        escape(&name)
    ))
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
