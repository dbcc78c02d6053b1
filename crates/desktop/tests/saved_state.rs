//! Saving a desktop's browser state and starting a desktop from it (hibernation and
//! profiles), against real sandboxed desktops: cookies, Local Storage, IndexedDB and the
//! open tabs come back; a hostile desktop's profile gives up nothing but its own files.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livesession_desktop::devtools::{self, Cdp};
use livesession_desktop::{
    DesktopError, DesktopHandle, DesktopRuntime, DesktopSpec, LocalRuntime, LocalRuntimeConfig, RestoreFrom,
    ToolPaths, members,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{as_desktop_user, config, spec};

const MIB: u64 = 1 << 20;

/// One request the page server answered: its path and its `Cookie` header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    cookie: String,
}

/// A loopback page server: `/set` sets a persistent cookie (by its response header), a
/// Local Storage value and an IndexedDB record, then titles itself "stored"; `/show` and
/// `/two` are plain pages. It keeps every request's path and cookies.
async fn page_server() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let cookie = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("cookie")))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default();
                log.lock().unwrap().push(Seen { path: path.clone(), cookie });
                let (status, extra, body) = if path.starts_with("/set") {
                    (
                        "200 OK",
                        "Set-Cookie: saved=cookie-value; Max-Age=86400; Path=/\r\n",
                        "<title>setting</title><script>\
                         localStorage.setItem('ls', 'local-value');\
                         const r = indexedDB.open('db', 1);\
                         r.onupgradeneeded = () => r.result.createObjectStore('store', {keyPath: 'id'});\
                         r.onsuccess = () => {\
                           const tx = r.result.transaction('store', 'readwrite');\
                           tx.objectStore('store').put({id: 1, v: 'idb-value'});\
                           tx.oncomplete = () => { document.title = 'stored'; };\
                         };</script>",
                    )
                } else if path.starts_with("/show") || path.starts_with("/two") {
                    ("200 OK", "", "<title>page</title><p>a page</p>")
                } else {
                    ("404 Not Found", "", "")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

fn runtime_with_port(root: &Path, port: u16, warm: usize) -> LocalRuntime {
    LocalRuntime::new(LocalRuntimeConfig {
        host_ports: vec![port],
        warm,
        ..config(root, ToolPaths::default())
    })
    .unwrap()
}

/// The URLs of the desktop's page targets, sorted.
async fn page_urls(h: &DesktopHandle) -> Vec<String> {
    let mut urls: Vec<String> = devtools::list_targets(&h.devtools_socket)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == "page")
        .map(|t| t.url)
        .collect();
    urls.sort();
    urls
}

