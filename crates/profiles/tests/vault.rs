//! The vault with real files: round trips, what is left out, tampering, keys, the size
//! cap, a disk that fills up half way (a real tmpfs), metadata updates, copies.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use livesession_profiles::{SavedInfo, StateKey, StateMeta, Vault, VaultError, check_profile_name};
use serde_json::json;

const MASTER: [u8; 32] = [0x42; 32];
const MIB: u64 = 1024 * 1024;
const COOKIE_MARKER: &str = "SECRET-COOKIE-VALUE-123";
const STORAGE_MARKER: &str = "SECRET-LOCALSTORAGE-456";
const URL_MARKER: &str = "SECRET-TAB-URL-789";
const HEADER_LEN: usize = 120;
const CHUNK_CT: usize = 64 * 1024 + 16;

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).unwrap();
    v
}

fn profile(n: &str) -> StateKey {
    StateKey::Profile(n.to_string())
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Regular files (with contents) and directories (None) under `root`, relative, without
/// following links; links, sockets and fifos are not in it.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel.clone(), None);
                walk(root, &rel, out);
            } else if ft.is_file() {
                out.insert(rel.clone(), Some(fs::read(root.join(&rel)).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Every byte of every file under `dir`.
fn all_bytes_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Names the test tree puts in that must not be saved.
const LEFT_OUT: &[&str] = &[
    "Cache",
    "Code Cache",
    "GPUCache",
    "CacheStorage",
    "ScriptCache",
    "Crashpad",
    "GrShaderCache",
    "Safe Browsing",
    "DevToolsActivePort",
    "BrowserMetrics",
    "Preferences.tmp",
];

/// A user-data directory like Chromium's: nested dirs, binary files, markers standing for
/// a cookie value and a Local Storage value, caches, Singleton links, a socket, a fifo.
fn make_user_data(root: &Path) {
    fs::create_dir_all(root).unwrap();
    write(
        &root.join("Local State"),
        br#"{"profile":{"last_used":"Default"}}"#,
    );
    let mut cookies = random(40_000);
    cookies.extend_from_slice(COOKIE_MARKER.as_bytes());
    cookies.extend_from_slice(&random(1000));
    write(&root.join("Default/Cookies"), &cookies);
    write(&root.join("Default/Cookies-journal"), b"");
    let mut ls = b"VERSION\x001\x00_https://example.com\x00key\x01".to_vec();
    ls.extend_from_slice(STORAGE_MARKER.as_bytes());
    write(&root.join("Default/Local Storage/leveldb/000003.log"), &ls);
    write(&root.join("Default/Local Storage/leveldb/LOCK"), b"");
    write(
        &root.join("Default/Preferences"),
        br#"{"browser":{"has_seen_welcome_page":true}}"#,
    );
    write(
        &root.join("Default/IndexedDB/https_example.com_0.indexeddb.leveldb/a/b/c/deep.bin"),
        &random(300_000),
    );
    write(
        &root.join("Default/Service Worker/Database/000001.log"),
        b"registrations",
    );
    fs::create_dir_all(root.join("Default/empty dir")).unwrap();
    // A path longer than tar's 100-byte name field, and a name that is not UTF-8.
    let long = format!("Default/{}/{}", "d".repeat(90), "f".repeat(120));
    write(&root.join(long), b"long path");
    write(
        &root
            .join("Default")
            .join(OsStr::from_bytes(b"caf\xe9 \xff")),
        b"not utf-8 name",
    );

    // Left out: caches, crash data, temporary files.
    write(
        &root.join("Default/Cache/Cache_Data/data_0"),
        b"CACHE-MARKER",
    );
    write(&root.join("Default/Code Cache/js/index"), b"CACHE-MARKER");
    write(&root.join("GPUCache/data_1"), b"CACHE-MARKER");
    write(&root.join("GrShaderCache/x"), b"CACHE-MARKER");
    write(
        &root.join("Default/Service Worker/CacheStorage/abc/index"),
        b"CACHE-MARKER",
    );
    write(
        &root.join("Default/Service Worker/ScriptCache/1"),
        b"CACHE-MARKER",
    );
    write(&root.join("Crashpad/settings.dat"), b"CACHE-MARKER");
    write(&root.join("Safe Browsing/list"), b"CACHE-MARKER");
    write(&root.join("BrowserMetrics/m.pma"), b"CACHE-MARKER");
    write(
        &root.join("DevToolsActivePort"),
        b"9222\n/devtools/browser/x",
    );
    write(&root.join("Default/Preferences.tmp"), b"CACHE-MARKER");
    // Links (Chromium's Singleton* are links), one to a file outside, a socket, a fifo.
    symlink("host-1234", root.join("SingletonLock")).unwrap();
    symlink(
        "/tmp/.org.chromium.Chromium.x/SingletonSocket",
        root.join("SingletonSocket"),
    )
    .unwrap();
    symlink("/etc/hostname", root.join("Default/link-outside")).unwrap();
    symlink("/etc", root.join("Default/dir-link")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("Default/a.sock")).unwrap();
    let st = Command::new("mkfifo")
        .arg(root.join("Default/a.fifo"))
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo failed");
}

fn expected(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| {
            !p.components()
                .any(|c| LEFT_OUT.iter().any(|n| c.as_os_str() == OsStr::new(n)))
        })
        .collect()
}

fn sample_meta() -> StateMeta {
    StateMeta {
        tabs: vec![
            format!("https://example.com/inbox?t={URL_MARKER}"),
            "about:blank".into(),
        ],
        cookies: vec![json!({
            "name": "sid", "value": COOKIE_MARKER, "domain": ".example.com", "path": "/",
            "expires": 1.9e9, "size": 26, "httpOnly": true, "secure": true, "session": false,
            "sameSite": "Lax", "priority": "Medium", "sameParty": false, "sourceScheme": "Secure",
            "sourcePort": 443
        })],
        imported_cookies: vec![
            json!({"name": "pref", "value": "dark", "url": "https://example.com"}),
        ],
        saved_at: Some("2026-04-01T10:00:00Z".into()),
        saved_by_session: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, VaultError>, what: &str) {
    match r {
        Err(VaultError::Corrupt(_)) => {}
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

fn check_modes(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700,
            "{}",
            d.display()
        );
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                assert!(
                    e.file_type().unwrap().is_file(),
                    "only files and dirs are restored"
                );
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", e.path().display());
            }
        }
    }
}

#[test]
fn round_trip_keeps_files_and_meta_leaves_out_caches_and_links_and_nothing_is_in_clear() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    make_user_data(&ud);
    let vault_dir = t.path().join("vault");
    let v = Vault::open(&vault_dir, MASTER, 200 * MIB).unwrap();
    assert_eq!(
        fs::metadata(&vault_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let key = profile("work");
    let meta = sample_meta();
    let want = expected(&ud);
    assert!(want.keys().any(|p| p.ends_with("deep.bin")));

    let info = v.save(&key, &ud, &meta).unwrap();
    let want_bytes: u64 = want.values().flatten().map(|c| c.len() as u64).sum();
    let want_files = want.values().filter(|c| c.is_some()).count() as u64;
    assert_eq!(info.unpacked_bytes, want_bytes);
    assert_eq!(info.files, want_files);
    let stored = vault_dir.join("profiles/work.lsstate");
    assert_eq!(info.stored_bytes, fs::metadata(&stored).unwrap().len());
    assert_eq!(
        fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let into = t.path().join("restored");
    let got_meta = v.restore(&key, &into).unwrap().expect("saved");
    assert_eq!(got_meta, meta);
    let got = snapshot(&into);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(got == want, "restored contents differ");
    for gone in [
        "SingletonLock",
        "SingletonSocket",
        "Default/link-outside",
        "Default/dir-link",
        "Default/a.sock",
        "Default/a.fifo",
        "Default/Cache",
        "GPUCache",
        "Default/Service Worker/CacheStorage",
        "Default/Preferences.tmp",
    ] {
        assert!(
            fs::symlink_metadata(into.join(gone)).is_err(),
            "{gone} must not be restored"
        );
    }
    assert!(
        into.join("Default/Service Worker/Database/000001.log")
            .is_file()
    );
    assert!(into.join("Default/empty dir").is_dir());
    check_modes(&into);

    // Nothing of the state in the clear, anywhere under the vault.
    let files = all_bytes_under(&vault_dir);
    assert_eq!(
        files.len(),
        1,
        "only the state file: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (path, bytes) in &files {
        for marker in [
            COOKIE_MARKER,
            STORAGE_MARKER,
            URL_MARKER,
            "example.com",
            "meta.json",
            "Local State",
        ] {
            assert!(
                !contains(bytes, marker.as_bytes()),
                "{marker} in clear in {}",
                path.display()
            );
        }
        // Not even a gzip stream in the clear after the header.
        assert_ne!(&bytes[HEADER_LEN..HEADER_LEN + 2], &[0x1f, 0x8b]);
        assert!(!contains(&bytes[..HEADER_LEN], COOKIE_MARKER.as_bytes()));
    }

    // info() and meta() agree.
    let i = v.info(&key).unwrap();
    assert_eq!(
        (i.unpacked_bytes, i.files, i.stored_bytes),
        (info.unpacked_bytes, info.files, info.stored_bytes)
    );
    assert_eq!(v.meta(&key).unwrap().unwrap(), meta);
}

#[test]
fn tampering_truncation_and_moved_files_are_corrupt_and_leave_no_directory() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    make_user_data(&ud);
    // Incompressible data so the payload spans several chunks.
    write(&ud.join("Default/blob.bin"), &random(400_000));
    let v = Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap();
    let a = profile("a");
    v.save(&a, &ud, &sample_meta()).unwrap();
    let path = t.path().join("vault/profiles/a.lsstate");
    let original = fs::read(&path).unwrap();
    let len = original.len();
    assert!(len > HEADER_LEN + 5 * CHUNK_CT, "several chunks: {len}");

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for off in [
        0usize, 7, 8, 11, 12, 19, 20, 27, 28, 51, 52, 99, 100, 118, 119,
    ] {
        let mut b = original.clone();
        b[off] ^= 0x01;
        cases.push((format!("header byte {off} flipped"), b));
    }
    for (name, off) in [
        ("first chunk", HEADER_LEN + 10),
        ("first tag", HEADER_LEN + CHUNK_CT - 3),
        ("middle", len / 2),
        ("last chunk", len - 20),
        ("last byte", len - 1),
    ] {
        let mut b = original.clone();
        b[off] ^= 0x80;
        cases.push((format!("{name} byte flipped"), b));
    }
    cases.push(("truncated by 1 byte".into(), original[..len - 1].to_vec()));
    cases.push(("truncated by half".into(), original[..len / 2].to_vec()));
    cases.push((
        "truncated at a chunk boundary".into(),
        original[..HEADER_LEN + 3 * CHUNK_CT].to_vec(),
    ));
    cases.push(("only the header".into(), original[..HEADER_LEN].to_vec()));
    cases.push(("half a header".into(), original[..HEADER_LEN / 2].to_vec()));
    cases.push(("empty".into(), Vec::new()));
    let mut appended = original.clone();
    appended.push(0);
    cases.push(("one byte appended".into(), appended));
    let mut swapped = original.clone();
    let (c1, c2) = (
        HEADER_LEN..HEADER_LEN + CHUNK_CT,
        HEADER_LEN + CHUNK_CT..HEADER_LEN + 2 * CHUNK_CT,
    );
    swapped[c1.clone()].copy_from_slice(&original[c2.clone()]);
    swapped[c2].copy_from_slice(&original[c1]);
    cases.push(("two chunks swapped".into(), swapped));
    let mut dropped = original[..HEADER_LEN + CHUNK_CT].to_vec();
    dropped.extend_from_slice(&original[HEADER_LEN + 2 * CHUNK_CT..]);
    cases.push(("a chunk dropped".into(), dropped));

    for (i, (what, bytes)) in cases.iter().enumerate() {
        fs::write(&path, bytes).unwrap();
        let into = t.path().join(format!("into-{i}"));
        assert_corrupt(v.restore(&a, &into), what);
        assert!(
            !into.exists(),
            "{what}: the restore directory must be removed"
        );
        assert!(
            fs::read_dir(t.path().join("vault/profiles"))
                .unwrap()
                .count()
                == 1
        );
    }
    // meta() reads only the start, but a header or first-chunk change is caught there too.
    for off in [3usize, 15, 60, 110, HEADER_LEN + 10] {
        let mut b = original.clone();
        b[off] ^= 0x01;
        fs::write(&path, &b).unwrap();
        assert_corrupt(v.meta(&a), &format!("meta() with byte {off} flipped"));
    }
    // update_meta and copy refuse a damaged source and leave it as it was.
    let mut b = original.clone();
    b[len - 20] ^= 0x80;
    fs::write(&path, &b).unwrap();
    assert_corrupt(
        v.update_meta(&a, |m| m.tabs.clear()),
        "update_meta of a damaged state",
    );
    assert_corrupt(v.copy(&a, &profile("c")), "copy of a damaged state");
    assert_eq!(fs::read(&path).unwrap(), b);
    assert!(v.info(&profile("c")).is_none());

    // The original still opens; A's file under B's name does not.
    fs::write(&path, &original).unwrap();
    assert!(v.restore(&a, &t.path().join("ok")).unwrap().is_some());
    fs::copy(&path, t.path().join("vault/profiles/b.lsstate")).unwrap();
    let into = t.path().join("into-b");
    assert_corrupt(v.restore(&profile("b"), &into), "A's file under B's name");
    assert!(!into.exists());
    assert_corrupt(v.meta(&profile("b")), "meta of A's file under B's name");
    // Nor as a session's state.
    fs::copy(&path, t.path().join("vault/sessions/a.lsstate")).unwrap();
    assert_corrupt(
        v.restore(&StateKey::Session("a".into()), &into),
        "a profile's file as a session's",
    );
    assert!(!into.exists());
    // The error messages carry no secret.
    let msg = v.restore(&profile("b"), &into).unwrap_err().to_string();
    assert!(
        !msg.contains(COOKIE_MARKER) && !msg.contains("example.com"),
        "{msg}"
    );
}

#[test]
fn another_master_key_cannot_open_a_state() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    make_user_data(&ud);
    let dir = t.path().join("vault");
    Vault::open(&dir, MASTER, 200 * MIB)
        .unwrap()
        .save(&profile("p"), &ud, &sample_meta())
        .unwrap();
    let mut other_key = MASTER;
    other_key[31] ^= 1;
    let other = Vault::open(&dir, other_key, 200 * MIB).unwrap();
    let into = t.path().join("into");
    assert_corrupt(other.restore(&profile("p"), &into), "another master key");
    assert!(!into.exists());
    assert_corrupt(other.meta(&profile("p")), "meta with another master key");
    assert_corrupt(
        other.copy(&profile("p"), &profile("q")),
        "copy with another master key",
    );
    // The sizes in the clear header still show.
    assert!(other.info(&profile("p")).unwrap().files > 0);
    // And the right key still opens it.
    let v = Vault::open(&dir, MASTER, 200 * MIB).unwrap();
    assert_eq!(
        v.restore(&profile("p"), &into).unwrap().unwrap(),
        sample_meta()
    );
}

#[test]
fn size_cap_refuses_and_keeps_the_previous_version() {
    let t = tempfile::tempdir().unwrap();
    let v = Vault::open(&t.path().join("vault"), MASTER, MIB).unwrap();
    let small = t.path().join("small");
    write(&small.join("Default/Cookies"), b"small");
    let key = profile("capped");
    v.save(
        &key,
        &small,
        &StateMeta {
            tabs: vec!["https://a.example/".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let before = fs::read(t.path().join("vault/profiles/capped.lsstate")).unwrap();

    let big = t.path().join("big");
    write(&big.join("a"), &random(600_000));
    write(&big.join("b"), &random(600_000));
    match v.save(&key, &big, &StateMeta::default()) {
        Err(VaultError::TooLarge { limit }) => assert_eq!(limit, MIB),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Exactly at the cap is allowed.
    let exact = t.path().join("exact");
    write(&exact.join("a"), &random(MIB as usize));
    v.save(&profile("exact"), &exact, &StateMeta::default())
        .unwrap();

    assert_eq!(
        fs::read(t.path().join("vault/profiles/capped.lsstate")).unwrap(),
        before
    );
    let into = t.path().join("into");
    let meta = v.restore(&key, &into).unwrap().unwrap();
    assert_eq!(meta.tabs, vec!["https://a.example/".to_string()]);
    assert_eq!(fs::read(into.join("Default/Cookies")).unwrap(), b"small");
    assert_no_temp_files(&t.path().join("vault"));
}

fn assert_no_temp_files(vault_dir: &Path) {
    for (p, _) in all_bytes_under(vault_dir) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.starts_with(".tmp-"),
            "temporary file left: {}",
            p.display()
        );
    }
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn mount(at: &Path, size: &str) -> TmpfsMount {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn a_save_that_fills_the_disk_leaves_the_previous_version_usable() {
    assert_eq!(
        effective_uid(),
        0,
        "this test mounts a 1 MiB tmpfs to fill the disk for real and must run as root \
         (as it does in CI and in the dev container); run `cargo test -p livesession-profiles` as root"
    );
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    let _m = TmpfsMount::mount(&mnt, "1m");
    let v = Vault::open(&mnt, MASTER, 200 * MIB).unwrap();
    let key = profile("full");

    let small = t.path().join("small");
    write(&small.join("Default/Cookies"), COOKIE_MARKER.as_bytes());
    write(&small.join("Default/Preferences"), b"{}");
    let meta = sample_meta();
    v.save(&key, &small, &meta).unwrap();
    let before = fs::read(mnt.join("profiles/full.lsstate")).unwrap();

    let big = t.path().join("big");
    write(&big.join("Default/Cookies"), &random(2 * MIB as usize));
    match v.save(&key, &big, &StateMeta::default()) {
        Err(VaultError::Io(e)) => assert!(
            e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull,
            "expected ENOSPC, got {e:?}"
        ),
        other => panic!("expected an I/O error (disk full), got {other:?}"),
    }
    assert_no_temp_files(&mnt);
    assert_eq!(fs::read(mnt.join("profiles/full.lsstate")).unwrap(), before);
    let into = t.path().join("into");
    assert_eq!(v.restore(&key, &into).unwrap().unwrap(), meta);
    assert_eq!(
        fs::read(into.join("Default/Cookies")).unwrap(),
        COOKIE_MARKER.as_bytes()
    );
    // The space is free again: another small save works.
    v.save(&profile("after"), &small, &StateMeta::default())
        .unwrap();
    // update_meta on the full disk fails cleanly too when the new version cannot fit.
    let big_meta_key = profile("full");
    let r = v.update_meta(&big_meta_key, |m| {
        // About 3.6 MB of JSON, some 1.8 MB once compressed: more than the tmpfs holds.
        m.imported_cookies = (0..6000)
            .map(|i| json!({"name": format!("c{i}"), "value": hex(&random(300)), "url": "https://x.example"}))
            .collect()
    });
    assert!(
        matches!(r, Err(VaultError::Io(_))),
        "update_meta past the disk's size: {r:?}"
    );
    assert_no_temp_files(&mnt);
    assert_eq!(fs::read(mnt.join("profiles/full.lsstate")).unwrap(), before);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn update_meta_keeps_the_files_and_changes_the_meta() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    make_user_data(&ud);
    let v = Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap();
    let key = profile("shop");
    let saved = v.save(&key, &ud, &sample_meta()).unwrap();
    let before = fs::read(t.path().join("vault/profiles/shop.lsstate")).unwrap();

    let info = v
        .update_meta(&key, |m| {
            m.imported_cookies
                .push(json!({"name": "new", "value": "v2", "domain": ".shop.example"}));
            m.tabs.push("https://shop.example/cart".into());
        })
        .unwrap();
    assert_eq!(
        (info.unpacked_bytes, info.files),
        (saved.unpacked_bytes, saved.files)
    );
    let after = fs::read(t.path().join("vault/profiles/shop.lsstate")).unwrap();
    assert_ne!(before, after, "rewritten with a new data key");

    let mut want_meta = sample_meta();
    want_meta
        .imported_cookies
        .push(json!({"name": "new", "value": "v2", "domain": ".shop.example"}));
    want_meta.tabs.push("https://shop.example/cart".into());
    assert_eq!(v.meta(&key).unwrap().unwrap(), want_meta);
    let into = t.path().join("into");
    assert_eq!(v.restore(&key, &into).unwrap().unwrap(), want_meta);
    assert!(
        snapshot(&into) == expected(&ud),
        "files changed by update_meta"
    );
    check_modes(&into);
    // No clear text of the files was left in the vault on the way.
    assert_eq!(all_bytes_under(&t.path().join("vault")).len(), 1);

    // On a key with nothing saved: a state with no files.
    let fresh = profile("fresh");
    let info = v
        .update_meta(&fresh, |m| {
            m.imported_cookies
                .push(json!({"name": "a", "value": "b", "url": "https://f.example"}))
        })
        .unwrap();
    assert_eq!((info.unpacked_bytes, info.files), (0, 0));
    let into = t.path().join("into-fresh");
    let m = v.restore(&fresh, &into).unwrap().unwrap();
    assert_eq!(m.imported_cookies.len(), 1);
    assert!(m.cookies.is_empty() && m.tabs.is_empty());
    assert!(snapshot(&into).is_empty());
}

#[test]
fn copy_rebinds_to_the_new_key_and_delete_and_list() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    make_user_data(&ud);
    let v = Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap();
    let a = profile("alpha");
    v.save(&a, &ud, &sample_meta()).unwrap();
    let session = StateKey::Session("0123456789abcdef0123456789abcdef".into());

    assert!(v.copy(&a, &session).unwrap());
    let a_bytes = fs::read(t.path().join("vault/profiles/alpha.lsstate")).unwrap();
    let s_bytes = fs::read(
        t.path()
            .join("vault/sessions/0123456789abcdef0123456789abcdef.lsstate"),
    )
    .unwrap();
    assert_ne!(
        a_bytes[..HEADER_LEN],
        s_bytes[..HEADER_LEN],
        "a new data key and nonce"
    );
    assert_eq!(a_bytes.len(), s_bytes.len());
    // The copy opens under its own key, also after the source is gone.
    assert!(v.delete(&a).unwrap());
    assert!(!v.delete(&a).unwrap(), "second delete finds nothing");
    assert!(v.info(&a).is_none());
    assert!(v.restore(&a, &t.path().join("none")).unwrap().is_none());
    assert!(!t.path().join("none").exists());
    let into = t.path().join("into");
    assert_eq!(v.restore(&session, &into).unwrap().unwrap(), sample_meta());
    assert!(snapshot(&into) == expected(&ud));
    // Copy back to a new profile; from nothing is false.
    assert!(v.copy(&session, &profile("zeta")).unwrap());
    assert!(!v.copy(&profile("nothing"), &profile("beta")).unwrap());
    assert!(v.info(&profile("beta")).is_none());
    // Copy over an existing state replaces it.
    let small = t.path().join("small");
    write(&small.join("x"), b"x");
    v.save(&profile("mid"), &small, &StateMeta::default())
        .unwrap();
    assert!(v.copy(&session, &profile("mid")).unwrap());
    assert_eq!(v.meta(&profile("mid")).unwrap().unwrap(), sample_meta());

    v.save(&profile("Beta.2"), &small, &StateMeta::default())
        .unwrap();
    v.save(&profile("aa"), &small, &StateMeta::default())
        .unwrap();
    // Not profiles: a session's state, a stray file, a temporary file.
    fs::write(t.path().join("vault/profiles/README"), b"x").unwrap();
    let names: Vec<String> = v
        .list_profiles()
        .unwrap()
        .into_iter()
        .map(|i: SavedInfo| match i.key {
            StateKey::Profile(n) => n,
            k => panic!("not a profile: {k}"),
        })
        .collect();
    assert_eq!(names, vec!["Beta.2", "aa", "mid", "zeta"]);
    let infos = v.list_profiles().unwrap();
    let mid = infos.iter().find(|i| i.key == profile("mid")).unwrap();
    assert!(mid.stored_bytes > 0 && mid.files > 0);
    assert!(mid.updated_at > time::OffsetDateTime::now_utc() - time::Duration::minutes(5));
}

#[test]
fn meta_reads_the_metadata_and_missing_states_are_none() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    make_user_data(&ud);
    let v = Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap();
    assert!(v.meta(&profile("p")).unwrap().is_none());
    // Many cookies: the metadata spans several chunks.
    let mut meta = sample_meta();
    meta.cookies = (0..2000)
        .map(|i| json!({"name": format!("c{i}"), "value": hex(&random(40)), "domain": ".example.com", "path": "/"}))
        .collect();
    v.save(&profile("p"), &ud, &meta).unwrap();
    assert_eq!(v.meta(&profile("p")).unwrap().unwrap(), meta);
    let s = StateKey::Session("sess_1".into());
    assert!(v.meta(&s).unwrap().is_none());
    assert!(v.info(&s).is_none());
}

#[test]
fn names_are_checked_and_restore_refuses_an_existing_directory() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    write(&ud.join("f"), b"f");
    let v = Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap();
    for bad in ["../escape", ".hidden", "-x", "a/b", "", &"x".repeat(65)] {
        assert!(check_profile_name(bad).is_err());
        assert!(
            matches!(
                v.save(&profile(bad), &ud, &StateMeta::default()),
                Err(VaultError::InvalidName(_))
            ),
            "{bad:?}"
        );
        assert!(matches!(
            v.restore(&profile(bad), &t.path().join("x")),
            Err(VaultError::InvalidName(_))
        ));
        assert!(v.info(&profile(bad)).is_none());
        assert!(v.delete(&profile(bad)).is_err());
    }
    assert!(matches!(
        v.save(
            &StateKey::Session("../x".into()),
            &ud,
            &StateMeta::default()
        ),
        Err(VaultError::InvalidName(_))
    ));
    assert!(!t.path().join("escape.lsstate").exists());

    v.save(&profile("p"), &ud, &StateMeta::default()).unwrap();
    let existing = t.path().join("existing");
    write(&existing.join("keep"), b"keep");
    assert!(matches!(
        v.restore(&profile("p"), &existing),
        Err(VaultError::Io(_))
    ));
    assert_eq!(
        fs::read(existing.join("keep")).unwrap(),
        b"keep",
        "an existing directory is left alone"
    );
    // Saving something that is not a directory.
    assert!(matches!(
        v.save(&profile("p"), &ud.join("f"), &StateMeta::default()),
        Err(VaultError::Io(_))
    ));
    let link = t.path().join("link-to-ud");
    symlink(&ud, &link).unwrap();
    assert!(matches!(
        v.save(&profile("p"), &link, &StateMeta::default()),
        Err(VaultError::Io(_))
    ));
}

#[test]
fn open_removes_leftover_temporary_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vault");
    let v = Vault::open(&dir, MASTER, 200 * MIB).unwrap();
    let ud = t.path().join("ud");
    write(&ud.join("f"), b"f");
    v.save(&profile("p"), &ud, &StateMeta::default()).unwrap();
    drop(v);
    fs::write(dir.join("profiles/.tmp-0123.lsstate"), b"half").unwrap();
    fs::write(dir.join("sessions/.tmp-abcd.lsstate"), b"half").unwrap();
    fs::create_dir_all(dir.join(".tmp-unpack/x")).unwrap();
    let v = Vault::open(&dir, MASTER, 200 * MIB).unwrap();
    assert!(!dir.join("profiles/.tmp-0123.lsstate").exists());
    assert!(!dir.join("sessions/.tmp-abcd.lsstate").exists());
    assert!(!dir.join(".tmp-unpack").exists());
    assert!(v.info(&profile("p")).is_some(), "saved states are kept");
}

#[test]
fn concurrent_saves_of_one_key_leave_a_complete_state() {
    let t = tempfile::tempdir().unwrap();
    let v = std::sync::Arc::new(Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap());
    let mut handles = Vec::new();
    for i in 0..4u8 {
        let ud = t.path().join(format!("ud{i}"));
        write(&ud.join("f"), &vec![i; 100_000]);
        let v = v.clone();
        handles.push(std::thread::spawn(move || {
            for _ in 0..3 {
                v.save(
                    &profile("p"),
                    &ud,
                    &StateMeta {
                        tabs: vec![format!("tab{i}")],
                        ..Default::default()
                    },
                )
                .unwrap();
                v.update_meta(&profile("p"), |m| m.cookies.push(json!({"n": i})))
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let into = t.path().join("into");
    let meta = v.restore(&profile("p"), &into).unwrap().unwrap();
    let i: u8 = meta.tabs[0].strip_prefix("tab").unwrap().parse().unwrap();
    assert_eq!(
        fs::read(into.join("f")).unwrap(),
        vec![i; 100_000],
        "files and meta from the same save"
    );
    // Each save starts with no cookies; the updates that ran after the last save added theirs.
    assert!(
        !meta.cookies.is_empty() && meta.cookies.len() <= 4,
        "{}",
        meta.cookies.len()
    );
    assert_no_temp_files(&t.path().join("vault"));
}

#[test]
fn a_20_mib_tree_saves_and_restores() {
    let t = tempfile::tempdir().unwrap();
    let ud = t.path().join("ud");
    let mut total = 0usize;
    for i in 0..20 {
        let data = if i % 2 == 0 {
            random(MIB as usize)
        } else {
            let mut d = Vec::with_capacity(MIB as usize);
            while d.len() < MIB as usize {
                write!(d, "row {} of table {i}; ", d.len()).unwrap();
            }
            d.truncate(MIB as usize);
            d
        };
        total += data.len();
        write(
            &ud.join(format!("Default/IndexedDB/db{}/{i}.ldb", i % 3)),
            &data,
        );
    }
    let v = Vault::open(&t.path().join("vault"), MASTER, 200 * MIB).unwrap();
    let info = v.save(&profile("big"), &ud, &StateMeta::default()).unwrap();
    assert_eq!(info.unpacked_bytes, total as u64);
    assert_eq!(info.files, 20);
    assert!(
        info.stored_bytes < total as u64,
        "the text half compresses: {}",
        info.stored_bytes
    );
    let into = t.path().join("into");
    v.restore(&profile("big"), &into).unwrap().unwrap();
    assert!(snapshot(&into) == snapshot(&ud));
}
