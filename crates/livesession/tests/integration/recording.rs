//! Screen recordings (docs/recordings.md): a recorded session's screen is recorded from
//! the server's own connection to its desktop while the desktop runs; the file parses
//! (header, records, an RFB greeting, framebuffer updates per segment); only the admin
//! and the session's own tokens read it; `--record` records every session; old
//! recordings are swept; the recorder does not keep an idle desktop up and follows it
//! into a new segment after the resume.

use std::io::Read;
use std::time::Duration;

use livesession_relay::rfb_wire::{Event, Framing};
use serde_json::{Value, json};

use crate::support::{ADMIN, PageServer, TestServer, rfb_over_ws, wait_for_colour, ws_connect};

const MAGENTA: (u8, u8, u8) = (255, 0, 255);

/// One segment of a recording: its start and the bytes of its DATA records, in order.
#[derive(Debug, Default)]
struct Segment {
    t_ms: u64,
    data: Vec<u8>,
    data_records: usize,
    last_t_ms: u64,
}

#[derive(Debug, Default)]
struct Parsed {
    segments: Vec<Segment>,
    ended: Option<String>,
    /// Decompressed bytes (a live recording: up to its last flush).
    bytes: usize,
}

/// Parses a recording file's bytes independently of the server's code: gzip (a live
/// file ends without its trailer: what decompressed is kept), the 16-byte header, then
/// records of kind (u8), t_ms (u64 BE), len (u32 BE), bytes.
fn parse(file: &[u8]) -> Parsed {
    let mut bytes = Vec::new();
    let mut input = flate2::read::GzDecoder::new(file);
    let mut chunk = [0u8; 8192];
    loop {
        match input.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(bytes.len() >= 16, "a header: {} bytes", bytes.len());
    assert_eq!(&bytes[..5], b"LSREC", "the magic");
    assert_eq!(bytes[5], 1, "version 1");
    let started_at_ms = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        started_at_ms > now_ms - 86_400_000 && started_at_ms <= now_ms,
        "started today: {started_at_ms}"
    );
    let mut parsed = Parsed {
        bytes: bytes.len(),
        ..Parsed::default()
    };
    let mut at = 16;
    let mut last_t = 0;
    while at + 13 <= bytes.len() {
        let kind = bytes[at];
        let t_ms = u64::from_be_bytes(bytes[at + 1..at + 9].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[at + 9..at + 13].try_into().unwrap()) as usize;
        if at + 13 + len > bytes.len() {
            break; // cut at the last flush
        }
        let payload = &bytes[at + 13..at + 13 + len];
        assert!(
            t_ms >= last_t,
            "timestamps never go back: {t_ms} after {last_t}"
        );
        last_t = t_ms;
        match kind {
            1 => {
                assert!(payload.is_empty());
                parsed.segments.push(Segment {
                    t_ms,
                    ..Segment::default()
                });
            }
            2 => {
                let segment = parsed
                    .segments
                    .last_mut()
                    .expect("data after a segment start");
                segment.data.extend_from_slice(payload);
                segment.data_records += 1;
                segment.last_t_ms = t_ms;
            }
            3 => parsed.ended = Some(String::from_utf8(payload.to_vec()).unwrap()),
            other => panic!("unknown record kind {other}"),
        }
        at += 13 + len;
    }
    parsed
}

/// The framebuffer updates with pixels in a segment's RFB stream (as a client receives
/// it from the greeting on), and its screen size; `None` until the handshake is complete.
/// Asserts what is there: the greeting, security None, the server messages frame.
fn updates_of(segment: &Segment) -> Option<(usize, (u16, u16))> {
    let d = &segment.data;
    if d.len() < 12 {
        return None;
    }
    assert!(
        d.starts_with(b"RFB 003.008\n"),
        "the segment starts with the RFB greeting: {:?}",
        &d[..12]
    );
    let mut at = 12;
    let types = usize::from(*d.get(at)?);
    assert!(
        d.get(at + 1..=at + types)?.contains(&1),
        "security None offered"
    );
    at += 1 + types;
    assert_eq!(d.get(at..at + 4)?, &[0, 0, 0, 0], "security result: OK");
    at += 4;
    let init = d.get(at..at + 24)?;
    let size = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    at += 24 + name_len;
    let rest = d.get(at..)?;
    let mut framing = Framing::new();
    let mut events = Vec::new();
    framing
        .feed(rest, &mut events)
        .expect("the recorded server messages frame");
    let updates = events
        .iter()
        .filter(|e| matches!(e, Event::Update { pixel_rects, .. } if *pixel_rects > 0))
        .count();
    Some((updates, size))
}

