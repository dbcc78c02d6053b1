//! A hostile desktop has nothing to launch and a smaller kernel to reach: the seccomp
//! filter on every process, the bound on user namespaces, openbox's read-only
//! configuration, Chromium's masked helpers, slirp4netns without root. Real bubblewrap,
//! real Xvnc, openbox and Chromium; the attacker (the desktop's own user) is played for
//! real, inside the sandbox built by the runtime's own `sandbox::command`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use livesession_desktop::egress::{EgressMode, EgressPolicy};
use livesession_desktop::rfb::RfbClient;
use livesession_desktop::sandbox::{self, Confinement, DesktopDirs};
use livesession_desktop::{
    DesktopHandle, DesktopRuntime, DesktopSpec, LocalRuntime, LocalRuntimeConfig,
    ToolPaths, is_root, members,
};

mod common;
use common::{as_desktop_user, desktop_uid};

fn config(root: &Path) -> LocalRuntimeConfig {
    common::config(root, ToolPaths::default())
}

fn spec(id: &str) -> DesktopSpec {
    common::spec(id, common::MAGENTA_PAGE)
}

fn status_field(pid: i32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

fn desktop_home(h: &DesktopHandle) -> PathBuf {
    h.vnc_socket.path().parent().unwrap().parent().unwrap().join("home")
}

// ------------------------------------------------------------------ seccomp, user namespaces

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_a_desktop_runs_under_the_filter_with_bounded_user_namespaces() {
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(config(root.path())).unwrap();
    let h = rt.start(spec("f1"), &|_| {}).await.unwrap();
    let procs = members(0, h.pidns);
    assert!(procs.len() >= 5, "{procs:?}");
    let mut names = Vec::new();
    for pid in &procs {
        let name = comm(*pid);
        let Some(seccomp) = status_field(*pid, "Seccomp") else {
            // A short-lived process (Chromium starts some) that exited since the listing.
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "{name} ({pid}) has no Seccomp line");
            continue;
        };
        assert_eq!(seccomp, "2", "{name} ({pid}) runs without a seccomp filter");
        assert_eq!(status_field(*pid, "NoNewPrivs").as_deref(), Some("1"), "{name}");
        names.push(name);
    }
    for piece in ["Xvnc", "openbox", "chromium", "socat"] {
        assert!(names.iter().any(|n| n.starts_with(piece)), "{piece} not among {names:?}");
    }
    // The sandbox's user namespace allows USER_NAMESPACES_MAX below it: read from inside
    // it (the value is per user namespace).
    let first = *procs.first().unwrap();
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--target={first}"))
        .args(["--user", "--preserve-credentials", "--", "cat", "/proc/sys/user/max_user_namespaces"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sandbox::USER_NAMESPACES_MAX.to_string(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Chromium's zygote holds its two; nothing else made any.
    let sandbox_ns = std::fs::read_link(format!("/proc/{first}/ns/user")).unwrap();
    let nested: std::collections::BTreeSet<PathBuf> = procs
        .iter()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/ns/user")).ok())
        .filter(|ns| *ns != sandbox_ns)
        .collect();
    assert!(nested.len() as u32 <= sandbox::USER_NAMESPACES_MAX, "{nested:?}");
    // The seccomp fd bubblewrap read from is not left open in the desktop.
    for pid in &procs {
        let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).collect())
            .unwrap_or_default();
        assert!(
            !fds.iter().any(|f| f.to_string_lossy().ends_with("seccomp.bpf")),
            "{} keeps the filter's file open",
            comm(*pid)
        );
    }
    rt.stop("f1").await;
}

/// Compiles the probe (tests/probe/syscalls.c) into `dir`.
fn build_probe(dir: &Path) -> PathBuf {
    let out = dir.join("probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/syscalls.c");
    let status = std::process::Command::new("cc")
        .args(["-O0", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc (needed to build the probe)");
    assert!(status.success());
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// "<name> <result> <errno>" lines into name → (result, errno).
fn parse(out: &[u8]) -> BTreeMap<String, (i64, i32)> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), (w.next()?.parse().ok()?, w.next()?.parse().ok()?)))
        })
        .collect()
}

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

