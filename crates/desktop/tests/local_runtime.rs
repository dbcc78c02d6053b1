//! The local runtime against the real Xvnc, openbox and Chromium.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use livesession_desktop::rfb::RfbClient;
use livesession_desktop::egress::{EgressMode, EgressPolicy};
use livesession_desktop::{
    Cgroups, DesktopError, DesktopHandle, DesktopRuntime, DesktopSpec, LocalRuntime,
    LocalRuntimeConfig, Piece, ResourceLimits, ToolPaths, members,
};

mod common;
use common::{GREEN_PAGE, MAGENTA_PAGE, as_desktop_user, config, desktop_uid, runtime, spec};


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_starts_draws_its_page_and_stops_without_leftovers() {
    let root = tempfile::tempdir().unwrap();
    let rt = runtime(root.path(), ToolPaths::default());
    let steps = Mutex::new(Vec::new());
    let handle = rt
        .start(spec("a1", MAGENTA_PAGE), &|p| steps.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(
        *steps.lock().unwrap(),
        vec![Piece::Xvnc, Piece::Openbox, Piece::Chromium]
    );
    assert!(handle.vnc_socket.path().starts_with(root.path().join("a1")));
    assert!(rt.is_alive("a1").await);
    let procs = members(handle.pgid, handle.pidns);
    assert!(
        procs.len() >= 5,
        "bubblewrap, the supervisor, Xvnc, openbox and Chromium: {procs:?}"
    );

    // Read frames until the page's colour covers most of the screen.
    let stream = handle.vnc_socket.connect().await.unwrap();
    let mut rfb = RfbClient::handshake(stream).await.unwrap();
    assert_eq!((rfb.width, rfb.height), (1280, 720));
    rfb.request_update(false).await.unwrap();
    let mut share = 0.0;
    for _ in 0..100 {
        rfb.read_update().await.unwrap();
        share = rfb.share_of_colour((255, 0, 255), 8);
        if share > 0.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rfb.request_update(false).await.unwrap();
    }
    assert!(
        share > 0.5,
        "the start page is drawn: {share:.2} of pixels are magenta"
    );
    drop(rfb);

    rt.stop("a1").await;
    assert!(
        members(handle.pgid, handle.pidns).is_empty(),
        "no process of the desktop is left"
    );
    assert!(
        !root.path().join("a1").exists(),
        "the private directory is removed"
    );
    assert!(!rt.is_alive("a1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_desktops_are_separate() {
    let root = tempfile::tempdir().unwrap();
    let rt = runtime(root.path(), ToolPaths::default());
    let (a, b) = tokio::join!(
        rt.start(spec("c1", "about:blank"), &|_| {}),
        rt.start(spec("c2", "about:blank"), &|_| {})
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.vnc_socket, b.vnc_socket);
    assert_ne!(a.pgid, b.pgid);
    assert_ne!(a.pidns, b.pidns, "each desktop has its own PID namespace");
    rt.stop_all().await;
    assert!(members(a.pgid, a.pidns).is_empty() && members(b.pgid, b.pidns).is_empty());
}

#[tokio::test]
async fn a_missing_piece_is_named() {
    let root = tempfile::tempdir().unwrap();
    let tools = ToolPaths {
        openbox: "/nonexistent/openbox".into(),
        ..ToolPaths::default()
    };
    let rt = runtime(root.path(), tools);
    let err = rt
        .start(spec("m1", "about:blank"), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DesktopError::MissingBinary {
                piece: Piece::Openbox,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("apt-get install -y openbox"),
        "{err}"
    );
    assert!(!root.path().join("m1").exists());
}

#[tokio::test]
async fn a_piece_that_dies_is_named_with_its_stderr() {
    let root = tempfile::tempdir().unwrap();
    // `false` starts and exits at once, like a broken Chromium build would.
    let tools = ToolPaths {
        chromium: "/bin/false".into(),
        ..ToolPaths::default()
    };
    let rt = runtime(root.path(), tools);
    let err = rt
        .start(spec("d1", "about:blank"), &|_| {})
        .await
        .unwrap_err();
    assert_eq!(err.piece(), Some(Piece::Chromium), "{err:?}");
    assert!(err.to_string().contains("exited early"), "{err}");

    // An Xvnc given a bad argument fails with its own complaint in the error.
    let tools = ToolPaths {
        xvnc: "Xvnc".into(),
        ..ToolPaths::default()
    };
    let rt = runtime(root.path(), tools);
    let err = rt
        .start(
            DesktopSpec {
                width: 0,
                ..spec("d2", "about:blank")
            },
            &|_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.piece(), Some(Piece::Xvnc), "{err:?}");
    assert!(err.stderr_tail().is_some_and(|t| !t.is_empty()), "{err:?}");
}

// ------------------------------------------------------------------ the sandbox's walls

/// Runs `script` with bash inside a sandboxed desktop's mount and network namespaces.
async fn inside(handle: &DesktopHandle, script: &str) -> std::process::Output {
    let pid = *members(0, handle.pidns)
        .first()
        .expect("the desktop has processes in its PID namespace");
    tokio::process::Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .args(["--mount", "--net", "--", "/bin/bash", "-c", script])
        .output()
        .await
        .unwrap()
}

/// A loopback listener that counts the connections it accepts and keeps what they send.
async fn listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut c, &mut buf).await;
                s.lock().unwrap().push(buf);
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_sees_neither_the_data_directory_nor_another_desktop() {
    // The layout of a real server: secrets and the database beside the desktops' root.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("secrets"), "top secret").unwrap();
    let root = data.path().join("desktops");
    let rt = runtime(&root, ToolPaths::default());
    let (a, b) = tokio::join!(
        rt.start(spec("iso-a", "about:blank"), &|_| {}),
        rt.start(spec("iso-b", "about:blank"), &|_| {})
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    std::fs::write(root.join("iso-b/home/b-only"), "b's file").unwrap();

    let data_dir = data.path().display();
    let b_home = root.join("iso-b/home");
    let out = inside(
        &a,
        &format!(
            "for p in {data_dir} {data_dir}/secrets {b_home} {b_home}/b-only /etc/shadow /root {self_exe}; do \
               if [ -e \"$p\" ]; then echo \"VISIBLE $p\"; fi; done; \
             ls /; echo home:; ls -a /home/desktop; echo run:; ls /run/desktop",
            b_home = b_home.display(),
            self_exe = std::env::current_exe().unwrap().display(),
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("VISIBLE"), "visible from inside desktop A:\n{text}");
    assert!(text.contains("profile"), "A's own home is there: {text}");
    assert!(text.contains("vnc.sock"), "A's run directory is there: {text}");
    assert!(!text.contains("work") && !text.contains("srv\n"), "only system directories: {text}");

    // Each desktop runs as a uid of its own, never root, when the server is root.
    let uid_of = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|u| u.split_whitespace().next().unwrap().parse::<u32>().unwrap())
            .unwrap()
    };
    let uids = |h: &DesktopHandle| -> std::collections::BTreeSet<u32> {
        members(0, h.pidns).into_iter().map(uid_of).collect()
    };
    if livesession_desktop::is_root() {
        let (ua, ub) = (uids(&a), uids(&b));
        assert!(!ua.contains(&0) && !ub.contains(&0), "{ua:?} {ub:?}");
        assert!(ua.is_disjoint(&ub), "desktops share a uid: {ua:?} {ub:?}");
    }
    rt.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_egress_a_desktop_reaches_only_the_host_ports_it_was_given() {
    let (open_port, open_seen) = listener().await;
    let (closed_port, closed_seen) = listener().await;
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        host_ports: vec![open_port],
        ..config(root.path(), ToolPaths::default())
    })
    .unwrap();
    let h = rt.start(spec("net-a", "about:blank"), &|_| {}).await.unwrap();
    let out = inside(
        &h,
        &format!(
            "(exec 3<>/dev/tcp/127.0.0.1/{closed_port} && echo LEAKED >&3) 2>/dev/null && echo closed-reached; \
             (exec 3<>/dev/tcp/127.0.0.1/{open_port} && echo hello-from-desktop >&3) && echo open-reached; \
             ip -o addr 2>/dev/null | grep -v ' lo ' | grep inet || echo no-interfaces"
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("open-reached"), "{text}");
    assert!(!text.contains("closed-reached"), "{text}");
    assert!(text.contains("no-interfaces"), "only loopback inside: {text}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open_seen.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*open_seen.lock().unwrap(), vec!["hello-from-desktop\n".to_owned()]);
    assert!(closed_seen.lock().unwrap().is_empty(), "the other listener saw a connection");
    rt.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_internet_egress_the_blocked_ranges_are_prohibited_routes() {
    // Only the configuration is checked: no packet is sent anywhere.
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        egress: EgressPolicy {
            mode: EgressMode::Internet,
            allow: vec![],
            deny: vec!["198.51.100.0/24".parse().unwrap()],
        },
        ..config(root.path(), ToolPaths::default())
    })
    .unwrap();
    let h = rt.start(spec("net-i", "about:blank"), &|_| {}).await.unwrap();
    let out = inside(&h, "ip route show; cat /etc/resolv.conf").await;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "default via 10.0.2.2 dev tap0",
        "prohibit 127.0.0.0/8",
        "prohibit 10.0.0.0/8",
        "prohibit 169.254.0.0/16",
        "prohibit 172.16.0.0/12",
        "prohibit 192.168.0.0/16",
        "prohibit 198.51.100.0/24",
        "nameserver 10.0.2.3",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    rt.stop_all().await;
    assert!(members(h.pgid, h.pidns).is_empty(), "slirp4netns and the desktop are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_runs_inside_its_cgroup_limits_where_the_host_allows() {
    let root = tempfile::tempdir().unwrap();
    let limits = ResourceLimits {
        memory_bytes: Some(1536 * 1024 * 1024),
        cpus: Some(1.5),
        pids: Some(3000),
    };
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        limits,
        ..config(root.path(), ToolPaths::default())
    })
    .unwrap();
    if let Err(reason) = rt.limits_status() {
        // Not a pass: this host cannot enforce limits, which doctor reports; fail loudly
        // where they are expected (CI runs as root with writable cgroups).
        panic!("cgroup limits unavailable here: {reason}");
    }
    let h = rt.start(spec("cg-1", "about:blank"), &|_| {}).await.unwrap();
    let pid = members(0, h.pidns)[0];
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = match Cgroups::detect() {
        Cgroups::V1 { memory, .. } => {
            let rel = cgroups
                .lines()
                .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
                .unwrap();
            assert!(rel.ends_with("/livesession/desktop-cg-1"), "{rel}");
            let dir = memory.join("desktop-cg-1");
            assert_eq!(
                std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap().trim(),
                (1536u64 * 1024 * 1024).to_string()
            );
            dir
        }
        Cgroups::V2 { parent } => {
            let dir = parent.join("desktop-cg-1");
            assert_eq!(
                std::fs::read_to_string(dir.join("memory.max")).unwrap().trim(),
                (1536u64 * 1024 * 1024).to_string()
            );
            assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap().trim(), "150000 100000");
            dir
        }
        Cgroups::Unavailable(r) => panic!("{r}"),
    };
    let procs = std::fs::read_to_string(memory.join("cgroup.procs")).unwrap();
    for p in members(0, h.pidns) {
        assert!(procs.lines().any(|l| l == p.to_string()), "{p} is not in the cgroup: {procs}");
    }
    rt.stop_all().await;
    assert!(!memory.exists(), "the cgroup is removed with the desktop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sandbox_off_the_same_supervisor_runs_the_desktop() {
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        sandbox: false,
        ..config(root.path(), ToolPaths::default())
    })
    .unwrap();
    let h = rt.start(spec("plain", MAGENTA_PAGE), &|_| {}).await.unwrap();
    assert_eq!(h.pidns, None, "no PID namespace of its own");
    let targets = livesession_desktop::devtools::list_targets(&h.devtools_socket).await.unwrap();
    assert!(targets.iter().any(|t| t.kind == "page"), "{targets:?}");
    let procs = members(h.pgid, None);
    assert!(procs.len() >= 4, "supervisor, Xvnc, openbox, Chromium: {procs:?}");
    rt.stop("plain").await;
    assert!(members(h.pgid, None).is_empty());
}

