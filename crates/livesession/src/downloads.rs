//! A session's files on its desktop (docs/api.md, "Session files").
//!
//! The session's own folder, `<data>/files/<id>/` ([`SessionFiles`]), is the truth: it
//! outlives any one desktop (a warm desktop starts before its session is known, a
//! hibernated session resumes on a new desktop). A desktop sees the files in its own
//! `~/Downloads` (on the host `<desktop dir>/home/Downloads`, a tmpfs of the desktop's
//! uid), where its Chromium saves downloads without asking (its managed policy) and where
//! a page's file chooser opens:
//!
//! - when a desktop is bound to a session (a fresh start, a warm desktop handed out, a
//!   resume), [`DesktopFiles::bind`] makes `Downloads` (the desktop's uid's) and copies
//!   the session's files into it, before the desktop is announced ready;
//! - a [`Watcher`] per live desktop polls `Downloads` every 500 ms: each completed
//!   regular file that is not in the session's folder yet is copied there (atomically:
//!   whole or not at all) and announced to the session's control connections as
//!   `FILE_ADDED`; files uploaded meanwhile are copied in;
//! - an upload (`POST …/files`) goes into the live desktop's `Downloads` at once
//!   ([`DesktopFiles::place`]) and is announced the same way.
//!
//! The desktop's user owns `Downloads` and everything in it, and the server is root: so
//! nothing there is trusted. The folder is opened beneath the desktop's directory without
//! following any link ([`livesession_desktop::DesktopDir::open_dir`]) and used through
//! that descriptor only; each file is opened `O_NOFOLLOW | O_NONBLOCK`, and taken only if
//! it is a regular file of the desktop's uid, within [`MAX_FILE_BYTES`], with a name
//! [`check_name`] accepts, while the session holds fewer than [`MAX_FILES`]. Dot files
//! (the server's own temporaries among them) and downloads in progress (`*.crdownload`,
//! or a name whose `.crdownload` is still there) are passed over; a file is taken once it
//! looked the same at two polls in a row. A file that cannot be handed over is logged once
//! (at warn, without its name or content) and then left alone until it changes.
//!
//! A name is handled once per desktop: a file handed over (or copied in) is not copied
//! again if it changes or is deleted in the desktop afterwards, and a download whose name
//! the session's folder already has stays in the desktop only (Chromium gives a second
//! download of a name that is in `Downloads` a new name, "name (1).ext").

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livesession_desktop::{ConfinedError, DOWNLOADS_DIR, DesktopDir, DesktopHandle};
use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use tokio::sync::broadcast;

use crate::desktops::{DesktopStatus, Desktops};
use crate::session_files::{
    FileEntry, FilesError, MAX_FILE_BYTES, MAX_FILES, SessionFiles, check_name,
};

/// How often a live desktop's `Downloads` is looked at.
pub const POLL: Duration = Duration::from_millis(500);
/// `FILE_ADDED` events a slow control connection may fall behind by.
const EVENTS_BUFFER: usize = 64;
/// Sessions with an event channel above which channels nobody listens to are dropped.
const PRUNE_ABOVE: usize = 1024;
/// Chromium's suffix for a download in progress.
const PARTIAL_SUFFIX: &str = ".crdownload";
/// The server's temporary files in a desktop's `Downloads` (a dot file: never handed over).
const TEMP_PREFIX: &str = ".livesession-";

/// The session files as desktops see them, and the `FILE_ADDED` events of each session.
pub struct DesktopFiles {
    files: SessionFiles,
    events: Mutex<HashMap<String, broadcast::Sender<FileEntry>>>,
}

impl DesktopFiles {
    pub fn new(files: SessionFiles) -> Arc<Self> {
        Arc::new(Self {
            files,
            events: Mutex::default(),
        })
    }

    /// The sessions' own folders.
    pub fn files(&self) -> &SessionFiles {
        &self.files
    }