/// Calls for which the kernel itself answers something else than EPERM to an unprivileged
/// caller (in its own user and mount namespace): without the filter, the probe sees a
/// different answer, so the test would fail if the filter let them through.
const NOT_EPERM_WITHOUT_FILTER: &[&str] = &[
    "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "mount",
    "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "setns", "ptrace", "clone3",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_in_the_sandbox_gets_eperm_from_every_blocked_call() {
    let bwrap = livesession_desktop::toolchain::find_binary("bwrap").expect("bwrap");
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let uid = is_root().then_some(2_000_000_950u32);
    let d = root.path().join("d");
    let dirs = DesktopDirs {
        home: d.join("home"),
        run: d.join("run"),
        etc: d.join("etc"),
        gate: d.join("gate"),
    };
    for dir in [&d, &dirs.home, &dirs.run, &dirs.etc, &dirs.gate] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&dirs.home, Some(uid), Some(uid)).unwrap();
        std::os::unix::fs::chown(&dirs.run, Some(uid), Some(uid)).unwrap();
    }
    for (name, bytes) in sandbox::etc_files(None) {
        std::fs::write(dirs.etc.join(name), bytes).unwrap();
    }
    let probe = build_probe(&dirs.home);

    // Without the filter (the same uid, on the host): the reference answers.
    let mut plain = std::process::Command::new(if uid.is_some() { PathBuf::from("setpriv") } else { probe.clone() });
    if let Some(uid) = uid {
        plain.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), "--".into()]);
        plain.arg(&probe);
    }
    let reference = parse(&plain.output().unwrap().stdout);
    for name in NOT_EPERM_WITHOUT_FILTER {
        let (r, errno) = reference.get(*name).copied().unwrap_or_else(|| panic!("{name} not probed: {reference:?}"));
        assert!(!(r < 0 && errno == EPERM), "{name} gets EPERM even without the filter: the probe proves nothing");
    }
    assert!(reference["userns"].0 > sandbox::USER_NAMESPACES_MAX as i64, "{reference:?}");

    // Inside the sandbox, exactly as a desktop starts (same command line, same filter):
    // wait for the limiter as the supervisor does, then run the probe and a masked helper.
    let script = r#"
        until [ "$(cat /proc/sys/user/max_user_namespaces)" != 2147483647 ]; do sleep 0.01; done
        /home/desktop/probe
        /usr/bin/xdg-open https://example.org/ 2>/dev/null; echo "xdg-open $? 0"
        /bin/true; echo "true $? 0"
        grep '^Seccomp:' /proc/self/status | sed 's/Seccomp:\s*/seccomp_mode /; s/$/ 0/'
    "#;
    let argv = sandbox::command(
        Some(&bwrap.to_string_lossy()),
        &dirs,
        &Confinement { uid, cgroup_procs: vec![] },
        script,
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output(),
    )
    .await
    .expect("the sandboxed probe finished")
    .unwrap();
    let inside = parse(&out.stdout);
    let report = format!("{inside:?}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(inside.get("seccomp_mode"), Some(&(2, 0)), "{report}");
    assert_eq!(inside.get("getpid").map(|r| r.0 > 0), Some(true), "an allowed call works: {report}");
    assert_eq!(inside.get("getppid").map(|r| r.0 > 0), Some(true), "{report}");
    assert_eq!(inside.get("true"), Some(&(0, 0)), "{report}");
    for (name, _) in sandbox::seccomp::BLOCKED {
        if let Some(&(r, errno)) = inside.get(*name) {
            assert!(r < 0 && errno == EPERM, "{name} inside: {r} errno {errno}\n{report}");
        }
    }
    for name in NOT_EPERM_WITHOUT_FILTER.iter().filter(|n| **n != "clone3") {
        assert!(inside.contains_key(*name), "{name} was not probed inside: {report}");
    }
    for name in ["bpf", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "perf_event_open"] {
        assert_eq!(inside.get(name).map(|r| r.1), Some(EPERM), "{name}: {report}");
    }
    assert_eq!(inside.get("clone3").map(|r| r.1), Some(ENOSYS), "{report}");
    // New user namespaces: allowed (Chromium needs them) up to the bound, then refused.
    assert_eq!(
        inside.get("userns").map(|r| r.0),
        Some(sandbox::USER_NAMESPACES_MAX as i64),
        "{report}"
    );
    // Chromium's helpers are masked: executing xdg-open fails (126: not executable).
    let (code, _) = inside["xdg-open"];
    assert_ne!(code, 0, "xdg-open ran inside the sandbox: {report}");
    assert_eq!(code, 126, "{report}");
}