// ------------------------------------------------------------------ a hostile desktop
//
// Code running as the desktop's own user (a browser exploit, or a person who found a way
// to run a program) owns `run/` and can put anything there. These tests play that user for
// real, inside the desktop's mount namespace with its uid, and check the runtime never
// follows what it put there.

/// The share of `rgb` on the screen behind `stream`, once a frame shows it (or after ~5 s).
async fn share_seen(stream: tokio::net::UnixStream, rgb: (u8, u8, u8)) -> f64 {
    let mut rfb = RfbClient::handshake(stream).await.unwrap();
    let mut share = 0.0;
    for _ in 0..50 {
        rfb.request_update(false).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), rfb.read_update()).await;
        share = rfb.share_of_colour(rgb, 8);
        if share > 0.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    share
}

fn xvnc_pid(h: &DesktopHandle) -> i32 {
    members(0, h.pidns)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(b"Xvnc"))
        })
        .expect("Xvnc runs in the desktop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_that_swaps_its_sockets_for_links_reaches_nothing_through_them() {
    let root = tempfile::tempdir().unwrap();
    let (port, _seen) = listener().await;
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        host_ports: vec![port],
        ..config(root.path(), ToolPaths::default())
    })
    .unwrap();
    let (a, b) = tokio::join!(
        rt.start(spec("evil-a", MAGENTA_PAGE), &|_| {}),
        rt.start(spec("victim-b", GREEN_PAGE), &|_| {})
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(share_seen(b.vnc_socket.connect().await.unwrap(), (0, 255, 0)).await > 0.5);
    let b_xvnc = xvnc_pid(&b);

    for (label, target) in [
        ("relative", "../../victim-b/run/vnc.sock".to_owned()),
        ("absolute", b.vnc_socket.path().display().to_string()),
        ("magic", format!("/proc/{b_xvnc}/root/run/desktop/vnc.sock")),
    ] {
        let out = as_desktop_user(
            &a,
            &format!("rm -f /run/desktop/vnc.sock && ln -s {target} /run/desktop/vnc.sock && echo swapped"),
        )
        .await;
        assert!(String::from_utf8_lossy(&out.stdout).contains("swapped"), "{out:?}");
        // The attack is real: a plain connect by path, as the server did before, shows B.
        let naive = tokio::net::UnixStream::connect(a.vnc_socket.path()).await.unwrap();
        assert!(share_seen(naive, (0, 255, 0)).await > 0.5, "{label}: B's screen by A's path");
        // The runtime's connect refuses, naming why.
        let err = a.vnc_socket.connect().await.unwrap_err();
        assert!(err.is_tampered(), "{label}: {err}");
        assert!(err.to_string().contains("symbolic link"), "{label}: {err}");
    }

    // The DevTools socket, swapped for B's: nothing of B's pages comes back.
    let out = as_desktop_user(
        &a,
        "rm -f /run/desktop/devtools.sock && ln -s ../../victim-b/run/devtools.sock /run/desktop/devtools.sock && echo swapped",
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("swapped"), "{out:?}");
    let err = livesession_desktop::devtools::list_targets(&a.devtools_socket).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    // Host-port sockets are the server's, in a directory the desktop cannot change.
    let gate = root.path().join("evil-a/gate");
    let socket = gate.join(format!("hostport-{port}.sock"));
    let out = as_desktop_user(
        &a,
        &format!(
            "test -S /run/gateway/hostport-{port}.sock && echo present; rm -f /run/gateway/hostport-{port}.sock && echo removed; \
             ln -sf /etc/passwd /run/gateway/x && echo linked; touch /run/gateway/y && echo created"
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("present"), "{text}");
    assert!(!text.contains("removed") && !text.contains("linked") && !text.contains("created"), "{text}");
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.uid(), desktop_uid(&a));
        assert_eq!(std::fs::symlink_metadata(&gate).unwrap().uid(), nix::unistd::geteuid().as_raw());
    }
    rt.stop_all().await;
}