    /// Files added to the session's folder from now on (uploads and handed-over
    /// downloads), for one control connection.
    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<FileEntry> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() > PRUNE_ABOVE {
            events.retain(|_, tx| tx.receiver_count() > 0);
        }
        events
            .entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(EVENTS_BUFFER).0)
            .subscribe()
    }

    /// Tells the session's control connections that `entry` was added.
    pub fn publish(&self, id: &str, entry: FileEntry) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = events.get(id)
            && tx.send(entry).is_err()
        {
            // Nobody listens any more.
            events.remove(id);
        }
    }

    /// A desktop is bound to the session (started, handed out from the warm pool,
    /// resumed): makes its `Downloads` and copies the session's files into it. Returns
    /// the watcher to run once the desktop is published ([`Watcher::run`]).
    pub async fn bind(self: &Arc<Self>, id: &str, handle: &DesktopHandle) -> Watcher {
        let mut watcher = Watcher::new(self.clone(), id, handle.files().clone());
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || {
            watcher.sweep(Sweep::Bind);
            watcher
        })
        .await
        {
            Ok(watcher) => {
                tracing::debug!(session_id = %id, files = watcher.settled.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64, "session files copied into the desktop");
                watcher
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "copying the session's files into its desktop failed");
                Watcher::new(self.clone(), id, handle.files().clone())
            }
        }
    }

    /// An uploaded file (already in the session's folder): copies it into the desktop's
    /// `Downloads`, owned by the desktop's uid, mode 0644. A failure is logged: the file
    /// stays in the session's folder (the watcher tries once more).
    pub async fn place(&self, id: &str, handle: &DesktopHandle, name: &str) {
        let (files, id, dir, name) = (
            self.files.clone(),
            id.to_owned(),
            handle.files().clone(),
            name.to_owned(),
        );
        let session = id.clone();
        let placed = tokio::task::spawn_blocking(move || {
            let downloads = ensure_downloads(&dir)?;
            place_into(&files, &id, &name, &dir, &downloads)
        })
        .await;
        match placed {
            Ok(Ok(true)) => {
                tracing::info!(session_id = %session, "uploaded file placed in the desktop's Downloads")
            }
            Ok(Ok(false)) => {
                tracing::info!(session_id = %session, "the desktop's Downloads already has a file of the uploaded file's name; it keeps its own")
            }
            Ok(Err(e)) => {
                tracing::warn!(session_id = %session, error = %e, "could not place the uploaded file in the desktop's Downloads")
            }
            Err(e) => {
                tracing::error!(session_id = %session, error = %e, "placing the uploaded file failed")
            }
        }
    }
}

/// What a sweep is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// Before the desktop is published: `Downloads` made, the session's files copied in.
    Bind,
    /// While the desktop is the session's: both ways.
    Live,
    /// The desktop is being saved for a hibernation: downloads finished until now are
    /// handed over (into the session's folder only if it still exists), nothing copied in.
    Last,
}

/// How a file looked at one poll: handed over once it looks the same at the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: i64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(stat: &FileStat) -> Self {
        Self {
            ino: stat.st_ino,
            size: stat.st_size,
            mtime: stat.st_mtime,
            mtime_nsec: stat.st_mtime_nsec,
        }
    }
}

/// Follows one desktop of one session (see the module's documentation).
pub struct Watcher {
    files: Arc<DesktopFiles>,
    id: String,
    dir: DesktopDir,
    /// Names this desktop and the session's folder agree on: handed over, copied in, or
    /// found in both. Never looked at again.
    settled: HashSet<String>,
    /// Candidates as they looked at the last poll.
    last_seen: HashMap<OsString, Stamp>,
    /// Files refused (and logged) as they looked then: not logged again until they change.
    refused: HashMap<OsString, Stamp>,
    /// The last failure to reach `Downloads` at all, logged once.
    last_error: Option<String>,
}

/// Why a file in `Downloads` is not handed over.
enum Refusal {
    /// Logged once, then left alone until the file changes.
    Refused(String),
    /// Not yet or never, silently (the session's folder has the name, the file is gone).
    Skip,
    /// The session's folder is gone (the session ended): nothing more to do.
    SessionGone,
}

impl Watcher {
    fn new(files: Arc<DesktopFiles>, id: &str, dir: DesktopDir) -> Self {
        Self {
            files,
            id: id.to_owned(),
            dir,
            settled: HashSet::new(),
            last_seen: HashMap::new(),
            refused: HashMap::new(),
            last_error: None,
        }
    }

