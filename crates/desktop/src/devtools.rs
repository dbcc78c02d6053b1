//! Just enough of Chromium's DevTools to know a desktop is ready, send its page somewhere,
//! and save and restore its browser's state (tabs and cookies). The endpoint is reached
//! through the desktop's `devtools.sock`, never by following a link the desktop could have
//! put in its place ([`DesktopSocket::connect`]). Whatever answers there is the desktop's:
//! answers are bounded in size and time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::confined::DesktopSocket;

/// One DevTools target, as `/json/list` describes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Target {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub url: String,
    #[serde(default, rename = "webSocketDebuggerUrl")]
    pub websocket_url: Option<String>,
}

/// Sends the desktop's page to `url` (`Page.navigate` over the page's DevTools WebSocket)
/// and returns once Chromium has started the navigation: a warm desktop handed to a
/// session opens that session's start page.
pub async fn navigate(socket: &DesktopSocket, url: &str) -> std::io::Result<()> {
    let ws_url = first_page(socket).await?;
    navigate_page(socket, &ws_url, url).await
}

/// The WebSocket URL of the first page DevTools lists.
async fn first_page(socket: &DesktopSocket) -> std::io::Result<String> {
    list_targets(socket)
        .await?
        .iter()
        .find(|t| t.kind == "page")
        .and_then(|t| t.websocket_url.clone())
        .ok_or_else(|| std::io::Error::other("DevTools lists no page to navigate"))
}

/// [`navigate`] for the page whose WebSocket URL is `ws_url`.
async fn navigate_page(socket: &DesktopSocket, ws_url: &str, url: &str) -> std::io::Result<()> {
    let mut page = Cdp::connect(socket, ws_url).await?;
    let result = page.call("Page.navigate", serde_json::json!({"url": url})).await?;
    if let Some(e) = result.get("errorText") {
        return Err(std::io::Error::other(format!("navigation refused: {e}")));
    }
    Ok(())
}

/// The most of one DevTools message read over a WebSocket: a browser's whole cookie jar
/// (Chromium keeps about 3300 cookies of at most 4 KiB each) fits well within it.
const MAX_MESSAGE: usize = 32 << 20;

/// How long one DevTools command may take to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A DevTools WebSocket session with one target (the browser, or a page), through the
/// desktop's socket.
pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    next: u64,
}

impl Cdp {
    /// Connects to the target whose WebSocket URL is `ws_url` (from `/json/list` or
    /// `/json/version`; only its path is used).
    pub async fn connect(socket: &DesktopSocket, ws_url: &str) -> std::io::Result<Self> {
        let path = websocket_path(ws_url)
            .ok_or_else(|| std::io::Error::other("unexpected DevTools WebSocket URL"))?;
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connect = async {
            let stream = socket.connect().await?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(format!("ws://localhost{path}"), stream, Some(config))
                    .await
                    .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(ws)
        };
        let ws = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DevTools did not answer"))??;
        Ok(Self { ws, next: 0 })
    }

    /// The browser's own target (`/json/version`'s `webSocketDebuggerUrl`).
    pub async fn browser(socket: &DesktopSocket) -> std::io::Result<Self> {
        let version = get_json(socket, "/json/version").await?;
        let url = version["webSocketDebuggerUrl"]
            .as_str()
            .ok_or_else(|| std::io::Error::other("DevTools names no browser target"))?;
        Self::connect(socket, url).await
    }

    /// Sends a command and returns its `result`; an error answer is an error. Events in
    /// between are passed over.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> std::io::Result<serde_json::Value> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.next += 1;
        let id = self.next;
        let exchange = async {
            let request = serde_json::json!({"id": id, "method": method, "params": params});
            self.ws.send(Message::text(request.to_string())).await.map_err(std::io::Error::other)?;
            while let Some(message) = self.ws.next().await {
                let Message::Text(text) = message.map_err(std::io::Error::other)? else { continue };
                let mut reply: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
                if reply["id"] != id {
                    continue;
                }
                if let Some(e) = reply.get("error") {
                    let message = e["message"].as_str().unwrap_or("an error").to_owned();
                    return Err(std::io::Error::other(format!("{method}: {message}")));
                }
                return Ok(reply["result"].take());
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("DevTools closed before answering {method}"),
            ))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("DevTools did not answer {method}"))
        })?
    }
}