/// Waits (up to 30 s) until the desktop's page targets are exactly `expected` (any order).
async fn wait_for_pages(h: &DesktopHandle, expected: &[String]) -> Vec<String> {
    let mut expected = expected.to_vec();
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let urls = page_urls(h).await;
        if urls == expected || Instant::now() >= deadline {
            return urls;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Evaluates `expression` (awaiting a promise) in the page whose URL is `url`.
async fn eval(h: &DesktopHandle, url: &str, expression: &str) -> serde_json::Value {
    let targets = devtools::list_targets(&h.devtools_socket).await.unwrap();
    let target = targets
        .iter()
        .find(|t| t.kind == "page" && t.url == url)
        .unwrap_or_else(|| panic!("no page at {url}: {targets:?}"));
    let mut page = Cdp::connect(&h.devtools_socket, target.websocket_url.as_deref().unwrap()).await.unwrap();
    let reply = page
        .call("Runtime.evaluate", json!({"expression": expression, "awaitPromise": true, "returnByValue": true}))
        .await
        .unwrap();
    assert!(reply.get("exceptionDetails").is_none(), "{reply}");
    reply["result"]["value"].clone()
}

/// Waits (up to 30 s) until `expression` evaluates to `want` in the page at `url`.
async fn wait_for_value(h: &DesktopHandle, url: &str, expression: &str, want: serde_json::Value) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let targets = devtools::list_targets(&h.devtools_socket).await.unwrap();
        if targets.iter().any(|t| t.kind == "page" && t.url == url) {
            let got = eval(h, url, expression).await;
            if got == want || Instant::now() >= deadline {
                return got;
            }
        } else if Instant::now() >= deadline {
            return serde_json::Value::Null;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a page sees of the three stores, once loaded. (Until a tab's navigation commits,
/// DevTools already lists it at its URL while its document is still the initial blank one,
/// whose origin is opaque: no storage there.)
const READ_STATE: &str = r#"(async () => {
    if (location.protocol !== 'http:' || document.readyState !== 'complete') return null;
    const idb = await new Promise((ok, bad) => {
        const r = indexedDB.open('db', 1);
        r.onupgradeneeded = () => ok('no database');
        r.onerror = () => bad(String(r.error));
        r.onsuccess = () => {
            const db = r.result;
            if (!db.objectStoreNames.contains('store')) return ok('no store');
            const g = db.transaction('store').objectStore('store').get(1);
            g.onsuccess = () => ok(g.result ? g.result.v : 'no record');
            g.onerror = () => bad(String(g.error));
        };
    });
    return {
        cookie: document.cookie.split('; ').sort().join('; '),
        local: localStorage.getItem('ls'),
        late: localStorage.getItem('late'),
        idb,
    };
})()"#;

/// Every file under `dir` (no link, FIFO or other type may be there), with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let t = entry.file_type().unwrap();
            assert!(t.is_dir() || t.is_file(), "{} is neither a file nor a directory", entry.path().display());
            if t.is_dir() {
                stack.push(entry.path());
            } else {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_gone(rt_root: &Path, id: &str, h: &DesktopHandle) {
    assert!(members(h.pgid, h.pidns).is_empty(), "{id}: no process of the desktop is left");
    assert!(!rt_root.join(id).exists(), "{id}: its directory is removed");
}

fn restoring(id: &str, user_data: Option<&Path>, tabs: &[String], cookies: Vec<serde_json::Value>) -> DesktopSpec {
    DesktopSpec {
        restore: Some(RestoreFrom { user_data: user_data.map(Path::to_owned), tabs: tabs.to_vec(), cookies }),
        ..spec(id, "about:blank")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_browser_comes_back_with_its_cookies_storage_and_tabs() {
    let (port, seen) = page_server().await;
    let base = format!("http://127.0.0.1:{port}");
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = runtime_with_port(root.path(), port, 0);

    // A session: a page stores a cookie, a Local Storage value and an IndexedDB record;
    // its tab moves on to another page, and a second tab opens.
    let a = rt.start(spec("keep-a", &format!("{base}/set")), &|_| {}).await.unwrap();
    let set_url = format!("{base}/set");
    assert_eq!(wait_for_value(&a, &set_url, "document.title", json!("stored")).await, json!("stored"));
    let show_url = format!("{base}/show");
    let two_url = format!("{base}/two");
    devtools::navigate(&a.devtools_socket, &show_url).await.unwrap();
    let mut browser = Cdp::browser(&a.devtools_socket).await.unwrap();
    browser.call("Target.createTarget", json!({"url": two_url})).await.unwrap();
    drop(browser);
    let both = vec![show_url.clone(), two_url.clone()];
    assert_eq!(wait_for_pages(&a, &both).await, both);

    // A write just before the save: Browser.close has Chromium write it out.
    assert_eq!(wait_for_value(&a, &show_url, "location.href", json!(show_url)).await, json!(show_url));
    assert_eq!(
        eval(&a, &show_url, "localStorage.setItem('late', 'just before'); localStorage.getItem('late')").await,
        json!("just before")
    );

    // Hibernate.
    let into = data.path().join("states/keep-a");
    let started = Instant::now();
    let saved = rt.save_and_stop("keep-a", &into, 200 * MIB).await.unwrap();
    println!(
        "save_and_stop: {:?} ({} files, {} bytes, {} cookies, tabs {:?})",
        started.elapsed(),
        saved.files,
        saved.bytes,
        saved.cookies.len(),
        saved.tabs
    );
    assert_gone(root.path(), "keep-a", &a);
    assert!(!rt.is_alive("keep-a").await);
    let mut tabs = saved.tabs.clone();
    tabs.sort();
    assert_eq!(tabs, both, "{:?}", saved.tabs);
    let cookie = saved
        .cookies
        .iter()
        .find(|c| c["name"] == "saved")
        .unwrap_or_else(|| panic!("no saved cookie in {:?}", saved.cookies));
    assert_eq!(cookie["value"], "cookie-value");
    assert_eq!(cookie["session"], false, "a persistent cookie: {cookie}");
    assert!(saved.files > 10 && saved.bytes > 10_000, "{saved:?}");

    // What was copied: the server's, 0700; the profile's stores, no caches, no link.
    let meta = std::fs::symlink_metadata(&into).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    let files = files_under(&into);
    assert_eq!(files.len() as u64, saved.files);
    assert_eq!(files.iter().map(|(_, b)| b.len() as u64).sum::<u64>(), saved.bytes);
    for (path, _) in &files {
        let rel = path.strip_prefix(&into).unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        for cache in ["Cache", "Code Cache", "GPUCache", "DevToolsActivePort", "Sessions", "Crashpad"] {
            assert!(!parts.contains(&cache), "{rel} was copied");
        }
        assert!(!parts.iter().any(|p| p.starts_with("Singleton")), "{rel} was copied");
        assert_eq!(std::fs::symlink_metadata(path).unwrap().uid(), nix::unistd::geteuid().as_raw(), "{rel}");
    }
    for store in ["Default/Cookies", "Default/Local Storage/leveldb", "Default/IndexedDB", "Default/Preferences"] {
        assert!(into.join(store).exists(), "{store} is not in the copy");
    }

    // Resume: the tabs open as Chromium's arguments, in a browser started on the copy.
    let started = Instant::now();
    let b = rt.start(restoring("keep-b", Some(&into), &saved.tabs, vec![]), &|_| {}).await.unwrap();
    println!("restored start (tabs on the command line): {:?}", started.elapsed());
    assert_eq!(wait_for_pages(&b, &both).await, both, "the two tabs come back as two tabs");
    let want = json!({"cookie": "saved=cookie-value", "local": "local-value", "late": "just before", "idb": "idb-value"});
    assert_eq!(wait_for_value(&b, &show_url, READ_STATE, want.clone()).await, want);
    // The profile in the new desktop is its user's; the saved copy is still there.
    let b_profile = root.path().join("keep-b/home/profile");
    assert_eq!(std::fs::metadata(&b_profile).unwrap().uid(), common::desktop_uid(&b));
    assert_eq!(std::fs::metadata(b_profile.join("Default/Cookies")).unwrap().uid(), common::desktop_uid(&b));
    assert!(into.join("Default/Cookies").is_file(), "copied, not moved");
    let prefs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(into.join("Default/Preferences")).unwrap()).unwrap();
    assert_eq!(prefs["profile"]["exit_type"], "Normal", "Chromium closed cleanly");
    rt.stop("keep-b").await;
    assert_gone(root.path(), "keep-b", &b);

    // Again from the same copy, with an operator's cookie besides: set before the tabs
    // load, so the first request of each tab carries it.
    seen.lock().unwrap().clear();
    let extra = json!({"name": "extra", "value": "imported", "url": format!("{base}/"), "expires": 2_000_000_000});
    let started = Instant::now();
    let c = rt.start(restoring("keep-c", Some(&into), &saved.tabs, vec![extra]), &|_| {}).await.unwrap();
    println!("restored start (cookies set, then tabs over DevTools): {:?}", started.elapsed());
    assert_eq!(wait_for_pages(&c, &both).await, both);
    let want = json!({"cookie": "extra=imported; saved=cookie-value", "local": "local-value", "late": "just before", "idb": "idb-value"});
    assert_eq!(wait_for_value(&c, &show_url, READ_STATE, want.clone()).await, want);
    let requests = seen.lock().unwrap().clone();
    for path in ["/show", "/two"] {
        let first = requests.iter().find(|s| s.path == path).unwrap_or_else(|| panic!("{path}: {requests:?}"));
        assert!(first.cookie.contains("extra=imported"), "{path} loaded before the cookie was set: {requests:?}");
        assert!(first.cookie.contains("saved=cookie-value"), "{requests:?}");
    }
    let started = Instant::now();
    let again = rt.save_and_stop("keep-c", &data.path().join("states/keep-c"), 200 * MIB).await.unwrap();
    println!("second save_and_stop: {:?}", started.elapsed());
    assert_gone(root.path(), "keep-c", &c);
    assert!(again.cookies.iter().any(|c| c["name"] == "extra"), "{:?}", again.cookies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_cookies_are_set_before_the_first_load_cold_and_warm() {
    let (port, seen) = page_server().await;
    let base = format!("http://127.0.0.1:{port}");
    let root = tempfile::tempdir().unwrap();
    let cookie = |v: &str| json!({"name": "imported", "value": v, "domain": "127.0.0.1", "path": "/"});

    // Cold (no warm pool), cookies and two tabs, no saved files.
    let rt = runtime_with_port(root.path(), port, 0);
    let tabs = vec![format!("{base}/show?cold"), format!("{base}/two?cold")];
    let h = rt.start(restoring("imp-cold", None, &tabs, vec![cookie("cold")]), &|_| {}).await.unwrap();
    assert_eq!(wait_for_pages(&h, &tabs).await, tabs);
    assert_eq!(
        wait_for_value(&h, &tabs[0], "location.protocol === 'http:' && document.readyState === 'complete' && document.cookie", json!("imported=cold")).await,
        json!("imported=cold")
    );
    rt.stop("imp-cold").await;
    assert_gone(root.path(), "imp-cold", &h);

    // Warm: a pooled desktop (already running Chromium) is handed out, cookies set over
    // DevTools, then its page sent to the first tab.
    let rt = runtime_with_port(root.path(), port, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.warm_ready() < 1 {
        assert!(Instant::now() < deadline, "the warm pool did not fill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tabs = vec![format!("{base}/show?warm")];
    let started = Instant::now();
    let h = rt.start(restoring("imp-warm", None, &tabs, vec![cookie("warm")]), &|_| {}).await.unwrap();
    println!("warm start with cookies: {:?}", started.elapsed());
    assert_eq!(rt.warm_ready(), 0, "the pooled desktop was used");
    assert_eq!(wait_for_pages(&h, &tabs).await, tabs);
    assert_eq!(
        wait_for_value(&h, &tabs[0], "location.protocol === 'http:' && document.readyState === 'complete' && document.cookie", json!("imported=warm")).await,
        json!("imported=warm")
    );
    // A start from saved files never takes a pooled desktop.
    let empty = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.warm_ready() < 1 {
        assert!(Instant::now() < deadline, "the warm pool did not refill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h2 = rt
        .start(restoring("from-files", Some(empty.path()), &[format!("{base}/two?files")], vec![]), &|_| {})
        .await
        .unwrap();
    assert_eq!(rt.warm_ready(), 1, "the pooled desktop is still there");
    assert_eq!(wait_for_pages(&h2, &[format!("{base}/two?files")]).await, [format!("{base}/two?files")]);
    rt.stop_all().await;
    assert_gone(root.path(), "imp-warm", &h);
    assert_gone(root.path(), "from-files", &h2);

    for (path, value) in [("/show?cold", "imported=cold"), ("/two?cold", "imported=cold"), ("/show?warm", "imported=warm")] {
        let requests = seen.lock().unwrap().clone();
        let first = requests.iter().find(|s| s.path == path).unwrap_or_else(|| panic!("{path}: {requests:?}"));
        assert_eq!(first.cookie, value, "{path}'s first request: {requests:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_profile_gives_up_nothing_but_its_own_files() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let canary = data.path().join("host-secret");
    std::fs::write(&canary, "HOST-SECRET-BYTES").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rt = LocalRuntime::new(config(root.path(), ToolPaths::default())).unwrap();
    let (evil, victim) = tokio::join!(
        rt.start(spec("evil", common::MAGENTA_PAGE), &|_| {}),
        rt.start(spec("victim", common::GREEN_PAGE), &|_| {})
    );
    let (evil, victim) = (evil.unwrap(), victim.unwrap());
    let victim_profile = root.path().join("victim/home/profile");
    std::fs::write(victim_profile.join("victim-secret"), "VICTIM-SECRET-BYTES").unwrap();
    let victim_xvnc = members(0, victim.pidns)
        .into_iter()
        .find(|pid| std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(b"Xvnc")))
        .unwrap();

    // As the evil desktop's user, in its profile: links to the host file and to the other
    // desktop's profile (by host path, and through /proc), a FIFO, and the cookie store
    // swapped for a link.
    let script = format!(
        "cd /home/desktop/profile && \
         ln -s {canary} host-link && ln -s {victim_dir} victim-link && \
         ln -s /proc/{victim_xvnc}/root/home/desktop/profile victim-magic && \
         ln -s {victim_dir}/victim-secret Default/victim-file && \
         mkfifo Default/pipe && rm -f Default/Cookies && ln -s {canary} Default/Cookies && \
         mkdir -p Default/deep/er && ln -s / Default/deep/er/root && echo planted",
        canary = canary.display(),
        victim_dir = victim_profile.display(),
    );
    let out = as_desktop_user(&evil, &script).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("planted"), "{out:?}");

    let into = data.path().join("evil-state");
    let started = Instant::now();
    let saved = rt.save_and_stop("evil", &into, 200 * MIB).await.unwrap();
    println!("hostile save_and_stop: {:?} ({} files, {} bytes)", started.elapsed(), saved.files, saved.bytes);
    assert_gone(root.path(), "evil", &evil);
    let files = files_under(&into);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(!contains(bytes, b"HOST-SECRET"), "{} holds the host file's bytes", path.display());
        assert!(!contains(bytes, b"VICTIM-SECRET"), "{} holds the other desktop's bytes", path.display());
    }
    for name in ["host-link", "victim-link", "victim-magic", "Default/victim-file", "Default/pipe", "Default/Cookies", "Default/deep/er/root"] {
        assert!(std::fs::symlink_metadata(into.join(name)).is_err(), "{name} was copied");
    }
    assert!(into.join("Default/deep/er").is_dir(), "the desktop's own directories are copied");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "HOST-SECRET-BYTES");
    assert_eq!(std::fs::metadata(&canary).unwrap().mode() & 0o777, 0o600);

    // Over the cap: an error, nothing left in `into`, and the desktop stopped anyway.
    let out = as_desktop_user(&victim, "head -c 33554432 /dev/zero > /home/desktop/profile/Default/big && echo written").await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("written"), "{out:?}");
    let too_big = data.path().join("victim-state");
    let err = rt.save_and_stop("victim", &too_big, 16 * MIB).await.unwrap_err();
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    assert!(!too_big.exists(), "a partial copy is removed");
    assert_gone(root.path(), "victim", &victim);
    assert!(!rt.is_alive("victim").await);

    // An id with no desktop: an error.
    let err = rt.save_and_stop("nobody", &data.path().join("x"), MIB).await.unwrap_err();
    assert!(matches!(err, DesktopError::Setup(_)), "{err:?}");
    assert!(!data.path().join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sandbox_the_state_is_saved_and_restored_the_same_way() {
    // Unsandboxed, Chromium's loopback is the host's: the page server needs no forward.
    let (port, _seen) = page_server().await;
    let (set_url, show_url) = (format!("http://127.0.0.1:{port}/set"), format!("http://127.0.0.1:{port}/show"));
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(LocalRuntimeConfig { sandbox: false, ..config(root.path(), ToolPaths::default()) }).unwrap();
    let a = rt.start(spec("plain-a", &set_url), &|_| {}).await.unwrap();
    assert_eq!(wait_for_value(&a, &set_url, "document.title", json!("stored")).await, json!("stored"));
    devtools::navigate(&a.devtools_socket, &show_url).await.unwrap();
    assert_eq!(wait_for_pages(&a, std::slice::from_ref(&show_url)).await, [show_url.as_str()]);
    let into = data.path().join("plain-a");
    let saved = rt.save_and_stop("plain-a", &into, 200 * MIB).await.unwrap();
    assert_gone(root.path(), "plain-a", &a);
    assert_eq!(saved.tabs, [show_url.as_str()]);

    let b = rt.start(restoring("plain-b", Some(&into), &saved.tabs, vec![]), &|_| {}).await.unwrap();
    assert_eq!(wait_for_pages(&b, &saved.tabs).await, saved.tabs);
    let want = json!({"cookie": "saved=cookie-value", "local": "local-value", "late": null, "idb": "idb-value"});
    assert_eq!(wait_for_value(&b, &show_url, READ_STATE, want.clone()).await, want);
    rt.stop("plain-b").await;
    assert_gone(root.path(), "plain-b", &b);
}
