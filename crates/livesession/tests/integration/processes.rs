//! No desktop process outlives its session or the server (checked through /proc).

use std::time::Duration;

use serde_json::json;

use crate::support::{DesktopProcs, TestServer, rfb_over_ws, ws_connect};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_whose_chromium_was_closed_is_replaced_on_the_next_connection() {
    let server = TestServer::start(&[]).await;
    let (id, group) = start_desktop(&server).await;
    // Close the browser, as a user closing its only window would (the browser process,
    // not a renderer: it is the one without `--type=`).
    let browser = group.members()
        .into_iter()
        .find(|pid| {
            let cmdline = String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
            .into_owned();
            cmdline.contains("--user-data-dir") && !cmdline.contains("--type=")
        })
        .expect("Chromium's browser process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(browser),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let token = server.mint_token(&id).await;
    let ws = ws_connect(
        &server,
        &format!("/api/sessions/{id}/vnc?token={token}"),
        &[],
    )
    .await;
    drop(rfb_over_ws(ws).await);
    let new_group = server.desktop_procs(&id);
    assert_ne!(new_group, group, "a fresh desktop was started");
    // Stopping the broken desktop may still be reaping its processes on a loaded machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !group.members().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        group.members().is_empty(),
        "the broken desktop's processes are gone"
    );
    assert!(new_group.members().len() >= 5);
    server.stop().await;
}
