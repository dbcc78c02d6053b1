//! The command line that starts a desktop: optionally joins its cgroups, drops to the
//! desktop's own unprivileged user, and runs the supervisor script inside bubblewrap.
//!
//! Inside the sandbox (own user, PID, IPC, UTS, cgroup and network namespaces) the desktop
//! sees the system read-only (`/usr` and a short list of `/etc` entries), an empty `/tmp`,
//! its own home, and its run directory (where the VNC and DevTools sockets are). Nothing
//! else of the host is mounted: not the data directory, the database, the secrets, nor
//! any other desktop's directory. Pure functions of their inputs, so tests can read the
//! exact configuration.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub mod seccomp;

/// Where the desktop's directories appear inside the sandbox.
pub const HOME: &str = "/home/desktop";
pub const RUN: &str = "/run/desktop";
pub const GATE: &str = "/run/gateway";
/// The server's configuration for the desktop's programs, read-only inside: openbox's
/// `rc.xml` and an empty menu under `openbox/`. Also openbox's `XDG_CONFIG_HOME`,
/// `XDG_CONFIG_DIRS` and `HOME`, so it reads nothing the desktop's user wrote.
pub const CONFIG: &str = "/etc/livesession";
/// Chromium's managed policy, read-only inside.
pub const CHROMIUM_POLICY: &str = "/etc/chromium/policies/managed/livesession.json";

/// The fd bubblewrap reads the seccomp program from (opened by the command line's shell).
const SECCOMP_FD: &str = "9";

/// How many user namespaces may exist below the sandbox's own at once. Chromium's
/// sandbox holds two for its zygote (a new user namespace, and inside it a second one it
/// moves to) and, while it starts, briefly two more for its capability probe; nothing
/// else in the desktop needs any. Set from outside the sandbox by the command line (the
/// limit lives in the sandbox's user namespace, where nobody inside holds the capability
/// to raise it), and the supervisor waits for it before it starts openbox or Chromium.
pub const USER_NAMESPACES_MAX: u32 = 4;

/// Programs that hand a file, a URL or a desktop entry to another program: masked (an
/// empty, non-executable file bound over them) inside the sandbox, so that Chromium (a
/// download's "Open", a `mailto:` link, "Show in folder") and anything else find nothing
/// to start. Only regular files are masked: a symbolic link among them (`x-www-browser`,
/// `open`) points at one of these or at Chromium itself, and a bind mount over a link
/// would land on its target.
pub const MASKED_HELPERS: &[&str] = &[
    "/usr/bin/xdg-open",
    "/usr/bin/xdg-mime",
    "/usr/bin/xdg-settings",
    "/usr/bin/xdg-email",
    "/usr/bin/xdg-screensaver",
    "/usr/bin/xdg-desktop-menu",
    "/usr/bin/xdg-desktop-icon",
    "/usr/bin/xdg-icon-resource",
    "/usr/bin/gio",
    "/usr/bin/gio-launch-desktop",
    "/usr/bin/gtk-launch",
    "/usr/bin/gtk4-launch",
    "/usr/bin/gdbus",
    "/usr/bin/exo-open",
    "/usr/bin/kde-open",
    "/usr/bin/kde-open5",
    "/usr/bin/kioclient",
    "/usr/bin/kioclient5",
    "/usr/bin/gnome-open",
    "/usr/bin/gvfs-open",
    "/usr/bin/mimeopen",
    "/usr/bin/mimeopen-gui",
    "/usr/bin/run-mailcap",
    "/usr/bin/sensible-browser",
    "/usr/bin/sensible-editor",
    "/usr/bin/sensible-terminal",
    "/usr/bin/x-terminal-emulator",
    "/usr/bin/dbus-launch",
    "/usr/bin/dbus-daemon",
    "/usr/bin/dbus-run-session",
    "/usr/lib/x86_64-linux-gnu/glib-2.0/gio-launch-desktop",
    "/usr/lib/aarch64-linux-gnu/glib-2.0/gio-launch-desktop",
];

