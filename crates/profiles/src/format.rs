//! The `.lsstate` file format: a clear header, then the payload encrypted with
//! XChaCha20-Poly1305 in the STREAM construction (big-endian 32-bit counter + last-block
//! flag), in chunks of [`CHUNK`] bytes of plaintext.
//!
//! ```text
//! offset size
//!      0    8  magic "LSSTATE\0"
//!      8    2  format version, u16 LE (1)
//!     10    2  flags, u16 LE (0)
//!     12    8  unpacked bytes (sum of the saved files' sizes), u64 LE
//!     20    8  number of saved files, u64 LE
//!     28   24  nonce of the key wrap
//!     52   48  the data key wrapped by the master key (32 bytes + 16 bytes tag)
//!    100   19  STREAM nonce prefix
//!    119    1  zero
//!    120       encrypted chunks: 64 KiB + 16 bytes each, the last one shorter or equal
//! ```
//!
//! The key wrap's associated data is `WRAP_TAG || "profile NAME" / "session ID" || 0 ||
//! header[0..28] || STREAM nonce prefix`, every chunk's is `CHUNK_TAG || the same key
//! string || 0 || the whole header`: a changed header byte, a file moved to another
//! key's name, a wrong master key, a changed, dropped, reordered or appended chunk and a
//! truncation (the last-chunk flag) all fail authentication.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

pub(crate) const MAGIC: &[u8; 8] = b"LSSTATE\0";
pub(crate) const VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 120;
/// Plaintext bytes per encrypted chunk.
pub(crate) const CHUNK: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const STREAM_NONCE_LEN: usize = 19;
const WRAP_TAG: &[u8] = b"livesession saved state v1: data key\0";
const CHUNK_TAG: &[u8] = b"livesession saved state v1: payload\0";

pub(crate) type DataKey = Zeroizing<[u8; 32]>;

pub(crate) fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| io::Error::other("the system random source failed"))?;
    Ok(b)
}

#[derive(Clone)]
pub(crate) struct Header {
    pub unpacked_bytes: u64,
    pub files: u64,
    wrap_nonce: [u8; 24],
    wrapped_key: [u8; 48],
    stream_nonce: [u8; STREAM_NONCE_LEN],
}

impl Header {
    /// A header for a new version: draws a fresh data key and nonces, wraps the data key
    /// with the master key, bound to `binding` (the state key's canonical string).
    pub fn new(
        master: &[u8; 32],
        binding: &str,
        unpacked_bytes: u64,
        files: u64,
    ) -> io::Result<(Header, DataKey)> {
        let data_key: DataKey = Zeroizing::new(random_bytes::<32>()?);
        let mut h = Header {
            unpacked_bytes,
            files,
            wrap_nonce: random_bytes()?,
            wrapped_key: [0; 48],
            stream_nonce: random_bytes()?,
        };
        let aad = h.wrap_aad(binding);
        let wrapped = XChaCha20Poly1305::new(&Key::from(*master))
            .encrypt(
                &XNonce::from(h.wrap_nonce),
                Payload {
                    msg: &data_key[..],
                    aad: &aad,
                },
            )
            .map_err(|_| io::Error::other("wrapping the data key failed"))?;
        h.wrapped_key.copy_from_slice(&wrapped);
        Ok((h, data_key))
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        // 10..12: flags, zero
        b[12..20].copy_from_slice(&self.unpacked_bytes.to_le_bytes());
        b[20..28].copy_from_slice(&self.files.to_le_bytes());
        b[28..52].copy_from_slice(&self.wrap_nonce);
        b[52..100].copy_from_slice(&self.wrapped_key);
        b[100..119].copy_from_slice(&self.stream_nonce);
        b
    }

