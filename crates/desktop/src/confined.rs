//! A desktop's files, reached without trusting the desktop.
//!
//! `run/` and `home/` belong to the desktop's own user, so code running in the desktop can
//! replace any entry there: `vnc.sock` with a symbolic link to another desktop's socket, or
//! to `/proc/<pid>/root/...`, `exit` or a log with a link to a host file. The server runs
//! as root in the host's mount namespace; a plain `connect(path)` or `read(path)` would
//! follow such a link where the desktop itself cannot reach.
//!
//! So every access here starts from the desktop's own directory (which belongs to the
//! server, and whose entries the desktop cannot rename), resolves the rest with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, checks the
//! type and owner on the open descriptor, and then uses that descriptor: a socket is
//! connected through `/proc/self/fd/N` (the inode that was checked, not a path that could
//! change in between), a file is read from the descriptor. Anything unexpected is
//! [`ConfinedError::Tampered`]: the caller treats the desktop as failed.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};

/// What went wrong reaching a desktop's file.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    /// Not there (yet): a desktop that is still starting, or one that has stopped.
    #[error("{name} does not exist")]
    Missing { name: String },
    /// Not what the desktop's runtime put there: a link, another type, another owner.
    #[error("{name} was tampered with: {what}")]
    Tampered { name: String, what: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl ConfinedError {
    pub fn is_tampered(&self) -> bool {
        matches!(self, ConfinedError::Tampered { .. })
    }
}

impl From<ConfinedError> for std::io::Error {
    fn from(e: ConfinedError) -> Self {
        let kind = match &e {
            ConfinedError::Missing { .. } => std::io::ErrorKind::NotFound,
            ConfinedError::Tampered { .. } => std::io::ErrorKind::PermissionDenied,
            ConfinedError::Io { source, .. } => source.kind(),
        };
        std::io::Error::new(kind, e.to_string())
    }
}

/// The directory of one desktop (`<root>/<id>`, the server's) and the uid that owns what
/// the desktop writes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopDir {
    path: PathBuf,
    owner: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    File,
    Directory,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Socket => "a socket",
            Kind::File => "a regular file",
            Kind::Directory => "a directory",
        })
    }
}

fn kind_of(stat: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
        _ => "something unknown",
    }
}