/// The server's files for one desktop, written into its `etc/` directory (the server's,
/// read-only inside) and mounted where the programs look for them.
const OPENBOX_RC: &str = include_str!("sandbox/openbox-rc.xml");
const OPENBOX_MENU: &str = include_str!("sandbox/openbox-menu.xml");
const CHROMIUM_POLICY_JSON: &str = include_str!("sandbox/chromium-policy.json");

/// `/etc` entries a desktop needs (fonts, certificates, the dynamic linker, Chromium's and
/// openbox's configuration). Everything else in `/etc` stays out of view, so secrets an
/// operator keeps there are not readable from a desktop.
const ETC_ENTRIES: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "chromium",
    "chromium.d",
    "fonts",
    "gai.conf",
    "group",
    "gtk-3.0",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "protocols",
    "services",
    "ssl",
    "X11",
    "xdg",
];

/// The directories of one desktop, as the host sees them.
#[derive(Debug, Clone)]
pub struct DesktopDirs {
    pub home: PathBuf,
    pub run: PathBuf,
    /// Generated `/etc/hosts` and `/etc/resolv.conf`.
    pub etc: PathBuf,
    /// Sockets the server serves to the desktop (host-port forwards): the server's own
    /// directory, read-only inside, so the desktop cannot replace what is in it.
    pub gate: PathBuf,
}

/// Who the desktop runs as and what it is confined by.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// Host uid/gid to drop to before bubblewrap (only when the server runs as root).
    pub uid: Option<u32>,
    /// `cgroup.procs` files the process joins before anything else starts.
    pub cgroup_procs: Vec<PathBuf>,
}

/// The argv (program first) of the process that becomes the desktop.
pub fn command(
    bwrap: Option<&str>,
    dirs: &DesktopDirs,
    confinement: &Confinement,
    script: &str,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    // Joining the cgroups happens first and as root, so every process the desktop ever
    // starts is counted: a shell writes its own pid, then execs the rest.
    if !confinement.cgroup_procs.is_empty() {
        argv.extend(
            [
                "/bin/sh",
                "-c",
                r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#,
                "livesession-cgroup",
            ]
            .map(OsString::from),
        );
        argv.push(confinement.cgroup_procs.len().to_string().into());
        argv.extend(confinement.cgroup_procs.iter().map(|p| p.into()));
    }
    if let Some(uid) = confinement.uid {
        argv.extend(
            [
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_owned(),
                "--inh-caps=-all".to_owned(),
                "--bounding-set=-all".to_owned(),
                "--".to_owned(),
            ]
            .map(OsString::from),
        );
    }
    if let Some(bwrap) = bwrap {
        // A shell as the desktop's user, outside the sandbox: opens the seccomp program
        // for bubblewrap (`--seccomp 9`), starts the user-namespace limiter (below), and
        // becomes bubblewrap. It waits for the limiter's first fork, so that bubblewrap
        // has no child but the sandbox (the runtime finds the sandbox as its first child).
        // With a uid of its own, it first checks that setpriv did clear the capability
        // bounding set: without CAP_SETPCAP (a container that dropped it) setpriv leaves
        // it as it was and says nothing, and the desktop does not start then.
        let bounding_set_check = if confinement.uid.is_some() { BOUNDING_SET_CHECK } else { "" };
        argv.extend(
            [
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!(
                    r#"{bounding_set_check}f=$1; shift; p=$$; ( ( {} ) & ); exec "$@" {SECCOMP_FD}<"$f""#,
                    limiter_script()
                ),
                "livesession-sandbox".to_owned(),
            ]
            .map(OsString::from),
        );
        argv.push(dirs.etc.join("seccomp.bpf").into());
        argv.push(bwrap.into());
        argv.extend(bwrap_args(dirs).into_iter().map(OsString::from));
        argv.extend(["--seccomp", SECCOMP_FD, "--"].map(OsString::from));
    }
    argv.extend(["/bin/bash", "-c", script, "livesession-desktop"].map(OsString::from));
    argv
}