    /// Parses the clear header (nothing is authenticated yet: see [`Header::unwrap_key`]).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, &'static str> {
        if &b[0..8] != MAGIC {
            return Err("not a saved state (bad magic)");
        }
        if u16::from_le_bytes([b[8], b[9]]) != VERSION {
            return Err("unknown format version");
        }
        if b[10..12] != [0, 0] || b[119] != 0 {
            return Err("unknown header flags");
        }
        let mut h = Header {
            unpacked_bytes: u64::from_le_bytes(b[12..20].try_into().expect("8 bytes")),
            files: u64::from_le_bytes(b[20..28].try_into().expect("8 bytes")),
            wrap_nonce: [0; 24],
            wrapped_key: [0; 48],
            stream_nonce: [0; STREAM_NONCE_LEN],
        };
        h.wrap_nonce.copy_from_slice(&b[28..52]);
        h.wrapped_key.copy_from_slice(&b[52..100]);
        h.stream_nonce.copy_from_slice(&b[100..119]);
        Ok(h)
    }

    pub fn read_from(r: &mut impl Read) -> Result<Header, Fault> {
        let mut b = [0u8; HEADER_LEN];
        match r.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Fault::Corrupt("truncated header"));
            }
            Err(e) => return Err(Fault::from_io(&e)),
        }
        Header::decode(&b).map_err(Fault::Corrupt)
    }

    fn wrap_aad(&self, binding: &str) -> Vec<u8> {
        let enc = self.encode();
        let mut aad = Vec::with_capacity(WRAP_TAG.len() + binding.len() + 1 + 28 + 19);
        aad.extend_from_slice(WRAP_TAG);
        aad.extend_from_slice(binding.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&enc[0..28]);
        aad.extend_from_slice(&self.stream_nonce);
        aad
    }

    fn chunk_aad(&self, binding: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(CHUNK_TAG.len() + binding.len() + 1 + HEADER_LEN);
        aad.extend_from_slice(CHUNK_TAG);
        aad.extend_from_slice(binding.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&self.encode());
        aad
    }

    /// Unwraps the data key; fails when the master key is not the one it was written
    /// with, when the file was written for another key, or when the header was changed.
    pub fn unwrap_key(&self, master: &[u8; 32], binding: &str) -> Result<DataKey, Fault> {
        let aad = self.wrap_aad(binding);
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(&Key::from(*master))
                .decrypt(
                    &XNonce::from(self.wrap_nonce),
                    Payload {
                        msg: &self.wrapped_key,
                        aad: &aad,
                    },
                )
                .map_err(|_| {
                    Fault::Corrupt(
                        "the data key does not open (another master key, a file written \
                         for another name, or a changed header)",
                    )
                })?,
        );
        let mut k: DataKey = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(Fault::Corrupt("bad data key length"));
        }
        k.copy_from_slice(&plain);
        Ok(k)
    }

    pub fn encryptor<W: Write>(
        &self,
        data_key: &DataKey,
        binding: &str,
        inner: W,
    ) -> EncryptWriter<W> {
        EncryptWriter {
            inner,
            enc: Some(EncryptorBE32::new(
                &Key::from(**data_key),
                &self.stream_nonce.into(),
            )),
            aad: self.chunk_aad(binding),
            buf: Vec::with_capacity(CHUNK + TAG_LEN),
        }
    }

    pub fn decryptor<R: Read>(
        &self,
        data_key: &DataKey,
        binding: &str,
        inner: R,
        fault: FaultCell,
    ) -> DecryptReader<R> {
        DecryptReader {
            inner,
            dec: Some(DecryptorBE32::new(
                &Key::from(**data_key),
                &self.stream_nonce.into(),
            )),
            aad: self.chunk_aad(binding),
            buf: Vec::with_capacity(CHUNK + TAG_LEN + 1),
            pos: 0,
            carry: None,
            done: false,
            fault,
        }
    }
}

/// Why reading a saved state failed, recorded where it happened (the readers and writers
/// below), because the error travels through flate2 and tar before it reaches us.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    Corrupt(&'static str),
    /// An I/O error of the file system: kind and OS error code (io::Error is not Clone).
    Io(io::ErrorKind, Option<i32>),
}

impl Fault {
    pub fn from_io(e: &io::Error) -> Fault {
        Fault::Io(e.kind(), e.raw_os_error())
    }
}

pub(crate) type FaultCell = Rc<RefCell<Option<Fault>>>;

pub(crate) fn io_error(kind: io::ErrorKind, code: Option<i32>) -> io::Error {
    match code {
        Some(c) => io::Error::from_raw_os_error(c),
        None => io::Error::new(kind, "I/O error"),
    }
}

fn corrupt_io(fault: &FaultCell, why: &'static str) -> io::Error {
    fault.borrow_mut().get_or_insert(Fault::Corrupt(why));
    io::Error::new(
        io::ErrorKind::InvalidData,
        "saved state failed authentication",
    )
}

/// Encrypts everything written to it, chunk by chunk; [`EncryptWriter::finish`] writes the
/// last chunk (possibly empty) and must be called, else the stream reads as truncated.
pub(crate) struct EncryptWriter<W: Write> {
    inner: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    buf: Vec<u8>,
}

