//! Just enough of Chromium's DevTools HTTP endpoint to know a desktop is ready. The
//! endpoint is reached through the desktop's `devtools.sock`.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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

/// `GET /json/list`. A loopback-only, one-request HTTP/1.1 exchange: not worth a client crate.
pub async fn list_targets(socket: &Path) -> std::io::Result<Vec<Target>> {
    let body = get(socket, "/json/list").await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

async fn get(socket: &Path, path: &str) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
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
