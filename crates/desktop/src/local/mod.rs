//! The local runtime: each desktop is Xvnc + openbox + Chromium on this machine, started
//! by a small supervisor script (`launcher.sh`) inside a bubblewrap sandbox of its own,
//! with a private directory under the runtime's root:
//!
//! ```text
//! <root>/<session id>/        the server's; mode 0711 (0700 unsandboxed)
//!   home/                     the desktop's HOME (Chromium's profile in home/profile)
//!   run/                      vnc.sock, devtools.sock, display, exit, browser, stopping,
//!                             logs/<piece>.log
//!   etc/                      the desktop's generated /etc/hosts and /etc/resolv.conf
//!   desktop.pgid desktop.pidns   let a restarted server find and stop what a crash left
//! ```
//!
//! A desktop's browser state is saved by copying `home/profile` out once its processes are
//! gone and before the directory is removed, and restored by copying a saved one into a
//! fresh `home/profile` before anything starts (`profile.rs`).
//!
//! `home/` and `run/` belong to the desktop's own host uid (one per desktop, from
//! `uid_base`, when the server runs as root) and are the only host paths it can write.

mod cgroup;
mod forward;
mod lifeline;
mod writable;
mod pool;
mod process;
mod profile;
pub mod sandbox;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use cgroup::{Cgroups, ResourceLimits};
pub use process::{group_members, members, pidns_of};
use process::stop_desktop;
use sandbox::{Confinement, DesktopDirs};

use crate::confined::DesktopDir;
use crate::egress::{EgressMode, EgressPolicy, SLIRP_DNS};
use crate::toolchain::{self, ToolCheck, ToolPaths};
use crate::{
    BrowserState, DesktopError, DesktopHandle, DesktopRuntime, DesktopSpec, Piece, Progress, SavedState, devtools, rfb,
};

const LAUNCHER: &str = include_str!("launcher.sh");

#[derive(Debug, Clone)]
pub struct LocalRuntimeConfig {
    /// Parent of the desktops' private directories.
    pub root: PathBuf,
    pub tools: ToolPaths,
    /// How long a desktop may take to become ready.
    pub start_timeout: Duration,
    /// How long processes get between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Run each desktop in its own bubblewrap sandbox (namespaces, private mounts).
    pub sandbox: bool,
    /// What a sandboxed desktop's network reaches.
    pub egress: EgressPolicy,
    /// Host loopback ports a sandboxed desktop may reach (on the same port of its own
    /// loopback): for an operator's local web app, and for tests' page servers.
    pub host_ports: Vec<u16>,
    pub limits: ResourceLimits,
    /// First host uid for desktops when the server runs as root: desktop n runs as
    /// `uid_base + n`, so no two desktops share a uid and none shares the server's.
    pub uid_base: u32,
    /// Desktops kept started in advance (at `warm_size`, showing `warm_url`) and handed
    /// to new sessions; each is used by one session only.
    pub warm: usize,
    pub warm_size: (u16, u16),
    /// The page warm desktops open: the server's default start page, so a session that
    /// asks for it needs no navigation at all.
    pub warm_url: String,
    /// Extra Chromium switches, after the runtime's own (a later switch wins).
    pub chromium_flags: Vec<String>,
    /// Size cap of the desktop's home, MiB (see [`writable`]); `None` for no cap.
    pub writable_mib: Option<u64>,
}

impl LocalDesktop {
    /// The desktop's directory, for reading and connecting without following its links.
    fn files(&self) -> DesktopDir {
        DesktopDir::new(self.dir.clone(), self.owner)
    }
}

struct LocalDesktop {
    dir: PathBuf,
    pgid: i32,
    pidns: Option<u64>,
    /// The sandbox's outer bubblewrap (or the unsandboxed supervisor), once started.
    supervisor: Option<Child>,
    uid_slot: Option<u32>,
    /// The uid the desktop's processes run as: what they write is owned by it.
    owner: u32,
    cgroup: Option<cgroup::DesktopCgroup>,
    network: Option<Child>,
    forwards: Vec<tokio::task::JoinHandle<()>>,
}

/// A desktop dropped while its processes still run (its start was cancelled: the server
/// stopping mid-start, a client gone) is killed here, all of it: the child's
/// `kill_on_drop` alone would reach bubblewrap but not a sandbox it had just cloned.
impl Drop for LocalDesktop {
    fn drop(&mut self) {
        let Some(supervisor) = self.supervisor.as_mut() else { return };
        if !matches!(supervisor.try_wait(), Ok(None)) || self.pgid <= 0 {
            return;
        }
        if self.pidns.is_none() {
            process::kill_unannounced_sandbox(self.pgid);
        }
        process::kill_now(self.pgid, self.pidns);
        // Its size-capped home and run go too (lazily: a process still dying keeps them
        // until it is gone), or every cancelled start left two tmpfs mounted.
        writable::unmount(&self.dir);
    }
}

pub struct LocalRuntime {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    config: LocalRuntimeConfig,
    cgroups: Option<Cgroups>,
    desktops: Mutex<HashMap<String, LocalDesktop>>,
    uid_slots: std::sync::Mutex<BTreeSet<u32>>,
    pool: pool::WarmPool,
    /// Ids of desktops whose state is being saved: out of `desktops` until they are
    /// stopped, and waited for by `stop` (so a new desktop for the id never starts in
    /// the directory being copied).
    saving: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// Ids of desktops being stopped: out of `desktops` until their processes are gone
    /// and their directory removed, and waited for by `stop` (so a new desktop for the id,
    /// in the same directory, never starts before the old one's removal is done).
    stopping: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// Every desktop ends when this process does (`lifeline.rs`).
    lifeline: lifeline::Lifeline,
}

