//! Packing a user-data directory into tar entries, and checking entries when unpacking.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::VaultError;

/// Names that are never saved, wherever they appear in the tree (compared with a file's
/// or directory's own name, exactly): caches Chromium rebuilds by itself, crash and metrics
/// data, and files that only mean something to a running browser.
///
/// - HTTP, code and GPU caches: `Cache`, `Code Cache`, `GPUCache`, `GrShaderCache`,
///   `GraphiteDawnCache`, `ShaderCache`, `DawnCache`, `DawnGraphiteCache`,
///   `DawnWebGPUCache`, `Media Cache`, `Application Cache`;
/// - Service Worker caches: `CacheStorage`, `ScriptCache` (the registrations themselves,
///   in `Service Worker/Database`, are kept);
/// - crash reports and metrics: `Crashpad`, `Crash Reports`, `BrowserMetrics`,
///   `BrowserMetrics-spare.pma`;
/// - downloaded components and models Chromium fetches again: `component_crx_cache`,
///   `extensions_crx_cache`, `Safe Browsing`, `optimization_guide_model_store`,
///   `OptimizationHints`;
/// - a running browser's files: `DevToolsActivePort`, `SingletonLock`, `SingletonSocket`,
///   `SingletonCookie` (symbolic links, skipped as such anyway), `RunningChromeVersion`.
///
/// Also skipped (see [`is_skipped`]): names ending in `.tmp`, and Chromium's temporary
/// files of atomic writes (`.org.chromium.Chromium.*`, `.com.google.Chrome.*`).
pub const SKIPPED_NAMES: &[&str] = &[
    "Cache",
    "Code Cache",
    "GPUCache",
    "GrShaderCache",
    "GraphiteDawnCache",
    "ShaderCache",
    "DawnCache",
    "DawnGraphiteCache",
    "DawnWebGPUCache",
    "Media Cache",
    "Application Cache",
    "CacheStorage",
    "ScriptCache",
    "Crashpad",
    "Crash Reports",
    "BrowserMetrics",
    "BrowserMetrics-spare.pma",
    "component_crx_cache",
    "extensions_crx_cache",
    "Safe Browsing",
    "optimization_guide_model_store",
    "OptimizationHints",
    "DevToolsActivePort",
    "SingletonLock",
    "SingletonSocket",
    "SingletonCookie",
    "RunningChromeVersion",
];

/// Whether a file or directory of this name is left out of a saved state (with everything
/// under it): [`SKIPPED_NAMES`], names ending in `.tmp`, Chromium's temporary files.
pub fn is_skipped(name: &OsStr) -> bool {
    let b = name.as_bytes();
    SKIPPED_NAMES.iter().any(|s| s.as_bytes() == b)
        || b.ends_with(b".tmp")
        || b.starts_with(b".org.chromium.Chromium.")
        || b.starts_with(b".com.google.Chrome.")
}

pub(crate) enum Kind {
    Dir,
    File { len: u64, dev: u64, ino: u64 },
}

pub(crate) struct Item {
    /// Relative to the root, only normal components.
    pub rel: PathBuf,
    pub kind: Kind,
    pub mtime: u64,
}

pub(crate) struct Collected {
    pub items: Vec<Item>,
    pub unpacked_bytes: u64,
    pub files: u64,
}

/// Walks `root` without following symbolic links, in name order, directories before
/// their contents; regular files and directories only. Stops with TooLarge as soon as
/// the files add up to more than `cap` bytes.
pub(crate) fn collect(root: &Path, cap: u64) -> Result<Collected, VaultError> {
    let md = fs::symlink_metadata(root)?;
    if !md.is_dir() {
        return Err(VaultError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the directory to save is not a directory",
        )));
    }
    let mut c = Collected {
        items: Vec::new(),
        unpacked_bytes: 0,
        files: 0,
    };
    walk(root, Path::new(""), cap, &mut c)?;
    Ok(c)
}

