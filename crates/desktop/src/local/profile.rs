//! Copying a browser's user-data directory out of a desktop (a hibernating session, a
//! profile being saved) and into a new one.
//!
//! The directory copied out belongs to the desktop's user: after a session used it, the
//! desktop is hostile, and could have put links to host files (`Default/Cookies ->
//! /etc/shadow`) or to another desktop's directory there, FIFOs that would block a reader,
//! or more data than the server will keep. The server copies as root, so the copy never
//! resolves a path: every entry is opened relative to its parent's descriptor with
//! `O_NOFOLLOW`, checked on the open descriptor (a regular file or a directory, on the
//! profile's own filesystem, owned by the desktop's user, the inode that was listed), and
//! only then read. Links, FIFOs, sockets and devices are skipped; the bytes, the number of
//! entries and the depth are capped. Caches (and the files a running Chromium uses to find
//! itself) are left out.
//!
//! The same walk copies a saved directory into a new desktop's profile before anything of
//! the desktop runs, creating what it copies as the desktop's user.

use std::ffi::{CStr, CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

/// At most this many files and directories are copied.
pub(crate) const MAX_ENTRIES: u64 = 100_000;
/// Directories nested deeper than this below the profile are refused (Chromium's own
/// nesting is below 10).
pub(crate) const MAX_DEPTH: usize = 32;

/// Names left out wherever they are: caches Chromium rebuilds, crash dumps and metrics,
/// and the files a running Chromium keeps about itself (a copied `DevToolsActivePort`
/// would name a port of the old desktop; the `Singleton*` links its old host and socket).
/// `Sessions` too: the open tabs travel as a list ([`crate::SavedState::tabs`]), and a
/// profile set to "continue where you left off" would otherwise open them twice.
const SKIPPED_NAMES: &[&str] = &[
    "Cache",
    "Code Cache",
    "GPUCache",
    "GPUPersistentCache",
    "ShaderCache",
    "GrShaderCache",
    "GraphiteDawnCache",
    "Crashpad",
    "Crash Reports",
    "component_crx_cache",
    "extensions_crx_cache",
    "Safe Browsing",
    "DevToolsActivePort",
    "Sessions",
    "Sessions_Encrypted",
];

/// Left out by the start of their name: `DawnCache`, `DawnGraphiteCache`,
/// `DawnWebGPUCache`; `BrowserMetrics`, `BrowserMetrics-spare.pma`; `SingletonLock`,
/// `SingletonSocket`, `SingletonCookie`.
const SKIPPED_PREFIXES: &[&str] = &["Dawn", "BrowserMetrics", "Singleton"];

/// Left out inside a directory of this name.
const SKIPPED_IN: &[(&str, &str)] = &[("Service Worker", "CacheStorage"), ("Service Worker", "ScriptCache")];

fn skipped(parent: &OsStr, name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    SKIPPED_NAMES.contains(&name)
        || SKIPPED_PREFIXES.iter().any(|p| {
            name.starts_with(p) && (*p != "Dawn" || name.contains("Cache"))
        })
        || SKIPPED_IN.iter().any(|(dir, n)| parent == OsStr::new(dir) && name == *n)
}

/// What a copy took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Copied {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Entries left out: caches by name, and what was not a regular file or directory of
    /// the expected owner on the same filesystem (links, FIFOs, sockets, devices).
    pub skipped: u64,
    /// Of those, the ones that were not what Chromium writes (links, FIFOs, a stranger's
    /// files, another filesystem).
    pub refused: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    #[error("the browser's files are larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the browser's directory holds more than {MAX_ENTRIES} files and directories")]
    TooMany,
    #[error("the browser's directory nests deeper than {MAX_DEPTH} directories")]
    TooDeep,
    #[error("{what}: {path}")]
    Refused { what: String, path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How one copy goes.
pub(crate) struct Rules {
    /// Every entry copied must belong to this uid (the desktop's, when copying out of it).
    pub owner: Option<u32>,
    /// What is created is given to this uid and gid (the desktop's, when copying into it).
    pub chown_to: Option<u32>,
    pub max_bytes: u64,
}

struct Walk<'a> {
    rules: &'a Rules,
    dev: u64,
    copied: Copied,
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

fn io(path: &Path, e: impl Into<std::io::Error>) -> CopyError {
    CopyError::Io { path: path.display().to_string(), source: e.into() }
}

/// Opens a directory below `parent` without following a link at its name.
fn open_dir_at(parent: impl AsFd, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a directory whose path is the server's own (resolved normally, but not a link at
/// its last component).
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd, CopyError> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(path, e))
}

/// Opens a desktop's profile (`<desktop dir>/home/profile`) for copying out of it: each
/// step without following a link, the profile a directory of the desktop's user on the
/// same filesystem as its home.
pub(crate) fn open_desktop_profile(desktop_dir: &Path, owner: u32) -> Result<OwnedFd, CopyError> {
    let dir = open_dir(desktop_dir)?;
    let refused = |what: String| CopyError::Refused { what, path: desktop_dir.join("home/profile").display().to_string() };
    let home = open_dir_at(&dir, c"home").map_err(|e| io(&desktop_dir.join("home"), e))?;
    let profile = match open_dir_at(&home, c"profile") {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(refused("the profile is not a directory".into())),
        Err(e) => return Err(io(&desktop_dir.join("home/profile"), e)),
    };
    let home_stat = fstat(&home).map_err(|e| io(&desktop_dir.join("home"), e))?;
    let stat = fstat(&profile).map_err(|e| io(&desktop_dir.join("home/profile"), e))?;
    if stat.st_dev != home_stat.st_dev {
        return Err(refused("the profile is on another filesystem than the desktop's home".into()));
    }
    if stat.st_uid != owner {
        return Err(refused(format!("the profile belongs to uid {} instead of the desktop's {owner}", stat.st_uid)));
    }
    Ok(profile)
}

/// Creates `path` (mode 0700), which must not exist yet, and opens it. Its parent is
/// created if missing (mode 0700).
pub(crate) fn create_dir(path: &Path, chown_to: Option<u32>) -> Result<OwnedFd, CopyError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| io(parent, e))?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(path).map_err(|e| io(path, e))?;
    let fd = open_dir(path)?;
    // The umask may have taken bits away; never more than 0700 either way.
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(|e| io(path, e))?;
    if let Some(uid) = chown_to {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid))).map_err(|e| io(path, e))?;
    }
    Ok(fd)
}

