//! The vault: saved browser state (a Chromium user-data directory plus metadata: open
//! tabs, cookies, imported cookies), compressed and encrypted at rest.
//!
//! Two kinds of keys name a saved state: a named profile shared across sessions
//! ([`StateKey::Profile`]) and a hibernated session's own state ([`StateKey::Session`]).
//! On disk, under the vault's directory (mode 0700):
//!
//! ```text
//! profiles/<name>.lsstate     one per named profile
//! sessions/<id>.lsstate       one per hibernated session
//! */.tmp-*                    a save in progress (removed on failure and by Vault::open)
//! ```
//!
//! A `.lsstate` file is a clear 120-byte header (magic, version, the unpacked size and
//! number of files, the per-version data key wrapped by the master key with
//! XChaCha20-Poly1305, the STREAM nonce) followed by `gzip(tar)` encrypted with the data
//! key in XChaCha20-Poly1305 STREAM chunks of 64 KiB. The tar's first entry is
//! `meta.json` ([`StateMeta`]), then the files under `files/`. The state key
//! (`profile NAME` / `session ID`) and the whole header are bound as associated data, so a
//! changed byte anywhere, a truncation, a wrong master key or a file copied to another
//! key's name reads as [`VaultError::Corrupt`]. Details: the `format` module.
//!
//! What is saved of a user-data directory: regular files and directories only (symbolic
//! links — Chromium's `Singleton*` — sockets, fifos and devices are left out, and links are
//! never followed), minus caches and the like ([`SKIPPED_NAMES`], [`is_skipped`]).
//!
//! Every operation is blocking (file I/O and crypto): call it from `spawn_blocking`.
//! A [`Vault`] is `Send + Sync`; writes to one key are serialised inside it, reads never
//! see a half-written state (writes go to a temporary file renamed over the old one).

mod format;
mod pack;

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use format::{CHUNK, DataKey, Fault, FaultCell, Header, RecordingWriter};
pub use pack::{SKIPPED_NAMES, is_skipped};

/// gzip level: fast; most of a profile is SQLite and LevelDB files that compress well
/// enough at this level.
const GZIP_LEVEL: u32 = 3;
const STATE_EXT: &str = ".lsstate";
const TMP_PREFIX: &str = ".tmp-";
const PROFILES_DIR: &str = "profiles";
const SESSIONS_DIR: &str = "sessions";

/// The name of a saved state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateKey {
    /// A named profile, shared across sessions ([`check_profile_name`]).
    Profile(String),
    /// A session's own state while it hibernates (the session id: `[A-Za-z0-9_-]{1,64}`).
    Session(String),
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateKey::Profile(n) => write!(f, "profile {n}"),
            StateKey::Session(id) => write!(f, "session {id}"),
        }
    }
}

impl StateKey {
    fn check(&self) -> Result<(), VaultError> {
        match self {
            StateKey::Profile(n) => check_profile_name(n),
            StateKey::Session(id) => check_session_id(id),
        }
        .map_err(VaultError::InvalidName)
    }

    /// The canonical string bound into the file's encryption.
    fn binding(&self) -> String {
        self.to_string()
    }
}

/// Checks a profile name: 1–64 characters of `[A-Za-z0-9._-]`, not starting with `.` or
/// `-`. The error says why, in words.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a profile name cannot be empty".into());
    }
    if name.len() > 64 {
        return Err("a profile name has at most 64 characters".into());
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(
            "a profile name may contain only letters A-Z and a-z, digits, '.', '_' and '-'".into(),
        );
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("a profile name cannot start with '.' or '-'".into());
    }
    Ok(())
}

fn check_session_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
    {
        return Err("a session id is 1 to 64 characters of letters, digits, '_' and '-'".into());
    }
    Ok(())
}

