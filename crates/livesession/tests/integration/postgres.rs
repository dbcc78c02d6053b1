//! The server on PostgreSQL (`--database-url postgres://…`), a real server from Debian's
//! package (livesession-pgtest): the same API, desktops and WebSockets as on SQLite; what
//! it stored survives a restart; and what must be unique is unique under concurrency.

use std::time::Duration;

use serde_json::json;

use crate::payments::{completed, deliver};
use crate::support::{ADMIN, PageServer, TestServer, close_of, rfb_over_ws, wait_for_colour, ws_connect};

const MAGENTA: (u8, u8, u8) = (255, 0, 255);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_serves_a_session_and_keeps_it_across_a_restart() {
    let database = livesession_pgtest::database();
    let page = PageServer::start().await;
    let page_args = page.server_args();
    let args = ["--database-url", database.as_str(), page_args[0].as_str(), page_args[1].as_str()];
    let server = TestServer::start(&args).await;

    // A session, watched through the proxy: the desktop shows its page.
    let created = server.create_session(json!({"start_url": page.url})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let token = server.mint_token(&id).await;
    let ws = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    let mut rfb = rfb_over_ws(ws).await;
    let share = wait_for_colour(&mut rfb, MAGENTA, 0.5, Duration::from_secs(60)).await;
    assert!(share >= 0.5, "the page covers {share:.2} of the screen");
    drop(rfb);
    let link = server.admin_post(&format!("/api/sessions/{id}/links"), json!({"role": "view"})).await;
    assert_eq!(link.status(), 201, "a viewer link is created");
    // Nothing of the store is in the data directory.
    let data = server.stop().await;
    assert!(!data.path().join("livesession.db").exists(), "no SQLite file beside a PostgreSQL store");

    // Restarted on the same database: the session and its link are there, and a
    // revocation closes a live connection with its code.
    let server = TestServer::start_in(data, &args).await;
    assert_eq!(server.get_session(&id).await["state"], "active");
    let links = server.admin_get(&format!("/api/sessions/{id}/links")).await;
    assert_eq!(links["links"].as_array().map(Vec::len), Some(1), "{links}");
    let token = server.mint_token(&id).await;
    let mut ws = ws_connect(&server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.unwrap().unwrap().unwrap();
    assert!(first.is_binary(), "the desktop answers after the restart");
    server.revoke(&id).await;
    assert_eq!(close_of(&mut ws, Duration::from_secs(5)).await, (4008, "session revoked".to_owned()));
    assert_eq!(server.get_session(&id).await["state"], "revoked");
    server.stop().await;
}

/// Stripe retries and may deliver one payment several times at once, with distinct event
/// ids: the database, not a lock in the process, keeps it to one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_for_one_checkout_make_one_session_on_postgres() {
    let database = livesession_pgtest::database();
    let server = TestServer::start(&[
        "--database-url",
        &database,
        "--stripe-secret-key",
        "sk_test_x",
        "--stripe-webhook-secret",
        crate::payments::SECRET,
        "--stripe-api-base",
        "http://127.0.0.1:9",
    ])
    .await;
    let cs = "cs_test_pg_concurrent";
    let deliveries = (0..50).map(|n| {
        let mut event = completed(cs, "pi_pg_concurrent", 100);
        event["id"] = json!(format!("evt_pg_{n}"));
        let server = &server;
        async move { deliver(server, event).await }
    });
    let statuses = futures_util::future::join_all(deliveries).await;
    assert!(statuses.iter().all(|s| *s == 200), "every delivery is acknowledged: {statuses:?}");
    let list: serde_json::Value = server
        .http
        .get(server.url(&format!("/api/sessions?checkout_session_id={cs}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1), "{list}");
    server.stop().await;
}

/// A second server on the same database and secrets (its own data directory otherwise).
async fn second_server(first: &TestServer, args: &[&str]) -> TestServer {
    let data = tempfile::Builder::new().prefix("ls").tempdir_in("/tmp").unwrap();
    let secrets = data.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(first.data_path().join("secrets")).unwrap().flatten() {
        let to = secrets.join(entry.file_name());
        std::fs::copy(entry.path(), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    TestServer::start_in(data, args).await
}

/// Opens a VNC connection to `server` for session `id` and waits for the desktop's first
/// bytes (the relay runs).
async fn watching(server: &TestServer, id: &str) -> crate::support::Ws {
    let token = server.mint_token(id).await;
    let mut ws = ws_connect(server, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.unwrap().unwrap().unwrap();
    assert!(first.is_binary(), "the desktop answers");
    ws
}

/// Two servers, one database: a session revoked through one closes its connections on
/// the other within a second (LISTEN/NOTIFY), and a token one server issued is good on
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_through_one_server_closes_connections_on_another_within_a_second() {
    let database = livesession_pgtest::database();
    let args = ["--database-url", database.as_str()];
    let a = TestServer::start(&args).await;
    let b = second_server(&a, &args).await;

    let created = a.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(b.get_session(&id).await["state"], "active", "the other server reads the same store");
    // Minted by B, used on A: the servers share the signing key.
    let token = b.mint_token(&id).await;
    let mut on_a = ws_connect(&a, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(60), on_a.next()).await.unwrap().unwrap().unwrap();
    assert!(first.is_binary(), "the desktop answers on A");

    let revoked_at = std::time::Instant::now();
    b.revoke(&id).await;
    let (code, reason) = close_of(&mut on_a, Duration::from_secs(5)).await;
    let took = revoked_at.elapsed();
    assert_eq!((code, reason.as_str()), (4008, "session revoked"));
    assert!(took < Duration::from_secs(1), "the close on A came {took:?} after the revocation on B");
    // A stopped the desktop it ran for the session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.get_session(&id).await["desktop"] != "stopped" {
        assert!(tokio::time::Instant::now() < deadline, "A's desktop for the revoked session stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.stop().await;
    a.stop().await;
}

/// Two servers, one database: a task created and cancelled through one reaches a control
/// channel open on the other within a second each (its events are fanned out too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_updates_written_through_one_server_reach_control_channels_on_another() {
    let database = livesession_pgtest::database();
    let args = ["--database-url", database.as_str(), "--steps-runners", "0"];
    let a = TestServer::start(&args).await;
    let b = second_server(&a, &args).await;
    let id = a.create_session(json!({})).await["id"].as_str().unwrap().to_owned();
    let token = b.mint_token(&id).await;
    let mut on_b = crate::tasks::control(&b, &id, &token, None).await;

    let created_at = std::time::Instant::now();
    let r = a.admin_post(&format!("/api/sessions/{id}/tasks"), json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).await;
    assert_eq!(r.status(), 201, "task created on A");
    let task: serde_json::Value = r.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();
    let seen = crate::tasks::task_updates(&mut on_b, Duration::from_secs(5), |u| u["task_id"] == task_id.as_str()).await;
    let took = created_at.elapsed();
    assert_eq!(seen.last().map(|u| (u["task_id"].clone(), u["state"].clone())), Some((json!(task_id), json!("queued"))), "{seen:?}");
    assert!(took < Duration::from_secs(1), "B's control channel heard of the task {took:?} after it was created on A");

    let cancelled_at = std::time::Instant::now();
    let r = a.admin_post(&format!("/api/tasks/{task_id}/cancel"), json!({"reason": "not needed"})).await;
    assert_eq!(r.status(), 200);
    let seen = crate::tasks::task_updates(&mut on_b, Duration::from_secs(5), |u| u["state"] == "cancelled").await;
    let took = cancelled_at.elapsed();
    assert_eq!(seen.last().map(|u| u["state"].clone()), Some(json!("cancelled")), "{seen:?}");
    assert!(took < Duration::from_secs(1), "B heard of the cancel {took:?} after it");
    b.stop().await;
    a.stop().await;
}

/// Two nodes on one database with a cluster secret, a shared directory and the page
/// server; `extra_a` and `extra_b` are each node's own flags.
struct TwoNodes {
    a: TestServer,
    b: TestServer,
    page: PageServer,
    _shared: tempfile::TempDir,
}

async fn two_nodes(extra_a: &[&str], extra_b: &[&str]) -> TwoNodes {
    let database = livesession_pgtest::database();
    let page = PageServer::start().await;
    let page_args = page.server_args();
    let shared = tempfile::Builder::new().prefix("lsshared").tempdir_in("/tmp").unwrap();
    let shared_dir = shared.path().to_str().unwrap();
    let start = async |id: &str, extra: &[&str]| {
        let mut args = vec![
            "--database-url", database.as_str(),
            "--cluster-secret", "a-test-cluster-secret-of-forty-characters",
            "--shared-dir", shared_dir,
            "--node-id", id,
            "--node-heartbeat", "1",
            page_args[0].as_str(), page_args[1].as_str(),
        ];
        args.extend_from_slice(extra);
        TestServer::start(&args).await
    };
    let a = start("node-a", extra_a).await;
    let b = start("node-b", extra_b).await;
    TwoNodes { a, b, page, _shared: shared }
}

/// Two nodes with a cluster secret and a shared directory: a session's desktop is placed
/// on one node (the least loaded; on a tie, the first id), a viewer connecting through the
/// other is relayed there and sees the page, only the placed node runs a desktop, and a
/// revocation through the relaying node closes both connections with 4008 within a second.
/// When the placed node stops, the relayed viewer is told why (4011 passed through, or
/// 4010 from the relay), and the session moves to the node still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_cluster_secret_one_node_runs_the_desktop_and_the_other_relays_to_it() {
    let TwoNodes { a, b, page, _shared } = two_nodes(&["--node-dead-after", "2"], &["--node-dead-after", "2"]).await;

    // Made on B, placed when first needed: both nodes are idle, so on node-a.
    let id = b.create_session(json!({"start_url": page.url})).await["id"].as_str().unwrap().to_owned();
    assert_eq!(a.get_session(&id).await["node"], serde_json::Value::Null, "not placed before it is needed");
    // Minted by A, used on B: the shared directory holds one signing key.
    let token = a.mint_token(&id).await;
    let ws = ws_connect(&b, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
    assert_eq!(b.get_session(&id).await["node"], "node-a");
    let mut rfb = rfb_over_ws(ws).await;
    let share = wait_for_colour(&mut rfb, MAGENTA, 0.5, Duration::from_secs(60)).await;
    assert!(share >= 0.5, "through node-b, the page covers {share:.2} of node-a's desktop");
    // One desktop, on node-a.
    assert_eq!(a.get_session(&id).await["desktop"], "ready");
    assert!(!b.desktop_dir(&id).exists(), "node-b runs no desktop of its own for the session");
    let metrics = reqwest::Client::new().get(b.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("livesession_node_relays_total{result=\"websocket\"} 1\n"), "node-b counted the relayed WebSocket:\n{metrics}");
    assert!(metrics.contains("livesession_node_relays_open 1\n"), "and it is open:\n{metrics}");
    drop(rfb);

    // A control channel on each node; revoked through node-b: both close with 4008.
    let mut via_b = ws_connect(&b, &format!("/api/sessions/{id}/control?token={token}"), &[]).await;
    let mut on_a = ws_connect(&a, &format!("/api/sessions/{id}/control?token={token}"), &[]).await;
    use futures_util::StreamExt;
    for ws in [&mut via_b, &mut on_a] {
        let hello = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        assert!(hello.is_text(), "{hello:?}");
    }
    let revoked_at = std::time::Instant::now();
    b.revoke(&id).await;
    for (name, ws) in [("relayed through node-b", &mut via_b), ("on node-a", &mut on_a)] {
        let (code, reason) = close_of(ws, Duration::from_secs(5)).await;
        assert_eq!((code, reason.as_str()), (4008, "session revoked"), "{name}");
    }
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "both closed {took:?} after the revocation");

    // A second session, placed on the now idle node-a again, watched through node-b; node-a
    // stops: the relayed viewer is told, and the session moves to node-b.
    let id = b.create_session(json!({"start_url": page.url})).await["id"].as_str().unwrap().to_owned();
    let token = b.mint_token(&id).await;
    let mut via_b = watching(&b, &id).await;
    assert_eq!(b.get_session(&id).await["node"], "node-a");
    drop(a.stop().await);
    let (code, reason) = close_of(&mut via_b, Duration::from_secs(30)).await;
    assert!(matches!(code, 4010 | 4011), "the relayed viewer is told: {code} {reason}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut rfb = loop {
        let ws = ws_connect(&b, &format!("/api/sessions/{id}/vnc?token={token}"), &[]).await;
        if b.get_session(&id).await["node"] == "node-b" {
            break rfb_over_ws(ws).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "the session moves to node-b once node-a is gone");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let share = wait_for_colour(&mut rfb, MAGENTA, 0.5, Duration::from_secs(60)).await;
    assert!(share >= 0.5, "on node-b the page covers {share:.2}");
    drop(rfb);
    b.stop().await;
}

/// Two nodes with a cluster secret: a task whose session's desktop runs on node-a is
/// claimed by node-b's built-in runner (node-a has none), which drives that desktop
/// through the relay rather than starting a second one; the task succeeds, and the
/// person watching on node-a sees its updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_built_in_runner_drives_a_desktop_on_another_node_through_the_relay() {
    let TwoNodes { a, b, page, _shared } = two_nodes(&["--steps-runners", "0"], &["--steps-runners", "1"]).await;

    let id = a.create_session(json!({"start_url": page.url})).await["id"].as_str().unwrap().to_owned();
    let token = a.mint_token(&id).await;
    // Watched on node-a: placed there (idle nodes, the first id).
    let mut watching_a = crate::tasks::control(&a, &id, &token, None).await;
    assert_eq!(a.get_session(&id).await["node"], "node-a");

    let r = b.admin_post(&format!("/api/sessions/{id}/tasks"), json!({"kind": "steps", "steps": [{"action": "screenshot"}]})).await;
    assert_eq!(r.status(), 201);
    let task_id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let updates = crate::tasks::task_updates(&mut watching_a, Duration::from_secs(90), |u| {
        matches!(u["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
    })
    .await;
    let last = updates.last().expect("task updates on node-a");
    assert_eq!((last["task_id"].as_str(), last["state"].as_str()), (Some(task_id.as_str()), Some("succeeded")), "{updates:#?}");
    let task = b.admin_get(&format!("/api/tasks/{task_id}")).await;
    assert!(
        task["events"].as_array().unwrap().iter().any(|e| e["screenshot"] == true),
        "the screenshot was taken in node-a's browser: {task:#}"
    );
    assert!(!b.desktop_dir(&id).exists(), "node-b started no desktop of its own");
    assert_eq!(a.get_session(&id).await["desktop"], "ready");
    b.stop().await;
    a.stop().await;
}

/// A server stopped just after another server revoked a session whose desktop it runs:
/// the desktop's stop, begun when the revocation arrived, is finished before the server
/// exits, so nothing of the desktop is left mounted (it was, when shutdown cut the stop
/// off half-way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_stopped_right_after_a_revocation_elsewhere_leaves_no_desktop_behind() {
    let database = livesession_pgtest::database();
    let args = ["--database-url", database.as_str()];
    let a = TestServer::start(&args).await;
    let b = second_server(&a, &args).await;
    let desktops = a.desktops_root();
    for delay_ms in [0u64, 2, 5, 10] {
        let id = a.create_session(json!({})).await["id"].as_str().unwrap().to_owned();
        let on_a = watching(&a, &id).await;
        drop(on_a);
        b.revoke(&id).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if delay_ms == 10 {
            break;
        }
        // The next round needs A running: only the last round stops it (below); the
        // others check that an end heard of by the fan-out stops the desktop whole.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.desktop_dir(&id).exists() {
            assert!(tokio::time::Instant::now() < deadline, "A stopped the revoked session's desktop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let data = a.stop().await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = desktops.to_string_lossy().into_owned();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(root.as_str())).collect();
    assert!(left.is_empty(), "mounts left under {root}: {left:#?}");
    drop(data);
    b.stop().await;
}

/// Notifications sent while a server's listening connection is down are gone: the
/// server resynchronises from the store when it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_whose_listening_connection_was_cut_resynchronises_from_the_store() {
    let database = livesession_pgtest::database();
    let args = ["--database-url", database.as_str()];
    let a = TestServer::start(&args).await;
    let b = second_server(&a, &args).await;
    let created = a.create_session(json!({})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut on_a = watching(&a, &id).await;

    // Cut every listening connection (A's and B's), then revoke at once through B: A may
    // be reconnecting when B's notice goes out.
    let name = database.rsplit('/').next().unwrap().to_owned();
    let cut = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", database.split(':').nth(2).unwrap().split('/').next().unwrap(), "-U", "postgres", "-d", &name, "-tAc"])
        .arg("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")
        .output()
        .expect("psql runs");
    let cut_count = String::from_utf8_lossy(&cut.stdout).trim().to_owned();
    assert_eq!(cut_count, "2", "both servers' listening connections were cut: {}", String::from_utf8_lossy(&cut.stderr));
    b.revoke(&id).await;
    let (code, reason) = close_of(&mut on_a, Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (4008, "session revoked"));
    b.stop().await;
    a.stop().await;
}

/// Servers on one database register as nodes and see each other; a graceful stop
/// deregisters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_on_one_database_list_each_other_as_live_nodes() {
    let database = livesession_pgtest::database();
    let a = TestServer::start(&["--database-url", &database, "--node-id", "node-a", "--node-heartbeat", "1"]).await;
    let b = second_server(&a, &["--database-url", &database, "--node-id", "node-b", "--node-addr", "10.0.0.2:8080", "--node-heartbeat", "1"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = a.admin_get("/api/nodes").await;
        if listed["nodes"].as_array().map(Vec::len) == Some(2) {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "both nodes registered within 10 s: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nodes = listed["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["id"], "node-a");
    assert_eq!(nodes[0]["this"], true);
    assert_eq!(nodes[1]["id"], "node-b");
    assert_eq!(nodes[1]["this"], false);
    assert_eq!(nodes[1]["addr"], "10.0.0.2:8080");
    assert!(nodes.iter().all(|n| n["alive"] == true && n["capacity"].as_u64().is_some_and(|c| c > 0)), "{listed}");
    assert_eq!(a.http_get_status("/api/nodes", None).await, 401, "the admin's only");

    b.stop().await;
    let after = a.admin_get("/api/nodes").await;
    let ids: Vec<&str> = after["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node-a"], "a graceful stop deregisters: {after}");
    a.stop().await;
}
