//! No desktop process outlives its session or the server (checked through /proc).

use std::time::Duration;

use serde_json::json;

use crate::cdp::Cdp;
use crate::hibernation::{control, names, statuses_until};
use crate::support::{DesktopProcs, PageServer, TestServer, Ws, rfb_over_ws, wait_for_colour, ws_connect};

/// Live processes whose command line mentions `needle` (e.g. a data directory).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

async fn start_desktop(server: &TestServer) -> (String, DesktopProcs) {
    let created = server.create_session(json!({})).await;
    let (id, token) = (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap(),
    );
    let ws = ws_connect(
        server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[],
    )
    .await;
    drop(rfb_over_ws(ws).await);
    let pgid = server.desktop_procs(&id);
    let members = pgid.members();
    assert!(
        members.len() >= 3,
        "Xvnc, openbox and Chromium run in the desktop's group: {members:?}"
    );
    (id, pgid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_session_and_stopping_the_server_leave_no_process_behind() {
    let server = TestServer::start(&[]).await;
    // The sandbox's outer process names the desktops' directories on its command line.
    let data = server.desktops_root().to_string_lossy().into_owned();

    let (first, first_group) = start_desktop(&server).await;
    let (_second, second_group) = start_desktop(&server).await;
    assert!(!processes_mentioning(&data).is_empty());

    server.revoke(&first).await;
    assert!(
        first_group.members().is_empty(),
        "the revoked session's processes are gone"
    );
    assert!(
        !server.desktop_dir(&first).exists(),
        "its private directory is removed"
    );
    assert!(
        !second_group.members().is_empty(),
        "the other session's desktop still runs"
    );

    server.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        second_group.members().is_empty(),
        "server shutdown stops every desktop"
    );
    assert_eq!(
        processes_mentioning(&data),
        Vec::<i32>::new(),
        "no process mentions the desktops' directory"
    );
}

/// Whether a command line is Chromium's browser process (its others have `--type=`), for
/// [`DesktopProcs::member_where`].
fn is_browser(argv: &[String]) -> bool {
    argv.iter().any(|arg| arg.contains("--user-data-dir")) && !argv.iter().any(|arg| arg.contains("--type="))
}

/// Waits for the control channel's `restarting` then `ready`; returns how long it took.
async fn restarting_then_ready(control: &mut Ws) -> Duration {
    let started = tokio::time::Instant::now();
    let seen = statuses_until(control, "ready", Duration::from_secs(30)).await;
    assert_eq!(names(&seen), ["restarting", "ready"], "{seen:#?}");
    assert_eq!(seen[0]["step"], "chromium");
    started.elapsed()
}

/// The page tab's URL and cookie, asked over a fresh DevTools connection.
async fn page_url_and_cookie(server: &TestServer, id: &str, token: &str) -> (String, String) {
    let mut cdp = Cdp::connect(server, &format!("/api/sessions/{id}/cdp?token={token}")).await;
    let page = cdp.attach_page().await;
    let evaluated = cdp
        .call("Runtime.evaluate", json!({ "expression": "JSON.stringify([location.href, document.cookie])", "returnByValue": true }), Some(&page))
        .await;
    let [url, cookie]: [String; 2] = serde_json::from_str(evaluated["result"]["value"].as_str().unwrap()).unwrap();
    (url, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_exits_comes_back_in_the_same_desktop_with_the_sessions_state() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;
    let created = server.create_session(json!({ "start_url": page.url })).await;
    let (id, token) = (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned());
    let mut control = control(&server, &id, &token).await;
    let seen = statuses_until(&mut control, "ready", Duration::from_secs(60)).await;
    assert_eq!(names(&seen).last(), Some(&"ready"), "{seen:#?}");
    let group = server.desktop_procs(&id);
    let mut rfb = rfb_over_ws(ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await).await;
    assert!(wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(30)).await >= 0.5);

    // The session's state: a page at a URL of its own and a cookie.
    let mut cdp = Cdp::connect(&server, &format!("/api/sessions/{id}/cdp?token={token}")).await;
    let tab = cdp.attach_page().await;
    let moved = format!("{}?visited=1", page.url);
    cdp.call("Page.enable", json!({}), Some(&tab)).await;
    cdp.call("Page.navigate", json!({ "url": moved }), Some(&tab)).await;
    cdp.call(
        "Runtime.evaluate",
        json!({ "expression": "new Promise(r => { if (document.readyState === 'complete') r(); else addEventListener('load', () => r()); })", "awaitPromise": true }),
        Some(&tab),
    )
    .await;
    cdp.call("Runtime.evaluate", json!({ "expression": "document.cookie = 'kept=yes; max-age=3600; path=/'" }), Some(&tab)).await;

    // 1. The browser closes, as when the person closes its last window: it comes back with
    // its tab and cookie, in the same desktop (same processes but Chromium's).
    let first = group.member_where(is_browser).expect("Chromium's browser process");
    cdp.send("Browser.close", json!({}), None).await;
    let took = restarting_then_ready(&mut control).await;
    eprintln!("browser closed: restarting → ready in {} ms", took.as_millis());
    let (code, reason) = cdp.closed(Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (4010, "desktop unavailable: the browser exited and is starting again; reconnect"));
    assert_eq!(server.desktop_procs(&id), group, "the same desktop");
    let second = group.member_where(is_browser).expect("a new browser process in the same desktop");
    assert_ne!(second, first);
    let (url, cookie) = page_url_and_cookie(&server, &id, &token).await;
    assert_eq!(url, moved, "the tab is restored");
    assert!(cookie.contains("kept=yes"), "the cookie is kept: {cookie:?}");

    // 2. The browser is killed (a crash): it comes back too, showing the page again, and
    // the viewer's connection stays up throughout.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second), nix::sys::signal::Signal::SIGKILL).unwrap();
    let took = restarting_then_ready(&mut control).await;
    eprintln!("browser killed: restarting → ready in {} ms", took.as_millis());
    let third = group.member_where(is_browser).expect("a new browser process in the same desktop");
    assert!(third != second && third != first);
    assert!(wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(30)).await >= 0.5, "the page is shown again");
    let (url, _) = page_url_and_cookie(&server, &id, &token).await;
    assert_eq!(url, moved, "the tab is restored after a crash");
    assert_eq!(server.get_session(&id).await["desktop"], "ready");
    server.stop().await;
}
