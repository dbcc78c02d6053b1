//! Session files (docs/api.md, "Session files"): uploads land whole in the session's own
//! directory and come back byte-exact; names with path tricks, oversized bodies and a
//! full session are refused with clear errors and nothing written; view tokens read only;
//! another session's token gets nothing; links planted in the directory are never
//! followed; the files go when the session ends (and at start-up, if it ended meanwhile).
//! With a real desktop: uploads reach its Downloads folder, and a page's download reaches
//! the session's folder and its control connections (`FILE_ADDED`).

use serde_json::{Value, json};

use crate::support::{ADMIN, TestServer};

/// What an error answer says: (status, code, message).
async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Percent-encodes every byte but unreserved ASCII.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn upload(
    server: &TestServer,
    id: &str,
    name: &str,
    bearer: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/api/sessions/{id}/files?name={}", encode(name))))
        .bearer_auth(bearer)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn download(server: &TestServer, id: &str, name: &str, bearer: &str) -> reqwest::Response {
    // Percent-encoded as a path segment, so a name with '/' or '..' stays one segment.
    let encoded = encode(name);
    server
        .http
        .get(server.url(&format!("/api/sessions/{id}/files/{encoded}")))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

/// Uploads `bytes` with `Transfer-Encoding: chunked` (no length declared) over a raw
/// connection; the status line's code. The server may answer before the body ends.
async fn chunked_upload(
    server: &TestServer,
    id: &str,
    name: &str,
    bearer: &str,
    bytes: &[u8],
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /api/sessions/{id}/files?name={name} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {bearer}\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    );
    let body = bytes.to_vec();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(1 << 20) {
            write
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            write.write_all(chunk).await?;
            write.write_all(b"\r\n").await?;
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    let line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

async fn list(server: &TestServer, id: &str, bearer: &str) -> Vec<Value> {
    let response = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/files")))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "list");
    let body: Value = response.json().await.unwrap();
    body["files"].as_array().unwrap().clone()
}

async fn token(server: &TestServer, id: &str, role: &str) -> String {
    let response = server
        .admin_post(
            &format!("/api/sessions/{id}/token"),
            json!({ "role": role }),
        )
        .await;
    assert_eq!(response.status(), 200, "mint a {role} token");
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// Every entry under `dir`, recursively, as paths relative to it.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_every_trick_is_refused() {
    let server = TestServer::start(&[]).await;
    let session = server.create_session(json!({ "ttl_seconds": 600 })).await;
    let id = session["id"].as_str().unwrap();
    let own = session["token"].as_str().unwrap();
    let files_dir = server.data_path().join("files").join(id);

    // Upload, list, download: byte-exact, as an attachment that is never sniffed.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let response = upload(&server, id, "report (1).bin", own, bytes.clone()).await;
    assert_eq!(response.status(), 201);
    let entry: Value = response.json().await.unwrap();
    assert_eq!(entry["name"], "report (1).bin");
    assert_eq!(entry["size"], bytes.len() as u64);
    assert!(entry["modified"].as_str().unwrap().contains('T'));
    let listed = list(&server, id, own).await;
    assert_eq!(listed, vec![entry.clone()]);
    let response = download(&server, id, "report (1).bin", own).await;
    assert_eq!(response.status(), 200);
    let h = response.headers();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let disposition = h["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment;") && disposition.contains("report (1).bin"),
        "{disposition}"
    );
    assert_eq!(
        response.bytes().await.unwrap().to_vec(),
        bytes,
        "byte-exact"
    );
    assert_eq!(
        std::fs::read(files_dir.join("report (1).bin")).unwrap(),
        bytes,
        "in the session's own directory"
    );

    // The same name again: 409, the first file untouched.
    let (status, code, _) =
        error_of(upload(&server, id, "report (1).bin", own, b"other".to_vec()).await).await;
    assert_eq!((status, code.as_str()), (409, "file_exists"));

    // Names with path tricks: 400 naming the rule, nothing written anywhere.
    let before = tree(&server.data_path());
    let long = "a".repeat(300);
    for (name, rule) in [
        ("../x", "'/'"),
        ("a/b", "'/'"),
        ("..", "'..'"),
        (".hidden", "'.'"),
        ("a\0b", "NUL"),
        ("a\\b", "'\\'"),
        (long.as_str(), "200 bytes"),
        ("", "empty"),
    ] {
        let (status, code, message) =
            error_of(upload(&server, id, name, own, b"x".to_vec()).await).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_file_name"),
            "{name:?}"
        );
        assert!(message.contains(rule), "{name:?}: {message}");
    }
    // Through the download path too (one percent-encoded segment).
    for name in ["../x", "..", ".hidden"] {
        let status = download(&server, id, name, own).await.status().as_u16();
        assert!(status == 400 || status == 404, "{name}: {status}");
    }
    assert_eq!(
        tree(&server.data_path()),
        before,
        "nothing written for refused names"
    );

    // Too large: 413 and no partial file left, whether the size is declared or streamed.
    let big = vec![7u8; 100 * 1024 * 1024 + 1];
    let (status, code, message) =
        error_of(upload(&server, id, "big.bin", own, big.clone()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (413, "file_too_large"),
        "{message}"
    );
    let status = chunked_upload(&server, id, "big.bin", own, &big).await;
    assert_eq!(status, 413, "a chunked body without a declared length");
    assert_eq!(
        tree(&files_dir),
        vec!["report (1).bin".to_owned()],
        "no partial file"
    );

    // A view token lists and downloads, but does not upload.
    let view = token(&server, id, "view").await;
    assert_eq!(list(&server, id, &view).await.len(), 1);
    assert_eq!(
        download(&server, id, "report (1).bin", &view)
            .await
            .status(),
        200
    );
    let (status, code, message) =
        error_of(upload(&server, id, "v.txt", &view, b"v".to_vec()).await).await;
    assert_eq!((status, code.as_str()), (403, "role_forbidden"));
    assert!(message.contains("view-only"), "{message}");

    // Another session's token gets nothing of this one.
    let other = server.create_session(json!({ "ttl_seconds": 600 })).await;
    let other_token = other["token"].as_str().unwrap();
    assert_eq!(
        server
            .http
            .get(server.url(&format!("/api/sessions/{id}/files")))
            .bearer_auth(other_token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        download(&server, id, "report (1).bin", other_token)
            .await
            .status(),
        401
    );
    assert_eq!(
        upload(&server, id, "x.txt", other_token, b"x".to_vec())
            .await
            .status(),
        401
    );
    assert!(
        list(&server, other["id"].as_str().unwrap(), other_token)
            .await
            .is_empty()
    );
    // No token at all.
    assert_eq!(
        server
            .http
            .get(server.url(&format!("/api/sessions/{id}/files")))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Links the desktop could plant: not listed, never served.
    let secret = server.data_path().join("secret.txt");
    std::fs::write(&secret, "server secret").unwrap();
    std::os::unix::fs::symlink(&secret, files_dir.join("planted.txt")).unwrap();
    std::os::unix::fs::symlink(server.data_path(), files_dir.join("dir-link")).unwrap();
    std::fs::create_dir(files_dir.join("subdir")).unwrap();
    std::fs::write(files_dir.join("partial.bin.crdownload"), "in progress").unwrap();
    let names: Vec<String> = list(&server, id, own)
        .await
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        vec!["report (1).bin"],
        "only completed regular files"
    );
    let response = download(&server, id, "planted.txt", own).await;
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains("server secret"));
    assert_eq!(download(&server, id, "subdir", own).await.status(), 404);
    // An upload may not land through a planted link either.
    let (status, code, _) =
        error_of(upload(&server, id, "planted.txt", own, b"overwrite".to_vec()).await).await;
    assert_eq!((status, code.as_str()), (409, "file_exists"));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "server secret");
    for name in [
        "planted.txt",
        "dir-link",
        "subdir",
        "partial.bin.crdownload",
    ] {
        let p = files_dir.join(name);
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            std::fs::remove_dir(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }

    // The count limit: 100 files, then 409 too_many_files.
    for n in 1..100 {
        assert_eq!(
            upload(&server, id, &format!("f{n}.txt"), ADMIN, vec![b'x'; 3])
                .await
                .status(),
            201,
            "file {n}"
        );
    }
    let (status, code, message) =
        error_of(upload(&server, id, "one-too-many.txt", own, b"x".to_vec()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (409, "too_many_files"),
        "{message}"
    );
    assert_eq!(list(&server, id, own).await.len(), 100);

    // Revoking the session removes its files.
    server.revoke(id).await;
    let mut gone = false;
    for _ in 0..200 {
        if !files_dir.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "the session's files were removed with it");
    assert!(
        std::fs::metadata(&secret).is_ok(),
        "a planted link's target is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_sessions_that_ended_while_the_server_was_down_are_removed_at_start_up() {
    let server = TestServer::start(&[]).await;
    let kept = server.create_session(json!({ "ttl_seconds": 600 })).await;
    let kept_id = kept["id"].as_str().unwrap().to_owned();
    assert_eq!(
        upload(&server, &kept_id, "keep.txt", ADMIN, b"keep".to_vec())
            .await
            .status(),
        201
    );
    let data = server.stop().await;
    // A directory of a session the store does not know (it ended and was forgotten).
    let orphan = data
        .path()
        .join("files")
        .join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("left.txt"), "left").unwrap();
    let server = TestServer::start_in(data, &[]).await;
    assert!(
        !orphan.exists(),
        "an unknown session's files are removed at start-up"
    );
    let names: Vec<Value> = list(&server, &kept_id, ADMIN).await;
    assert_eq!(
        names.len(),
        1,
        "an active session keeps its files across a restart"
    );
    let response = download(&server, &kept_id, "keep.txt", ADMIN).await;
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"keep");
}

/// The next text message of `kind` on a control channel (others are skipped).
async fn next_of_type(
    ws: &mut crate::support::Ws,
    kind: &str,
    limit: std::time::Duration,
) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == kind {
                        return value;
                    }
                    assert_ne!(value["status"], "failed", "the desktop failed: {value}");
                }
                Some(Ok(_)) => {}
                other => panic!("the control channel ended while waiting for {kind}: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} within {limit:?}"))
}

