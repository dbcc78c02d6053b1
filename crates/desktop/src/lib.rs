//! Desktop runtime: the only code that knows how a session's desktop is made.
//!
//! A desktop is an X display with a VNC server (TigerVNC `Xvnc`), a window manager
//! (`openbox`) and Chromium. [`DesktopRuntime`] is the seam: the local runtime runs them as
//! processes on this machine; later runtimes (pods, microVMs) implement the same trait.

pub mod confined;
pub mod devtools;
pub mod egress;
mod local;
pub mod rfb;
pub mod toolchain;

use std::fmt;

pub use local::{
    Cgroups, LocalRuntime, LocalRuntimeConfig, ResourceLimits, desktops_root, group_members, is_root, members,
    pidns_of,
    sandbox,
};
pub use confined::{ConfinedError, DesktopDir, DesktopSocket};
pub use toolchain::{ToolCheck, ToolPaths};

/// One of the programs a desktop is made of. Errors name the piece that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Piece {
    Xvnc,
    Openbox,
    Chromium,
    /// socat: relays DevTools (and forwarded host ports) across the sandbox's wall.
    Socat,
    /// bubblewrap: the sandbox.
    Bubblewrap,
    /// slirp4netns and ip: outbound network for sandboxes that may use it.
    Network,
}

impl Piece {
    pub const ALL: [Piece; 6] = [
        Piece::Xvnc,
        Piece::Openbox,
        Piece::Chromium,
        Piece::Socat,
        Piece::Bubblewrap,
        Piece::Network,
    ];

    /// Lower-case name used in progress reports (`DESKTOP_STATUS.step`) and log files.
    pub fn step(self) -> &'static str {
        match self {
            Piece::Xvnc => "xvnc",
            Piece::Openbox => "openbox",
            Piece::Chromium => "chromium",
            Piece::Socat => "devtools",
            Piece::Bubblewrap => "sandbox",
            Piece::Network => "network",
        }
    }

    /// The Debian package that provides this piece.
    pub fn apt_package(self) -> &'static str {
        match self {
            Piece::Xvnc => "tigervnc-standalone-server",
            Piece::Openbox => "openbox",
            Piece::Chromium => "chromium",
            Piece::Socat => "socat",
            Piece::Bubblewrap => "bubblewrap",
            Piece::Network => "slirp4netns iproute2",
        }
    }
}

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Piece::Xvnc => "Xvnc",
            Piece::Openbox => "openbox",
            Piece::Chromium => "Chromium",
            Piece::Socat => "socat",
            Piece::Bubblewrap => "bubblewrap",
            Piece::Network => "slirp4netns",
        })
    }
}

/// What to start for one session.
#[derive(Debug, Clone)]
pub struct DesktopSpec {
    /// The session id; also names the desktop's private directory.
    pub id: String,
    pub width: u16,
    pub height: u16,
    pub start_url: String,
    /// Saved browser state to start from (a profile, a hibernated session); `None`: a
    /// fresh browser.
    pub restore: Option<RestoreFrom>,
}

/// What a new desktop's browser starts from.
///
/// The local runtime never hands a desktop from its warm pool to a spec with `user_data`
/// (the pooled browser already runs on a profile of its own); with only tabs and cookies,
/// a pooled desktop may be used.
#[derive(Debug, Clone, Default)]
pub struct RestoreFrom {
    /// A directory the server owns holding a Chromium user-data directory (as copied out
    /// by [`DesktopRuntime::save_and_stop`]). Copied, not moved, into the new desktop's
    /// profile before Chromium starts, owned by the desktop's user; links and anything
    /// but regular files and directories are left out, and so are caches. The start fails
    /// if it does not fit in the desktop's home.
    pub user_data: Option<std::path::PathBuf>,
    /// Tabs to open, in order, the first in front (when empty: the spec's `start_url`).
    /// Only `http:`, `https:`, `data:` (up to 64 KiB) and `about:blank` URLs are opened;
    /// others are left out ([`devtools::reopenable`]).
    pub tabs: Vec<String>,
    /// CDP `Network.CookieParam` objects set (`Storage.setCookies` on the browser) before
    /// the tabs load: an operator's imported cookies. `Network.Cookie` objects as
    /// [`SavedState::cookies`] holds them are accepted too. One Chromium refuses fails
    /// the start.
    pub cookies: Vec<serde_json::Value>,
}

/// What [`DesktopRuntime::save_and_stop`] read and copied out of a desktop. It comes
/// from a desktop a session has used: as untrusted as anything the desktop says.
#[derive(Debug, Clone, Default)]
pub struct SavedState {
    /// URLs of the open tabs, in the order Chromium's DevTools lists them: the most
    /// recently used first (so the tab in front when saved is in front when restored).
    /// Only URLs worth reopening ([`devtools::reopenable`]: no DevTools, error, settings
    /// or `file:` pages); `about:blank` only when it is all there is.
    pub tabs: Vec<String>,
    /// `Storage.getCookies` of the browser (CDP `Network.Cookie` objects).
    pub cookies: Vec<serde_json::Value>,
    /// Regular files copied, and their bytes.
    pub files: u64,
    pub bytes: u64,
}

/// A running desktop, as the rest of the server sees it.
#[derive(Debug, Clone)]
pub struct DesktopHandle {
    pub id: String,
    /// The VNC server's Unix socket (no TCP port is ever opened). The desktop owns the
    /// directory it is in, so it is only ever reached through [`DesktopSocket::connect`].
    pub vnc_socket: DesktopSocket,
    /// Chromium's DevTools HTTP/WebSocket endpoint, relayed to a Unix socket (inside a
    /// sandbox, Chromium's loopback is the desktop's own).
    pub devtools_socket: DesktopSocket,
    /// The X display number, e.g. 3 for `:3`.
    pub display: u32,
    /// The process group of the desktop's first process.
    pub pgid: i32,
    /// The inode of a sandboxed desktop's PID namespace, which holds all its processes.
    pub pidns: Option<u64>,
}