// ------------------------------------------------------------------ openbox

const HOSTILE_RC: &str = r#"<?xml version="1.0"?>
<openbox_config xmlns="http://openbox.org/3.4/rc">
<desktops><number>4</number></desktops>
<keyboard>
  <keybind key="A-F2"><action name="Execute"><command>touch /home/desktop/pwned-key</command></action></keybind>
  <keybind key="A-F3"><action name="ShowMenu"><menu>root-menu</menu></action></keybind>
</keyboard>
<mouse>
  <context name="Root">
    <mousebind button="Right" action="Press"><action name="Execute"><command>touch /home/desktop/pwned-root</command></action></mousebind>
  </context>
  <context name="Client">
    <mousebind button="Right" action="Press"><action name="Execute"><command>touch /home/desktop/pwned-client</command></action></mousebind>
  </context>
  <context name="Frame">
    <mousebind button="A-Left" action="Press"><action name="Execute"><command>touch /home/desktop/pwned-frame</command></action></mousebind>
  </context>
</mouse>
<menu><file>menu.xml</file></menu>
</openbox_config>
"#;

const HOSTILE_MENU: &str = r#"<?xml version="1.0"?>
<openbox_menu xmlns="http://openbox.org/3.4/menu">
<menu id="root-menu" label="Openbox">
  <item label="pwn"><action name="Execute"><command>touch /home/desktop/pwned-menu</command></action></item>
</menu>
</openbox_menu>
"#;