    /// Polls while the session's desktop is `handle` (ready, or its browser restarting);
    /// ends when it is not any more. A hibernation's save gets one last pass.
    pub async fn run(mut self, desktops: Arc<Desktops>, handle: Arc<DesktopHandle>) {
        loop {
            tokio::time::sleep(POLL).await;
            let status = desktops.status(&self.id);
            let sweep = match &status {
                DesktopStatus::Ready(h) | DesktopStatus::Restarting(h)
                    if Arc::ptr_eq(h, &handle) =>
                {
                    Sweep::Live
                }
                DesktopStatus::Hibernating => Sweep::Last,
                _ => return,
            };
            self = match tokio::task::spawn_blocking(move || {
                self.sweep(sweep);
                self
            })
            .await
            {
                Ok(watcher) => watcher,
                Err(e) => {
                    tracing::error!(error = %e, "the session files watcher failed");
                    return;
                }
            };
            if sweep == Sweep::Last {
                return;
            }
        }
    }

    /// One pass (blocking).
    fn sweep(&mut self, sweep: Sweep) {
        let result = self.try_sweep(sweep);
        match result {
            Ok(()) => self.last_error = None,
            Err(e) => {
                let text = e.to_string();
                if self.last_error.as_deref() != Some(&text) {
                    tracing::warn!(session_id = %self.id, error = %text, "cannot reach the desktop's Downloads folder; its files are not exchanged");
                    self.last_error = Some(text);
                }
            }
        }
    }