/// Where a desktop's browser saves downloads, relative to the desktop's directory
/// ([`DesktopHandle::files`]): `~/Downloads` of the desktop's user (inside the sandbox,
/// `/home/desktop/Downloads`, Chromium's `DownloadDirectory` policy).
pub const DOWNLOADS_DIR: &str = "home/Downloads";

impl DesktopHandle {
    /// The desktop's own directory on the host (its home is `home/`, see
    /// [`DOWNLOADS_DIR`]) and the uid its processes run as, for reaching its files
    /// without following the links its user may plant there ([`DesktopDir`]).
    pub fn files(&self) -> &DesktopDir {
        self.vnc_socket.dir()
    }

    /// The uid the desktop's processes run as: what it writes belongs to it, and what the
    /// server puts in its home is given to it.
    pub fn owner(&self) -> u32 {
        self.files().owner()
    }
}

/// The browser inside a running desktop, as the desktop's supervisor reports it: it
/// starts Chromium again when it exits unasked (a crash, its last window closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserState {
    /// Up; `starts` counts its starts in this desktop (1: never restarted).
    Running { starts: u32 },
    /// Exited unasked after `starts` starts, and being started again.
    Restarting { starts: u32 },
    /// Closed on purpose: its state is being saved, and the desktop stops after
    /// (`save_and_stop`). Whoever saves it stops it; nobody else should.
    Saving,
    /// The desktop itself has stopped (or is not known).
    Gone,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DesktopError {
    #[error("{piece} is not installed ({binary} not found); install it with: apt-get install -y {}", piece.apt_package())]
    MissingBinary { piece: Piece, binary: String },
    #[error("{piece} failed: {reason}")]
    PieceFailed {
        piece: Piece,
        reason: String,
        /// The last lines the piece wrote to stderr; for logs and `doctor`, not for viewers.
        stderr_tail: String,
    },
    #[error("desktop setup failed: {0}")]
    Setup(String),
    /// A file or socket the desktop owns is not what its runtime put there (a link to
    /// another desktop's socket or a host file): the desktop is not trusted any further.
    #[error("the desktop tampered with its own files: {0}")]
    Tampered(String),
}

impl DesktopError {
    pub fn piece(&self) -> Option<Piece> {
        match self {
            DesktopError::MissingBinary { piece, .. } | DesktopError::PieceFailed { piece, .. } => {
                Some(*piece)
            }
            DesktopError::Setup(_) | DesktopError::Tampered(_) => None,
        }
    }

    pub fn stderr_tail(&self) -> Option<&str> {
        match self {
            DesktopError::PieceFailed { stderr_tail, .. } if !stderr_tail.is_empty() => {
                Some(stderr_tail)
            }
            _ => None,
        }
    }
}

/// Progress reports while a desktop starts: called with each piece as it is started.
pub type Progress<'a> = &'a (dyn Fn(Piece) + Send + Sync);

#[async_trait::async_trait]
pub trait DesktopRuntime: Send + Sync + 'static {
    /// Starts a desktop and returns once it is ready: the VNC socket answers an RFB
    /// handshake and Chromium's DevTools endpoint lists a page.
    async fn start(
        &self,
        spec: DesktopSpec,
        progress: Progress<'_>,
    ) -> Result<DesktopHandle, DesktopError>;
    /// Stops a desktop and everything it started; a no-op for an unknown id.
    async fn stop(&self, id: &str);
    /// Reads the open tabs and the cookies over DevTools, closes Chromium gracefully
    /// (`Browser.close`, so it writes its cookies, Local Storage and IndexedDB; killed if
    /// it has not exited within 5 s), copies its user-data directory into `into`, then
    /// stops the desktop, whatever the outcome (like [`stop`](Self::stop)).
    ///
    /// `into` is created by this call (its parent too if missing), mode 0700, owned by
    /// the server; it must not exist yet, and is removed again if the copy fails. The copy
    /// never follows a link and takes only regular files and directories of the desktop's
    /// user on the profile's filesystem; caches are left out. More than `max_bytes` (or
    /// 100,000 entries, or directories nested deeper than 32) is an error. An unknown id
    /// is an error.
    async fn save_and_stop(
        &self,
        id: &str,
        into: &std::path::Path,
        max_bytes: u64,
    ) -> Result<SavedState, DesktopError> {
        let _ = (into, max_bytes);
        self.stop(id).await;
        Err(DesktopError::Setup("this runtime cannot save a browser's state".into()))
    }
    /// Stops every desktop (server shutdown).
    async fn stop_all(&self);
    /// Whether the desktop's processes are still running.
    async fn is_alive(&self, id: &str) -> bool;
    /// The browser inside a running desktop. A runtime that does not restart its
    /// browser reports it running as long as the desktop is alive.
    async fn browser_state(&self, id: &str) -> BrowserState {
        if self.is_alive(id).await {
            BrowserState::Running { starts: 1 }
        } else {
            BrowserState::Gone
        }
    }
    /// The binaries this runtime needs, checked now.
    fn check_tools(&self) -> Vec<ToolCheck>;
    /// Desktops started in advance and ready to be handed to a new session.
    fn warm_ready(&self) -> usize {
        0
    }
}