fn walk(root: &Path, rel: &Path, cap: u64, c: &mut Collected) -> Result<(), VaultError> {
    let mut names = Vec::new();
    for e in fs::read_dir(root.join(rel))? {
        names.push(e?.file_name());
    }
    names.sort();
    for name in names {
        if is_skipped(&name) {
            continue;
        }
        let rel = rel.join(&name);
        let md = match fs::symlink_metadata(root.join(&rel)) {
            Ok(md) => md,
            // Gone since read_dir listed it: nothing to save.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let mtime = u64::try_from(md.mtime()).unwrap_or(0);
        let ft = md.file_type();
        if ft.is_dir() {
            c.items.push(Item {
                rel: rel.clone(),
                kind: Kind::Dir,
                mtime,
            });
            walk(root, &rel, cap, c)?;
        } else if ft.is_file() {
            let len = md.len();
            c.unpacked_bytes = c.unpacked_bytes.saturating_add(len);
            if c.unpacked_bytes > cap {
                return Err(VaultError::TooLarge { limit: cap });
            }
            c.files += 1;
            c.items.push(Item {
                rel,
                kind: Kind::File {
                    len,
                    dev: md.dev(),
                    ino: md.ino(),
                },
                mtime,
            });
        }
        // symbolic links, sockets, fifos, devices: left out
    }
    Ok(())
}

pub(crate) fn header(kind: tar::EntryType, size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

pub(crate) const META_ENTRY: &str = "meta.json";
pub(crate) const FILES_PREFIX: &str = "files/";
/// The largest metadata entry written or read (cookies and tabs: far less in practice).
pub(crate) const META_MAX: u64 = 32 * 1024 * 1024;

pub(crate) fn append_meta<W: Write>(
    b: &mut tar::Builder<W>,
    json: &[u8],
    mtime: u64,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, json.len() as u64, 0o600, mtime);
    b.append_data(&mut h, META_ENTRY, json)
}

/// Appends the collected items; a file's content is exactly the size the walk saw
/// (cut, or padded with zeros if it shrank since), so the header's sizes hold.
pub(crate) fn append_items<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    items: &[Item],
) -> io::Result<()> {
    for it in items {
        let name = Path::new(FILES_PREFIX).join(&it.rel);
        match it.kind {
            Kind::Dir => {
                let mut h = header(tar::EntryType::Directory, 0, 0o700, it.mtime);
                b.append_data(&mut h, &name, io::empty())?;
            }
            Kind::File { len, dev, ino } => {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(root.join(&it.rel))?;
                let md = f.metadata()?;
                if !md.is_file() || md.dev() != dev || md.ino() != ino {
                    return Err(io::Error::other(
                        "a file was replaced while the state was being saved",
                    ));
                }
                if md.len() != len {
                    tracing::warn!("a file changed size while the state was being saved");
                }
                let mut h = header(tar::EntryType::Regular, len, 0o600, it.mtime);
                let data = Read::take(f, len).chain(io::repeat(0)).take(len);
                b.append_data(&mut h, &name, data)?;
            }
        }
    }
    Ok(())
}

/// The relative path a `files/…` entry unpacks to: only normal components (no absolute
/// path, no `.` or `..`, no empty component). `Ok(None)` for `files/` itself.
pub(crate) fn entry_rel_path(path: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    let rest = path
        .strip_prefix(FILES_PREFIX.as_bytes())
        .ok_or("an entry outside files/")?;
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    if rest.is_empty() {
        return Ok(None);
    }
    let mut out = PathBuf::new();
    for seg in rest.split(|&c| c == b'/') {
        if seg.is_empty() || seg == b"." || seg == b".." || seg.contains(&0) {
            return Err("an unsafe path in the archive");
        }
        out.push(OsStr::from_bytes(seg));
    }
    // Belt and braces: what Path makes of it must be only normal components.
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("an unsafe path in the archive");
    }
    Ok(Some(out))
}

/// Creates a file for writing under an unpack root: 0600, never over an existing one.
pub(crate) fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_checked() {
        assert_eq!(
            entry_rel_path(b"files/a/b c").unwrap(),
            Some(PathBuf::from("a/b c"))
        );
        assert_eq!(
            entry_rel_path(b"files/Default/").unwrap(),
            Some(PathBuf::from("Default"))
        );
        assert_eq!(entry_rel_path(b"files/").unwrap(), None);
        for bad in [
            &b"meta.json"[..],
            b"/etc/passwd",
            b"files/../x",
            b"files/a/../../x",
            b"files//etc",
            b"files/./a",
            b"other/a",
            b"files/a//b",
        ] {
            assert!(
                entry_rel_path(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn skip_list() {
        for s in [
            "Cache",
            "Code Cache",
            "SingletonLock",
            "x.tmp",
            ".org.chromium.Chromium.abc",
            "CacheStorage",
        ] {
            assert!(is_skipped(OsStr::new(s)), "{s}");
        }
        for s in [
            "Cookies",
            "Local Storage",
            "Preferences",
            "Cache2",
            "Default",
            "leveldb",
        ] {
            assert!(!is_skipped(OsStr::new(s)), "{s}");
        }
    }
}