/// Puts a program at a path the sandbox sees (`/usr` is the host's, read-only inside) for
/// the length of a test.
struct UsrProgram(std::path::PathBuf);

impl UsrProgram {
    fn new(name: &str, script: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = std::path::PathBuf::from(format!("/usr/local/bin/livesession-test-{name}-{}", std::process::id()));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(path)
    }
}

impl Drop for UsrProgram {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_that_links_its_exit_file_and_logs_to_host_files_reads_nothing_of_them() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    let canary = root.path().join("host-secret");
    std::fs::write(&canary, "HOST-SECRET-LINE one\nHOST-SECRET-LINE two\n").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o600)).unwrap();
    let canary_path = canary.display();

    // A "Chromium" that, running as the desktop's user, points its log at the host file,
    // then exits: the runtime reads the log's tail for the error.
    let log_only = UsrProgram::new(
        "log",
        &format!("#!/bin/sh\nrm -f \"$LS_RUN/logs/chromium.log\"; ln -s {canary_path} \"$LS_RUN/logs/chromium.log\"\nexit 3\n"),
    );
    let rt = runtime(root.path(), ToolPaths {
        chromium: log_only.0.display().to_string(),
        ..ToolPaths::default()
    });
    let err = rt.start(spec("liar-1", "about:blank"), &|_| {}).await.unwrap_err();
    assert_eq!(err.piece(), Some(Piece::Chromium), "{err:?}");
    assert!(!format!("{err:?}").contains("HOST-SECRET"), "{err:?}");

    // One that also replaces its exit file with a link (and blocks the supervisor's own
    // write of it): the runtime refuses the desktop as tampered, reading nothing.
    let both = UsrProgram::new(
        "exit",
        &format!(
            "#!/bin/sh\nrm -f \"$LS_RUN/logs/chromium.log\"; ln -s {canary_path} \"$LS_RUN/logs/chromium.log\"\n\
             mkdir \"$LS_RUN/exit.tmp\"; ln -s {canary_path} \"$LS_RUN/exit\"\nexit 3\n"
        ),
    );
    let rt = runtime(root.path(), ToolPaths {
        chromium: both.0.display().to_string(),
        ..ToolPaths::default()
    });
    let err = rt.start(spec("liar-2", "about:blank"), &|_| {}).await.unwrap_err();
    assert!(matches!(err, DesktopError::Tampered(_)), "{err:?}");
    assert!(err.to_string().contains("exit"), "{err}");
    assert!(!format!("{err:?}").contains("HOST-SECRET"), "{err:?}");

    // The host file is as it was.
    let meta = std::fs::metadata(&canary).unwrap();
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "HOST-SECRET-LINE one\nHOST-SECRET-LINE two\n");
}

