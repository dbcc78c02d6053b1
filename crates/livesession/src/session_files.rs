//! A session's files: one server-owned directory per session, `<data>/files/<session id>/`,
//! that holds what a person uploads and what the session's browser downloads (copied out
//! of the desktop's Downloads folder by `downloads.rs`, which also copies this folder
//! into every desktop the session gets). Files go with the session: the directory is
//! removed when the session ends, and at start-up for sessions that ended meanwhile.
//!
//! What the desktop downloads is as untrusted as the desktop, so the server never
//! follows a link here (every open is `O_NOFOLLOW`, and only regular files are listed or
//! served), and names are checked by [`check_name`] before any path is made from them. Uploads are written to a fresh temporary file and renamed
//! into place without replacing anything (`RENAME_NOREPLACE`), so a file appears whole or
//! not at all, and a name the desktop creates meanwhile is never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::SystemTime;

/// Bytes one file may have.
pub const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Files one session may hold.
pub const MAX_FILES: usize = 100;
/// Bytes a file name may have (most filesystems allow 255; the temporary name adds some).
pub const MAX_NAME_BYTES: usize = 200;

/// The suffix Chromium gives a download in progress: never listed.
const PARTIAL_SUFFIX: &str = ".crdownload";
/// Prefix of the server's own temporary upload files (a leading dot: never a valid name).
const UPLOAD_PREFIX: &str = ".upload-";

/// One file as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// RFC 3339.
    pub modified: String,
}

/// Why a name is refused: the rule it breaks, for the client.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the file name is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("the file name is longer than 200 bytes");
    }
    if name.contains('/') || name.contains('\\') {
        return Err("the file name may not contain '/' or '\\'");
    }
    if name.contains('\0') {
        return Err("the file name may not contain NUL");
    }
    if name.chars().any(char::is_control) {
        return Err("the file name may not contain control characters");
    }
    if name == "." || name == ".." || name.contains("..") {
        return Err("the file name may not contain '..'");
    }
    if name.starts_with('.') {
        return Err("the file name may not start with '.'");
    }
    if name.ends_with(PARTIAL_SUFFIX) {
        return Err("the file name may not end with .crdownload (a download in progress)");
    }
    Ok(())
}

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0}")]
    BadName(&'static str),
    #[error("no file has this name")]
    NotFound,
    #[error("a file with this name exists")]
    Exists,
    #[error("the session already holds {MAX_FILES} files")]
    TooMany,
    #[error("the file is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The session files of a server: `<root>/<session id>/`.
#[derive(Debug, Clone)]
pub struct SessionFiles {
    root: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn rfc3339(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl SessionFiles {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The session's directory (it may not exist yet).
    pub fn dir(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.root.join(id))
    }

    /// Creates the session's directory (and the root, traversable only) if missing.
    pub fn ensure_dir(&self, id: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = self
            .dir(id)
            .ok_or_else(|| std::io::Error::other("invalid session id"))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // The directory itself must be the server's directory, not a link planted there.
        if !std::fs::symlink_metadata(&dir)?.is_dir() {
            return Err(std::io::Error::other(
                "the session's files directory is not a directory",
            ));
        }
        Ok(dir)
    }

    /// The completed regular files, by name. Links, directories, FIFOs, temporaries,
    /// downloads in progress and names [`check_name`] refuses are left out.
    pub fn list(&self, id: &str) -> std::io::Result<Vec<FileEntry>> {
        let Some(dir) = self.dir(id) else {
            return Ok(Vec::new());
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_name(&name).is_err() {
                continue;
            }
            // lstat: a link is a link, whatever it points at.
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if !meta.file_type().is_file() {
                continue;
            }
            files.push(FileEntry {
                name,
                size: meta.len(),
                modified: rfc3339(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// One file's entry, if the session has a completed regular file of that name.
    pub fn entry(&self, id: &str, name: &str) -> std::io::Result<Option<FileEntry>> {
        Ok(self.list(id)?.into_iter().find(|f| f.name == name))
    }

    /// Opens a file to read it: never through a link, only a regular file.
    pub fn open(&self, id: &str, name: &str) -> Result<(std::fs::File, u64), FilesError> {
        check_name(name).map_err(FilesError::BadName)?;
        let dir = self.dir(id).ok_or(FilesError::NotFound)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO planted under the name does not hang the open.
            .custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_NONBLOCK)
            .open(dir.join(name))
            .map_err(|e| match e.raw_os_error() {
                Some(libc_flags::ELOOP) => FilesError::NotFound,
                _ if e.kind() == std::io::ErrorKind::NotFound => FilesError::NotFound,
                _ => FilesError::Io(e),
            })?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(FilesError::NotFound);
        }
        Ok((file, meta.len()))
    }

    /// Starts an upload: checks the name, the count and that the name is free, and opens a
    /// fresh temporary file in the session's directory.
    pub fn begin_upload(&self, id: &str, name: &str) -> Result<Upload, FilesError> {
        self.begin(id, name, true)
    }

    /// [`SessionFiles::begin_upload`], but only into a directory that exists already
    /// (`NotFound` otherwise): a download handed over by a desktop whose session has just
    /// ended must not make the removed directory again.
    pub fn begin_copy(&self, id: &str, name: &str) -> Result<Upload, FilesError> {
        self.begin(id, name, false)
    }

    fn begin(&self, id: &str, name: &str, create: bool) -> Result<Upload, FilesError> {
        check_name(name).map_err(FilesError::BadName)?;
        let dir = if create {
            self.ensure_dir(id)?
        } else {
            let dir = self.dir(id).ok_or(FilesError::NotFound)?;
            match std::fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => dir,
                _ => return Err(FilesError::NotFound),
            }
        };
        if self.list(id)?.len() >= MAX_FILES {
            return Err(FilesError::TooMany);
        }
        if std::fs::symlink_metadata(dir.join(name)).is_ok() {
            return Err(FilesError::Exists);
        }
        let temp = dir.join(format!("{UPLOAD_PREFIX}{}", random_hex()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc_flags::O_NOFOLLOW)
            .open(&temp)?;
        Ok(Upload {
            file: Some(file),
            temp,
            dir,
            name: name.to_owned(),
            written: 0,
        })
    }

    /// Removes the session's directory and everything in it (never following a link).
    pub fn remove(&self, id: &str) {
        let Some(dir) = self.dir(id) else { return };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(session_id = %id, "session files removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "could not remove the session's files")
            }
        }
    }

    /// The session ids that have a files directory.
    pub fn session_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|id| valid_id(id))
            .collect()
    }
}

/// Removes the files of sessions that are no longer active (or unknown to the store): a
/// restart, or a lagged cleanup, can leave them behind. A session the store cannot be
/// asked about keeps its files.
pub async fn remove_of_ended(files: &SessionFiles, sessions: &livesession_session::Sessions) {
    for id in files.session_ids() {
        let ended = match sessions.is_over(&id).await {
            Ok(over) => over,
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "the session store failed; the session's files are kept");
                false
            }
        };
        if ended {
            let (files, id) = (files.clone(), id.clone());
            let _ = tokio::task::spawn_blocking(move || files.remove(&id)).await;
        }
    }
}

