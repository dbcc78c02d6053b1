//! The recording file, `<session id>.lsrec.gz` (docs/recordings.md): one gzip stream of
//!
//! ```text
//! header  "LSREC" (5 bytes), version (u8, 1), 2 zero bytes, started_at (u64 BE, Unix ms)
//! record  kind (u8), t_ms (u64 BE, ms since started_at), len (u32 BE), len bytes
//! ```
//!
//! Kinds: [`SEGMENT`] (a new RFB connection to the desktop begins; no bytes), [`DATA`]
//! (bytes the desktop's VNC server sent, as a client receives them), [`END`] (the
//! recording is complete; the bytes say why, in UTF-8). Each segment's DATA records begin
//! with the RFB greeting, so a player starts a fresh RFB client at each segment.
//!
//! The writer flushes the compressor (a zlib sync flush) about once a second, so a
//! recording still being written can be decompressed up to its last flush.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

pub const MAGIC: &[u8; 5] = b"LSREC";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 13;

pub const SEGMENT: u8 = 1;
pub const DATA: u8 = 2;
pub const END: u8 = 3;

/// How often buffered output is flushed to the file (readable up to there).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub fn header(started_at_ms: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..5].copy_from_slice(MAGIC);
    h[5] = VERSION;
    h[8..].copy_from_slice(&started_at_ms.to_be_bytes());
    h
}

pub fn record_header(kind: u8, t_ms: u64, len: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0] = kind;
    h[1..9].copy_from_slice(&t_ms.to_be_bytes());
    h[9..].copy_from_slice(&len.to_be_bytes());
    h
}

/// The recording's start (Unix ms) from its header.
pub fn parse_header(h: &[u8]) -> io::Result<u64> {
    if h.len() < HEADER_LEN || &h[..5] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a livesession recording",
        ));
    }
    if h[5] != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("recording version {} is not supported", h[5]),
        ));
    }
    Ok(u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")))
}

/// Counts the compressed bytes that reach the file: the size bound applies to them.
struct CountingFile {
    file: File,
    written: u64,
}

impl Write for CountingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes one recording. Blocking: the recorder runs it on a blocking thread.
pub struct Writer {
    out: GzEncoder<CountingFile>,
    started_at_ms: u64,
    last_flush: Instant,
    dirty: bool,
}

impl Writer {
    /// A new recording at `path` (replacing any file there), started at `started_at_ms`.
    pub fn create(path: &Path, started_at_ms: u64) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // The session's screen: readable by this server's user only.
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let mut writer = Self {
            out: GzEncoder::new(CountingFile { file, written: 0 }, Compression::new(6)),
            started_at_ms,
            last_flush: Instant::now(),
            dirty: true,
        };
        writer.out.write_all(&header(started_at_ms))?;
        writer.flush()?;
        Ok(writer)
    }

    /// Continues the recording at `path` after a restart of the server: its complete
    /// records are copied into a fresh gzip stream (a file with two gzip members could
    /// not be read by browsers' DecompressionStream), which replaces it. An ended
    /// recording (an END record) is left as it is.
    pub fn resume(path: &Path) -> io::Result<Resume> {
        let mut input = BufReader::new(GzDecoder::new(BufReader::new(File::open(path)?)));
        let mut head = [0u8; HEADER_LEN];
        let started_at_ms = match read_full(&mut input, &mut head) {
            Ok(HEADER_LEN) => match parse_header(&head) {
                Ok(started) => started,
                Err(_) => return Ok(Resume::NotARecording),
            },
            _ => return Ok(Resume::NotARecording),
        };
        let tmp = path.with_extension("gz.tmp");
        let mut writer = Self::create(&tmp, started_at_ms)?;
        let mut payload = Vec::new();
        loop {
            let mut rh = [0u8; RECORD_HEADER_LEN];
            if read_full(&mut input, &mut rh)? < RECORD_HEADER_LEN {
                break;
            }
            let len = u32::from_be_bytes(rh[9..].try_into().expect("4 bytes")) as usize;
            payload.resize(len, 0);
            if read_full(&mut input, &mut payload)? < len {
                break;
            }
            if rh[0] == END {
                drop(writer);
                let _ = std::fs::remove_file(&tmp);
                return Ok(Resume::Ended);
            }
            writer.out.write_all(&rh)?;
            writer.out.write_all(&payload)?;
        }
        writer.flush()?;
        std::fs::rename(&tmp, path)?;
        Ok(Resume::Writer(writer))
    }

    /// Milliseconds since the recording started, by the wall clock (gaps are kept).
    pub fn t_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.started_at_ms)
    }

    pub fn write_record(&mut self, kind: u8, t_ms: u64, payload: &[u8]) -> io::Result<()> {
        self.out
            .write_all(&record_header(kind, t_ms, payload.len() as u32))?;
        self.out.write_all(payload)?;
        self.dirty = true;
        Ok(())
    }

    /// Compressed bytes in the file so far.
    pub fn size(&self) -> u64 {
        self.out.get_ref().written
    }

    /// Flushes if the last flush is [`FLUSH_EVERY`] old.
    pub fn flush_if_due(&mut self) -> io::Result<()> {
        if self.dirty && self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// A sync flush: everything written so far can be decompressed from the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.last_flush = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Ends the gzip stream (its trailer); the file stays a valid recording.
    pub fn finish(self) -> io::Result<()> {
        let mut file = self.out.finish()?;
        file.file.flush()
    }
}