/// Mount points under `dir` (from this process's mountinfo).
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_that_writes_without_end_stops_at_its_cap_and_others_go_on() {
    assert!(livesession_desktop::is_root(), "the writable-space caps need a root server");
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        writable_mib: Some(48),
        ..config(root.path(), ToolPaths::default())
    })
    .unwrap();
    let a = rt.start(spec("filler", MAGENTA_PAGE), &|_| {}).await.unwrap();
    let mounts = mounts_under(&root.path().join("filler"));
    assert!(mounts.iter().any(|m| m.ends_with("filler/home")), "{mounts:?}");
    assert!(mounts.iter().any(|m| m.ends_with("filler/run")), "{mounts:?}");

    // Write without end wherever the desktop can write.
    let out = as_desktop_user(
        &a,
        "for d in /home/desktop /run/desktop /tmp; do \
           dd if=/dev/zero of=$d/fill bs=1M count=400 2>&1 | grep -o 'No space left on device' | head -n1; \
           echo \"$d $(( $(stat -c %s $d/fill) / 1048576 ))\"; \
         done; head -c 65536 /dev/zero >> /home/desktop/fill",
    )
    .await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("No space left on device").count(), 4, "{text}");
    let written = |d: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{d} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no size for {d}: {text}"))
    };
    assert!(written("/home/desktop") <= 48, "{text}");
    assert!(written("/run/desktop") <= 48, "{text}");
    assert!(written("/tmp") <= 256, "{text}");
    // The data directory's own disk got none of it.
    assert!(std::fs::metadata(root.path().join("filler/home/fill")).unwrap().len() <= 48 << 20);

    // The full desktop still answers, and another one starts and draws its page.
    assert!(a.vnc_socket.connect().await.is_ok());
    let b = rt.start(spec("bystander", GREEN_PAGE), &|_| {}).await.unwrap();
    assert!(share_seen(b.vnc_socket.connect().await.unwrap(), (0, 255, 0)).await > 0.5);

    rt.stop_all().await;
    assert!(mounts_under(root.path()).is_empty(), "the caps are unmounted with their desktops");
    assert!(!root.path().join("filler").exists() && !root.path().join("bystander").exists());
}