impl<W: Write> EncryptWriter<W> {
    pub fn finish(mut self) -> io::Result<W> {
        let enc = self
            .enc
            .take()
            .ok_or_else(|| io::Error::other("stream already finished"))?;
        enc.encrypt_last_in_place(&self.aad, &mut self.buf)
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.buf.len() == CHUNK {
            // A full chunk followed by more data: it is not the last one.
            let enc = self
                .enc
                .as_mut()
                .ok_or_else(|| io::Error::other("stream already finished"))?;
            enc.encrypt_next_in_place(&self.aad, &mut self.buf)
                .map_err(|_| io::Error::other("encryption failed (stream too long)"))?;
            let r = self.inner.write_all(&self.buf);
            self.buf.clear();
            r?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts and authenticates chunk by chunk; returns end of file only after the last
/// chunk (the one flagged last) authenticated, so a truncated stream is an error.
pub(crate) struct DecryptReader<R: Read> {
    inner: R,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    buf: Vec<u8>,
    pos: usize,
    /// One byte read ahead to know whether a full chunk is the last one.
    carry: Option<u8>,
    done: bool,
    fault: FaultCell,
}

impl<R: Read> DecryptReader<R> {
    /// True once the last chunk authenticated.
    pub fn finished(&self) -> bool {
        self.done
    }

    fn fill(&mut self) -> io::Result<()> {
        const WANT: usize = CHUNK + TAG_LEN + 1;
        self.buf.clear();
        self.buf.resize(WANT, 0);
        self.pos = 0;
        let mut filled = 0;
        if let Some(b) = self.carry.take() {
            self.buf[0] = b;
            filled = 1;
        }
        while filled < WANT {
            match self.inner.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.clear();
                    self.fault.borrow_mut().get_or_insert(Fault::from_io(&e));
                    return Err(e);
                }
            }
        }
        self.buf.truncate(filled);
        if filled == WANT {
            self.carry = self.buf.pop();
            let dec = self
                .dec
                .as_mut()
                .ok_or_else(|| corrupt_io(&self.fault, "data after the end"))?;
            if dec.decrypt_next_in_place(&self.aad, &mut self.buf).is_err() {
                self.buf.clear();
                return Err(corrupt_io(&self.fault, "a chunk failed authentication"));
            }
        } else {
            if filled < TAG_LEN {
                self.buf.clear();
                return Err(corrupt_io(&self.fault, "truncated"));
            }
            let dec = self
                .dec
                .take()
                .ok_or_else(|| corrupt_io(&self.fault, "data after the end"))?;
            if dec.decrypt_last_in_place(&self.aad, &mut self.buf).is_err() {
                self.buf.clear();
                return Err(corrupt_io(
                    &self.fault,
                    "the last chunk failed authentication (truncated or changed)",
                ));
            }
            self.done = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Drop for DecryptReader<R> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

/// Records the error of the writer below it (the output file), so a failed write (the
/// disk is full) can be told apart from a bad input stream.
pub(crate) struct RecordingWriter<W: Write> {
    pub inner: W,
    pub fault: FaultCell,
}

impl<W: Write> Write for RecordingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.inner.write(data).inspect_err(|e| {
            self.fault.borrow_mut().get_or_insert(Fault::from_io(e));
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            self.fault.borrow_mut().get_or_insert(Fault::from_io(e));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let master = [7u8; 32];
        let (h, k) = Header::new(&master, "profile a", 1, 2).unwrap();
        let mut w = h.encryptor(&k, "profile a", Vec::new());
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        // write in odd pieces
        for piece in data.chunks(7777) {
            w.write_all(piece).unwrap();
        }
        let ct = w.finish().unwrap();
        let chunks = len.div_ceil(CHUNK).max(1);
        assert_eq!(ct.len(), len + chunks * TAG_LEN, "len {len}");
        let h2 = Header::decode(&h.encode()).unwrap();
        let k2 = h2.unwrap_key(&master, "profile a").unwrap();
        let fault = FaultCell::default();
        let mut r = h2.decryptor(&k2, "profile a", &ct[..], fault.clone());
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert!(r.finished());
        assert_eq!(back, data);
        // every truncation fails
        for cut in [1usize, TAG_LEN, ct.len() / 2] {
            if cut > ct.len() {
                continue;
            }
            let fault = FaultCell::default();
            let mut r = h2.decryptor(&k2, "profile a", &ct[..ct.len() - cut], fault.clone());
            assert!(
                r.read_to_end(&mut Vec::new()).is_err(),
                "cut {cut} of {len}"
            );
            assert!(matches!(*fault.borrow(), Some(Fault::Corrupt(_))));
        }
        assert!(h2.unwrap_key(&master, "profile b").is_err());
        assert!(h2.unwrap_key(&[8u8; 32], "profile a").is_err());
    }

    #[test]
    fn stream_roundtrip_at_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5] {
            roundtrip(len);
        }
    }
}