/// Refuses to go on unless the capability bounding set is empty (exit 126, with why).
const BOUNDING_SET_CHECK: &str = "grep -q '^CapBnd:[[:space:]]*0*$' /proc/self/status || { echo 'livesession: the capability bounding set was not cleared (the server lacks CAP_SETPCAP); not starting the desktop' >&2; exit 126; }; ";

/// The limiter, as a shell command run in the background by the desktop's user outside
/// the sandbox (`$p`: the pid that becomes bubblewrap). It waits for bubblewrap's child
/// (the sandbox's first process, already in the sandbox's user namespace), joins that
/// namespace (as the user who created it, it may, and holds every capability there until
/// it executes something) and, in the same process, sets `user.max_user_namespaces` there
/// to [`USER_NAMESPACES_MAX`]. It gives up when bubblewrap is gone (the desktop was
/// stopped before its sandbox started), so it never outlives the desktop. Perl (Essential
/// on Debian) because `nsenter` would lose those capabilities when it executes the
/// command that writes. Inside, the desktop's processes hold no capability in that
/// namespace, so none can raise the limit again.
///
/// Then it keeps the lifeline (`lifeline.rs`) for the sandbox until the sandbox's own
/// supervisor runs: bubblewrap's child waits on an eventfd for its parent's word before
/// it sets `--die-with-parent` or starts anything, and a parent that died in between (the
/// server killed, the group stopped) left it waiting forever, outside every process group
/// the server knows. So until that child has started the supervisor, the limiter kills
/// it when the lifeline ends or when bubblewrap is no longer its parent.
fn limiter_script() -> String {
    let setns = nix::libc::SYS_setns;
    let newuser = nix::libc::CLONE_NEWUSER;
    format!(
        r#"me=$(readlink /proc/self/ns/user); i=0; while [ $i -lt 2000 ] && [ -e /proc/$p ]; do for c in $(cat /proc/$p/task/$p/children 2>/dev/null); do ns=$(readlink /proc/$c/ns/user 2>/dev/null) && [ "$ns" != "$me" ] && exec perl -e '{LIMITER_PERL}' "$c" "$p" "${{LS_LIFELINE_FD:-}}"; done; i=$((i+1)); sleep 0.005; done; echo "livesession: the sandbox's user-namespace limit could not be set" >&2"#,
        LIMITER_PERL = limiter_perl(setns, newuser),
    )
}