/// A desktop stopped while a new one starts for the same id (a viewer reconnecting right
/// after the desktop was lost): the new one waits for the old one's removal, which must
/// not take the new one's directory along (a CI failure: the new desktop's bubblewrap found
/// its home gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_started_while_its_predecessor_stops_keeps_its_directory() {
    let root = tempfile::tempdir().unwrap();
    let rt = std::sync::Arc::new(runtime(root.path(), ToolPaths::default()));
    let first = rt.start(spec("again", MAGENTA_PAGE), &|_| {}).await.unwrap();
    // Each process by pid and start time: a PID namespace's inode number (and a pid) may
    // be reused by the next desktop once the first is gone.
    // (None for a zombie: dead, waiting for a parent that may never reap it.)
    let start_time = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        (fields.first() != Some(&"Z")).then(|| fields.get(19).map(|t| t.to_string())).flatten()
    };
    let first_processes: Vec<(i32, Option<String>)> =
        members(first.pgid, first.pidns).into_iter().map(|p| (p, start_time(p))).collect();
    assert!(!first_processes.is_empty());
    let stopping = tokio::spawn({
        let rt = rt.clone();
        async move { rt.stop("again").await }
    });
    // The stop has taken the desktop out of the runtime and is killing its processes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.is_alive("again").await {
        assert!(tokio::time::Instant::now() < deadline, "the stop began");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = rt.start(spec("again", GREEN_PAGE), &|_| {}).await.expect("the new desktop starts");
    stopping.await.unwrap();
    let left: Vec<_> = first_processes.iter().filter(|(p, t)| t.is_some() && start_time(*p) == *t).collect();
    assert!(left.is_empty(), "the first desktop is gone: {left:?}");
    assert!(rt.is_alive("again").await, "the new desktop runs");
    assert!(second.vnc_socket.path().exists(), "the new desktop's directory is still there");
    let stream = second.vnc_socket.connect().await.expect("its VNC socket answers");
    RfbClient::handshake(stream).await.expect("an RFB handshake");
    rt.stop_all().await;
}