/// The metadata saved with a state (the first entry of its archive).
///
/// `Debug` shows counts only: cookie values and URLs are secrets and never go to a log.
#[derive(Serialize, Deserialize, Default, Clone, PartialEq)]
#[serde(default)]
pub struct StateMeta {
    /// URLs of the open tabs, in order.
    pub tabs: Vec<String>,
    /// As CDP `Storage.getCookies` returns them (`Network.Cookie` objects).
    pub cookies: Vec<serde_json::Value>,
    /// CDP `Network.CookieParam` objects an operator imported; applied at the next start.
    pub imported_cookies: Vec<serde_json::Value>,
    /// RFC 3339.
    pub saved_at: Option<String>,
    pub saved_by_session: Option<String>,
}

impl fmt::Debug for StateMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMeta")
            .field("tabs", &format_args!("[{} URLs]", self.tabs.len()))
            .field("cookies", &format_args!("[{} cookies]", self.cookies.len()))
            .field(
                "imported_cookies",
                &format_args!("[{} cookies]", self.imported_cookies.len()),
            )
            .field("saved_at", &self.saved_at)
            .field("saved_by_session", &self.saved_by_session)
            .finish()
    }
}

/// What is saved under a key, from the file's size and mtime and its clear header.
#[derive(Debug, Clone)]
pub struct SavedInfo {
    pub key: StateKey,
    /// The encrypted file's size.
    pub stored_bytes: u64,
    /// The sum of the saved files' sizes.
    pub unpacked_bytes: u64,
    /// How many regular files are saved.
    pub files: u64,
    pub updated_at: time::OffsetDateTime,
}

/// Why a vault operation failed. No message contains key material, file contents,
/// cookie values or URLs.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The files add up to more than the size cap (nothing was written).
    #[error("the saved state would exceed the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The stored state does not open: tampered, truncated, written under another key or
    /// with another master key.
    #[error("the saved state is unreadable: {0}")]
    Corrupt(String),
    #[error("vault I/O error: {0}")]
    Io(#[from] io::Error),
    /// A profile name or session id that is not allowed (the reason, in words).
    #[error("{0}")]
    InvalidName(String),
}

impl From<Fault> for VaultError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Corrupt(why) => VaultError::Corrupt(why.into()),
            Fault::Io(kind, code) => VaultError::Io(format::io_error(kind, code)),
        }
    }
}

/// Maps an error that came out of the read (and possibly write) pipeline: a recorded
/// failure of the output file first, then one of the input stream, else the archive
/// itself is malformed (which authenticated data never is unless written by a bug).
fn classify(write_fault: Option<&FaultCell>, read_fault: &FaultCell, _e: io::Error) -> VaultError {
    if let Some(Fault::Io(kind, code)) = write_fault.and_then(|w| w.borrow().clone()) {
        return VaultError::Io(format::io_error(kind, code));
    }
    match read_fault.borrow().clone() {
        Some(f) => f.into(),
        None => VaultError::Corrupt("the archive inside is malformed".into()),
    }
}

/// The encrypted store of saved states.
pub struct Vault {
    dir: PathBuf,
    master: Zeroizing<[u8; 32]>,
    max_unpacked_bytes: u64,
    locks: KeyLocks,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .field("max_unpacked_bytes", &self.max_unpacked_bytes)
            .finish_non_exhaustive()
    }
}

type StateReader = tar::Archive<GzDecoder<format::DecryptReader<BufReader<File>>>>;

