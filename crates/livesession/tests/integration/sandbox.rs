//! What a session's browser can reach: a page inside the desktop probes the gateway and
//! another loopback listener of this test; both must fail while the page's own server
//! (forwarded with `--desktop-host-ports`) works. No traffic leaves 127.0.0.0/8.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    PageServer, TestServer, close_of, logs, rfb_over_ws, wait_for_colour, ws_connect,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_the_desktop_cannot_reach_the_gateway_or_other_loopback_services() {
    let page = PageServer::start().await;
    // Another service on this machine's loopback, e.g. a database: it must see nothing.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let other_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = other_hits.clone();
    tokio::spawn(async move {
        while other.accept().await.is_ok() {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;

    let gateway = format!("http://127.0.0.1:{}/healthz", server.addr.port());
    let service = format!("http://127.0.0.1:{other_port}/");
    let own = format!("http://127.0.0.1:{}/page?own", page.port);
    let start_url = format!(
        "{}?probe={}&probe={}&probe={}",
        page.url,
        urlencode(&gateway),
        urlencode(&service),
        urlencode(&own)
    );
    let created = server.create_session(json!({ "start_url": start_url })).await;
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let ws = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    let _rfb = rfb_over_ws(ws).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let verdict = |url: &str| {
        page.reports()
            .iter()
            .find_map(|r| r.strip_prefix(&format!("probe {url} ")).map(str::to_owned))
    };
    while [&gateway, &service, &own].iter().any(|u| verdict(u).is_none())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(verdict(&own).as_deref(), Some("reached"), "the page's own server works: {:?}", page.reports());
    assert_eq!(verdict(&gateway).as_deref(), Some("blocked"), "{:?}", page.reports());
    assert_eq!(verdict(&service).as_deref(), Some("blocked"), "{:?}", page.reports());
    assert_eq!(
        other_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the other loopback service saw no connection"
    );
    server.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `script` as session `id`'s desktop user, inside its mount namespace: what code
/// that took over the desktop (a browser exploit) could do.
async fn as_desktop_user(server: &TestServer, id: &str, script: &str) -> std::process::Output {
    use std::os::unix::fs::MetadataExt;
    let procs = server.desktop_procs(id);
    let pid = *livesession_desktop::members(0, procs.pidns)
        .first()
        .expect("the desktop has processes");
    let uid = std::fs::metadata(server.desktop_dir(id).join("run")).unwrap().uid();
    tokio::process::Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .args(["--mount", "--net", "--", "setpriv"])
        .args([format!("--reuid={uid}"), format!("--regid={uid}")])
        .args(["--clear-groups", "--", "/bin/bash", "-c", script])
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_that_links_its_vnc_socket_to_another_sessions_shows_its_viewer_nothing_of_it() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;
    // A shows the magenta test page, B a white about:blank.
    let a = server.create_session(json!({ "start_url": page.url })).await;
    let b = server.create_session(json!({ "start_url": "about:blank" })).await;
    let (a_id, a_token) = (a["id"].as_str().unwrap(), a["token"].as_str().unwrap());
    let (b_id, b_token) = (b["id"].as_str().unwrap(), b["token"].as_str().unwrap());
    let viewer = |id: &str, token: &str| format!("/api/sessions/{id}/vnc?token={token}");
    let binary = [("Sec-WebSocket-Protocol", "binary")];

    let mut rfb_a = rfb_over_ws(ws_connect(&server, &viewer(a_id, a_token), &binary).await).await;
    assert!(wait_for_colour(&mut rfb_a, (255, 0, 255), 0.5, Duration::from_secs(90)).await >= 0.5);
    drop(rfb_a);
    let mut rfb_b = rfb_over_ws(ws_connect(&server, &viewer(b_id, b_token), &binary).await).await;
    assert!(wait_for_colour(&mut rfb_b, (255, 255, 255), 0.5, Duration::from_secs(90)).await >= 0.5);

    // Desktop A swaps its VNC socket for a link to B's.
    let out = as_desktop_user(
        &server,
        a_id,
        &format!("rm -f /run/desktop/vnc.sock && ln -s ../../{b_id}/run/vnc.sock /run/desktop/vnc.sock && echo swapped"),
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("swapped"), "{out:?}");

    // A's viewer gets a reason, never B's screen.
    let mut ws = ws_connect(&server, &viewer(a_id, a_token), &binary).await;
    let (code, reason) = close_of(&mut ws, Duration::from_secs(20)).await;
    assert_eq!(code, 4010, "{reason}");
    assert!(reason.contains("tampered"), "{reason}");
    assert!(logs().contains("desktop tampered with its VNC socket"));
    // A's desktop was stopped as failed; B's goes on and its viewer still sees it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.desktop_dir(a_id).join("run/vnc.sock").exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!server.desktop_dir(a_id).join("run").exists(), "A's tampered desktop is gone");
    assert!(wait_for_colour(&mut rfb_b, (255, 255, 255), 0.5, Duration::from_secs(10)).await >= 0.5);
    assert_eq!(server.get_session(b_id).await["desktop"], "ready");
    drop(rfb_b);
    server.stop().await;
}

/// A session's desktop, started through the gateway, runs every process under the
/// seccomp filter, and a person driving it through the viewer starts nothing, even after
/// the desktop's user wrote openbox a hostile configuration and had it reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_desktop_runs_under_the_filter_and_its_viewer_can_start_nothing() {
    let page = PageServer::start().await;
    let args = page.server_args();
    let server = TestServer::start(&[&args[0], &args[1]]).await;
    let s = server.create_session(json!({ "start_url": page.url })).await;
    let (id, token) = (s["id"].as_str().unwrap(), s["token"].as_str().unwrap());
    let binary = [("Sec-WebSocket-Protocol", "binary")];
    let mut rfb =
        rfb_over_ws(ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &binary).await).await;
    assert!(wait_for_colour(&mut rfb, (255, 0, 255), 0.5, Duration::from_secs(90)).await >= 0.5);

    let desktop = server.desktop_procs(id);
    let procs = livesession_desktop::members(0, desktop.pidns);
    assert!(procs.len() >= 5, "{procs:?} {:?} {:?}", desktop.pidns, desktop.members());
    for pid in &procs {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let name = status.lines().next().unwrap_or_default().to_owned();
        assert!(
            status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
            "{name} ({pid}) runs without the seccomp filter"
        );
    }

    let display = std::fs::read_to_string(server.desktop_dir(id).join("run/display")).unwrap();
    let out = as_desktop_user(
        &server,
        id,
        &format!(
            r#"mkdir -p ~/.config/openbox && cd ~/.config/openbox
            printf '%s' '<openbox_config xmlns="http://openbox.org/3.4/rc"><mouse><context name="Client"><mousebind button="Right" action="Press"><action name="Execute"><command>touch /home/desktop/pwned</command></action></mousebind></context></mouse></openbox_config>' > rc.xml
            HOME=/home/desktop DISPLAY=:{} openbox --reconfigure
            /usr/bin/xdg-open https://example.org/ >/dev/null 2>&1; echo "xdg-open $?""#,
            display.trim()
        ),
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("xdg-open 126"), "{out:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The person right-clicks the page through the gateway.
    for buttons in [4, 0] {
        rfb.pointer(640, 360, buttons).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!server.desktop_dir(id).join("home/pwned").exists(), "openbox ran the desktop's command");
    assert_eq!(server.get_session(id).await["desktop"], "ready");
    drop(rfb);
    server.stop().await;
}