/// Copies the directory open at `src` into the (empty) directory open at `dst`.
/// `src_name` and `dst_name` name them in errors and logs.
pub(crate) fn copy_tree(src: OwnedFd, dst: OwnedFd, src_name: &Path, rules: &Rules) -> Result<Copied, CopyError> {
    let root = fstat(&src).map_err(|e| io(src_name, e))?;
    if kind(&root) != SFlag::S_IFDIR {
        return Err(CopyError::Refused { what: "not a directory".into(), path: src_name.display().to_string() });
    }
    if let Some(owner) = rules.owner
        && root.st_uid != owner
    {
        return Err(CopyError::Refused {
            what: format!("belongs to uid {} instead of {owner}", root.st_uid),
            path: src_name.display().to_string(),
        });
    }
    let mut walk = Walk { rules, dev: root.st_dev, copied: Copied::default() };
    walk.dir(src, &dst, src_name, 0)?;
    Ok(walk.copied)
}

impl Walk<'_> {
    fn count(&mut self) -> Result<(), CopyError> {
        if self.copied.files + self.copied.dirs + self.copied.skipped >= MAX_ENTRIES {
            return Err(CopyError::TooMany);
        }
        Ok(())
    }

    fn refuse(&mut self, path: &Path, what: &str) {
        tracing::debug!(path = %path.display(), what, "left out of a browser's copy");
        self.copied.skipped += 1;
        self.copied.refused += 1;
    }

    /// Whether the open entry is the one listed, on the profile's filesystem, of the
    /// expected owner.
    fn acceptable(&self, listed: &FileStat, opened: &FileStat) -> bool {
        opened.st_dev == listed.st_dev
            && opened.st_ino == listed.st_ino
            && kind(opened) == kind(listed)
            && opened.st_dev == self.dev
            && self.rules.owner.is_none_or(|o| opened.st_uid == o)
            // A second name for a file: on a desktop's own tmpfs it can only name the
            // desktop's files, but where the home shares a disk with the server (no
            // sandbox), it could name the server's. Either way, not a file the profile made.
            && !(kind(opened) == SFlag::S_IFREG && opened.st_nlink > 1)
    }

    fn chown(&self, fd: impl AsFd, path: &Path) -> Result<(), CopyError> {
        if let Some(uid) = self.rules.chown_to {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid))).map_err(|e| io(path, e))?;
        }
        Ok(())
    }

    fn dir(&mut self, src: OwnedFd, dst: &OwnedFd, path: &Path, depth: usize) -> Result<(), CopyError> {
        let mut listing = Dir::from_fd(src).map_err(|e| io(path, e))?;
        let mut names: Vec<CString> = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| io(path, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if names.len() as u64 >= MAX_ENTRIES {
                return Err(CopyError::TooMany);
            }
            names.push(name.to_owned());
        }
        names.sort();
        let parent = path.file_name().unwrap_or_default().to_owned();
        for name in names {
            let os_name = OsStr::from_bytes(name.to_bytes());
            let child = path.join(os_name);
            if skipped(&parent, os_name) {
                self.count()?;
                self.copied.skipped += 1;
                continue;
            }
            self.count()?;
            let listed = match fstatat(&listing, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io(&child, e)),
            };
            match kind(&listed) {
                SFlag::S_IFDIR => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(CopyError::TooDeep);
                    }
                    let fd = match open_dir_at(&listing, &name) {
                        Ok(fd) => fd,
                        Err(Errno::ENOENT) => continue,
                        Err(Errno::ELOOP | Errno::ENOTDIR) => {
                            self.refuse(&child, "changed while listed");
                            continue;
                        }
                        Err(e) => return Err(io(&child, e)),
                    };
                    let opened = fstat(&fd).map_err(|e| io(&child, e))?;
                    if !self.acceptable(&listed, &opened) {
                        self.refuse(&child, "another filesystem or owner");
                        continue;
                    }
                    mkdirat(dst, name.as_c_str(), Mode::from_bits_truncate(0o700)).map_err(|e| io(&child, e))?;
                    let out = open_dir_at(dst, &name).map_err(|e| io(&child, e))?;
                    self.chown(&out, &child)?;
                    self.copied.dirs += 1;
                    self.dir(fd, &out, &child, depth + 1)?;
                }
                SFlag::S_IFREG => self.file(&listing, dst, &name, &listed, &child)?,
                _ => self.refuse(&child, "not a regular file or directory"),
            }
        }
        Ok(())
    }

    fn file(&mut self, src_dir: impl AsFd, dst: &OwnedFd, name: &CStr, listed: &FileStat, path: &Path) -> Result<(), CopyError> {
        let max = self.rules.max_bytes;
        let size = u64::try_from(listed.st_size).unwrap_or(0);
        if self.copied.bytes.saturating_add(size) > max {
            return Err(CopyError::TooLarge { max });
        }
        // O_NONBLOCK: should a FIFO be swapped in after the listing, opening it does not
        // hang; the check below refuses it.
        let fd = match openat(
            src_dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ELOOP) => {
                self.refuse(path, "changed while listed");
                return Ok(());
            }
            Err(e) => return Err(io(path, e)),
        };
        let opened = fstat(&fd).map_err(|e| io(path, e))?;
        if !self.acceptable(listed, &opened) {
            self.refuse(path, "another filesystem or owner");
            return Ok(());
        }
        let out = openat(
            dst,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io(path, e))?;
        self.chown(&out, path)?;
        let mut out = std::fs::File::from(out);
        // Read no more than the limit allows (plus one byte, to notice a file that grew).
        let room = max - self.copied.bytes;
        let mut input = std::fs::File::from(fd).take(room.saturating_add(1));
        let n = copy(&mut input, &mut out).map_err(|e| io(path, e))?;
        if n > room {
            return Err(CopyError::TooLarge { max });
        }
        self.copied.bytes += n;
        self.copied.files += 1;
        Ok(())
    }
}