// X keysyms.
const XK_ALT_L: u32 = 0xffe9;
const XK_F2: u32 = 0xffbf;
const XK_F3: u32 = 0xffc0;
const XK_RETURN: u32 = 0xff0d;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_openbox_configuration_in_the_home_starts_nothing() {
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(config(root.path())).unwrap();
    let h = rt.start(spec("ob1"), &|_| {}).await.unwrap();
    let home = desktop_home(&h);

    // The desktop's user writes openbox's configuration everywhere openbox used to look,
    // then asks the running openbox to reload it.
    let write = format!(
        r#"set -e
        for d in /home/desktop/.config/openbox /home/desktop/.local/share/openbox /run/desktop/xdg/openbox; do
            mkdir -p "$d"
            cat > "$d/rc.xml" <<'EOF'
{HOSTILE_RC}EOF
            cat > "$d/menu.xml" <<'EOF'
{HOSTILE_MENU}EOF
        done
        DISPLAY=:{display} openbox --reconfigure
        echo written"#,
        display = h.display
    );
    let out = as_desktop_user(&h, &write).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("written"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let openbox_alive = || {
        members(0, h.pidns).iter().any(|p| comm(*p) == "openbox")
    };
    assert!(openbox_alive(), "openbox keeps running after the reconfigure");

    // Then drives the desktop as a person would: right-clicks the page and a corner,
    // Alt+click, the keys the hostile file bound, the menu it would show, Enter.
    let stream = h.vnc_socket.connect().await.unwrap();
    let mut rfb = RfbClient::handshake(stream).await.unwrap();
    for (x, y) in [(640, 400), (1, 1), (1279, 719)] {
        rfb.pointer(x, y, 0).await.unwrap();
        rfb.pointer(x, y, 4).await.unwrap(); // right button
        tokio::time::sleep(Duration::from_millis(100)).await;
        rfb.pointer(x, y, 0).await.unwrap();
        rfb.key(0xff1b, true).await.unwrap(); // Escape closes whatever menu opened
        rfb.key(0xff1b, false).await.unwrap();
    }
    rfb.key(XK_ALT_L, true).await.unwrap();
    rfb.pointer(640, 400, 1).await.unwrap();
    rfb.pointer(640, 400, 0).await.unwrap();
    for key in [XK_F2, XK_F3] {
        rfb.key(key, true).await.unwrap();
        rfb.key(key, false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rfb.key(XK_ALT_L, false).await.unwrap();
    rfb.key(XK_RETURN, true).await.unwrap();
    rfb.key(XK_RETURN, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pwned: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pwned"))
        .collect();
    assert!(pwned.is_empty(), "openbox ran the desktop's commands: {pwned:?}");
    assert!(openbox_alive());
    // openbox was given the server's file, and its XDG directories are the server's.
    let openbox = members(0, h.pidns).into_iter().find(|p| comm(*p) == "openbox").unwrap();
    let cmdline = std::fs::read(format!("/proc/{openbox}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains(&format!("{}/openbox/rc.xml", sandbox::CONFIG)));
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{openbox}/environ")).unwrap()).into_owned();
    for var in ["XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "HOME"] {
        assert!(environ.contains(&format!("{var}={}\0", sandbox::CONFIG)), "{var}: {environ:?}");
    }
    // And the desktop's user cannot change the server's configuration.
    let out = as_desktop_user(&h, &format!("echo x >> {}/openbox/rc.xml && echo changed", sandbox::CONFIG)).await;
    assert!(!String::from_utf8_lossy(&out.stdout).contains("changed"));
    rt.stop("ob1").await;
}

// ------------------------------------------------------------------ Chromium's helpers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_finds_no_helper_to_hand_files_or_links_to() {
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(config(root.path())).unwrap();
    let h = rt.start(spec("xo1"), &|_| {}).await.unwrap();
    let out = as_desktop_user(
        &h,
        r#"for p in /usr/bin/xdg-open /usr/bin/xdg-mime /usr/bin/gio /usr/bin/gtk-launch; do
               [ -e "$p" ] || continue
               "$p" https://example.org/ >/dev/null 2>&1; echo "$p $?"
           done
           [ -s /etc/chromium/policies/managed/livesession.json ] && echo "policy present""#,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/usr/bin/xdg-open 126"), "{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with('/')) {
        assert!(line.ends_with(" 126"), "a helper ran: {line}");
    }
    assert!(stdout.contains("policy present"), "{stdout}");
    rt.stop("xo1").await;
}

// ------------------------------------------------------------------ slirp4netns

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_internet_egress_slirp4netns_runs_as_the_desktops_user() {
    let root = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(LocalRuntimeConfig {
        egress: EgressPolicy { mode: EgressMode::Internet, ..EgressPolicy::default() },
        ..config(root.path())
    })
    .unwrap();
    let h = rt.start(spec("net1"), &|_| {}).await.unwrap();
    let slirp: Vec<i32> = livesession_desktop::group_members(h.pgid)
        .into_iter()
        .filter(|p| comm(*p) == "slirp4netns")
        .collect();
    assert_eq!(slirp.len(), 1, "one slirp4netns in the desktop's group");
    let uids = status_field(slirp[0], "Uid").unwrap();
    let expected = if is_root() { desktop_uid(&h) } else { nix_uid() };
    assert!(
        uids.split_whitespace().all(|u| u == expected.to_string()),
        "slirp4netns runs as {uids}, not the desktop's {expected}"
    );
    // Its capabilities are those of the sandbox's user namespace it joined, nothing of
    // the host's (a non-root uid in the host's namespace).
    // And it still gave the namespace its network.
    let routes = std::fs::read_to_string(format!("/proc/{}/net/route", members(0, h.pidns)[0])).unwrap();
    assert!(routes.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000")), "{routes}");
    rt.stop("net1").await;
}

fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}