/// How long Chromium gets to exit after `Browser.close` before it is killed.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Marks a desktop's id in a set (`saving`, `stopping`) for as long as it lives.
struct IdMark<'a> {
    ids: &'a tokio::sync::watch::Sender<BTreeSet<String>>,
    id: String,
}

impl Drop for IdMark<'_> {
    fn drop(&mut self) {
        self.ids.send_modify(|ids| {
            ids.remove(&self.id);
        });
    }
}

// Unix socket paths are limited to 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl LocalRuntime {
    /// Creates the runtime, stops whatever desktops a previous run of the server left
    /// behind (a crash, a SIGKILL), and starts filling the warm pool.
    pub fn new(config: LocalRuntimeConfig) -> std::io::Result<Self> {
        let inner = std::sync::Arc::new(Inner::new(config)?);
        pool::spawn_refill(&inner);
        Ok(Self { inner })
    }

    /// Whether per-desktop limits are enforced, and if not, why.
    pub fn limits_status(&self) -> Result<(), String> {
        self.inner.limits_status()
    }

}

impl Inner {
    fn new(config: LocalRuntimeConfig) -> std::io::Result<Self> {
        let shared = config.sandbox && is_root();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if shared { 0o711 } else { 0o700 })
            .create(&config.root)?;
        if shared {
            // Only traversal: other users cannot list which sessions exist.
            std::fs::set_permissions(&config.root, std::fs::Permissions::from_mode(0o711))?;
            if let Err(blocking) = sandbox::traversable_by_others(&config.root) {
                return Err(std::io::Error::other(format!(
                    "desktops run as unprivileged users, which cannot reach {} because {} is not \
                     searchable by others (chmod o+x it, or use a data directory elsewhere)",
                    config.root.display(),
                    blocking.display()
                )));
            }
        }
        let cgroups = config.limits.any().then(Cgroups::detect);
        if let Some(Cgroups::Unavailable(reason)) = &cgroups {
            tracing::warn!(%reason, "desktops run without memory and CPU limits");
        }
        let runtime = Self {
            config,
            cgroups,
            desktops: Mutex::default(),
            uid_slots: Default::default(),
            pool: pool::WarmPool::default(),
            saving: tokio::sync::watch::channel(BTreeSet::new()).0,
            stopping: tokio::sync::watch::channel(BTreeSet::new()).0,
            lifeline: lifeline::Lifeline::new()?,
        };
        runtime.reap_stale();
        Ok(runtime)
    }

    fn limits_status(&self) -> Result<(), String> {
        match &self.cgroups {
            None => Ok(()),
            Some(Cgroups::Unavailable(reason)) => Err(reason.clone()),
            Some(_) => Ok(()),
        }
    }

    fn reap_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.config.root) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
            if let Some(pgid) = read("desktop.pgid").and_then(|s| s.trim().parse::<i32>().ok()) {
                // Only kill the group if one of its members is ours (its command line names
                // our root; a warm desktop's directory has been renamed since it started):
                // the pids may have been reused since.
                let root = self.config.root.to_string_lossy();
                let mentions_dir = |pid: &i32| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    String::from_utf8_lossy(&cmdline).contains(&*root)
                };
                let pidns = read("desktop.pidns").and_then(|s| s.trim().parse::<u64>().ok());
                if group_members(pgid).iter().any(mentions_dir) {
                    tracing::warn!(pgid, dir = %dir.display(), "stopping a desktop left by a previous run");
                    process::kill_now(pgid, pidns);
                }
            }
            writable::remove_desktop_dir(&dir);
        }
    }

    fn desktop_dir(&self, id: &str) -> Result<PathBuf, DesktopError> {
        // The id names a directory: allow nothing that could walk out of the root.
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(DesktopError::Setup(format!("invalid desktop id {id:?}")));
        }
        Ok(self.config.root.join(id))
    }

    fn take_uid_slot(&self) -> Option<u32> {
        if !(self.config.sandbox && is_root()) {
            return None;
        }
        let mut slots = self.uid_slots.lock().expect("uid slots");
        let slot = (0..).find(|s| !slots.contains(s)).expect("a free slot");
        slots.insert(slot);
        Some(slot)
    }

    fn release(&self, desktop: &mut LocalDesktop) {
        for f in desktop.forwards.drain(..) {
            f.abort();
        }
        if let Some(cgroup) = desktop.cgroup.take() {
            cgroup.remove();
        }
        if let Some(slot) = desktop.uid_slot.take() {
            self.uid_slots.lock().expect("uid slots").remove(&slot);
        }
    }

    async fn launch(
        &self,
        spec: &DesktopSpec,
        dir: &Path,
        progress: Progress<'_>,
    ) -> Result<(LocalDesktop, DesktopHandle), DesktopError> {
        if dir.exists() {
            writable::unmount(dir);
            std::fs::remove_dir_all(dir).map_err(|e| {
                DesktopError::Setup(format!("cannot clear the desktop directory: {e}"))
            })?;
        }
        let uid_slot = self.take_uid_slot();
        let uid = uid_slot.map(|s| self.config.uid_base + s);
        let dirs = DesktopDirs {
            home: dir.join("home"),
            run: dir.join("run"),
            etc: dir.join("etc"),
            gate: dir.join("gate"),
        };
        let mut desktop = LocalDesktop {
            dir: dir.to_owned(),
            pgid: 0,
            pidns: None,
            supervisor: None,
            uid_slot,
            owner: uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
            cgroup: None,
            network: None,
            forwards: Vec::new(),
        };
        let result = self.bring_up(spec, &dirs, uid, &mut desktop, progress).await;
        match result {
            Ok(handle) => Ok((desktop, handle)),
            Err(e) => {
                self.stop_processes(&mut desktop).await;
                self.release(&mut desktop);
                Err(e)
            }
        }
    }

    fn make_dirs(&self, dirs: &DesktopDirs, dir: &Path, uid: Option<u32>) -> std::io::Result<()> {
        let mkdir = |p: &Path, mode: u32| {
            std::fs::DirBuilder::new().recursive(true).mode(mode).create(p)?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        };
        mkdir(dir, if uid.is_some() { 0o711 } else { 0o700 })?;
        for d in [&dirs.home, &dirs.run] {
            mkdir(d, 0o700)?;
            // Sandboxed desktops of a root server get size-capped filesystems of their
            // own: nothing they write reaches the data disk or the host's /run.
            if let (Some(uid), Some(home_mib)) = (uid, self.config.writable_mib) {
                let mib = if d == &dirs.home { home_mib } else { writable::RUN_MIB.min(home_mib) };
                writable::mount_tmpfs(d, mib, uid)?;
            }
        }
        for d in [&dirs.home, &dirs.run, &dirs.run.join("logs"), &dirs.run.join("xdg")] {
            mkdir(d, 0o700)?;
            if let Some(uid) = uid {
                std::os::unix::fs::chown(d, Some(uid), Some(uid))?;
            }
        }
        mkdir(&dirs.etc, 0o755)?;
        // Sockets the server creates for the desktop: in a directory the desktop can enter
        // but not change, so it cannot swap them for links (see `confined`).
        mkdir(&dirs.gate, if uid.is_some() { 0o711 } else { 0o700 })?;
        let dns = (self.config.egress.mode == EgressMode::Internet).then_some(SLIRP_DNS);
        for (name, text) in sandbox::etc_files(dns) {
            std::fs::write(dirs.etc.join(name), text)?;
            std::fs::set_permissions(dirs.etc.join(name), std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    async fn bring_up(
        &self,
        spec: &DesktopSpec,
        dirs: &DesktopDirs,
        uid: Option<u32>,
        desktop: &mut LocalDesktop,
        progress: Progress<'_>,
    ) -> Result<DesktopHandle, DesktopError> {
        let setup = |what: &str, e: std::io::Error| DesktopError::Setup(format!("{what}: {e}"));
        let sandboxed = self.config.sandbox;
        let dir = desktop.dir.clone();
        self.make_dirs(dirs, &dir, uid)
            .map_err(|e| setup("cannot create the desktop directory", e))?;
        for socket in ["vnc.sock", "devtools.sock"] {
            let path = dirs.run.join(socket);
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(DesktopError::Setup(format!(
                    "the socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter data directory",
                    path.display()
                )));
            }
        }
        let tools = &self.config.tools;
        let binary = |piece: Piece| -> Result<String, DesktopError> {
            let name = tools.binary(piece);
            toolchain::find_binary(name)
                .map(|p| p.to_string_lossy().into_owned())
                .ok_or(DesktopError::MissingBinary { piece, binary: name.to_owned() })
        };
        let bwrap = if sandboxed { Some(binary(Piece::Bubblewrap)?) } else { None };

        // Paths as the desktop sees them.
        let (run, home) = if sandboxed {
            (PathBuf::from(sandbox::RUN), PathBuf::from(sandbox::HOME))
        } else {
            (dirs.run.clone(), dirs.home.clone())
        };
        let mut chromium_args: Vec<String> = vec![
            format!("--user-data-dir={}", home.join("profile").display()),
            "--remote-debugging-address=127.0.0.1".into(),
            "--remote-debugging-port=0".into(),
            // The window's size and place before openbox manages it: the whole screen.
            // openbox then keeps every normal window maximized without a frame
            // (sandbox/openbox-rc.xml), also when the viewer resizes the screen; asking
            // Chromium to maximize itself as well would only race that rule.
            format!("--window-size={},{}", spec.width, spec.height),
            "--window-position=0,0".into(),
            // Quiet on a closed network, and no first-run or keyring prompts in the viewer.
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--disable-breakpad".into(),
            "--password-store=basic".into(),
            "--disable-search-engine-choice-screen".into(),
            "--hide-crash-restore-bubble".into(),
            // The cache is the first thing to fill a capped home; 64 MiB is plenty.
            "--disk-cache-size=67108864".into(),
            // Memory (docs/performance.md has the measurements): there is no GPU behind
            // Xvnc, so no GPU process at all (software compositing; no WebGL); the network
            // and audio services run inside the browser process instead of two more
            // processes. Our sandbox wraps all of it either way.
            "--disable-gpu".into(),
            "--disable-software-rasterizer".into(),
            "--enable-features=NetworkServiceInProcess,NetworkServiceInProcess2".into(),
            "--disable-features=AudioServiceOutOfProcess".into(),
        ];
        if !sandboxed && is_root() {
            // Chromium refuses to run as root with its own sandbox. Inside ours it runs as
            // an unprivileged user and keeps its sandbox.
            chromium_args.push("--no-sandbox".into());
            chromium_args.push("--test-type".into());
        }
        chromium_args.extend(self.config.chromium_flags.iter().cloned());
        // After Chromium exits unasked (launcher.sh restarts it): the same profile, its
        // last session's tabs restored instead of the start URL.
        let mut restart_args = chromium_args.clone();
        restart_args.push("--restore-last-session".into());
        // The tabs to open, last on the command line (each opens a tab). Cookies to set
        // come first: then Chromium starts on a blank page, and the tabs open once they
        // are set (below).
        let tabs = tabs_to_open(spec);
        let cookies = cookies_to_set(spec);
        if cookies.is_empty() {
            chromium_args.extend(tabs.iter().map(|t| command_line_url(t)));
        } else {
            chromium_args.push("about:blank".into());
        }
        let host_ports: Vec<String> = if sandboxed {
            self.config.host_ports.iter().map(u16::to_string).collect()
        } else {
            Vec::new()
        };
        let mut env: Vec<(&str, String)> = vec![
            ("PATH", "/usr/bin:/bin".into()),
            ("LANG", "C.UTF-8".into()),
            ("HOME", home.to_string_lossy().into_owned()),
            ("XDG_RUNTIME_DIR", run.join("xdg").to_string_lossy().into_owned()),
            ("LS_RUN", run.to_string_lossy().into_owned()),
            ("LS_GATE", sandbox::GATE.into()),
            ("LS_LOGS", run.join("logs").to_string_lossy().into_owned()),
            ("LS_PROFILE", home.join("profile").to_string_lossy().into_owned()),
            ("LS_GEOMETRY", format!("{}x{}", spec.width, spec.height)),
            ("LS_XVNC", binary(Piece::Xvnc)?),
            ("LS_OPENBOX", binary(Piece::Openbox)?),
            ("LS_CHROMIUM", binary(Piece::Chromium)?),
            ("LS_SOCAT", binary(Piece::Socat)?),
            ("LS_CHROMIUM_ARGS", chromium_args.join("\n")),
            ("LS_CHROMIUM_RESTART_ARGS", restart_args.join("\n")),
            ("LS_HOST_PORTS", host_ports.join(" ")),
            ("LS_LIFELINE_FD", self.lifeline.fd().to_string()),
        ];
        let internet = sandboxed && self.config.egress.mode == EgressMode::Internet;
        if internet {
            env.push(("LS_WAIT_NET", "1".into()));
        }

        // Per-desktop limits, where the host allows them.
        if let Some(cgroups) = self.cgroups.as_ref().filter(|c| !matches!(c, Cgroups::Unavailable(_))) {
            let id = dir.file_name().unwrap_or_default().to_string_lossy();
            desktop.cgroup = Some(
                cgroups
                    .create(&id, &self.config.limits)
                    .map_err(|e| setup("cannot create the desktop's cgroup", e))?,
            );
        }
        let confinement = Confinement {
            uid,
            cgroup_procs: desktop.cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
        };
        if let Some(user_data) = spec.restore.as_ref().and_then(|r| r.user_data.clone()) {
            self.restore_profile(&spec.id, user_data, &dirs.home, uid).await?;
        }
        // The host ports listed for desktops listen before anything starts: Chromium may
        // open the start page (often on such a port) at once, and a connection made
        // before the gate's socket existed failed, leaving an error page in the tab.
        if sandboxed {
            for port in &self.config.host_ports {
                let socket = dirs.gate.join(format!("hostport-{port}.sock"));
                desktop.forwards.push(
                    forward::host_port(&socket, *port, uid)
                        .map_err(|e| setup("cannot open a host port forward", e))?,
                );
            }
        }
        let argv = sandbox::command(bwrap.as_deref(), dirs, &confinement, LAUNCHER);
        progress(Piece::Xvnc);
        let supervisor = spawn(&argv, &env, &dir.join("supervisor.log"))?;
        desktop.pgid = supervisor.id().map(|p| p as i32).unwrap_or(0);
        desktop.supervisor = Some(supervisor);
        std::fs::write(dir.join("desktop.pgid"), desktop.pgid.to_string())
            .map_err(|e| setup("cannot write desktop.pgid", e))?;

        let deadline = Instant::now() + self.config.start_timeout;
        let files = desktop.files();
        let failed = |desktop: &mut LocalDesktop| exit_error(desktop, &files);
        if sandboxed {
            // The namespace's first process: its PID namespace holds the whole desktop.
            let inner = loop {
                if let Some(pid) = sandbox_init(desktop.pgid) {
                    break pid;
                }
                if let Some(e) = failed(desktop) {
                    return Err(e);
                }
                if Instant::now() >= deadline {
                    return Err(self.timeout(Piece::Bubblewrap, &files, "did not start the sandbox"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            desktop.pidns = pidns_of(inner).filter(|ns| Some(*ns) != pidns_of(std::process::id() as i32));
            if let Some(ns) = desktop.pidns {
                std::fs::write(dir.join("desktop.pidns"), ns.to_string())
                    .map_err(|e| setup("cannot write desktop.pidns", e))?;
            }
            if internet {
                // Not before the sandbox's supervisor runs (launcher.sh, "supervising"):
                // bubblewrap sets up the namespace's loopback until then, and slirp4netns
                // configuring the namespace at the same time made that fail.
                while std::fs::symlink_metadata(dirs.run.join("supervising")).is_err() {
                    if let Some(e) = failed(desktop) {
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        return Err(self.timeout(Piece::Bubblewrap, &files, "did not start the desktop's supervisor"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                desktop.network = Some(self.connect_network(inner, desktop, &files, deadline).await?);
            }
        }

        // Xvnc writes its display number once it accepts clients; then the RFB socket.
        let display = loop {
            match files.read_tail("run/display", 64) {
                Ok(bytes) => {
                    if let Ok(d) = String::from_utf8_lossy(&bytes).trim().parse::<u32>() {
                        break d;
                    }
                }
                Err(e) if e.is_tampered() => return Err(DesktopError::Tampered(e.to_string())),
                Err(_) => {}
            }
            if let Some(e) = failed(desktop) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(Piece::Xvnc, &files, "did not open a display"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        progress(Piece::Openbox);
        let socket = files.socket("run/vnc.sock");
        loop {
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect()).await
                && tokio::time::timeout(Duration::from_secs(2), rfb::read_greeting(&mut s))
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                break;
            }
            if let Some(e) = failed(desktop) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(Piece::Xvnc, &files, "VNC socket did not answer an RFB handshake"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        progress(Piece::Chromium);
        let devtools_socket = files.socket("run/devtools.sock");
        loop {
            if devtools::list_targets(&devtools_socket)
                .await
                .is_ok_and(|t| t.iter().any(|t| t.kind == "page"))
            {
                break;
            }
            if let Some(e) = failed(desktop) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(Piece::Chromium, &files, "DevTools did not list a page"));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        if !cookies.is_empty() {
            devtools::restore_tabs(&devtools_socket, cookies, Some(&tabs[0]), &tabs[1..])
                .await
                .map_err(|e| DesktopError::Setup(format!("could not restore the browser's cookies and tabs: {e}")))?;
        }

        Ok(DesktopHandle {
            id: spec.id.clone(),
            vnc_socket: socket,
            devtools_socket,
            display,
            pgid: desktop.pgid,
            pidns: desktop.pidns,
        })
    }

    fn timeout(&self, piece: Piece, files: &DesktopDir, what: &str) -> DesktopError {
        DesktopError::PieceFailed {
            piece,
            reason: format!("{what} within {:?}", self.config.start_timeout),
            stderr_tail: log_tail(files, piece),
        }
    }

    /// Gives a sandbox outbound access through slirp4netns, then adds the policy's routes
    /// inside its namespace before Chromium is allowed to start.
    async fn connect_network(
        &self,
        inner: i32,
        desktop: &mut LocalDesktop,
        files: &DesktopDir,
        deadline: Instant,
    ) -> Result<Child, DesktopError> {
        let pgid = desktop.pgid;
        let tools = &self.config.tools;
        let failed = |reason: String| DesktopError::PieceFailed {
            piece: Piece::Network,
            reason,
            stderr_tail: log_tail(files, Piece::Network),
        };
        // The server's file, in the server's directory (beside supervisor.log).
        let log = std::fs::File::create(files.path().join("network.log"))
            .map_err(|e| DesktopError::Setup(format!("cannot create the network log: {e}")))?;
        // slirp4netns runs as the desktop's own user, not root: it joins the sandbox's user
        // namespace (which that user created, so it may) and from there its network
        // namespace. Should it be compromised, it holds nothing the desktop does not.
        let mut slirp = Command::new(&tools.slirp4netns);
        slirp
            .args(["--configure", "--mtu=65520", "--disable-host-loopback", "--enable-seccomp"])
            // Ends with the server (`lifeline.rs`).
            .arg(format!("--exit-fd={}", self.lifeline.fd()))
            .arg(format!("--userns-path=/proc/{inner}/ns/user"))
            .arg(inner.to_string())
            .arg("tap0")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(pgid)
            .kill_on_drop(true);
        if is_root() {
            // Supplementary groups are dropped by std when root sets a uid.
            slirp.uid(files.owner()).gid(files.owner());
        }
        let mut slirp = slirp
            .spawn()
            .map_err(|e| failed(format!("could not start {}: {e}", tools.slirp4netns)))?;
        // Up once the namespace has a default route.
        let route_file = format!("/proc/{inner}/net/route");
        loop {
            let routes = std::fs::read_to_string(&route_file);
            if routes.as_deref().is_ok_and(|r| r.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000"))) {
                break;
            }
            if let Ok(Some(status)) = slirp.try_wait() {
                return Err(failed(format!("exited early ({status})")));
            }
            // The desktop itself ended meanwhile: say why (its supervisor's exit), rather
            // than wait for routes in a namespace that is gone.
            if let Some(e) = exit_error(desktop, files) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                // What was seen, for the next one to look: the sandbox gone, or its routes.
                let seen = match routes {
                    Ok(r) => format!("its routes: {:?}", r.lines().skip(1).collect::<Vec<_>>()),
                    Err(e) => format!("the sandbox's routes could not be read: {e}"),
                };
                return Err(failed(format!("did not configure the network in time ({seen})")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let policy = &self.config.egress;
        let mut commands: Vec<Vec<String>> = policy
            .routes(&host_addresses())
            .iter()
            .map(|r| r.ip_args())
            .collect();
        if !policy.keeps_default_route() {
            commands.push(["route", "del", "default"].map(str::to_owned).to_vec());
        }
        for args in commands {
            let out = Command::new("nsenter")
                .arg(format!("--net=/proc/{inner}/ns/net"))
                .arg("--")
                .arg(&tools.ip)
                .args(&args)
                .env_clear()
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| failed(format!("could not run {}: {e}", tools.ip)))?;
            if !out.status.success() {
                return Err(failed(format!(
                    "ip {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        files
            .create_new("run/net-ready")
            .map_err(|e| DesktopError::Setup(format!("cannot signal the network: {e}")))?;
        Ok(slirp)
    }

    async fn stop_processes(&self, desktop: &mut LocalDesktop) {
        if let Some(supervisor) = desktop.supervisor.as_mut() {
            stop_desktop(desktop.pgid, desktop.pidns, self.config.sandbox, supervisor, self.config.stop_grace).await;
        }
        if let Some(mut network) = desktop.network.take() {
            let _ = network.kill().await;
        }
    }
}

/// Where desktops' directories go: `<data dir>/desktops`, unless sandboxed desktops run
/// as other users (the server is root) and cannot reach it (e.g. a data directory under
/// /root, or a 0700 one); then a directory under /run named after the data directory.
pub fn desktops_root(data_dir: &Path, sandbox: bool) -> PathBuf {
    let inside = data_dir.join("desktops");
    if !sandbox
        || !is_root()
        || sandbox::traversable_by_others(data_dir).is_ok()
    {
        return inside;
    }
    // FNV-1a: stable across runs, so a restart finds what a crash left.
    let hash = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    PathBuf::from(format!("/run/livesession/desktops-{hash:016x}"))
}

/// Whether the server runs as root (desktops then run as uids of their own).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn log_of(dir: &Path, piece: Piece) -> PathBuf {
    match piece {
        Piece::Bubblewrap => dir.join("supervisor.log"),
        Piece::Network => dir.join("network.log"),
        _ => dir.join("run/logs").join(format!("{}.log", piece.step())),
    }
}

/// The last lines a piece wrote to stderr. The server's own logs are read as files; the
/// desktop's through [`DesktopDir::read_tail`], so a log swapped for a link to a host file
/// yields nothing of that file.
fn log_tail(files: &DesktopDir, piece: Piece) -> String {
    let bytes = match piece {
        Piece::Bubblewrap | Piece::Network => std::fs::read(log_of(files.path(), piece)).unwrap_or_default(),
        _ => match files.read_tail(&format!("run/logs/{}.log", piece.step()), process::TAIL_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.is_tampered() => {
                tracing::warn!(dir = %files.path().display(), error = %e, "a desktop log is not the desktop's own file");
                Vec::new()
            }
            Err(_) => Vec::new(),
        },
    };
    process::tail_of(&bytes, 20)
}

/// Spawns the desktop's first process with a clean environment (the server's own
/// variables, which may hold secrets, never reach the desktop), as the leader of a new
/// process group.
fn spawn(argv: &[OsString], env: &[(&str, String)], log: &Path) -> Result<Child, DesktopError> {
    let stderr = std::fs::File::create(log)
        .map_err(|e| DesktopError::Setup(format!("cannot create {}: {e}", log.display())))?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DesktopError::Setup(format!("could not start {:?}: {e}", argv[0])))
}

/// The sandbox's first process (bubblewrap's child in the new PID namespace). Before the
/// command line becomes bubblewrap, its shell briefly has another child (the user-namespace
/// limiter's first fork, `sandbox::command`), in our own PID namespace: never that one.
fn sandbox_init(outer: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).ok()?;
    let ours = pidns_of(std::process::id() as i32);
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c| pidns_of(*c).is_some_and(|ns| Some(ns) != ours))
}

/// If the desktop has stopped: the error naming the piece that exited, from the
/// supervisor's `exit` file, or bubblewrap's own complaint.
fn exit_error(desktop: &mut LocalDesktop, files: &DesktopDir) -> Option<DesktopError> {
    let status = match desktop.supervisor.as_mut()?.try_wait() {
        Ok(None) => return None,
        Ok(Some(status)) => status,
        Err(e) => return Some(DesktopError::Setup(format!("cannot wait for the desktop: {e}"))),
    };
    // Written by the supervisor inside the desktop: read only if it is still its file.
    let exit = match files.read_tail("run/exit", 256) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.is_tampered() => return Some(DesktopError::Tampered(e.to_string())),
        Err(_) => String::new(),
    };
    let mut words = exit.split_whitespace();
    let piece = match words.next() {
        Some("xvnc") => Piece::Xvnc,
        Some("openbox") => Piece::Openbox,
        Some("chromium") => Piece::Chromium,
        Some("devtools") => Piece::Socat,
        _ => Piece::Bubblewrap,
    };
    let reason = match words.next() {
        Some(code) => format!("exited early (exit status {code})"),
        None => format!("the desktop's supervisor exited ({status})"),
    };
    Some(DesktopError::PieceFailed {
        piece,
        reason,
        stderr_tail: log_tail(files, piece),
    })
}

/// The host's own IPv4 addresses: a desktop with internet access must not reach services
/// bound to them.
fn host_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect()
}

impl Inner {
    async fn start_cold(
        &self,
        spec: DesktopSpec,
        progress: Progress<'_>,
    ) -> Result<DesktopHandle, DesktopError> {
        let dir = self.desktop_dir(&spec.id)?;
        let started = Instant::now();
        let (desktop, handle) = match self.launch(&spec, &dir, progress).await {
            Ok(ok) => ok,
            Err(e) => {
                writable::remove_desktop_dir(&dir);
                return Err(e);
            }
        };
        tracing::info!(session_id = %spec.id, display = handle.display, pgid = handle.pgid,
            sandboxed = self.config.sandbox,
            elapsed_ms = started.elapsed().as_millis() as u64, "desktop ready");
        self.desktops.lock().await.insert(spec.id, desktop);
        Ok(handle)
    }

    async fn stop(&self, id: &str) {
        let desktop = {
            let mut desktops = self.desktops.lock().await;
            let desktop = desktops.remove(id);
            if desktop.is_some() {
                // Marked under the lock that took it out: a concurrent `stop` (a new
                // start's) cannot miss it.
                self.stopping.send_modify(|ids| {
                    ids.insert(id.to_owned());
                });
            }
            desktop
        };
        let Some(mut desktop) = desktop else {
            // A desktop being saved is stopped by its save, one being stopped by its
            // stop: wait for those. Once this returns, nothing of the id's last desktop
            // is left, its directory included.
            let _ = self.saving.subscribe().wait_for(|ids| !ids.contains(id)).await;
            let _ = self.stopping.subscribe().wait_for(|ids| !ids.contains(id)).await;
            return;
        };
        let _stopping = IdMark { ids: &self.stopping, id: id.to_owned() };
        self.stop_processes(&mut desktop).await;
        self.remove(id, &mut desktop);
    }

    /// The second half of stopping, once no process of the desktop is left: releases its
    /// cgroup, uid and forwards, and removes its directory (unmounting its home and run).
    fn remove(&self, id: &str, desktop: &mut LocalDesktop) {
        self.release(desktop);
        writable::unmount(&desktop.dir);
        if let Err(e) = std::fs::remove_dir_all(&desktop.dir) {
            tracing::warn!(session_id = %id, error = %e, "could not remove the desktop directory");
        }
        tracing::info!(session_id = %id, "desktop stopped");
    }

    async fn stop_all(&self) {
        self.pool.close();
        let ids: Vec<String> = self.desktops.lock().await.keys().cloned().collect();
        // Concurrently: one by one would multiply the stop grace period.
        futures_util::future::join_all(ids.iter().map(|id| self.stop(id))).await;
        let _ = self.saving.subscribe().wait_for(|ids| ids.is_empty()).await;
    }

    /// Copies a saved user-data directory into a new desktop's home as its profile, owned
    /// by the desktop's user, before anything of the desktop runs.
    async fn restore_profile(
        &self,
        id: &str,
        user_data: PathBuf,
        home: &Path,
        uid: Option<u32>,
    ) -> Result<(), DesktopError> {
        let started = Instant::now();
        let profile_dir = home.join("profile");
        let copied = tokio::task::spawn_blocking(move || {
            let dst = profile::create_dir(&profile_dir, uid)?;
            let src = profile::open_dir(&user_data)?;
            let rules = profile::Rules { owner: None, chown_to: uid, max_bytes: u64::MAX };
            let copied = profile::copy_tree(src, dst, &user_data, &rules)?;
            profile::mark_exited_cleanly(&profile_dir);
            Ok::<_, profile::CopyError>(copied)
        })
        .await
        .map_err(|e| DesktopError::Setup(format!("restoring the browser's files failed: {e}")))?
        .map_err(|e| DesktopError::Setup(format!("cannot restore the browser's files: {e}")))?;
        tracing::info!(session_id = %id, files = copied.files, bytes = copied.bytes, skipped = copied.skipped,
            elapsed_ms = started.elapsed().as_millis() as u64, "browser state restored");
        Ok(())
    }

    /// See [`DesktopRuntime::save_and_stop`].
    async fn save_and_stop(&self, id: &str, into: &Path, max_bytes: u64) -> Result<SavedState, DesktopError> {
        self.desktop_dir(id)?;
        let mut desktop = {
            let mut desktops = self.desktops.lock().await;
            let desktop = desktops
                .remove(id)
                .ok_or_else(|| DesktopError::Setup(format!("no desktop {id:?} is running")))?;
            self.saving.send_modify(|ids| {
                ids.insert(id.to_owned());
            });
            desktop
        };
        let _saving = IdMark { ids: &self.saving, id: id.to_owned() };
        let started = Instant::now();

        // Chromium writes its state as it closes; its exit ends the desktop's supervisor.
        let read = self.read_and_close(id, &mut desktop).await;
        let closed = started.elapsed();
        // Every process gone (killed if still there), the directory still in place.
        self.stop_processes(&mut desktop).await;
        let stopped = started.elapsed();

        let result = match read {
            Ok((tabs, cookies)) => {
                let from = desktop.dir.clone();
                let owner = desktop.owner;
                let into = into.to_owned();
                tokio::task::spawn_blocking(move || copy_out(&from, owner, &into, max_bytes))
                    .await
                    .map_err(|e| DesktopError::Setup(format!("copying the browser's files failed: {e}")))
                    .and_then(|r| r)
                    .map(|copied| (tabs, cookies, copied))
            }
            Err(e) => Err(e),
        };
        let copied_at = started.elapsed();
        self.remove(id, &mut desktop);
        let ms = |d: Duration| d.as_millis() as u64;
        match result {
            Ok((tabs, cookies, copied)) => {
                if copied.refused > 0 {
                    tracing::warn!(session_id = %id, refused = copied.refused,
                        "the browser's directory held links, FIFOs or files not its own; they were left out");
                }
                tracing::info!(session_id = %id, tabs = tabs.len(), cookies = cookies.len(), files = copied.files,
                    bytes = copied.bytes, skipped = copied.skipped, refused = copied.refused,
                    closed_ms = ms(closed), stopped_ms = ms(stopped), copied_ms = ms(copied_at),
                    elapsed_ms = ms(started.elapsed()), "browser state saved");
                Ok(SavedState { tabs, cookies, files: copied.files, bytes: copied.bytes })
            }
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "the browser's state could not be saved");
                Err(e)
            }
        }
    }

    /// Reads the open tabs and the cookies, then closes Chromium and waits (up to
    /// [`CLOSE_WAIT`]) for it to exit.
    async fn read_and_close(
        &self,
        id: &str,
        desktop: &mut LocalDesktop,
    ) -> Result<(Vec<String>, Vec<serde_json::Value>), DesktopError> {
        let devtools_error = |what: &str, e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                DesktopError::Tampered(format!("{what}: {e}"))
            } else {
                DesktopError::PieceFailed { piece: Piece::Chromium, reason: format!("{what}: {e}"), stderr_tail: String::new() }
            }
        };
        let socket = desktop.files().socket("run/devtools.sock");
        let targets = devtools::list_targets(&socket)
            .await
            .map_err(|e| devtools_error("cannot list the open tabs", e))?;
        let tabs = devtools::tabs_of(&targets);
        let mut browser = devtools::Cdp::browser(&socket)
            .await
            .map_err(|e| devtools_error("cannot reach the browser", e))?;
        let cookies = devtools::cookies(&mut browser)
            .await
            .map_err(|e| devtools_error("cannot read the cookies", e))?;
        // Closing it must end the desktop, not restart the browser (launcher.sh).
        desktop
            .files()
            .create_new("run/stopping")
            .map_err(|e| devtools_error("cannot tell the desktop it is stopping", std::io::Error::other(e.to_string())))?;
        devtools::close_browser(&mut browser)
            .await
            .map_err(|e| devtools_error("cannot close the browser", e))?;
        drop(browser);
        let exited = match desktop.supervisor.as_mut() {
            Some(supervisor) => tokio::time::timeout(CLOSE_WAIT, supervisor.wait()).await.is_ok(),
            None => false,
        };
        if !exited {
            tracing::warn!(session_id = %id, "Chromium did not exit within {CLOSE_WAIT:?} of closing; killing the desktop");
        }
        Ok((tabs, cookies))
    }

    /// The supervisor's `run/browser` ("running N" or "restarting N", launcher.sh). The
    /// desktop writes that file, so it can only misreport its own browser.
    async fn browser_state(&self, id: &str) -> BrowserState {
        // Being saved: out of `desktops` meanwhile, its browser closed on purpose.
        // (Asked under the lock: `save_and_stop` moves it from one to the other under it.)
        let mut desktops = self.desktops.lock().await;
        if self.saving.borrow().contains(id) {
            return BrowserState::Saving;
        }
        let Some(desktop) = desktops.get_mut(id) else {
            return BrowserState::Gone;
        };
        let alive = desktop
            .supervisor
            .as_mut()
            .is_some_and(|s| matches!(s.try_wait(), Ok(None)));
        if !alive {
            return BrowserState::Gone;
        }
        let text = desktop.files().read_tail("run/browser", 64).unwrap_or_default();
        parse_browser_state(&String::from_utf8_lossy(&text))
    }

    async fn is_alive(&self, id: &str) -> bool {
        let mut desktops = self.desktops.lock().await;
        let Some(desktop) = desktops.get_mut(id) else {
            return false;
        };
        desktop
            .supervisor
            .as_mut()
            .is_some_and(|s| matches!(s.try_wait(), Ok(None)))
    }

}

#[async_trait::async_trait]
impl DesktopRuntime for LocalRuntime {
    async fn start(
        &self,
        spec: DesktopSpec,
        progress: Progress<'_>,
    ) -> Result<DesktopHandle, DesktopError> {
        let inner = &self.inner;
        inner.desktop_dir(&spec.id)?;
        // A desktop that is still running for this id is stopped first: one per id.
        inner.stop(&spec.id).await;
        if let Some(handle) = pool::take(inner, &spec).await {
            return Ok(handle);
        }
        inner.start_cold(spec, progress).await
    }

    async fn stop(&self, id: &str) {
        self.inner.stop(id).await
    }

    async fn save_and_stop(&self, id: &str, into: &Path, max_bytes: u64) -> Result<SavedState, DesktopError> {
        // On a task of its own: should the caller give up waiting, the save still ends
        // with the desktop stopped and its directory removed.
        let inner = self.inner.clone();
        let (id, into) = (id.to_owned(), into.to_owned());
        tokio::spawn(async move { inner.save_and_stop(&id, &into, max_bytes).await })
            .await
            .map_err(|e| DesktopError::Setup(format!("saving the browser's state failed: {e}")))?
    }

    async fn stop_all(&self) {
        self.inner.stop_all().await
    }

    async fn is_alive(&self, id: &str) -> bool {
        self.inner.is_alive(id).await
    }

    async fn browser_state(&self, id: &str) -> BrowserState {
        self.inner.browser_state(id).await
    }

    fn check_tools(&self) -> Vec<ToolCheck> {
        toolchain::locate(&self.inner.config.tools, &self.inner.config.needed_pieces())
    }

    fn warm_ready(&self) -> usize {
        self.inner.pool.ready()
    }
}

/// A live desktop's `run/browser`; anything unreadable counts as running (the file is
/// written before the desktop is ready, and only the desktop could spoil it).
fn parse_browser_state(text: &str) -> BrowserState {
    let mut words = text.split_whitespace();
    let (state, starts) = (words.next(), words.next().and_then(|n| n.parse().ok()).unwrap_or(1));
    match state {
        Some("restarting") => BrowserState::Restarting { starts },
        _ => BrowserState::Running { starts },
    }
}

/// Copies a stopped desktop's profile into `into` (created here; removed again if the copy
/// fails).
fn copy_out(desktop_dir: &Path, owner: u32, into: &Path, max_bytes: u64) -> Result<profile::Copied, DesktopError> {
    let refused = |e: profile::CopyError| match e {
        profile::CopyError::Refused { .. } => DesktopError::Tampered(e.to_string()),
        e => DesktopError::Setup(format!("cannot save the browser's files: {e}")),
    };
    let src = profile::open_desktop_profile(desktop_dir, owner).map_err(refused)?;
    let dst = profile::create_dir(into, None).map_err(refused)?;
    let rules = profile::Rules { owner: Some(owner), chown_to: None, max_bytes };
    profile::copy_tree(src, dst, &desktop_dir.join("home/profile"), &rules).map_err(|e| {
        if let Err(e) = std::fs::remove_dir_all(into) {
            tracing::warn!(path = %into.display(), error = %e, "could not remove a partial copy of a browser's files");
        }
        refused(e)
    })
}

/// The tabs a new desktop opens: its restored tabs that can be reopened (see
/// [`devtools::reopenable`]), else its start URL.
fn tabs_to_open(spec: &DesktopSpec) -> Vec<String> {
    let restored = spec.restore.as_ref().map(|r| r.tabs.as_slice()).unwrap_or_default();
    let tabs: Vec<String> = restored
        .iter()
        .filter(|t| {
            let ok = devtools::reopenable(t);
            if !ok {
                tracing::warn!(session_id = %spec.id, "a restored tab is not a URL to reopen; left out");
            }
            ok
        })
        .cloned()
        .collect();
    if tabs.is_empty() { vec![spec.start_url.clone()] } else { tabs }
}

fn cookies_to_set(spec: &DesktopSpec) -> &[serde_json::Value] {
    spec.restore.as_ref().map(|r| r.cookies.as_slice()).unwrap_or_default()
}

/// A URL as one line of `LS_CHROMIUM_ARGS` (one argument per line).
fn command_line_url(url: &str) -> String {
    url.replace('\n', "%0A").replace('\r', "%0D").replace('\0', "%00")
}

impl LocalRuntimeConfig {
    /// The programs this configuration runs.
    pub fn needed_pieces(&self) -> Vec<Piece> {
        let mut pieces = vec![Piece::Xvnc, Piece::Openbox, Piece::Chromium, Piece::Socat];
        if self.sandbox {
            pieces.push(Piece::Bubblewrap);
            if self.egress.mode == EgressMode::Internet {
                pieces.push(Piece::Network);
            }
        }
        pieces
    }
}