/// Owner uid and permission bits of a path (not following a link).
fn owner_and_mode(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.mode() & 0o7777)
}

/// The session's files and its desktop (downloads.rs): a file uploaded before the desktop
/// starts is in its `~/Downloads` when it is ready, one uploaded while it runs is placed
/// there at once (the desktop's uid's, mode 0644) and announced as `FILE_ADDED`; a page's
/// download (Chromium's managed policy saves it without a prompt) is copied into the
/// session's own folder, announced as `FILE_ADDED` and served by the files API; after a
/// hibernation, the desktop the session resumes on has every file in its Downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_download_reaches_the_sessions_files_and_uploads_reach_the_desktop() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let limit = std::time::Duration::from_secs(60);
    let page = crate::support::PageServer::start().await;
    let args = page.server_args();
    // Idle for 2 s (no connection left), the desktop hibernates; the next one resumes it.
    let server =
        TestServer::start(&[args[0].as_str(), args[1].as_str(), "--idle-timeout", "2"]).await;
    let session = server
        .create_session(json!({ "ttl_seconds": 600, "start_url": page.url }))
        .await;
    let id = session["id"].as_str().unwrap();
    let token = session["token"].as_str().unwrap();
    let files_dir = server.data_path().join("files").join(id);
    let downloads = server.desktop_dir(id).join("home/Downloads");

    // Before the desktop exists: only in the session's folder.
    assert_eq!(
        upload(&server, id, "early.txt", token, b"early bytes".to_vec())
            .await
            .status(),
        201
    );
    assert!(!server.desktop_dir(id).exists(), "no desktop yet");

    // The control channel starts the desktop; the early file is in its Downloads once ready.
    let mut control = crate::support::ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    loop {
        let status = next_of_type(
            &mut control,
            "DESKTOP_STATUS",
            std::time::Duration::from_secs(180),
        )
        .await;
        if status["status"] == "ready" {
            break;
        }
    }
    let (desktop_uid, downloads_mode) = owner_and_mode(&downloads);
    assert_eq!(
        downloads_mode, 0o700,
        "Downloads is the desktop's own folder"
    );
    assert_eq!(
        owner_and_mode(&server.desktop_dir(id).join("home")).0,
        desktop_uid,
        "Downloads belongs to the desktop's uid, as its home does"
    );
    assert_eq!(
        std::fs::read(downloads.join("early.txt")).unwrap(),
        b"early bytes"
    );
    assert_eq!(
        owner_and_mode(&downloads.join("early.txt")),
        (desktop_uid, 0o644)
    );

    // An upload while the desktop runs: placed at once and announced.
    let response = upload(&server, id, "later.txt", token, b"later".to_vec()).await;
    assert_eq!(response.status(), 201);
    let added = next_of_type(&mut control, "FILE_ADDED", limit).await;
    assert_eq!(
        (added["name"].as_str(), added["size"].as_u64()),
        (Some("later.txt"), Some(5)),
        "{added}"
    );
    assert!(added["modified"].as_str().unwrap().contains('T'), "{added}");
    assert_eq!(
        std::fs::read(downloads.join("later.txt")).unwrap(),
        b"later"
    );
    assert_eq!(
        owner_and_mode(&downloads.join("later.txt")),
        (desktop_uid, 0o644)
    );

    // A page's download: the page target's socket clicks a download link.
    let mut target = None;
    for _ in 0..180 {
        let response = server
            .http
            .get(server.url(&format!("/api/sessions/{id}/cdp/json")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let list: Value = response.json().await.unwrap();
            target = list
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["type"] == "page")
                .map(|t| t["id"].as_str().unwrap().to_owned());
            if target.is_some() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let target = target.expect("a page target");
    let mut ws = crate::support::ws_connect(
        &server,
        &format!("/api/sessions/{id}/cdp/page/{target}?token={token}"),
        &[],
    )
    .await;
    // The page may still be loading when it is listed: evaluate until it is ours, then click.
    let mut last = Value::Null;
    for n in 1..=120 {
        let expression = "if (document.title === 'livesession test page') { const a = document.createElement('a'); a.href = 'data:text/plain,hello%20from%20the%20page'; a.download = 'hello.txt'; document.body.append(a); a.click(); 'clicked' } else { 'loading' }";
        let call = json!({ "id": n, "method": "Runtime.evaluate", "params": { "expression": expression } });
        ws.send(Message::text(call.to_string())).await.unwrap();
        last = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["id"] == n {
                        return value;
                    }
                }
            }
            panic!("the DevTools socket closed");
        })
        .await
        .expect("a reply to the evaluation");
        if last["result"]["result"]["value"] == "clicked" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(last["result"]["result"]["value"], "clicked", "{last}");

    // Saved into the desktop's Downloads without a prompt, then handed over and announced.
    let added = next_of_type(&mut control, "FILE_ADDED", limit).await;
    assert_eq!(
        (added["name"].as_str(), added["size"].as_u64()),
        (Some("hello.txt"), Some(b"hello from the page".len() as u64)),
        "{added}"
    );
    assert_eq!(
        std::fs::read(downloads.join("hello.txt")).unwrap(),
        b"hello from the page"
    );
    assert_eq!(
        std::fs::read(files_dir.join("hello.txt")).unwrap(),
        b"hello from the page"
    );
    let response = download(&server, id, "hello.txt", token).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        b"hello from the page"
    );
    let names: Vec<String> = list(&server, id, token)
        .await
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["early.txt", "hello.txt", "later.txt"]);
    // Nothing else was announced (the early file was there before this connection).
    let quiet = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        next_of_type(
            &mut control,
            "FILE_ADDED",
            std::time::Duration::from_secs(10),
        ),
    )
    .await;
    assert!(quiet.is_err(), "one FILE_ADDED per new file: {quiet:?}");

    // Everyone leaves: the desktop hibernates (its home goes with it). The session's files
    // stay, and the desktop it resumes on has them all in its Downloads.
    drop(ws);
    drop(control);
    let mut hibernated = false;
    for _ in 0..120 {
        if server.get_session(id).await["desktop"] == "hibernated" {
            hibernated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(hibernated, "the idle desktop hibernated");
    assert!(!downloads.exists(), "the hibernated desktop's home is gone");
    let mut control = crate::support::ws_connect(
        &server,
        &format!("/api/sessions/{id}/control?token={token}"),
        &[],
    )
    .await;
    loop {
        let status = next_of_type(
            &mut control,
            "DESKTOP_STATUS",
            std::time::Duration::from_secs(180),
        )
        .await;
        if status["status"] == "ready" {
            break;
        }
    }
    let (resumed_uid, _) = owner_and_mode(&downloads);
    for (name, bytes) in [
        ("early.txt", &b"early bytes"[..]),
        ("hello.txt", &b"hello from the page"[..]),
        ("later.txt", &b"later"[..]),
    ] {
        assert_eq!(
            std::fs::read(downloads.join(name)).unwrap(),
            bytes,
            "{name} in the resumed desktop"
        );
        assert_eq!(
            owner_and_mode(&downloads.join(name)),
            (resumed_uid, 0o644),
            "{name}"
        );
    }
    assert_eq!(
        list(&server, id, token).await.len(),
        3,
        "nothing handed over twice"
    );
}