impl Vault {
    /// Opens (creating, mode 0700) the vault in `dir` and removes leftovers of saves that
    /// did not finish. `max_unpacked_bytes` caps the files of one saved state.
    pub fn open(dir: &Path, master_key: [u8; 32], max_unpacked_bytes: u64) -> io::Result<Vault> {
        let master = Zeroizing::new(master_key);
        for d in [
            dir.to_path_buf(),
            dir.join(PROFILES_DIR),
            dir.join(SESSIONS_DIR),
        ] {
            pack::create_dir_all(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
            let mut removed = 0usize;
            for e in fs::read_dir(&d)? {
                let e = e?;
                if !e
                    .file_name()
                    .as_encoded_bytes()
                    .starts_with(TMP_PREFIX.as_bytes())
                {
                    continue;
                }
                let r = if e.file_type()?.is_dir() {
                    fs::remove_dir_all(e.path())
                } else {
                    fs::remove_file(e.path())
                };
                match r {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            if removed > 0 {
                tracing::info!(dir = %d.display(), removed, "vault: removed leftovers of unfinished saves");
            }
        }
        Ok(Vault {
            dir: dir.to_path_buf(),
            master,
            max_unpacked_bytes,
            locks: KeyLocks::default(),
        })
    }

    fn sub_dir(&self, key: &StateKey) -> PathBuf {
        self.dir.join(match key {
            StateKey::Profile(_) => PROFILES_DIR,
            StateKey::Session(_) => SESSIONS_DIR,
        })
    }

    /// The file of a key (validated first: file names come from checked names only).
    fn state_path(&self, key: &StateKey) -> Result<PathBuf, VaultError> {
        key.check()?;
        let name = match key {
            StateKey::Profile(n) | StateKey::Session(n) => n,
        };
        Ok(self.sub_dir(key).join(format!("{name}{STATE_EXT}")))
    }

    /// Opens the state of `key` and unwraps its data key; `None` when nothing is saved.
    fn open_state(&self, key: &StateKey) -> Result<Option<(File, Header, DataKey)>, VaultError> {
        let path = self.state_path(key)?;
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let header = Header::read_from(&mut file)?;
        let data_key = header.unwrap_key(&self.master, &key.binding())?;
        Ok(Some((file, header, data_key)))
    }

    fn reader(
        key: &StateKey,
        file: File,
        header: &Header,
        data_key: &DataKey,
        fault: &FaultCell,
    ) -> StateReader {
        let dr = header.decryptor(
            data_key,
            &key.binding(),
            BufReader::with_capacity(CHUNK + 64, file),
            fault.clone(),
        );
        tar::Archive::new(GzDecoder::new(dr))
    }

    /// Packs `user_data` and `meta`, compresses, encrypts and replaces what is saved under
    /// `key` atomically. On any failure (the cap, a full disk) the previous version stays
    /// as it was and no temporary file is left.
    pub fn save(
        &self,
        key: &StateKey,
        user_data: &Path,
        meta: &StateMeta,
    ) -> Result<SavedInfo, VaultError> {
        let dest = self.state_path(key)?;
        let _g = self.locks.lock(key);
        let json = meta_json(meta)?;
        let collected = pack::collect(user_data, self.max_unpacked_bytes)?;
        self.write_packed(key, &dest, &json, user_data, &collected)
    }

    fn write_packed(
        &self,
        key: &StateKey,
        dest: &Path,
        json: &[u8],
        root: &Path,
        c: &pack::Collected,
    ) -> Result<SavedInfo, VaultError> {
        let binding = key.binding();
        let (header, data_key) = Header::new(&self.master, &binding, c.unpacked_bytes, c.files)?;
        let (tmp, mut file) = TempFile::create(&self.sub_dir(key))?;
        let wfault = FaultCell::default();
        // Errors of the output file are taken as recorded (ENOSPC stays ENOSPC even when
        // flate2 or tar pass it on differently); errors reading the source files as they come.
        let wmap = |e: io::Error| match wfault.borrow().clone() {
            Some(f) => VaultError::from(f),
            None => VaultError::Io(e),
        };
        file.write_all(&header.encode())?;
        let enc = header.encryptor(
            &data_key,
            &binding,
            RecordingWriter {
                inner: file,
                fault: wfault.clone(),
            },
        );
        let mut b = tar::Builder::new(GzEncoder::new(enc, Compression::new(GZIP_LEVEL)));
        pack::append_meta(&mut b, json, now_secs()).map_err(wmap)?;
        pack::append_items(&mut b, root, &c.items).map_err(wmap)?;
        let file = b
            .into_inner()
            .and_then(|gz| gz.finish())
            .and_then(|enc| enc.finish())
            .map_err(wmap)?
            .inner;
        tmp.commit(file, dest)?;
        Ok(info_from_file(
            key.clone(),
            dest,
            c.unpacked_bytes,
            c.files,
        )?)
    }

    /// Decrypts and unpacks the state of `key` into `into`, which must not exist (it is
    /// created, mode 0700; files 0600, directories 0700; removed again on any error).
    /// `Ok(None)` when nothing is saved under `key` (then `into` is not created).
    pub fn restore(&self, key: &StateKey, into: &Path) -> Result<Option<StateMeta>, VaultError> {
        let Some((file, header, data_key)) = self.open_state(key)? else {
            return Ok(None);
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(0o700).create(into)?;
        }
        let guard = RemoveDirOnDrop(Some(into.to_path_buf()));
        fs::set_permissions(into, fs::Permissions::from_mode(0o700))?;
        let fault = FaultCell::default();
        let mut ar = Self::reader(key, file, &header, &data_key, &fault);
        let cl = |e: io::Error| classify(None, &fault, e);
        let meta = {
            let mut entries = ar.entries().map_err(cl)?;
            let meta = read_meta(&mut entries, &fault)?;
            let mut count = EntryCount::new(&header);
            let mut buf = vec![0u8; CHUNK];
            for e in entries {
                let mut e = e.map_err(cl)?;
                let et = e.header().entry_type();
                let rel = pack::entry_rel_path(&e.path_bytes())
                    .map_err(|w| VaultError::Corrupt(w.into()))?;
                if et.is_dir() {
                    if let Some(rel) = rel {
                        pack::create_dir_all(&into.join(rel))?;
                    }
                } else if et.is_file() {
                    let rel =
                        rel.ok_or_else(|| VaultError::Corrupt("a file in place of files/".into()))?;
                    count.file(e.size())?;
                    let path = into.join(&rel);
                    if let Some(parent) = path.parent() {
                        pack::create_dir_all(parent)?;
                    }
                    let mut out = pack::create_file(&path)?;
                    loop {
                        let n = e.read(&mut buf).map_err(cl)?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buf[..n])?;
                    }
                    if let Ok(mtime) = e.header().mtime() {
                        let _ = out.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
                    }
                } else {
                    return Err(not_file_or_dir());
                }
            }
            count.complete()?;
            meta
        };
        finish_reading(ar, &fault)?;
        guard.disarm();
        Ok(Some(meta))
    }

    /// The metadata of the state of `key`, without unpacking its files (it is the first
    /// entry; the chunks it spans are authenticated, the rest of the file is not read).
    pub fn meta(&self, key: &StateKey) -> Result<Option<StateMeta>, VaultError> {
        let Some((file, header, data_key)) = self.open_state(key)? else {
            return Ok(None);
        };
        let fault = FaultCell::default();
        let mut ar = Self::reader(key, file, &header, &data_key, &fault);
        let mut entries = ar.entries().map_err(|e| classify(None, &fault, e))?;
        Ok(Some(read_meta(&mut entries, &fault)?))
    }

    /// Rewrites the state of `key` with the metadata changed by `f` and the same files.
    /// The files are streamed from the old version into the new one (decrypted in memory
    /// chunk by chunk, never written out in the clear). When nothing is saved yet, creates
    /// a state with no files.
    pub fn update_meta(
        &self,
        key: &StateKey,
        f: impl FnOnce(&mut StateMeta),
    ) -> Result<SavedInfo, VaultError> {
        let dest = self.state_path(key)?;
        let _g = self.locks.lock(key);
        let Some((file, header, data_key)) = self.open_state(key)? else {
            let mut meta = StateMeta::default();
            f(&mut meta);
            let json = meta_json(&meta)?;
            let empty = pack::Collected {
                items: Vec::new(),
                unpacked_bytes: 0,
                files: 0,
            };
            return self.write_packed(key, &dest, &json, Path::new("/nonexistent"), &empty);
        };
        let binding = key.binding();
        let rfault = FaultCell::default();
        let wfault = FaultCell::default();
        let cl = |e: io::Error| classify(Some(&wfault), &rfault, e);
        let mut ar = Self::reader(key, file, &header, &data_key, &rfault);

        let (new_header, new_key) =
            Header::new(&self.master, &binding, header.unpacked_bytes, header.files)?;
        let (tmp, mut out) = TempFile::create(&self.sub_dir(key))?;
        out.write_all(&new_header.encode())?;
        let enc = new_header.encryptor(
            &new_key,
            &binding,
            RecordingWriter {
                inner: out,
                fault: wfault.clone(),
            },
        );
        let mut b = tar::Builder::new(GzEncoder::new(enc, Compression::new(GZIP_LEVEL)));
        {
            let mut entries = ar.entries().map_err(cl)?;
            let mut meta = read_meta(&mut entries, &rfault)?;
            f(&mut meta);
            let json = meta_json(&meta)?;
            pack::append_meta(&mut b, &json, now_secs()).map_err(cl)?;
            let mut count = EntryCount::new(&header);
            for e in entries {
                let mut e = e.map_err(cl)?;
                let et = e.header().entry_type();
                let mtime = e.header().mtime().unwrap_or(0);
                let rel = pack::entry_rel_path(&e.path_bytes())
                    .map_err(|w| VaultError::Corrupt(w.into()))?;
                let Some(rel) = rel else { continue };
                let name = Path::new(pack::FILES_PREFIX).join(rel);
                if et.is_dir() {
                    let mut h = pack::header(tar::EntryType::Directory, 0, 0o700, mtime);
                    b.append_data(&mut h, &name, io::empty()).map_err(cl)?;
                } else if et.is_file() {
                    count.file(e.size())?;
                    let mut h = pack::header(tar::EntryType::Regular, e.size(), 0o600, mtime);
                    b.append_data(&mut h, &name, &mut e).map_err(cl)?;
                } else {
                    return Err(not_file_or_dir());
                }
            }
            count.complete()?;
        }
        finish_reading(ar, &rfault)?;
        let file = b
            .into_inner()
            .and_then(|gz| gz.finish())
            .and_then(|enc| enc.finish())
            .map_err(cl)?
            .inner;
        tmp.commit(file, &dest)?;
        Ok(info_from_file(
            key.clone(),
            &dest,
            header.unpacked_bytes,
            header.files,
        )?)
    }

    /// What is saved under `key`: `None` when nothing is (or the name is invalid). Sizes
    /// come from the clear header without decrypting; a file whose header does not even
    /// parse is still reported (with zero sizes), and reads as Corrupt.
    pub fn info(&self, key: &StateKey) -> Option<SavedInfo> {
        let path = self.state_path(key).ok()?;
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .ok()?;
        let md = file.metadata().ok()?;
        if !md.is_file() {
            return None;
        }
        let (unpacked_bytes, files) = match Header::read_from(&mut file) {
            Ok(h) => (h.unpacked_bytes, h.files),
            Err(_) => {
                tracing::warn!(state = %key, "vault: a saved state's header is unreadable");
                (0, 0)
            }
        };
        Some(SavedInfo {
            key: key.clone(),
            stored_bytes: md.len(),
            unpacked_bytes,
            files,
            updated_at: md
                .modified()
                .map(time::OffsetDateTime::from)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        })
    }

    /// Deletes the state of `key`; `Ok(false)` when nothing was saved.
    pub fn delete(&self, key: &StateKey) -> io::Result<bool> {
        let path = self
            .state_path(key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let _g = self.locks.lock(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        sync_dir(&self.sub_dir(key))?;
        Ok(true)
    }

    /// The named profiles, sorted by name.
    pub fn list_profiles(&self) -> io::Result<Vec<SavedInfo>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.dir.join(PROFILES_DIR))? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str().and_then(|n| n.strip_suffix(STATE_EXT)) else {
                continue;
            };
            if check_profile_name(name).is_err() {
                continue;
            }
            if let Some(info) = self.info(&StateKey::Profile(name.to_string())) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| match (&a.key, &b.key) {
            (StateKey::Profile(x), StateKey::Profile(y)) => x.cmp(y),
            _ => std::cmp::Ordering::Equal,
        });
        Ok(out)
    }

    /// Copies the state of `from` to `to`, re-encrypted (a new data key, bound to `to`),
    /// atomically; the source is authenticated to its end before the copy replaces
    /// anything. `Ok(false)` when nothing is saved under `from`.
    pub fn copy(&self, from: &StateKey, to: &StateKey) -> Result<bool, VaultError> {
        from.check()?;
        let dest = self.state_path(to)?;
        if from == to {
            return Ok(self.info(from).is_some());
        }
        let _g = self.locks.lock(to);
        let Some((file, header, data_key)) = self.open_state(from)? else {
            return Ok(false);
        };
        let rfault = FaultCell::default();
        let wfault = FaultCell::default();
        let cl = |e: io::Error| classify(Some(&wfault), &rfault, e);
        let mut dr = header.decryptor(
            &data_key,
            &from.binding(),
            BufReader::with_capacity(CHUNK + 64, file),
            rfault.clone(),
        );
        let binding = to.binding();
        let (new_header, new_key) =
            Header::new(&self.master, &binding, header.unpacked_bytes, header.files)?;
        let (tmp, mut out) = TempFile::create(&self.sub_dir(to))?;
        out.write_all(&new_header.encode())?;
        let mut enc = new_header.encryptor(
            &new_key,
            &binding,
            RecordingWriter {
                inner: out,
                fault: wfault.clone(),
            },
        );
        io::copy(&mut dr, &mut enc).map_err(cl)?;
        if !dr.finished() {
            return Err(VaultError::Corrupt("truncated".into()));
        }
        let file = enc.finish().map_err(cl)?.inner;
        tmp.commit(file, &dest)?;
        Ok(true)
    }
}

fn meta_json(meta: &StateMeta) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let json = Zeroizing::new(
        serde_json::to_vec(meta)
            .map_err(|_| io::Error::other("the metadata does not serialise"))?,
    );
    if json.len() as u64 > pack::META_MAX {
        return Err(VaultError::TooLarge {
            limit: pack::META_MAX,
        });
    }
    Ok(json)
}