impl DesktopDir {
    /// `owner` is the uid the desktop runs as (the server's own when desktops do not get
    /// uids of their own).
    pub fn new(path: impl Into<PathBuf>, owner: u32) -> Self {
        Self { path: path.into(), owner }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// A socket under this directory, e.g. `run/vnc.sock`.
    pub fn socket(&self, relative: &str) -> DesktopSocket {
        DesktopSocket {
            dir: self.clone(),
            relative: relative.to_owned(),
        }
    }

    /// Opens the desktop's directory itself. Its path is the server's (the runtime's root
    /// and the id), so it may be resolved normally; it must still be the server's own.
    fn open_root(&self) -> Result<OwnedFd, ConfinedError> {
        let fd = nix::fcntl::open(
            &self.path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.errno(".", e))?;
        let stat = fstat(&fd).map_err(|e| self.errno(".", e))?;
        let server = nix::unistd::geteuid().as_raw();
        if stat.st_uid != server {
            return Err(ConfinedError::Tampered {
                name: "the desktop directory".into(),
                what: format!("owned by uid {} instead of the server's {server}", stat.st_uid),
            });
        }
        Ok(fd)
    }

    fn errno(&self, relative: &str, e: Errno) -> ConfinedError {
        let name = relative.to_owned();
        match e {
            Errno::ENOENT => ConfinedError::Missing { name },
            // What RESOLVE_NO_SYMLINKS / O_NOFOLLOW answer for a link on the way.
            Errno::ELOOP => ConfinedError::Tampered {
                name,
                what: "a symbolic link".into(),
            },
            // RESOLVE_BENEATH: the path tried to leave the directory; NO_MAGICLINKS.
            Errno::EXDEV => ConfinedError::Tampered {
                name,
                what: "it leads out of the desktop's directory".into(),
            },
            Errno::ENOTDIR => ConfinedError::Tampered {
                name,
                what: "a directory on its path is not a directory".into(),
            },
            Errno::ENOSYS => ConfinedError::Io {
                name,
                source: std::io::Error::other("this kernel has no openat2 (Linux 5.6 or later is needed)"),
            },
            e => ConfinedError::Io {
                name,
                source: std::io::Error::from(e),
            },
        }
    }

    /// Opens `relative` beneath the directory without following any link, and checks it
    /// is of `kind` and belongs to the desktop's user.
    fn open_checked(&self, relative: &str, flags: OFlag, kind: Kind) -> Result<OwnedFd, ConfinedError> {
        let root = self.open_root()?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = openat2(&root, relative, how).map_err(|e| self.errno(relative, e))?;
        let stat = fstat(&fd).map_err(|e| self.errno(relative, e))?;
        let found = kind_of(&stat);
        let expected = match kind {
            Kind::Socket => "a socket",
            Kind::File => "a regular file",
            Kind::Directory => "a directory",
        };
        if found != expected {
            return Err(ConfinedError::Tampered {
                name: relative.to_owned(),
                what: format!("{found} instead of {kind}"),
            });
        }
        if stat.st_uid != self.owner {
            return Err(ConfinedError::Tampered {
                name: relative.to_owned(),
                what: format!("owned by uid {} instead of the desktop's {}", stat.st_uid, self.owner),
            });
        }
        Ok(fd)
    }

    /// At most the last `max` bytes of a regular file the desktop writes (a log, `exit`,
    /// `display`).
    pub fn read_tail(&self, relative: &str, max: u64) -> Result<Vec<u8>, ConfinedError> {
        // O_NONBLOCK: opening a FIFO put there must not hang the server; it is refused
        // by the type check right after.
        let fd = self.open_checked(relative, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY, Kind::File)?;
        let io = |source| ConfinedError::Io { name: relative.to_owned(), source };
        let mut file = std::fs::File::from(fd);
        let len = file.metadata().map_err(io)?.len();
        if len > max {
            file.seek(SeekFrom::Start(len - max)).map_err(io)?;
        }
        let mut bytes = Vec::with_capacity(len.min(max) as usize);
        file.take(max).read_to_end(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// Opens a directory under this one that belongs to the desktop's user (e.g.
    /// `home/Downloads`), never through a link: the descriptor is for `*at` calls, so
    /// what is read or written through it stays in that directory, whatever the desktop
    /// renames meanwhile.
    pub fn open_dir(&self, relative: &str) -> Result<OwnedFd, ConfinedError> {
        self.open_checked(relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Kind::Directory)
    }

    /// Creates a new file the desktop reads (never opening one that is already there,
    /// whatever it is), owned by the server.
    pub fn create_new(&self, relative: &str) -> Result<std::fs::File, ConfinedError> {
        let root = self.open_root()?;
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(0o644))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        match openat2(&root, relative, how) {
            Ok(fd) => Ok(std::fs::File::from(fd)),
            Err(Errno::EEXIST) => Err(ConfinedError::Tampered {
                name: relative.to_owned(),
                what: "something is already there".into(),
            }),
            Err(e) => Err(self.errno(relative, e)),
        }
    }
}

/// A Unix socket served by the desktop (its VNC server, its DevTools relay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopSocket {
    dir: DesktopDir,
    relative: String,
}

impl DesktopSocket {
    /// Where it is on the host: for messages and tests only; never connect to it by path.
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.relative)
    }

    pub fn name(&self) -> &str {
        &self.relative
    }

    /// The desktop's directory the socket is in.
    pub fn dir(&self) -> &DesktopDir {
        &self.dir
    }

    /// Connects to the socket that is really there: not through a link, only if it is a
    /// socket of the desktop's own user.
    pub async fn connect(&self) -> Result<tokio::net::UnixStream, ConfinedError> {
        let fd = self.dir.open_checked(&self.relative, OFlag::O_PATH, Kind::Socket)?;
        // The magic link resolves to exactly the inode just checked; `fd` stays open until
        // the connection is made. The path is ours, inside our own /proc.
        let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let stream = tokio::net::UnixStream::connect(&via).await.map_err(|source| ConfinedError::Io {
            name: self.relative.clone(),
            source,
        });
        drop(fd);
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn desktop() -> (tempfile::TempDir, DesktopDir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/run/logs")).unwrap();
        let dir = DesktopDir::new(tmp.path().join("a"), me());
        (tmp, dir)
    }

    #[tokio::test]
    async fn a_real_socket_connects_and_a_link_to_another_socket_does_not() {
        let (tmp, a) = desktop();
        std::fs::create_dir_all(tmp.path().join("b/run")).unwrap();
        let _mine = std::os::unix::net::UnixListener::bind(tmp.path().join("a/run/vnc.sock")).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(tmp.path().join("b/run/vnc.sock")).unwrap();
        a.socket("run/vnc.sock").connect().await.expect("its own socket");

        std::fs::remove_file(tmp.path().join("a/run/vnc.sock")).unwrap();
        symlink("../../b/run/vnc.sock", tmp.path().join("a/run/vnc.sock")).unwrap();
        // The attack works on a plain path connect...
        tokio::net::UnixStream::connect(tmp.path().join("a/run/vnc.sock")).await.unwrap();
        // ...and not here.
        let e = a.socket("run/vnc.sock").connect().await.unwrap_err();
        assert!(e.is_tampered(), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");

        // An absolute link, and a magic link through /proc.
        for target in [
            tmp.path().join("b/run/vnc.sock"),
            PathBuf::from(format!("/proc/{}/root{}", std::process::id(), tmp.path().join("b/run/vnc.sock").display())),
        ] {
            std::fs::remove_file(tmp.path().join("a/run/vnc.sock")).unwrap();
            symlink(&target, tmp.path().join("a/run/vnc.sock")).unwrap();
            assert!(a.socket("run/vnc.sock").connect().await.unwrap_err().is_tampered());
        }
        // A link higher up: run/ itself replaced by a link to the other desktop's run/.
        std::fs::remove_dir_all(tmp.path().join("a/run")).unwrap();
        symlink("../b/run", tmp.path().join("a/run")).unwrap();
        assert!(a.socket("run/vnc.sock").connect().await.unwrap_err().is_tampered());
    }

    #[tokio::test]
    async fn the_wrong_type_or_owner_is_refused() {
        let (tmp, a) = desktop();
        std::fs::write(tmp.path().join("a/run/vnc.sock"), b"not a socket").unwrap();
        let e = a.socket("run/vnc.sock").connect().await.unwrap_err();
        assert!(e.to_string().contains("a regular file instead of a socket"), "{e}");

        let _l = std::os::unix::net::UnixListener::bind(tmp.path().join("a/run/devtools.sock")).unwrap();
        let stranger = DesktopDir::new(tmp.path().join("a"), me() + 1);
        let e = stranger.socket("run/devtools.sock").connect().await.unwrap_err();
        assert!(e.to_string().contains("owned by uid"), "{e}");

        let e = a.socket("run/nothing.sock").connect().await.unwrap_err();
        assert!(matches!(e, ConfinedError::Missing { .. }), "{e}");
    }

    #[test]
    fn files_are_read_only_when_they_are_the_desktops_own() {
        let (tmp, a) = desktop();
        let secret = tmp.path().join("host-secret");
        std::fs::write(&secret, "the host's secret\n").unwrap();
        std::fs::write(tmp.path().join("a/run/logs/chromium.log"), "line 1\nline 2\n").unwrap();
        assert_eq!(a.read_tail("run/logs/chromium.log", 7).unwrap(), b"line 2\n");
        assert_eq!(a.read_tail("run/logs/chromium.log", 4096).unwrap(), b"line 1\nline 2\n");

        for name in ["run/exit", "run/logs/xvnc.log"] {
            symlink(&secret, tmp.path().join("a").join(name)).unwrap();
            let e = a.read_tail(name, 4096).unwrap_err();
            assert!(e.is_tampered(), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        // A FIFO would block a plain read forever.
        nix::unistd::mkfifo(&tmp.path().join("a/run/display"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = a.read_tail("run/display", 64).unwrap_err();
        assert!(e.to_string().contains("a FIFO instead of a regular file"), "{e}");
        assert!(matches!(a.read_tail("../host-secret", 64).unwrap_err(), ConfinedError::Tampered { .. }));
        assert!(matches!(a.read_tail("/etc/passwd", 64).unwrap_err(), ConfinedError::Tampered { .. }));
    }

    #[test]
    fn creating_never_writes_through_a_link() {
        let (tmp, a) = desktop();
        let secret = tmp.path().join("host-file");
        std::fs::write(&secret, "keep me").unwrap();
        symlink(&secret, tmp.path().join("a/run/net-ready")).unwrap();
        assert!(a.create_new("run/net-ready").unwrap_err().is_tampered());
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me");
        std::fs::remove_file(tmp.path().join("a/run/net-ready")).unwrap();
        a.create_new("run/net-ready").unwrap();
        assert!(tmp.path().join("a/run/net-ready").is_file());
    }
}