/// The longest `data:` URL kept as a tab.
const MAX_DATA_URL: usize = 64 << 10;

/// Whether a tab's URL is one to reopen: a web page (`http:`, `https:`), a `data:` URL of
/// at most 64 KiB, or `about:blank`. Not DevTools, error, settings or extension pages,
/// `file:` (the old desktop's files are gone), `blob:` or `javascript:`. Such a URL never
/// begins with `-`, so it cannot be taken for a switch on Chromium's command line.
pub fn reopenable(url: &str) -> bool {
    let starts = |prefix: &str| url.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
    starts("http://") || starts("https://") || (starts("data:") && url.len() <= MAX_DATA_URL) || url == "about:blank"
}

/// The URLs of the open tabs worth reopening, in the order DevTools lists them (Chromium
/// lists the most recently used tab first, so the tab in front comes first).
/// `about:blank` is kept only when nothing else is.
pub fn tabs_of(targets: &[Target]) -> Vec<String> {
    let pages: Vec<&str> = targets.iter().filter(|t| t.kind == "page").map(|t| t.url.as_str()).collect();
    let tabs: Vec<String> = pages
        .iter()
        .filter(|u| **u != "about:blank" && reopenable(u))
        .map(|u| (*u).to_owned())
        .collect();
    if tabs.is_empty() && pages.contains(&"about:blank") {
        return vec!["about:blank".to_owned()];
    }
    tabs
}

/// The browser's cookies (`Storage.getCookies` on the browser target: CDP `Network.Cookie`
/// objects).
pub async fn cookies(browser: &mut Cdp) -> std::io::Result<Vec<serde_json::Value>> {
    let mut result = browser.call("Storage.getCookies", serde_json::json!({})).await?;
    match result["cookies"].take() {
        serde_json::Value::Array(cookies) => Ok(cookies),
        _ => Err(std::io::Error::other("Storage.getCookies answered without cookies")),
    }
}

