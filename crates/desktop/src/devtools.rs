//! Just enough of Chromium's DevTools HTTP endpoint to know a desktop is ready. The
//! endpoint is reached through the desktop's `devtools.sock`, never by following a link the
//! desktop could have put in its place ([`DesktopSocket::connect`]).

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
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let err = |m: &str| std::io::Error::other(m.to_owned());
    let targets = list_targets(socket).await?;
    let ws_url = targets
        .iter()
        .find(|t| t.kind == "page")
        .and_then(|t| t.websocket_url.clone())
        .ok_or_else(|| err("DevTools lists no page to navigate"))?;
    // ws://127.0.0.1:<port inside the desktop>/devtools/page/<id>: only the path matters,
    // the connection goes through the Unix socket.
    let path = websocket_path(&ws_url).ok_or_else(|| err("unexpected DevTools WebSocket URL"))?;
    let exchange = async {
        let stream = socket.connect().await?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://localhost{path}"), stream)
            .await
            .map_err(std::io::Error::other)?;
        let request = serde_json::json!({"id": 1, "method": "Page.navigate", "params": {"url": url}});
        ws.send(Message::text(request.to_string())).await.map_err(std::io::Error::other)?;
        while let Some(message) = ws.next().await {
            let Message::Text(text) = message.map_err(std::io::Error::other)? else { continue };
            let reply: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
            if reply["id"] == 1 {
                if let Some(e) = reply.get("error").or_else(|| reply["result"].get("errorText")) {
                    return Err(err(&format!("navigation refused: {e}")));
                }
                let _ = ws.close(None).await;
                return Ok(());
            }
        }
        Err(err("DevTools closed before answering"))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DevTools did not answer"))?
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
    use super::complete_body;

    #[test]
    fn bodies_are_read_by_content_length() {
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\n[1,";
        assert_eq!(complete_body(partial).unwrap(), None);
        let full = b"HTTP/1.1 200 OK\r\nContent-Length:5\r\n\r\n[1,2]";
        assert_eq!(complete_body(full).unwrap(), Some(b"[1,2]".to_vec()));
        assert!(complete_body(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    }
}