/// The limiter's Perl (see [`limiter_script`]): `$c` the sandbox's first process, `$p`
/// bubblewrap, `$fd` the lifeline's read end. No single quote: it sits in the shell's.
fn limiter_perl(setns: i64, newuser: i32) -> String {
    r#"
my ($c, $p, $fd) = @ARGV;
open(my $ns, "<", "/proc/$c/ns/user") or die "livesession: $!\n";
syscall(SETNS, fileno($ns), NEWUSER) == 0 or die "livesession: setns: $!\n";
open(my $f, ">", "/proc/sys/user/max_user_namespaces") or die "livesession: $!\n";
print $f "LIMIT\n";
close($f) or die "livesession: $!\n";
exit 0 if $fd eq "";
my $lifeline = "";
vec($lifeline, $fd, 1) = 1;
while (1) {
    # Gone already, or bubblewrap is no longer its parent (it died before its word).
    open(my $stat, "<", "/proc/$c/stat") or exit 0;
    my ($ppid) = (<$stat> // "") =~ /\) \S+ (\d+)/;
    close($stat);
    # Nothing is ever written to the lifeline: readable means its end.
    my $ended = !defined($ppid) || $ppid != $p || select(my $ready = $lifeline, undef, undef, 0.05) > 0;
    if ($ended) { kill "KILL", $c; exit 0; }
    # The supervisor runs (the child has a child of its own): it keeps the lifeline now.
    if (open(my $children, "<", "/proc/$c/task/$c/children")) {
        exit 0 if (<$children> // "") =~ /\d/;
    }
}
"#
    .replace("SETNS", &setns.to_string())
    .replace("NEWUSER", &newuser.to_string())
    .replace("LIMIT", &USER_NAMESPACES_MAX.to_string())
}

/// bubblewrap's options for one desktop.
pub fn bwrap_args(dirs: &DesktopDirs) -> Vec<String> {
    let mut a: Vec<String> = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--hostname",
        "desktop",
        // A new session: no controlling terminal to push keystrokes into (TIOCSTI).
        "--new-session",
        // Killing the outer bubblewrap ends the namespace, whatever happens to the server.
        "--die-with-parent",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    .map(str::to_owned)
    .to_vec();
    // Merged /usr: /bin, /lib... are symlinks into it on Debian 12; keep whatever the host has.
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(top);
        match std::fs::read_link(&host) {
            Ok(target) => a.extend([
                "--symlink".into(),
                target.to_string_lossy().into_owned(),
                host.to_string_lossy().into_owned(),
            ]),
            Err(_) if host.is_dir() => a.extend([
                "--ro-bind".into(),
                host.to_string_lossy().into_owned(),
                host.to_string_lossy().into_owned(),
            ]),
            Err(_) => {}
        }
    }
    for entry in ETC_ENTRIES {
        let host = Path::new("/etc").join(entry);
        if *entry == "chromium" {
            // Entry by entry, so that our managed policy can be added beside the host's.
            chromium_etc(&host, &mut a);
        } else if host.exists() {
            let path = host.to_string_lossy().into_owned();
            a.extend(["--ro-bind".into(), path.clone(), path]);
        }
    }
    // The server's configuration for openbox and Chromium (see [`etc_files`]).
    let etc = |name: &str| dirs.etc.join(name).to_string_lossy().into_owned();
    a.extend([
        "--ro-bind".into(),
        etc("openbox-rc.xml"),
        format!("{CONFIG}/openbox/rc.xml"),
        "--ro-bind".into(),
        etc("openbox-menu.xml"),
        format!("{CONFIG}/openbox/menu.xml"),
        "--ro-bind".into(),
        etc("chromium-policy.json"),
        CHROMIUM_POLICY.into(),
    ]);
    // Nothing to hand a file or a link to.
    for helper in MASKED_HELPERS {
        if std::fs::symlink_metadata(helper).is_ok_and(|m| m.is_file()) {
            a.extend(["--ro-bind".into(), "/dev/null".into(), (*helper).into()]);
        }
    }
    // Fontconfig's caches: without them every Chromium start rebuilds them in its home.
    for dir in ["/var/cache/fontconfig"] {
        if Path::new(dir).is_dir() {
            a.extend(["--ro-bind".into(), dir.into(), dir.into()]);
        }
    }
    for file in ["hosts", "resolv.conf"] {
        a.extend([
            "--ro-bind".into(),
            dirs.etc.join(file).to_string_lossy().into_owned(),
            format!("/etc/{file}"),
        ]);
    }
    a.extend(["--proc", "/proc", "--tmpfs", "/dev"].map(str::to_owned));
    // A handful of device nodes rather than bubblewrap's `--dev`: mounting a devpts makes
    // bubblewrap nest a second user namespace, which the gateway could then no longer
    // enter to give the desktop its network.
    for dev in ["null", "zero", "full", "random", "urandom"] {
        a.extend(["--dev-bind".into(), format!("/dev/{dev}"), format!("/dev/{dev}")]);
    }
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        a.extend(["--symlink".into(), target.into(), link.into()]);
    }
    // Sized, so that writing there cannot exhaust the host's memory even where no memory
    // cgroup holds the desktop (home and run are capped by the runtime, `writable`).
    a.extend(
        ["--size", "536870912", "--tmpfs", "/dev/shm", "--size", "268435456", "--tmpfs", "/tmp", "--dir", "/var/tmp"]
            .map(str::to_owned),
    );
    a.extend([
        "--bind".into(),
        dirs.home.to_string_lossy().into_owned(),
        HOME.into(),
        "--bind".into(),
        dirs.run.to_string_lossy().into_owned(),
        RUN.into(),
        "--ro-bind".into(),
        dirs.gate.to_string_lossy().into_owned(),
        GATE.into(),
        "--chdir".into(),
        HOME.into(),
    ]);
    a
}

