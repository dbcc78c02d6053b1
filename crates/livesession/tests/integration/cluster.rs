//! Three nodes (the real binary, each in its own network namespace) on one PostgreSQL
//! database and one shared directory (docs/scaling.md): a session's desktop is placed on
//! one node and every other node relays to it; a revocation anywhere closes everything;
//! a killed node's sessions resume elsewhere from their saved state; placement spreads
//! over live nodes and skips a draining one. Harness: cluster_support.rs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster_support::{Cdp, Cluster, Control, NODE_IDS, NODE_PORT, Viewer, Vnc, create_session, deliver, epoch_ms, page_url};

const MAGENTA: (u8, u8, u8) = (255, 0, 255);
/// What the person types through the real viewer on node B.
const TYPED: &str = "typed through b";

/// Waits until the session's state was saved by a hibernation (`hibernated_at` set, or
/// its desktop `hibernated`), asking through `via`.
async fn wait_hibernated(cluster: &Cluster, via: usize, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let session = cluster.nodes[via].api.get_session(id).await;
        if !session["hibernated_at"].is_null() || session["desktop"] == "hibernated" {
            return session;
        }
        assert!(Instant::now() < deadline, "session {id} did not hibernate within {limit:?}: {session:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_serve_one_session_and_a_revocation_closes_everything() {
    let cluster = Cluster::start(&[]).await;
    let (a, b, c) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let listed = cluster.nodes_listed(0).await;
    let ids: Vec<&str> = listed["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, NODE_IDS, "{listed}");

    // Created through A; not placed before its first use.
    let created = a.api.create_session(json!({ "start_url": page_url() })).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let refresh = created["refresh_token"].as_str().expect("a refresh token for the viewer link").to_owned();
    assert_eq!(cluster.placed_on(1, &id).await, None, "a session is placed on first use, not at creation");

    // Through B: a control channel (token minted on B) and the real viewer (noVNC in
    // headless Chromium, e2e/cluster-viewer.mjs) on B's origin, opened with the session's
    // link as a person gets it (`/s/{id}#token=<refresh token>`): it watches the page
    // and types into it.
    let token_b = b.api.mint_token(&id).await;
    let mut control_b = Control::open(b, &id, &token_b).await.expect("control through B");
    control_b.until_ready(Duration::from_secs(90)).await.expect("the desktop gets ready, seen through B");
    let b_origin = format!("http://{}:{NODE_PORT}", b.ip);
    let mut viewer = Viewer::start(&format!("{b_origin}/s/{id}#token={refresh}"), TYPED, Duration::from_secs(180));
    let typed = viewer.phase("typed", Duration::from_secs(300)).await;
    assert_eq!(typed["page_origin"], b_origin.as_str(), "the viewer's page is on node B: {typed}");
    assert_eq!(typed["state"], "connected", "the viewer shows the desktop: {typed}");
    assert_eq!(typed["hash_left"], "", "the link's token left the address bar: {typed}");
    assert!(typed["magenta_share"].as_f64().unwrap() >= 0.5, "the viewer on B sees the page: {typed}");
    assert_eq!(typed["console_problems"], json!([]), "a clean console while connecting and typing: {typed}");
    let sockets = typed["sockets"].as_array().unwrap();
    let open: Vec<&str> = sockets.iter().filter(|s| s["closed"].is_null()).map(|s| s["path"].as_str().unwrap()).collect();
    for channel in ["control", "vnc"] {
        let path = format!("/api/sessions/{id}/{channel}");
        assert!(open.contains(&path.as_str()), "the viewer's {channel} socket is open on B: {typed}");
    }

    // Through C: another control channel on the same desktop.
    let token_c = c.api.mint_token(&id).await;
    let mut control_c = Control::open(c, &id, &token_c).await.expect("control through C");
    control_c.until_ready(Duration::from_secs(30)).await.expect("the same desktop is ready, seen through C");

    // One placement, the same whoever is asked.
    let owner = cluster.placed_on(0, &id).await.expect("placed after its first use");
    assert!(NODE_IDS.contains(&owner.as_str()), "placed on a node of the cluster: {owner}");
    for (via, node) in NODE_IDS.iter().enumerate().skip(1) {
        assert_eq!(cluster.placed_on(via, &id).await.as_deref(), Some(owner.as_str()), "node {node} agrees");
    }
    eprintln!("session {id} placed on node {owner}");
    assert_eq!(cluster.desktop_dirs(&id), [owner.as_str()], "one desktop, on the placed node; the others relay");

    // What the person typed in the viewer on B reached the page (read over CDP through A).
    let token_a = a.api.mint_token(&id).await;
    let mut cdp_a = Cdp::open(a, &id, &token_a).await.expect("CDP through A");
    cdp_a.attach_page().await.expect("the page target, through A");
    let value = cdp_a.eval_until("document.getElementById('t').value", &json!(TYPED), Duration::from_secs(20)).await;
    assert_eq!(value, json!(TYPED), "the page's input holds what was typed in the viewer on B; the page reported {:?}", cluster.pages.reports());
    assert!(cluster.pages.reports().iter().any(|r| r == TYPED), "{:?}", cluster.pages.reports());

    // Revoked through C: every connection, on every node, closes with 4008 within 1 s:
    // the raw ones here, and the viewer's control and VNC sockets on B (as its page saw
    // them, with the wall-clock time of each CloseEvent).
    c.api.revoke(&id).await;
    let answered = Instant::now();
    let answered_ms = epoch_ms();
    let limit = Duration::from_secs(5);
    let (on_b, on_c, cdp) = tokio::join!(
        crate::cluster_support::closed_within(&mut control_b.ws, limit),
        crate::cluster_support::closed_within(&mut control_c.ws, limit),
        crate::cluster_support::closed_within(&mut cdp_a.ws, limit),
    );
    for (what, closed) in [("control on B", on_b), ("control on C", on_c), ("CDP on A", cdp)] {
        let closed = closed.unwrap_or_else(|| panic!("{what} was not closed within {limit:?} of the revocation"));
        let after = closed.at.saturating_duration_since(answered);
        eprintln!("{what}: {} {:?} {} ms after the revocation answered", closed.code, closed.reason, after.as_millis());
        assert_eq!((closed.code, closed.reason.as_str()), (4008, "session revoked"), "{what}");
        assert!(after < Duration::from_secs(1), "{what} closed {after:?} after the revocation");
    }
    let ended = viewer.phase("ended", Duration::from_secs(30)).await;
    let closes = ended["closes"].as_array().unwrap();
    for channel in ["control", "vnc"] {
        let path = format!("/api/sessions/{id}/{channel}");
        let what = format!("the viewer's {channel} socket on B");
        let socket = closes.iter().find(|s| s["path"] == path.as_str()).unwrap_or_else(|| panic!("{what} was not closed: {ended:#}"));
        let closed = &socket["closed"];
        let after = (closed["at"].as_i64().unwrap() - answered_ms).max(0);
        eprintln!("{what}: {} {} {after} ms after the revocation answered", closed["code"], closed["reason"]);
        // The VNC socket closes with 4008, or the viewer closed it itself on the control
        // channel's "revoked" (the node then answers the viewer's own close, as RFC 6455
        // asks): a clean close the page began, after the end.
        let closed_by_viewer = channel == "vnc" && !socket["closed_by_page_at"].is_null() && closed["clean"] == true;
        if !closed_by_viewer {
            assert_eq!((closed["code"].as_u64(), closed["reason"].as_str()), (Some(4008), Some("session revoked")), "{what}: {ended:#}");
        }
        assert!(after < 1000, "{what} closed {after} ms after the revocation");
    }
    assert_eq!(ended["state"], "ended", "the viewer says the session ended: {ended:#}");
    assert_eq!(ended["last_close_code"], "4008", "{ended:#}");
    assert_eq!(ended["says_revoked"], true, "the viewer says the session was revoked: {ended:#}");
    assert_eq!(ended["opened_after_end"], 0, "the viewer does not reconnect after a revocation: {ended:#}");
    assert_eq!(ended["console_problems"], json!([]), "a clean console through the end too: {ended:#}");
    viewer.finish(Duration::from_secs(30)).await;
    for via in 0..3 {
        assert_eq!(cluster.nodes[via].api.get_session(&id).await["state"], "revoked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_stripe_deliveries_over_three_nodes_make_one_session() {
    let cluster = Cluster::start(&[]).await;
    let cs = "cs_test_cluster_concurrent";
    let deliveries = (0..50).map(|n| {
        let mut event = crate::payments::completed(cs, "pi_cluster_concurrent", 100);
        event["id"] = json!(format!("evt_cluster_{n}"));
        let api = cluster.nodes[n % 3].api.clone();
        async move { deliver(&api, event).await }
    });
    let statuses = futures_util::future::join_all(deliveries).await;
    assert!(statuses.iter().all(|s| *s == 200), "every delivery, on every node, is acknowledged: {statuses:?}");
    let mut seen = Vec::new();
    for node in &cluster.nodes {
        let list = node.api.admin_get(&format!("/api/sessions?checkout_session_id={cs}")).await;
        let sessions = list["sessions"].as_array().cloned().unwrap_or_default();
        assert_eq!(sessions.len(), 1, "node {} lists one session for the checkout: {list}", node.id);
        seen.push(sessions[0]["id"].clone());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "the same session on every node: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_s_session_resumes_on_another_node() {
    // A desktop nobody watches hibernates after 2 s (its state saved to the shared dir).
    let mut cluster = Cluster::start(&[("LIVESESSION_IDLE_TIMEOUT", "2")]).await;
    let (id, _) = create_session(&cluster.nodes[0], json!({ "start_url": page_url() })).await;
    let token = cluster.nodes[0].api.mint_token(&id).await;

    // First use (through A): set a cookie in the page (through B, over CDP), then leave.
    let (control, _) = Control::ready_retrying(&cluster.nodes[0], &id, &token, Duration::from_secs(90)).await;
    let first_owner = cluster.placed_on(0, &id).await.expect("placed on its first use");
    let mut cdp = Cdp::open(&cluster.nodes[1], &id, &token).await.expect("CDP through B");
    cdp.attach_page().await.expect("the page, through B");
    let cookie = format!("ls_cluster=kept-{}", &id[..8.min(id.len())]);
    let set = cdp
        .eval(&format!("document.cookie = '{cookie}; max-age=86400; path=/'; localStorage.setItem('ls_cluster', 'kept'); document.cookie"))
        .await
        .expect("set the cookie");
    assert!(set.as_str().is_some_and(|c| c.contains(&cookie)), "the page has its cookie: {set}");
    drop(cdp);
    drop(control);
    let session = wait_hibernated(&cluster, 0, &id, Duration::from_secs(60)).await;
    eprintln!("hibernated (first placed on {first_owner}): {session}");

    // Resumed and watched: owner O, viewer through V ≠ O.
    let (resumer, _) = Control::ready_retrying(&cluster.nodes[0], &id, &token, Duration::from_secs(90)).await;
    assert!(resumer.statuses.iter().any(|s| s == "resuming"), "a hibernated session resumes: {:?}", resumer.statuses);
    let owner = cluster.placed_on(0, &id).await.expect("placed again on resume");
    let viewer_node = cluster.other_than(&[owner.as_str()]).index;
    let v = &cluster.nodes[viewer_node];
    let mut control_v = Control::open(v, &id, &token).await.expect("control through the viewer's node");
    control_v.until_ready(Duration::from_secs(30)).await.expect("ready, seen through the viewer's node");
    let mut vnc_v = Vnc::open(v, &id, &token).await.expect("VNC through the viewer's node");
    let share = vnc_v.wait_for_colour(MAGENTA, 0.5, Duration::from_secs(60)).await;
    assert!(share >= 0.5, "the viewer on {} sees the page ({share:.2})", v.id);
    let mut cdp = Cdp::open(v, &id, &token).await.expect("CDP through the viewer's node");
    cdp.attach_page().await.expect("the page");
    let cookies = cdp.eval("document.cookie").await.expect("document.cookie");
    assert!(cookies.as_str().is_some_and(|c| c.contains(&cookie)), "the first hibernation kept the cookie: {cookies}");
    drop(cdp);
    drop(resumer);
    eprintln!("session {id} runs on {owner}, watched through {}", v.id);
    let v_id = v.id;

    // The owner dies.
    let owner_index = cluster.index_of(&owner);
    let killed = cluster.kill(owner_index, Duration::from_secs(3)).await;
    let limit = Duration::from_secs(10);
    let (vnc_closed, control_closed) =
        tokio::join!(vnc_v.closed_within(limit), crate::cluster_support::closed_within(&mut control_v.ws, limit));
    for (what, closed) in [("VNC", vnc_closed), ("control", control_closed)] {
        let closed = closed.unwrap_or_else(|| panic!("the {what} connection through {v_id} was not closed within {limit:?} of the owner's death"));
        let after = closed.at.saturating_duration_since(killed);
        eprintln!("{what} through {v_id}: {} {:?} after {} ms", closed.code, closed.reason, after.as_millis());
        assert_eq!(closed.code, 4010, "{what} through {v_id} closes with 4010: {closed:?}");
        assert!(!closed.reason.is_empty(), "{what}: with a reason");
        assert!(after < Duration::from_secs(5), "{what} closed {after:?} after the kill");
    }
    for line in cluster.log_lines(v_id, &[&id]) {
        eprintln!("{v_id}: {line}");
    }

    // The next connection (once the owner is dead to the others) resumes it elsewhere.
    let v = &cluster.nodes[viewer_node];
    let (control_v, failures) = Control::ready_retrying(v, &id, &token, Duration::from_secs(60)).await;
    eprintln!("resumed through {} after {:?}; refused meanwhile: {failures:#?}", v.id, killed.elapsed());
    let now_on = cluster.placed_on(viewer_node, &id).await.expect("placed again");
    assert_ne!(now_on, owner, "not on the dead node");
    assert!(cluster.node(&now_on).alive(), "on a live node: {now_on}");
    let dirs: Vec<&str> = cluster.desktop_dirs(&id).into_iter().filter(|n| *n != owner.as_str()).collect();
    assert_eq!(dirs, [now_on.as_str()], "one desktop among the live nodes, on the placed one");
    let listed = cluster.nodes_listed(viewer_node).await;
    let dead = listed["nodes"].as_array().unwrap().iter().find(|n| n["id"] == owner.as_str());
    assert!(dead.is_none_or(|n| n["alive"] == false), "the killed node is listed dead or not at all: {listed}");
    let mut cdp = Cdp::open(v, &id, &token).await.expect("CDP through the viewer's node");
    cdp.attach_page().await.expect("the page, after the resume");
    let cookies = cdp.eval("document.cookie").await.expect("document.cookie");
    assert!(cookies.as_str().is_some_and(|c| c.contains(&cookie)), "the saved cookie is back on {now_on}: {cookies}");
    assert_eq!(cdp.eval("localStorage.getItem('ls_cluster')").await.expect("localStorage"), json!("kept"));
    assert_eq!(cdp.eval("location.href").await.expect("location"), json!(page_url()), "the saved tab is back");
    assert!(control_v.statuses.iter().any(|s| s == "resuming"), "the control channel says it resumed (protocol.md), not started afresh: {:?}", control_v.statuses);
    let mut vnc = Vnc::open(v, &id, &token).await.expect("VNC through the viewer's node, after the resume");
    let share = vnc.wait_for_colour(MAGENTA, 0.5, Duration::from_secs(60)).await;
    assert!(share >= 0.5, "the viewer sees the page again ({share:.2})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_spreads_sessions_over_live_nodes() {
    let mut cluster = Cluster::start(&[]).await;
    let mut load: BTreeMap<String, usize> = NODE_IDS.iter().map(|n| ((*n).to_owned(), 0)).collect();
    let mut sessions: Vec<(String, String, String)> = Vec::new();
    let mut held = Vec::new();
    for k in 0..6 {
        // Created through one node, first used through another (ties go to the node id,
        // so touching session k through node k+2 shows placement is not "where it came").
        let (id, token) = create_session(&cluster.nodes[k % 3], json!({ "start_url": page_url() })).await;
        let via = &cluster.nodes[(k + 2) % 3];
        let (control, _) = Control::ready_retrying(via, &id, &token, Duration::from_secs(90)).await;
        let node = cluster.placed_on(k % 3, &id).await.expect("placed on its first use");
        let least = *load.values().min().unwrap();
        assert_eq!(load[&node], least, "session {k} went to the least loaded node: {node} with loads {load:?}");
        *load.get_mut(&node).unwrap() += 1;
        eprintln!("session {k} ({id}) touched through {}: placed on {node}", via.id);
        sessions.push((id, token, node));
        held.push(control);
    }
    assert!(load.values().all(|n| *n == 2), "two sessions on each node: {load:?}");

    // Drain A (the node a tie goes to): no new placement goes there, its connections
    // are closed, and its sessions are saved and then placed elsewhere on their next
    // connection.
    let drained = "a";
    let index = cluster.index_of(drained);
    let before = cluster.terminate(index);
    // The drain has begun once A no longer answers ready (its listener closes at once).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = cluster.nodes[index].api.http.get(cluster.nodes[index].api.url("/readyz")).timeout(Duration::from_secs(1)).send().await;
        if !ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "node {drained} still answers ready 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (id, token) = create_session(&cluster.nodes[1], json!({ "start_url": page_url() })).await;
    let (control, failures) = Control::ready_retrying(&cluster.nodes[1], &id, &token, Duration::from_secs(90)).await;
    let node = cluster.placed_on(1, &id).await.expect("placed");
    eprintln!("a session first used while {drained} drains: placed on {node}");
    assert_ne!(node, drained, "a draining node receives no new placement ({failures:?})");
    held.push(control);
    // The connections of A's sessions (held through every node) are closed.
    for (k, (sid, _, on)) in sessions.iter().enumerate() {
        if on != drained {
            continue;
        }
        let via = held[k].via;
        let closed = crate::cluster_support::closed_within(&mut held[k].ws, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("the control connection (through {via}) to {sid}, on the drained node, was not closed within 30 s"));
        eprintln!("session {sid} on the drained node, through {via}: closed {} {:?}", closed.code, closed.reason);
        assert!([4010, 4011].contains(&closed.code), "closed as the server shuts down (4011) or its desktop moves (4010): {closed:?}");
    }
    let status = cluster.wait_stopped(index, &before, Duration::from_secs(60)).await;
    eprintln!("node {drained} drained and stopped: {status}");
    let listed = cluster.nodes_listed(1).await;
    assert!(listed["nodes"].as_array().unwrap().iter().all(|n| n["id"] != drained), "a drained node deregisters: {listed}");
    for (id, token, was_on) in sessions.iter().filter(|(_, _, n)| n == drained) {
        let session = cluster.nodes[1].api.get_session(id).await;
        assert!(!session["hibernated_at"].is_null(), "a drained node's sessions are hibernated: {session:#}");
        let (control, failures) = Control::ready_retrying(&cluster.nodes[2], id, token, Duration::from_secs(60)).await;
        let now_on = cluster.placed_on(2, id).await.expect("placed again");
        eprintln!("session {id} resumed on {now_on}: {:?} (refused meanwhile: {failures:?})", control.statuses);
        assert_ne!(&now_on, was_on, "placed elsewhere after the drain");
        assert!(now_on == "b" || now_on == "c", "on a live node: {now_on}");
        assert!(control.statuses.iter().any(|s| s == "resuming"), "resumed from the drain's save: {:?}", control.statuses);
        held.push(control);
    }
}