fn copy(input: &mut impl Read, out: &mut std::fs::File) -> std::io::Result<u64> {
    let n = std::io::copy(input, out)?;
    out.flush()?;
    Ok(n)
}

/// Marks a copied profile as having exited cleanly (`profile.exit_type` "Normal",
/// `profile.exited_cleanly` true in `Default/Preferences`), so the new browser offers no
/// crash recovery. The file was just created by [`copy_tree`] in a home nothing has run in
/// yet; one that is missing or not JSON is left as it is.
pub(crate) fn mark_exited_cleanly(profile: &Path) {
    let path: PathBuf = profile.join("Default/Preferences");
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return;
    };
    if !meta.is_file() || meta.len() > 64 << 20 {
        return;
    }
    let Ok(text) = std::fs::read(&path) else {
        return;
    };
    let Ok(mut prefs) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return;
    };
    let Some(root) = prefs.as_object_mut() else {
        return;
    };
    let profile_prefs = root.entry("profile").or_insert_with(|| serde_json::json!({}));
    let Some(p) = profile_prefs.as_object_mut() else {
        return;
    };
    if p.get("exit_type").and_then(|v| v.as_str()) == Some("Normal")
        && p.get("exited_cleanly").and_then(|v| v.as_bool()) == Some(true)
    {
        return;
    }
    p.insert("exit_type".into(), "Normal".into());
    p.insert("exited_cleanly".into(), true.into());
    if let Ok(bytes) = serde_json::to_vec(&prefs)
        && let Err(e) = std::fs::write(&path, bytes)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not mark a restored profile as cleanly exited");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn rules(max_bytes: u64) -> Rules {
        Rules { owner: Some(me()), chown_to: None, max_bytes }
    }

    fn copy_dir(src: &Path, dst: &Path, rules: &Rules) -> Result<Copied, CopyError> {
        let dst_fd = create_dir(dst, None)?;
        copy_tree(open_dir(src)?, dst_fd, src, rules)
    }

    #[test]
    fn files_and_directories_are_copied_caches_and_links_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("profile");
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "HOST-SECRET").unwrap();
        std::fs::create_dir_all(src.join("Default/Local Storage/leveldb")).unwrap();
        std::fs::create_dir_all(src.join("Default/Cache/Cache_Data")).unwrap();
        std::fs::create_dir_all(src.join("Default/Service Worker/CacheStorage")).unwrap();
        std::fs::create_dir_all(src.join("Default/Service Worker/Database")).unwrap();
        std::fs::write(src.join("Default/Cache/Cache_Data/index"), "cached").unwrap();
        std::fs::write(src.join("Default/Service Worker/CacheStorage/x"), "cached").unwrap();
        std::fs::write(src.join("Default/Service Worker/Database/CURRENT"), "db").unwrap();
        std::fs::write(src.join("Default/Local Storage/leveldb/000003.log"), "local storage").unwrap();
        std::fs::write(src.join("Local State"), "{}").unwrap();
        std::fs::write(src.join("DevToolsActivePort"), "1234\n").unwrap();
        std::fs::write(src.join("BrowserMetrics-spare.pma"), "metrics").unwrap();
        std::fs::create_dir_all(src.join("Default/DawnWebGPUCache")).unwrap();
        symlink("host-1", src.join("SingletonLock")).unwrap();
        symlink(&secret, src.join("Default/Cookies")).unwrap();
        symlink(tmp.path(), src.join("Default/elsewhere")).unwrap();
        nix::unistd::mkfifo(&src.join("Default/fifo"), Mode::from_bits_truncate(0o600)).unwrap();

        let dst = tmp.path().join("out/copy");
        let copied = copy_dir(&src, &dst, &rules(1 << 20)).unwrap();
        let mut found: Vec<String> = Vec::new();
        let mut stack = vec![dst.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                assert!(t.is_dir() || t.is_file(), "{:?} is neither a file nor a directory", e.path());
                if t.is_dir() {
                    stack.push(e.path());
                }
                found.push(e.path().strip_prefix(&dst).unwrap().display().to_string());
            }
        }
        found.sort();
        assert_eq!(
            found,
            [
                "Default",
                "Default/Local Storage",
                "Default/Local Storage/leveldb",
                "Default/Local Storage/leveldb/000003.log",
                "Default/Service Worker",
                "Default/Service Worker/Database",
                "Default/Service Worker/Database/CURRENT",
                "Local State",
            ]
        );
        assert_eq!(copied.files, 3);
        assert_eq!(copied.bytes, ("local storage".len() + "db".len() + 2) as u64);
        assert_eq!(copied.refused, 3, "two links and a FIFO: {copied:?}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(dst.join("Local State")).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // The destination must be new.
        assert!(matches!(copy_dir(&src, &dst, &rules(1 << 20)), Err(CopyError::Io { .. })));
    }

    #[test]
    fn the_caps_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("p");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![7u8; 1000]).unwrap();
        std::fs::write(src.join("b"), vec![7u8; 1000]).unwrap();
        assert!(copy_dir(&src, &tmp.path().join("ok"), &rules(2000)).is_ok());
        let e = copy_dir(&src, &tmp.path().join("big"), &rules(1999)).unwrap_err();
        assert!(matches!(e, CopyError::TooLarge { max: 1999 }), "{e}");

        let mut deep = src.clone();
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let e = copy_dir(&src, &tmp.path().join("deep"), &rules(1 << 20)).unwrap_err();
        assert!(matches!(e, CopyError::TooDeep), "{e}");

        // Another owner's file is left out.
        let strange = Rules { owner: Some(me() + 1), chown_to: None, max_bytes: 1 << 20 };
        let e = copy_dir(&src, &tmp.path().join("stranger"), &strange).unwrap_err();
        assert!(matches!(e, CopyError::Refused { .. }), "{e}");
    }

    #[test]
    fn a_profile_swapped_for_a_link_or_a_strangers_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let other = tmp.path().join("other/home/profile");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("Cookies"), "OTHER-DESKTOP").unwrap();
        let desktop = tmp.path().join("desktop");
        std::fs::create_dir_all(desktop.join("home")).unwrap();
        symlink(&other, desktop.join("home/profile")).unwrap();
        let e = open_desktop_profile(&desktop, me()).unwrap_err();
        assert!(matches!(e, CopyError::Refused { .. }), "{e}");

        std::fs::remove_file(desktop.join("home/profile")).unwrap();
        std::fs::create_dir(desktop.join("home/profile")).unwrap();
        assert!(open_desktop_profile(&desktop, me()).is_ok());
        let e = open_desktop_profile(&desktop, me() + 1).unwrap_err();
        assert!(e.to_string().contains("belongs to uid"), "{e}");
    }

    #[test]
    fn a_crashed_profile_is_marked_clean() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("Default")).unwrap();
        std::fs::write(
            tmp.path().join("Default/Preferences"),
            r#"{"profile":{"exit_type":"Crashed","exited_cleanly":false,"name":"x"},"other":1}"#,
        )
        .unwrap();
        mark_exited_cleanly(tmp.path());
        let prefs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("Default/Preferences")).unwrap()).unwrap();
        assert_eq!(prefs["profile"]["exit_type"], "Normal");
        assert_eq!(prefs["profile"]["exited_cleanly"], true);
        assert_eq!(prefs["profile"]["name"], "x");
        assert_eq!(prefs["other"], 1);
    }
}