/// What [`Writer::resume`] found.
pub enum Resume {
    Writer(Writer),
    /// The recording is complete; nothing is added to it.
    Ended,
    /// The file is not a recording (or not a readable one).
    NotARecording,
}

/// Reads until `buf` is full or the input ends (a truncated stream counts as an end).
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A recording cut off mid-write (the server was killed) ends at its last flush.
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof
                    || e.kind() == io::ErrorKind::InvalidInput =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of a recording file: (kind, t_ms, payload).
    fn records(path: &Path) -> (u64, Vec<(u8, u64, Vec<u8>)>) {
        let mut input = GzDecoder::new(File::open(path).unwrap());
        let mut bytes = Vec::new();
        let _ = input.read_to_end(&mut bytes);
        let started = parse_header(&bytes).unwrap();
        let mut at = HEADER_LEN;
        let mut out = Vec::new();
        while at + RECORD_HEADER_LEN <= bytes.len() {
            let h = &bytes[at..at + RECORD_HEADER_LEN];
            let len = u32::from_be_bytes(h[9..13].try_into().unwrap()) as usize;
            if at + RECORD_HEADER_LEN + len > bytes.len() {
                break;
            }
            let t = u64::from_be_bytes(h[1..9].try_into().unwrap());
            out.push((
                h[0],
                t,
                bytes[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len].to_vec(),
            ));
            at += RECORD_HEADER_LEN + len;
        }
        (started, out)
    }

    #[test]
    fn a_flushed_recording_reads_back_before_it_is_finished_and_resumes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.lsrec.gz");
        let mut w = Writer::create(&path, 1_000).unwrap();
        w.write_record(SEGMENT, 5, &[]).unwrap();
        w.write_record(DATA, 7, b"RFB 003.008\n").unwrap();
        w.flush().unwrap();
        // Not finished (a crash): what was flushed reads back.
        let (started, seen) = records(&path);
        assert_eq!(started, 1_000);
        assert_eq!(
            seen,
            vec![(SEGMENT, 5, vec![]), (DATA, 7, b"RFB 003.008\n".to_vec())]
        );
        std::mem::forget(w);

        // Resumed: the same records, then more, in one gzip stream.
        let Resume::Writer(mut w) = Writer::resume(&path).unwrap() else {
            panic!("resumable")
        };
        assert_eq!(w.t_ms(1_500), 500);
        w.write_record(SEGMENT, 900, &[]).unwrap();
        w.write_record(END, 950, b"the session ended").unwrap();
        w.finish().unwrap();
        let (_, seen) = records(&path);
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[2], (SEGMENT, 900, vec![]));
        assert_eq!(seen[3].0, END);
        // A complete (ended) recording is not resumed.
        assert!(matches!(Writer::resume(&path).unwrap(), Resume::Ended));
    }

    #[test]
    fn other_files_are_not_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lsrec.gz");
        std::fs::write(&path, b"not gzip at all").unwrap();
        assert!(matches!(
            Writer::resume(&path),
            Ok(Resume::NotARecording) | Err(_)
        ));
        assert!(parse_header(b"LSREC\x02\0\0\0\0\0\0\0\0\0\0").is_err());
    }
}