/// Host `/etc/chromium` inside, but for `policies/`: the host's managed policies file by
/// file, then ours.
fn chromium_etc(host: &Path, a: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(host) else {
        return;
    };
    let mut bind = |path: &Path| {
        let path = path.to_string_lossy().into_owned();
        a.extend(["--ro-bind".into(), path.clone(), path]);
    };
    for entry in entries.flatten() {
        if entry.file_name() != "policies" {
            bind(&entry.path());
        }
    }
    if let Ok(policies) = std::fs::read_dir(host.join("policies")) {
        for entry in policies.flatten() {
            if entry.file_name() != "managed" {
                bind(&entry.path());
            }
        }
    }
    if let Ok(managed) = std::fs::read_dir(host.join("policies/managed")) {
        for entry in managed.flatten() {
            if Path::new(CHROMIUM_POLICY).file_name() != Some(&entry.file_name()) {
                bind(&entry.path());
            }
        }
    }
}

/// The files the server writes into a desktop's `etc/` (its own directory, read-only
/// inside): the generated `/etc/hosts` and `/etc/resolv.conf`, openbox's configuration
/// and menu, Chromium's managed policy, and the seccomp program bubblewrap loads.
pub fn etc_files(dns: Option<std::net::Ipv4Addr>) -> Vec<(&'static str, Vec<u8>)> {
    let resolv = match dns {
        Some(ip) => format!("nameserver {ip}\n"),
        // No network: nothing to ask, and the host's resolver (often on its loopback) is
        // not reachable anyway.
        None => String::new(),
    };
    vec![
        ("hosts", b"127.0.0.1 localhost\n::1 localhost\n".to_vec()),
        ("resolv.conf", resolv.into_bytes()),
        ("openbox-rc.xml", OPENBOX_RC.as_bytes().to_vec()),
        ("openbox-menu.xml", OPENBOX_MENU.as_bytes().to_vec()),
        ("chromium-policy.json", CHROMIUM_POLICY_JSON.as_bytes().to_vec()),
        ("seccomp.bpf", seccomp::bytes()),
    ]
}

