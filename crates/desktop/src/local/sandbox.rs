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

/// Where the desktop's directories appear inside the sandbox.
pub const HOME: &str = "/home/desktop";
pub const RUN: &str = "/run/desktop";
pub const GATE: &str = "/run/gateway";

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
        argv.push(bwrap.into());
        argv.extend(bwrap_args(dirs).into_iter().map(OsString::from));
        argv.push("--".into());
    }
    argv.extend(["/bin/bash", "-c", script, "livesession-desktop"].map(OsString::from));
    argv
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
        if host.exists() {
            let path = host.to_string_lossy().into_owned();
            a.extend(["--ro-bind".into(), path.clone(), path]);
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

/// The generated `/etc/hosts` and `/etc/resolv.conf` of a desktop.
pub fn etc_files(dns: Option<std::net::Ipv4Addr>) -> [(&'static str, String); 2] {
    let resolv = match dns {
        Some(ip) => format!("nameserver {ip}\n"),
        // No network: nothing to ask, and the host's resolver (often on its loopback) is
        // not reachable anyway.
        None => String::new(),
    };
    [
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
        ("resolv.conf", resolv),
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
        assert_eq!(etc_files(None)[1].1, "");
        assert_eq!(
            etc_files(Some(crate::egress::SLIRP_DNS))[1].1,
            "nameserver 10.0.2.3\n"
        );
    }
}