async fn fetch(server: &TestServer, id: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut request = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/recording")));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn recording(server: &TestServer, id: &str) -> Parsed {
    let response = fetch(server, id, Some(ADMIN)).await;
    assert_eq!(response.status(), 200);
    parse(&response.bytes().await.unwrap())
}

/// Polls the recording until `ok` holds for it; returns it.
async fn wait_recording(
    server: &TestServer,
    id: &str,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Parsed) -> bool,
) -> Parsed {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let parsed = recording(server, id).await;
        if ok(&parsed) {
            return parsed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {:?}",
            summary(&parsed)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn summary(parsed: &Parsed) -> Vec<(u64, usize, usize)> {
    parsed
        .segments
        .iter()
        .map(|s| (s.t_ms, s.data_records, s.data.len()))
        .collect()
}

/// Segments with a complete handshake and at least `n` updates with pixels.
fn segments_with_updates(parsed: &Parsed, n: usize) -> usize {
    parsed
        .segments
        .iter()
        .filter(|s| updates_of(s).is_some_and(|(updates, _)| updates >= n))
        .count()
}

/// A VNC viewer through the proxy that has the session's page on screen.
async fn viewer(
    server: &TestServer,
    id: &str,
    token: &str,
) -> livesession_desktop::rfb::RfbClient<tokio::io::DuplexStream> {
    let ws = ws_connect(
        server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[],
    )
    .await;
    let mut rfb = rfb_over_ws(ws).await;
    let share = wait_for_colour(&mut rfb, MAGENTA, 0.5, Duration::from_secs(60)).await;
    assert!(
        share > 0.5,
        "the session's page is on the screen ({share:.2})"
    );
    rfb
}

fn id_token(created: &Value) -> (String, String) {
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_is_recorded_while_its_desktop_runs_and_only_its_own_tokens_read_it() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1], "--start-url", &page.url]).await;
    let recorded = server.create_session(json!({ "record": true })).await;
    let other = server.create_session(json!({})).await;
    let (id, token) = id_token(&recorded);
    let (other_id, other_token) = id_token(&other);
    assert_eq!(server.get_session(&id).await["record"], true);
    assert_eq!(server.get_session(&other_id).await["record"], false);

    // The desktop starts for a viewer; the recorder records it from its own connection.
    let rfb = viewer(&server, &id, &token).await;
    let first = wait_recording(
        &server,
        &id,
        Duration::from_secs(60),
        "a segment with updates",
        |p| segments_with_updates(p, 1) >= 1,
    )
    .await;
    assert_eq!(
        first.segments.len(),
        1,
        "one segment while one desktop runs: {:?}",
        summary(&first)
    );
    let (updates, size) = updates_of(&first.segments[0]).unwrap();
    assert!(updates >= 1);
    assert_eq!(size, (1280, 720), "the desktop's screen");
    assert!(first.ended.is_none(), "still live");

    // It grows while the desktop runs (the text caret blinks; typing changes the page).
    let mut rfb = rfb;
    rfb.type_text("recorded-clip-4f1e").await.unwrap();
    // Select it (Chromium offers the selection as PRIMARY) and copy it (CLIPBOARD):
    // Xvnc tells its clients; the recording must not hold the text.
    const CONTROL: u32 = 0xffe3;
    for key in [0x61, 0x63] {
        rfb.key(CONTROL, true).await.unwrap();
        rfb.type_text(if key == 0x61 { "a" } else { "c" })
            .await
            .unwrap();
        rfb.key(CONTROL, false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let grown = wait_recording(
        &server,
        &id,
        Duration::from_secs(30),
        "the recording grows",
        |p| p.bytes > first.bytes && p.segments[0].data_records > first.segments[0].data_records,
    )
    .await;
    assert!(
        updates_of(&grown.segments[0]).unwrap().0 > updates,
        "more updates were recorded"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copied = recording(&server, &id).await;
    let needle = b"recorded-clip-4f1e";
    assert!(
        !copied.segments[0]
            .data
            .windows(needle.len())
            .any(|w| w == needle),
        "the desktop's clipboard is not in the recording"
    );

    // Who may read it.
    let response = fetch(&server, &id, Some(ADMIN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(response.headers()["x-recording-live"], "1");
    assert_eq!(
        fetch(&server, &id, Some(&token)).await.status(),
        200,
        "the session's own access token"
    );
    let by_query = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/recording?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200, "?token= as for task screenshots");
    let own_view = mint(&server, &id, "view").await;
    assert_eq!(
        fetch(&server, &id, Some(&own_view)).await.status(),
        200,
        "the session's own view token"
    );
    let other_view = mint(&server, &other_id, "view").await;
    for (what, token) in [
        ("interactive", other_token.as_str()),
        ("view", other_view.as_str()),
    ] {
        let status = fetch(&server, &id, Some(token)).await.status().as_u16();
        assert!(
            status == 403 || status == 404,
            "another session's {what} token is refused: {status}"
        );
        let by_query = server
            .http
            .get(server.url(&format!("/api/sessions/{id}/recording?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(by_query.status(), 404, "also as ?token= ({what})");
    }
    assert_eq!(fetch(&server, &id, None).await.status(), 401, "no token");
    assert_eq!(
        fetch(&server, &id, Some("not-a-token")).await.status(),
        401,
        "a bad token"
    );
    // The cookie only from our own pages.
    let cross_site = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/recording")))
        .header("cookie", format!("ls_{id}={token}"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(
        cross_site.status(),
        403,
        "a cross-site request with the cookie"
    );
    let same_site = server
        .http
        .get(server.url(&format!("/api/sessions/{id}/recording")))
        .header("cookie", format!("ls_{id}={token}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(same_site.status(), 200, "our own page with the cookie");
    // The session that did not ask to be recorded has no recording.
    let none = fetch(&server, &other_id, Some(ADMIN)).await;
    assert_eq!(none.status(), 404);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["error"]["code"], "recording_not_found");

    // Following a live recording: what was added since, by range.
    let whole = fetch(&server, &id, Some(ADMIN)).await;
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    let had = whole.bytes().await.unwrap();
    rfb.type_text(" more").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rest = loop {
        let response = server
            .http
            .get(server.url(&format!("/api/sessions/{id}/recording")))
            .bearer_auth(ADMIN)
            .header("range", format!("bytes={}-", had.len()))
            .header("if-range", &etag)
            .send()
            .await
            .unwrap();
        if response.status() == 206 {
            break response.bytes().await.unwrap();
        }
        assert_eq!(response.status(), 416, "nothing new yet");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recording never grew"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut joined = had.to_vec();
    joined.extend_from_slice(&rest);
    assert!(
        parse(&joined).bytes > parse(&had).bytes,
        "the range continues the same gzip stream"
    );

    // The session ends: the recording is closed with an END record and stays readable.
    drop(rfb);
    server.revoke(&id).await;
    let ended = wait_recording(
        &server,
        &id,
        Duration::from_secs(30),
        "an END record",
        |p| p.ended.is_some(),
    )
    .await;
    assert_eq!(ended.ended.as_deref(), Some("the session was revoked"));
    assert!(segments_with_updates(&ended, 1) >= 1);
    server.stop().await;
}

/// A fresh access token of `role` for a session, minted with the admin token.
async fn mint(server: &TestServer, id: &str, role: &str) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_record_every_session_is_recorded() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server =
        TestServer::start(&[&args[0], &args[1], "--start-url", &page.url, "--record"]).await;
    let created = server.create_session(json!({})).await;
    let (id, token) = id_token(&created);
    assert_eq!(
        server.get_session(&id).await["record"],
        false,
        "the session did not ask"
    );
    let _rfb = viewer(&server, &id, &token).await;
    let parsed = wait_recording(
        &server,
        &id,
        Duration::from_secs(60),
        "a segment with updates",
        |p| segments_with_updates(p, 1) >= 1,
    )
    .await;
    assert!(parsed.ended.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_sweep_deletes_old_recordings() {
    let data = tempfile::Builder::new()
        .prefix("ls")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = data.path().join("recordings");
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join(format!("{}.lsrec.gz", "a".repeat(32)));
    let recent = dir.join(format!("{}.lsrec.gz", "b".repeat(32)));
    for path in [&old, &recent] {
        std::fs::write(path, b"recorded").unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let server = TestServer::start_in(data, &["--recording-retention-hours", "24"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while old.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old recording was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recent.exists(),
        "a recording within the retention period is kept"
    );
    // The sweep logs each deletion right after it; give the line a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !crate::support::logs().contains("older than the retention period") {
        assert!(tokio::time::Instant::now() < deadline, "the deletion is logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_lets_an_idle_desktop_hibernate_and_records_a_new_segment_after_the_resume() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server = TestServer::start(&[
        &args[0],
        &args[1],
        "--start-url",
        &page.url,
        "--idle-timeout",
        "2",
    ])
    .await;
    let created = server
        .create_session(json!({ "record": true, "ttl_seconds": 3600 }))
        .await;
    let (id, token) = id_token(&created);

    let rfb = viewer(&server, &id, &token).await;
    wait_recording(
        &server,
        &id,
        Duration::from_secs(60),
        "a first segment with updates",
        |p| segments_with_updates(p, 1) >= 1,
    )
    .await;
    // The viewer leaves: only the recorder is connected, and the desktop hibernates.
    drop(rfb);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.get_session(&id).await["desktop"] != "hibernated" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recorder kept the idle desktop from hibernating"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let hibernated = recording(&server, &id).await;
    let segments = hibernated.segments.len();
    assert!(
        hibernated.ended.is_none(),
        "hibernation does not end the recording"
    );

    // The next viewer resumes it: the recorder connects again, a new segment begins.
    let _rfb = viewer(&server, &id, &token).await;
    let resumed = wait_recording(
        &server,
        &id,
        Duration::from_secs(60),
        "a new segment with updates after the resume",
        |p| p.segments.len() > segments && segments_with_updates(p, 1) >= 2,
    )
    .await;
    let last = resumed.segments.last().unwrap();
    let first = &resumed.segments[0];
    assert!(
        last.t_ms > first.last_t_ms,
        "the new segment comes after the first one's last update"
    );
    assert_eq!(updates_of(last).unwrap().1, (1280, 720));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_recording_of_a_live_session_continues_in_the_same_file() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let argv = [
        args[0].as_str(),
        args[1].as_str(),
        "--start-url",
        page.url.as_str(),
    ];
    let server = TestServer::start(&argv).await;
    let created = server
        .create_session(json!({ "record": true, "ttl_seconds": 3600 }))
        .await;
    let (id, token) = id_token(&created);
    let rfb = viewer(&server, &id, &token).await;
    let before = wait_recording(
        &server,
        &id,
        Duration::from_secs(60),
        "a first segment with updates",
        |p| segments_with_updates(p, 1) >= 1,
    )
    .await;
    let etag = fetch(&server, &id, Some(ADMIN)).await.headers()["etag"].clone();
    drop(rfb);
    // A graceful stop closes the recording without an end: the session goes on.
    let data = server.stop().await;
    let server = TestServer::start_in(data, &argv).await;
    let _rfb = viewer(&server, &id, &token).await;
    let after = wait_recording(
        &server,
        &id,
        Duration::from_secs(60),
        "a second segment after the restart",
        |p| segments_with_updates(p, 1) >= 2,
    )
    .await;
    assert!(after.ended.is_none(), "still recording");
    assert!(
        after.segments[0].data.starts_with(&before.segments[0].data),
        "what was recorded before the restart is kept, in order"
    );
    let response = fetch(&server, &id, Some(ADMIN)).await;
    assert_eq!(response.headers()["x-recording-live"], "1");
    assert_ne!(
        response.headers()["etag"],
        etag,
        "a rewritten file is another version for If-Range"
    );
    server.stop().await;
}