/// Whether every ancestor of `dir` lets other users through (`o+x`): the desktop's user
/// has to reach its directories to mount them.
pub fn traversable_by_others(dir: &Path) -> Result<(), PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut path = PathBuf::new();
    for part in dir.components() {
        path.push(part);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o001 == 0
        {
            return Err(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check passes only once the bounding set is empty: it stops a desktop started
    /// by a server whose setpriv could not clear it (here: not asked to), and lets one
    /// through whose set was cleared (setpriv as root, which holds CAP_SETPCAP).
    #[test]
    fn the_bounding_set_check_stops_a_desktop_whose_set_was_not_cleared() {
        let run = |prefix: &[&str]| {
            let mut argv: Vec<&str> = prefix.to_vec();
            let script = format!("{BOUNDING_SET_CHECK}echo started");
            argv.extend(["/bin/sh", "-c", script.as_str()]);
            let out = std::process::Command::new(argv[0]).args(&argv[1..]).output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (code, stdout, stderr) = run(&[]);
        assert_eq!((code, stdout.as_str()), (Some(126), ""), "the test runs with a full bounding set: {stderr}");
        assert!(stderr.contains("lacks CAP_SETPCAP"), "{stderr}");
        let (code, stdout, stderr) = run(&["setpriv", "--bounding-set=-all", "--"]);
        assert_eq!((code, stdout.as_str()), (Some(0), "started\n"), "{stderr}");
    }

    fn dirs() -> DesktopDirs {
        DesktopDirs {
            home: "/srv/ls/desktops/abc/home".into(),
            run: "/srv/ls/desktops/abc/run".into(),
            etc: "/srv/ls/desktops/abc/etc".into(),
            gate: "/srv/ls/desktops/abc/gate".into(),
        }
    }

    fn pairs(args: &[String], flag: &str) -> Vec<(String, String)> {
        args.windows(3)
            .filter(|w| w[0] == flag)
            .map(|w| (w[1].clone(), w[2].clone()))
            .collect()
    }

    /// openbox ignores a configuration that is not well-formed XML and runs on its
    /// built-in defaults (it did: a `--` in a comment). The one rule XML comments are
    /// broken by most easily is checked here; e2e/screen.test.js checks the effect.
    #[test]
    fn the_openbox_configuration_has_no_double_hyphen_inside_a_comment() {
        for (n, comment) in OPENBOX_RC.split("<!--").skip(1).enumerate() {
            let body = comment.split("-->").next().expect("split yields one part");
            assert!(!body.contains("--"), "comment {n} holds \"--\": {body}");
            assert!(comment.contains("-->"), "comment {n} is not closed");
        }
        assert!(OPENBOX_RC.contains("<decor>no</decor>") && OPENBOX_RC.contains("<maximized>yes</maximized>"));
    }

    #[test]
    fn the_sandbox_unshares_every_namespace_and_mounts_only_what_it_needs() {
        let args = bwrap_args(&dirs());
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-net",
            "--unshare-uts",
            "--new-session",
            "--die-with-parent",
        ] {
            assert!(args.iter().any(|a| a == flag), "missing {flag}");
        }
        let rw = pairs(&args, "--bind");
        assert_eq!(
            rw,
            vec![
                ("/srv/ls/desktops/abc/home".into(), HOME.into()),
                ("/srv/ls/desktops/abc/run".into(), RUN.into()),
            ],
            "the only writable host paths are the desktop's own"
        );
        let ro = pairs(&args, "--ro-bind");
        for (src, dest) in &ro {
            assert!(
                src == "/usr" || src.starts_with("/etc/") || src.starts_with("/srv/ls/desktops/abc/etc/")
                    || src == "/srv/ls/desktops/abc/gate"
                    || src == "/var/cache/fontconfig"
                    || (src == "/dev/null" && MASKED_HELPERS.contains(&dest.as_str()))
                    || ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"].contains(&src.as_str()),
                "unexpected read-only mount {src} -> {dest}"
            );
            assert!(!src.starts_with("/srv/ls/desktops/abc/run") && !src.contains("secrets"));
        }
        assert!(!ro.iter().any(|(s, _)| s == "/etc/shadow" || s == "/" || s == "/etc"));
        let devices = pairs(&args, "--dev-bind");
        assert!(
            devices.iter().all(|(s, d)| s == d && ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"].contains(&s.as_str())),
            "only harmless device nodes: {devices:?}"
        );
        assert!(pairs(&args, "--tmpfs").is_empty() || args.windows(2).any(|w| w == ["--tmpfs", "/tmp"]));
    }

    #[test]
    fn root_drops_to_the_desktop_user_after_joining_its_cgroups() {
        let confinement = Confinement {
            uid: Some(2_000_000_007),
            cgroup_procs: vec!["/sys/fs/cgroup/memory/ls-abc/cgroup.procs".into()],
        };
        let argv: Vec<String> = command(Some("bwrap"), &dirs(), &confinement, "echo hi")
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let at = |s: &str| argv.iter().position(|a| a == s).unwrap_or_else(|| panic!("no {s}"));
        assert_eq!(argv[0], "/bin/sh");
        assert_eq!(argv[4], "1");
        assert_eq!(argv[5], "/sys/fs/cgroup/memory/ls-abc/cgroup.procs");
        assert!(at("setpriv") < at("bwrap") && at("bwrap") < at("/bin/bash"));
        assert!(argv.contains(&"--reuid=2000000007".to_owned()));
        assert!(argv.contains(&"--clear-groups".to_owned()));
        assert_eq!(argv[argv.len() - 2..], ["echo hi", "livesession-desktop"]);
    }

    #[test]
    fn without_sandbox_or_root_the_script_runs_directly() {
        let none = Confinement {
            uid: None,
            cgroup_procs: vec![],
        };
        let argv = command(None, &dirs(), &none, "s");
        assert_eq!(argv, ["/bin/bash", "-c", "s", "livesession-desktop"].map(OsString::from));
    }

    #[test]
    fn resolv_conf_names_slirps_forwarder_or_nothing() {
        assert_eq!(etc_files(None)[1].1, b"");
        assert_eq!(
            etc_files(Some(crate::egress::SLIRP_DNS))[1].1,
            b"nameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn bubblewrap_loads_the_filter_from_the_servers_file_and_the_limiter_runs_outside() {
        let confinement = Confinement { uid: Some(2_000_000_007), cgroup_procs: vec![] };
        let argv: Vec<String> = command(Some("bwrap"), &dirs(), &confinement, "s")
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let at = |s: &str| argv.iter().position(|a| a == s).unwrap_or_else(|| panic!("no {s}"));
        // setpriv, then the shell that opens fd 9 from the server's etc/, then bubblewrap.
        assert!(at("setpriv") < at("livesession-sandbox") && at("livesession-sandbox") < at("bwrap"));
        assert_eq!(argv[at("livesession-sandbox") + 1], "/srv/ls/desktops/abc/etc/seccomp.bpf");
        let shell = &argv[at("livesession-sandbox") - 1];
        assert!(shell.contains(r#"exec "$@" 9<"$f""#), "{shell}");
        assert!(shell.contains("max_user_namespaces") && shell.contains(&USER_NAMESPACES_MAX.to_string()));
        let seccomp = at("--seccomp");
        assert_eq!(argv[seccomp + 1], "9");
        assert!(seccomp > at("bwrap") && seccomp < at("/bin/bash"));
        assert!(etc_files(None).iter().any(|(n, b)| *n == "seccomp.bpf" && *b == seccomp::bytes()));
    }

    #[test]
    fn openbox_and_chromium_get_the_servers_read_only_configuration() {
        let ro = pairs(&bwrap_args(&dirs()), "--ro-bind");
        for (name, dest) in [
            ("openbox-rc.xml", format!("{CONFIG}/openbox/rc.xml")),
            ("openbox-menu.xml", format!("{CONFIG}/openbox/menu.xml")),
            ("chromium-policy.json", CHROMIUM_POLICY.to_owned()),
        ] {
            assert!(ro.contains(&(format!("/srv/ls/desktops/abc/etc/{name}"), dest.clone())), "{dest}");
        }
        // The configuration itself: no menu, nothing to execute or reload, one desktop.
        let mut rc = OPENBOX_RC.to_owned();
        while let Some(start) = rc.find("<!--") {
            let end = rc[start..].find("-->").expect("a closed comment") + start + 3;
            rc.replace_range(start..end, "");
        }
        for needle in ["Execute", "Reconfigure", "Restart", "root-menu", "\"Root\"", "GoToDesktop", "xi:include"] {
            assert!(!rc.contains(needle), "rc.xml has {needle}");
        }
        assert!(OPENBOX_RC.contains("<number>1</number>"));
        assert!(OPENBOX_RC.contains(&format!("<file>{CONFIG}/openbox/menu.xml</file>")));
        assert!(!OPENBOX_MENU.contains("<item"));
        let policy: serde_json::Value = serde_json::from_str(CHROMIUM_POLICY_JSON).unwrap();
        assert_eq!(policy["ExternalProtocolDialogShowAlwaysOpenCheckbox"], false);
        assert_eq!(policy["NativeMessagingUserLevelHosts"], false);
    }

    #[test]
    fn only_regular_files_among_the_helpers_are_masked() {
        let masked: Vec<String> = pairs(&bwrap_args(&dirs()), "--ro-bind")
            .into_iter()
            .filter(|(src, _)| src == "/dev/null")
            .map(|(_, dest)| dest)
            .collect();
        for helper in MASKED_HELPERS {
            let regular = std::fs::symlink_metadata(helper).is_ok_and(|m| m.is_file());
            assert_eq!(masked.contains(&(*helper).to_owned()), regular, "{helper}");
        }
    }
}