/// Asks Chromium to close (`Browser.close`: it closes every window, ignoring `beforeunload`,
/// and writes its cookies, Local Storage and IndexedDB on the way out). Chromium may drop
/// the connection before it answers: that counts as done.
pub async fn close_browser(browser: &mut Cdp) -> std::io::Result<()> {
    match browser.call("Browser.close", serde_json::json!({})).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets `cookies` (CDP `Network.CookieParam` objects; `Network.Cookie` objects, as
/// [`cookies`] reads them, are accepted too) in the browser, then sends its page to
/// `first` (when given) and opens `rest` as further tabs behind it, in order.
pub async fn restore_tabs(
    socket: &DesktopSocket,
    cookies: &[serde_json::Value],
    first: Option<&str>,
    rest: &[String],
) -> std::io::Result<()> {
    let mut browser = if !cookies.is_empty() || !rest.is_empty() {
        Some(Cdp::browser(socket).await?)
    } else {
        None
    };
    if let Some(browser) = browser.as_mut()
        && !cookies.is_empty()
    {
        // Saved cookies come from a desktop a session used: one Chromium refuses must not
        // keep the browser from starting. All at once first; if refused, one by one,
        // leaving out those refused.
        if let Err(e) = browser
            .call("Storage.setCookies", serde_json::json!({"cookies": cookies}))
            .await
        {
            let mut refused = 0usize;
            for cookie in cookies {
                if browser
                    .call("Storage.setCookies", serde_json::json!({"cookies": [cookie]}))
                    .await
                    .is_err()
                {
                    refused += 1;
                }
            }
            tracing::warn!(refused, of = cookies.len(), error = %e, "Chromium refused some restored cookies; they were left out");
        }
    }
    // The first tab's navigation and the others' creation at once: each takes Chromium a
    // renderer's start. The first tab is the page there is now (found before any other
    // opens); the others are created one after the other, so they keep their order.
    let page = match first {
        Some(_) => Some(first_page(socket).await?),
        None => None,
    };
    let first = async {
        match (first, page) {
            (Some(url), Some(page)) => navigate_page(socket, &page, url).await,
            _ => Ok(()),
        }
    };
    let others = async {
        if let Some(browser) = browser.as_mut() {
            for url in rest {
                browser
                    .call("Target.createTarget", serde_json::json!({"url": url, "background": true}))
                    .await?;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let (first, others) = tokio::join!(first, others);
    first?;
    others?;
    Ok(())
}

/// `GET /json/list`. A loopback-only, one-request HTTP/1.1 exchange: not worth a client crate.
pub async fn list_targets(socket: &DesktopSocket) -> std::io::Result<Vec<Target>> {
    let body = get(socket, "/json/list").await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// `GET <path>` of the DevTools HTTP endpoint (`/json/version`, `/json/list`), as JSON.
pub async fn get_json(socket: &DesktopSocket, path: &str) -> std::io::Result<serde_json::Value> {
    let body = get(socket, path).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// The path of a DevTools WebSocket URL (`ws://127.0.0.1:<port inside>/devtools/...`):
/// the only part that matters, since the connection goes through the Unix socket.
pub fn websocket_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("ws://").or_else(|| url.strip_prefix("wss://"))?;
    let at = rest.find('/')?;
    Some(rest[at..].to_owned())
}

/// The most of one discovery answer read (Chrome's target list is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

async fn get(socket: &DesktopSocket, path: &str) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = socket.connect().await?;
        // DevTools accepts only an IP address or "localhost" as Host.
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // Chromium keeps the connection open despite `Connection: close`, so read by
        // Content-Length rather than to the end of the stream.
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other(
                    "DevTools closed the connection early",
                ));
            }
            response.extend_from_slice(&chunk[..n]);
            // The socket is the desktop's: whatever answers there may stream without end.
            if response.len() > MAX_RESPONSE {
                return Err(std::io::Error::other(format!(
                    "DevTools answered more than {MAX_RESPONSE} bytes"
                )));
            }
            if let Some(body) = complete_body(&response)? {
                return Ok(body);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DevTools did not answer"))?
}

/// The body of a complete `200` response, `None` while more bytes are needed.
fn complete_body(response: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(
            "DevTools answered with an error status",
        ));
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| std::io::Error::other("DevTools response has no Content-Length"))?;
    let body = &response[split + 4..];
    Ok((body.len() >= length).then(|| body[..length].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::{Target, complete_body, reopenable, tabs_of};

    fn page(url: &str) -> Target {
        Target { id: "x".into(), kind: "page".into(), url: url.into(), websocket_url: None }
    }

    #[test]
    fn only_pages_worth_reopening_are_saved() {
        let mut targets: Vec<Target> = ["https://a.example/", "devtools://devtools/x", "chrome-error://chromewebdata/",
            "about:blank", "http://b.example/p?q", "chrome://settings/", "file:///etc/passwd", "data:text/html,hi"]
            .into_iter()
            .map(page)
            .collect();
        targets.push(Target { kind: "service_worker".into(), ..page("https://c.example/sw.js") });
        assert_eq!(tabs_of(&targets), ["https://a.example/", "http://b.example/p?q", "data:text/html,hi"]);
        assert_eq!(tabs_of(&[page("about:blank"), page("chrome://newtab/")]), ["about:blank"]);
        assert!(tabs_of(&[page("chrome://newtab/")]).is_empty());
        for refused in ["--renderer-cmd-prefix=/bin/sh", "-g", "javascript:alert(1)", "blob:https://a/x", "about:version", " http://a/"] {
            assert!(!reopenable(refused), "{refused}");
        }
        assert!(reopenable("HTTPS://A.EXAMPLE/"));
        assert!(!reopenable(&format!("data:text/plain,{}", "x".repeat(70_000))));
    }

    #[test]
    fn bodies_are_read_by_content_length() {
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\n[1,";
        assert_eq!(complete_body(partial).unwrap(), None);
        let full = b"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\n[1,2]";
        assert_eq!(complete_body(full).unwrap(), Some(b"[1,2]".to_vec()));
        assert!(complete_body(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }
}