    fn try_sweep(&mut self, sweep: Sweep) -> std::io::Result<()> {
        let downloads = match sweep {
            Sweep::Bind | Sweep::Live => ensure_downloads(&self.dir)?,
            Sweep::Last => match self.dir.open_dir(DOWNLOADS_DIR) {
                Ok(fd) => fd,
                Err(ConfinedError::Missing { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        let names = list_names(&downloads)?;
        let canonical: HashSet<String> = self
            .files
            .files
            .list(&self.id)?
            .into_iter()
            .map(|f| f.name)
            .collect();

        // The desktop's downloads, into the session's folder.
        let mut seen = HashMap::new();
        for raw in &names {
            let bytes = raw.as_bytes();
            if bytes.starts_with(b".") || bytes.ends_with(PARTIAL_SUFFIX.as_bytes()) {
                continue;
            }
            let name = raw.to_str();
            if let Some(name) = name
                && (self.settled.contains(name) || canonical.contains(name))
            {
                self.settled.insert(name.to_owned());
                continue;
            }
            // lstat: a link is a link. Only regular files are candidates at all.
            let Ok(stat) = nix::sys::stat::fstatat(
                &downloads,
                raw.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
                continue;
            }
            let stamp = Stamp::of(&stat);
            seen.insert(raw.clone(), stamp);
            if self.refused.get(raw) == Some(&stamp) {
                continue;
            }
            // Chromium may keep the final name (empty) while `name.crdownload` grows.
            let mut partial = raw.clone();
            partial.push(PARTIAL_SUFFIX);
            if names.contains(&partial)
                || self.last_seen.get(raw) != Some(&stamp)
                || sweep == Sweep::Bind
            {
                continue;
            }
            let outcome = match name {
                None => Err(Refusal::Refused("its name is not valid UTF-8".into())),
                Some(name) => self.hand_over(&downloads, name, sweep),
            };
            match outcome {
                Ok(entry) => {
                    self.settled.insert(entry.name.clone());
                    tracing::info!(session_id = %self.id, bytes = entry.size, "a download of the desktop's browser was added to the session's files");
                    self.files.publish(&self.id, entry);
                }
                Err(Refusal::Refused(why)) => {
                    tracing::warn!(session_id = %self.id, bytes = stamp.size, reason = %why, "a file in the desktop's Downloads is not added to the session's files");
                    self.refused.insert(raw.clone(), stamp);
                }
                Err(Refusal::Skip) => {}
                Err(Refusal::SessionGone) => return Ok(()),
            }
        }
        self.last_seen = seen;
        self.refused.retain(|name, _| names.contains(name));

        // The session's files (uploads), into the desktop.
        if sweep == Sweep::Last {
            return Ok(());
        }
        let present: HashSet<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        for name in canonical {
            if self.settled.contains(&name) {
                continue;
            }
            if !present.contains(name.as_bytes()) {
                match place_into(&self.files.files, &self.id, &name, &self.dir, &downloads) {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(session_id = %self.id, error = %e, "could not copy one of the session's files into the desktop's Downloads")
                    }
                }
            }
            self.settled.insert(name);
        }
        Ok(())
    }

    /// Copies `Downloads/name` into the session's folder, atomically.
    fn hand_over(
        &self,
        downloads: &OwnedFd,
        name: &str,
        sweep: Sweep,
    ) -> Result<FileEntry, Refusal> {
        check_name(name)
            .map_err(|rule| Refusal::Refused(format!("its name is refused: {rule}")))?;
        let fd = match nix::fcntl::openat(
            downloads,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Gone, or replaced by a link since it was listed.
            Err(_) => return Err(Refusal::Skip),
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|_| Refusal::Skip)?;
        if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(Refusal::Skip);
        }
        if stat.st_uid != self.dir.owner() {
            return Err(Refusal::Refused(format!(
                "it belongs to uid {} instead of the desktop's {}",
                stat.st_uid,
                self.dir.owner()
            )));
        }
        if stat.st_size as u64 > MAX_FILE_BYTES {
            return Err(Refusal::Refused(format!(
                "it is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        let begun = match sweep {
            Sweep::Last => self.files.files.begin_copy(&self.id, name),
            Sweep::Bind | Sweep::Live => self.files.files.begin_upload(&self.id, name),
        };
        let mut upload = match begun {
            Ok(upload) => upload,
            Err(FilesError::Exists) => return Err(Refusal::Skip),
            Err(FilesError::NotFound) => return Err(Refusal::SessionGone),
            Err(FilesError::TooMany) => {
                return Err(Refusal::Refused(format!(
                    "the session holds {MAX_FILES} files already"
                )));
            }
            Err(e) => return Err(Refusal::Refused(format!("the session's folder: {e}"))),
        };
        let mut file = std::fs::File::from(fd);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Refusal::Refused(format!("reading it failed: {e}"))),
            };
            // Grown past the limit while being copied: the partial copy is removed.
            upload
                .write(&buf[..n])
                .map_err(|e| Refusal::Refused(e.to_string()))?;
        }
        match upload.finish() {
            Ok(()) => {}
            Err(FilesError::Exists) => return Err(Refusal::Skip),
            Err(e) => return Err(Refusal::Refused(format!("the session's folder: {e}"))),
        }
        match self.files.files.entry(&self.id, name) {
            Ok(Some(entry)) => Ok(entry),
            _ => Err(Refusal::Skip),
        }
    }
}

/// Opens the desktop's `Downloads`, making it (the desktop's uid's, mode 0700) if missing.
fn ensure_downloads(dir: &DesktopDir) -> std::io::Result<OwnedFd> {
    match dir.open_dir(DOWNLOADS_DIR) {
        Ok(fd) => return Ok(fd),
        Err(ConfinedError::Missing { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let (parent, leaf) = DOWNLOADS_DIR.rsplit_once('/').expect("a path under home");
    let home = dir.open_dir(parent)?;
    match nix::sys::stat::mkdirat(&home, leaf, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {
            // Made by the server: given to the desktop's user, through the descriptor of
            // what was made (never a path the desktop could have swapped meanwhile).
            let made = nix::fcntl::openat(
                &home,
                leaf,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            give_to_desktop(&made, dir.owner())?;
        }
        // Made meanwhile (by the browser, or by another call).
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(dir.open_dir(DOWNLOADS_DIR)?)
}

/// Gives a file or directory the server made in the desktop's home to the desktop's user.
fn give_to_desktop(fd: &OwnedFd, owner: u32) -> std::io::Result<()> {
    if nix::unistd::geteuid().as_raw() != owner {
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(owner),
            nix::unistd::Gid::from_raw(owner),
        );
        nix::unistd::fchown(fd, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The names in a directory opened with [`DesktopDir::open_dir`], read through its
/// descriptor (`/proc/self/fd/N` is the very directory that was checked).
fn list_names(dir: &OwnedFd) -> std::io::Result<HashSet<OsString>> {
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    Ok(entries.flatten().map(|e| e.file_name()).collect())
}

/// Copies the session's file `name` into the desktop's `Downloads` (open as `downloads`):
/// written to a temporary dot file, given to the desktop's uid with mode 0644, renamed to
/// `name` without replacing anything. `Ok(false)`: the desktop has something of that name.
fn place_into(
    files: &SessionFiles,
    id: &str,
    name: &str,
    dir: &DesktopDir,
    downloads: &OwnedFd,
) -> std::io::Result<bool> {
    let (source, len) = files.open(id, name).map_err(|e| match e {
        FilesError::Io(e) => e,
        other => std::io::Error::new(std::io::ErrorKind::NotFound, other.to_string()),
    })?;
    let temp = format!("{TEMP_PREFIX}{}", crate::session_files::random_hex());
    let fd = nix::fcntl::openat(
        downloads,
        temp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let remove_temp = || {
        let _ = nix::unistd::unlinkat(
            downloads,
            temp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    };
    let written = (|| -> std::io::Result<()> {
        give_to_desktop(&fd, dir.owner())?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o644))?;
        let mut out = std::fs::File::from(fd);
        let copied = std::io::copy(&mut source.take(len), &mut out)?;
        if copied != len {
            return Err(std::io::Error::other(
                "the file changed while it was copied",
            ));
        }
        out.flush()
    })();
    if let Err(e) = written {
        remove_temp();
        return Err(e);
    }
    match nix::fcntl::renameat2(
        downloads,
        temp.as_str(),
        downloads,
        name,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => {
            remove_temp();
            Ok(false)
        }
        Err(e) => {
            remove_temp();
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// A desktop directory with `home/` (the test's own uid plays the desktop's), and a
    /// session folder root.
    fn setup() -> (tempfile::TempDir, DesktopDir, Arc<DesktopFiles>) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("desktop/home")).unwrap();
        let dir = DesktopDir::new(tmp.path().join("desktop"), me());
        let files = DesktopFiles::new(SessionFiles::new(tmp.path().join("files")));
        (tmp, dir, files)
    }

    fn watcher(files: &Arc<DesktopFiles>, dir: &DesktopDir) -> Watcher {
        Watcher::new(files.clone(), "s1", dir.clone())
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn completed_downloads_are_handed_over_once_stable_and_uploads_are_copied_in() {
        let (tmp, dir, files) = setup();
        let downloads = tmp.path().join("desktop/home/Downloads");
        // An upload made before the desktop existed.
        let mut upload = files.files().begin_upload("s1", "up.txt").unwrap();
        upload.write(b"uploaded").unwrap();
        upload.finish().unwrap();
        let mut events = files.subscribe("s1");

        let mut w = watcher(&files, &dir);
        w.sweep(Sweep::Bind);
        assert_eq!(
            std::fs::read(downloads.join("up.txt")).unwrap(),
            b"uploaded",
            "copied into the desktop"
        );
        assert_eq!(
            names(&downloads),
            vec!["up.txt"],
            "no temporary left behind"
        );

        std::fs::write(downloads.join("report.csv"), "a,b\n").unwrap();
        std::fs::write(downloads.join("big.bin.crdownload"), "in progress").unwrap();
        std::fs::write(downloads.join("big.bin"), "").unwrap(); // Chromium's placeholder
        std::fs::write(downloads.join(".hidden"), "dot").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("files"), downloads.join("link")).unwrap();
        std::fs::create_dir(downloads.join("dir")).unwrap();
        w.sweep(Sweep::Live);
        assert_eq!(
            names(&tmp.path().join("files/s1")),
            vec!["up.txt"],
            "not before it looked the same twice"
        );
        w.sweep(Sweep::Live);
        assert_eq!(
            names(&tmp.path().join("files/s1")),
            vec!["report.csv", "up.txt"]
        );
        assert_eq!(
            std::fs::read(tmp.path().join("files/s1/report.csv")).unwrap(),
            b"a,b\n"
        );
        let event = events.try_recv().unwrap();
        assert_eq!((event.name.as_str(), event.size), ("report.csv", 4));
        assert!(
            events.try_recv().is_err(),
            "one event, for the new file only"
        );

        // The download completes: the placeholder is replaced, and then taken.
        std::fs::remove_file(downloads.join("big.bin.crdownload")).unwrap();
        std::fs::write(downloads.join("big.bin.tmp"), "all of it").unwrap();
        std::fs::rename(downloads.join("big.bin.tmp"), downloads.join("big.bin")).unwrap();
        w.sweep(Sweep::Live);
        w.sweep(Sweep::Live);
        assert_eq!(
            std::fs::read(tmp.path().join("files/s1/big.bin")).unwrap(),
            b"all of it"
        );
        assert_eq!(events.try_recv().unwrap().name, "big.bin");

        // An upload while the desktop runs is copied in by the next sweep.
        let mut upload = files.files().begin_upload("s1", "later.txt").unwrap();
        upload.write(b"later").unwrap();
        upload.finish().unwrap();
        w.sweep(Sweep::Live);
        assert_eq!(
            std::fs::read(downloads.join("later.txt")).unwrap(),
            b"later"
        );
        // Deleted in the desktop: not copied in again.
        std::fs::remove_file(downloads.join("later.txt")).unwrap();
        w.sweep(Sweep::Live);
        assert!(!downloads.join("later.txt").exists());
        assert!(
            events.try_recv().is_err(),
            "uploads are announced by the upload itself"
        );
    }

    #[test]
    fn bad_names_and_other_owners_are_refused_and_logged_once() {
        let (tmp, dir, files) = setup();
        let downloads = tmp.path().join("desktop/home/Downloads");
        let mut w = watcher(&files, &dir);
        w.sweep(Sweep::Bind);
        std::fs::write(downloads.join("a..b"), "x").unwrap();
        w.sweep(Sweep::Live);
        w.sweep(Sweep::Live);
        assert_eq!(w.refused.len(), 1);
        w.sweep(Sweep::Live);
        assert_eq!(w.refused.len(), 1);
        assert!(names(&tmp.path().join("files/s1")).is_empty());
        // A desktop of another uid: its files are not taken either.
        let mut other = watcher(
            &files,
            &DesktopDir::new(tmp.path().join("desktop"), me() + 1),
        );
        std::fs::write(downloads.join("ok.txt"), "x").unwrap();
        // (The directory itself is not the other uid's: it is refused as a whole.)
        other.sweep(Sweep::Live);
        assert!(
            other
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("owned by uid"),
            "{:?}",
            other.last_error
        );
    }

    #[test]
    fn a_downloads_link_is_never_followed() {
        let (tmp, dir, files) = setup();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("desktop/home/Downloads")).unwrap();
        let mut upload = files.files().begin_upload("s1", "up.txt").unwrap();
        upload.write(b"uploaded").unwrap();
        upload.finish().unwrap();
        let mut w = watcher(&files, &dir);
        w.sweep(Sweep::Bind);
        assert!(
            names(&elsewhere).is_empty(),
            "nothing written through the link"
        );
        // (O_DIRECTORY | O_NOFOLLOW on a link answers "not a directory".)
        assert!(
            w.last_error
                .as_deref()
                .unwrap_or_default()
                .contains("tampered"),
            "{:?}",
            w.last_error
        );
    }

    #[test]
    fn the_last_sweep_does_not_make_an_ended_sessions_folder_again() {
        let (tmp, dir, files) = setup();
        let downloads = tmp.path().join("desktop/home/Downloads");
        let mut w = watcher(&files, &dir);
        w.sweep(Sweep::Bind);
        std::fs::write(downloads.join("late.txt"), "late").unwrap();
        w.sweep(Sweep::Live);
        files.files().remove("s1");
        w.sweep(Sweep::Last);
        assert!(!tmp.path().join("files/s1").exists());
    }
}