/// An upload being written; removed again unless [`Upload::finish`] succeeds.
pub struct Upload {
    file: Option<std::fs::File>,
    temp: PathBuf,
    dir: PathBuf,
    name: String,
    written: u64,
}

impl Upload {
    /// Appends bytes; more than [`MAX_FILE_BYTES`] in all is an error.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), FilesError> {
        self.written += bytes.len() as u64;
        if self.written > MAX_FILE_BYTES {
            return Err(FilesError::TooLarge);
        }
        self.file
            .as_mut()
            .expect("open until finished")
            .write_all(bytes)?;
        Ok(())
    }

    /// Renames the complete file into place, never replacing a file of that name.
    pub fn finish(mut self) -> Result<(), FilesError> {
        let file = self.file.take().expect("open until finished");
        file.sync_all()?;
        drop(file);
        let target = self.dir.join(&self.name);
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &self.temp,
            nix::fcntl::AT_FDCWD,
            &target,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                self.temp = PathBuf::new();
                Ok(())
            }
            Err(nix::errno::Errno::EEXIST) => Err(FilesError::Exists),
            Err(e) => Err(FilesError::Io(std::io::Error::from(e))),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    getrandom_fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_fill(bytes: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(bytes);
    }
}

/// The few libc constants used here (Linux values).
mod libc_flags {
    pub const O_NOFOLLOW: i32 = nix::fcntl::OFlag::O_NOFOLLOW.bits();
    pub const O_NONBLOCK: i32 = nix::fcntl::OFlag::O_NONBLOCK.bits();
    pub const ELOOP: i32 = nix::errno::Errno::ELOOP as i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_path_tricks_are_refused_with_the_rule() {
        for (name, rule) in [
            ("", "empty"),
            ("../x", "'/'"),
            ("a/b", "'/'"),
            ("a\\b", "'\\'"),
            ("..", "'..'"),
            ("a..b", "'..'"),
            (".hidden", "start with '.'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("x.crdownload", "crdownload"),
        ] {
            let err = check_name(name).expect_err(name);
            assert!(err.contains(rule), "{name:?}: {err}");
        }
        assert!(check_name(&"a".repeat(201)).unwrap_err().contains("200"));
        for ok in ["report.pdf", "a b (1).txt", "été.csv", &"a".repeat(200)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn uploads_appear_whole_and_links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let files = SessionFiles::new(root.path().join("files"));
        let mut upload = files.begin_upload("s1", "a.txt").unwrap();
        upload.write(b"hello").unwrap();
        assert!(
            files.list("s1").unwrap().is_empty(),
            "not listed before it is complete"
        );
        upload.finish().unwrap();
        let listed = files.list("s1").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size), ("a.txt", 5));
        assert!(matches!(
            files.begin_upload("s1", "a.txt"),
            Err(FilesError::Exists)
        ));
        // A link planted in the directory: not listed, not opened.
        let secret = root.path().join("secret");
        std::fs::write(&secret, "secret").unwrap();
        std::os::unix::fs::symlink(&secret, files.dir("s1").unwrap().join("link.txt")).unwrap();
        assert_eq!(files.list("s1").unwrap().len(), 1);
        assert!(matches!(
            files.open("s1", "link.txt"),
            Err(FilesError::NotFound)
        ));
        // An abandoned upload leaves nothing behind.
        let mut upload = files.begin_upload("s1", "b.txt").unwrap();
        upload.write(b"partial").unwrap();
        drop(upload);
        let names: Vec<_> = std::fs::read_dir(files.dir("s1").unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
