//! Retention: a recording not written to for `--recording-retention-hours` is deleted
//! (a recording being written is kept, however old its last write). Runs at start-up and
//! then every `sweep_every`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{FILE_SUFFIX, Recordings};

/// A leftover of a resume that did not finish (`format::Writer::resume`).
const TMP_SUFFIX: &str = ".lsrec.gz.tmp";

pub(super) async fn sweep(recordings: &Recordings) {
    let Some(retention) = recordings.retention() else {
        return;
    };
    let dir = recordings.dir().to_owned();
    let listed =
        tokio::task::spawn_blocking(move || old_files(&dir, retention, SystemTime::now())).await;
    let old = match listed {
        Ok(Ok(old)) => old,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not list the recordings for the retention sweep");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "the retention sweep failed");
            return;
        }
    };
    for (id, path) in old {
        // Checked just before the delete: a recorder that started since the listing wins.
        if recordings.is_recording(&id) {
            continue;
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                tracing::info!(session_id = %id, "recording deleted: older than the retention period")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "could not delete an old recording")
            }
        }
    }
}

/// Recordings (and resume leftovers) in `dir` last modified more than `retention` before
/// `now`, with their session ids.
fn old_files(
    dir: &std::path::Path,
    retention: Duration,
    now: SystemTime,
) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut old = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name
            .strip_suffix(FILE_SUFFIX)
            .or_else(|| name.strip_suffix(TMP_SUFFIX))
        else {
            continue;
        };
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age > retention {
            old.push((id.to_owned(), entry.path()));
        }
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recordings_past_the_retention_period_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        for (name, age) in [
            ("aa.lsrec.gz", 8 * day),
            ("bb.lsrec.gz", day),
            ("cc.txt", 30 * day),
            ("dd.lsrec.gz.tmp", 9 * day),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(now - age)
                .unwrap();
        }
        let mut old = old_files(dir.path(), 7 * day, now).unwrap();
        old.sort();
        let ids: Vec<&str> = old.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["aa", "dd"]);
    }
}