fn read_meta<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    fault: &FaultCell,
) -> Result<StateMeta, VaultError> {
    let cl = |e: io::Error| classify(None, fault, e);
    let mut e = entries
        .next()
        .ok_or_else(|| VaultError::Corrupt("the archive is empty".into()))?
        .map_err(cl)?;
    if &*e.path_bytes() != pack::META_ENTRY.as_bytes() || !e.header().entry_type().is_file() {
        return Err(VaultError::Corrupt("the metadata entry is missing".into()));
    }
    if e.size() > pack::META_MAX {
        return Err(VaultError::Corrupt(
            "the metadata entry is too large".into(),
        ));
    }
    let mut json = Zeroizing::new(Vec::with_capacity(e.size() as usize));
    e.read_to_end(&mut json).map_err(cl)?;
    serde_json::from_slice(&json)
        .map_err(|_| VaultError::Corrupt("the metadata does not parse".into()))
}

/// Reads what follows the tar's end (the gzip trailer, then the encrypted stream's end)
/// so the gzip checksum and the last chunk (and with it truncation) are verified.
fn finish_reading(ar: StateReader, fault: &FaultCell) -> Result<(), VaultError> {
    let cl = |e: io::Error| classify(None, fault, e);
    let mut gz = ar.into_inner();
    io::copy(&mut gz, &mut io::sink()).map_err(cl)?;
    let mut dr = gz.into_inner();
    io::copy(&mut dr, &mut io::sink()).map_err(cl)?;
    if !dr.finished() {
        return Err(VaultError::Corrupt("truncated".into()));
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn info_from_file(
    key: StateKey,
    path: &Path,
    unpacked_bytes: u64,
    files: u64,
) -> io::Result<SavedInfo> {
    let md = fs::metadata(path)?;
    Ok(SavedInfo {
        key,
        stored_bytes: md.len(),
        unpacked_bytes,
        files,
        updated_at: time::OffsetDateTime::from(md.modified()?),
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temporary file beside the destination, removed on drop unless committed.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    fn create(dir: &Path) -> io::Result<(TempFile, File)> {
        loop {
            let r = format::random_bytes::<12>()?;
            let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let path = dir.join(format!("{TMP_PREFIX}{name}{STATE_EXT}"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => {
                    return Ok((
                        TempFile {
                            path,
                            committed: false,
                        },
                        f,
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Syncs the file, renames it over `dest`, syncs the directory.
    fn commit(mut self, file: File, dest: &Path) -> io::Result<()> {
        file.sync_all()?;
        drop(file);
        fs::rename(&self.path, dest)?;
        self.committed = true;
        sync_dir(dest.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "vault: could not remove a temporary file"),
        }
    }
}

struct RemoveDirOnDrop(Option<PathBuf>);

impl RemoveDirOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = fs::remove_dir_all(&p)
        {
            tracing::warn!(error = %e, "vault: could not remove a partly restored directory");
        }
    }
}

/// Serialises writers of one key (saves, metadata updates, copies to it, deletes).
#[derive(Default)]
struct KeyLocks {
    held: Mutex<HashSet<StateKey>>,
    freed: Condvar,
}

struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: StateKey,
}

impl KeyLocks {
    fn lock(&self, key: &StateKey) -> KeyGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(key) {
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(key.clone());
        KeyGuard {
            locks: self,
            key: key.clone(),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        self.locks.freed.notify_all();
    }
}

/// The files and bytes of an archive's entries, held to what its authenticated header
/// says: an archive with more or fewer is corrupt.
struct EntryCount {
    expected_bytes: u64,
    expected_files: u64,
    bytes: u64,
    files: u64,
}

impl EntryCount {
    fn new(header: &Header) -> Self {
        Self { expected_bytes: header.unpacked_bytes, expected_files: header.files, bytes: 0, files: 0 }
    }

    /// One more file of `size` bytes.
    fn file(&mut self, size: u64) -> Result<(), VaultError> {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.expected_bytes || self.files > self.expected_files {
            return Err(VaultError::Corrupt("more files than the header says".into()));
        }
        Ok(())
    }

    /// After the last entry.
    fn complete(&self) -> Result<(), VaultError> {
        if self.bytes != self.expected_bytes || self.files != self.expected_files {
            return Err(VaultError::Corrupt("fewer files than the header says".into()));
        }
        Ok(())
    }
}

fn not_file_or_dir() -> VaultError {
    VaultError::Corrupt("an entry that is neither a file nor a directory".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "work", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_profile_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0",
        ] {
            assert!(check_profile_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_session_id("0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_session_id("-_aZ").is_ok());
        for bad in ["", "a.b", "../x", &"x".repeat(65)] {
            assert!(check_session_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(StateKey::Profile("w".into()).to_string(), "profile w");
        assert_eq!(StateKey::Session("s1".into()).to_string(), "session s1");
    }

    #[test]
    fn meta_debug_hides_secrets() {
        let m = StateMeta {
            tabs: vec!["https://example.com/?token=SECRETURL".into()],
            cookies: vec![serde_json::json!({"name": "sid", "value": "SECRETVALUE"})],
            ..Default::default()
        };
        let d = format!("{m:?}");
        assert!(!d.contains("SECRET"), "{d}");
        assert!(d.contains("1 URLs") && d.contains("1 cookies"), "{d}");
    }

    #[test]
    fn vault_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Vault>();
    }
}
