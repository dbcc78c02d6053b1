//! A small RFB (VNC) client: enough to check a desktop answers and to read its frames.
//! Used by the readiness probe, `doctor`, tests and benchmarks; viewers use noVNC.
//!
//! It asks for 32-bit true colour (little-endian, red at bit 16) and the Raw encoding only,
//! so every update is plain pixels.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const VERSION_3_8: &[u8; 12] = b"RFB 003.008\n";

/// Reads the server's 12-byte version greeting: proof that a VNC server is listening.
pub async fn read_greeting<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<[u8; 12]> {
    let mut version = [0u8; 12];
    stream.read_exact(&mut version).await?;
    if !version.starts_with(b"RFB ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an RFB server",
        ));
    }
    Ok(version)
}

pub struct RfbClient<S> {
    stream: S,
    pub width: u16,
    pub height: u16,
    pub name: String,
    /// Pixels as little-endian `0x00RRGGBB`, row-major.
    framebuffer: Vec<u32>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl<S: AsyncRead + AsyncWrite + Unpin> RfbClient<S> {
    /// Version 3.8, security type None, shared session, 32-bit true colour, Raw encoding.
    pub async fn handshake(mut stream: S) -> io::Result<Self> {
        read_greeting(&mut stream).await?;
        stream.write_all(VERSION_3_8).await?;
        let count = stream.read_u8().await?;
        if count == 0 {
            let len = stream.read_u32().await? as usize;
            let mut reason = vec![0; len.min(4096)];
            stream.read_exact(&mut reason).await?;
            return Err(invalid(format!(
                "server refused: {}",
                String::from_utf8_lossy(&reason)
            )));
        }
        let mut types = vec![0u8; count as usize];
        stream.read_exact(&mut types).await?;
        if !types.contains(&1) {
            return Err(invalid(format!(
                "server does not offer security type None: {types:?}"
            )));
        }
        stream.write_u8(1).await?;
        if stream.read_u32().await? != 0 {
            return Err(invalid("security handshake failed"));
        }
        stream.write_u8(1).await?; // ClientInit: shared
        let width = stream.read_u16().await?;
        let height = stream.read_u16().await?;
        let mut server_format = [0u8; 16];
        stream.read_exact(&mut server_format).await?;
        let name_len = stream.read_u32().await? as usize;
        let mut name = vec![0u8; name_len.min(4096)];
        stream.read_exact(&mut name).await?;

        // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 8 bits each at 16/8/0.
        let mut msg = vec![
            0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ];
        // SetEncodings: Raw only.
        msg.extend_from_slice(&[2, 0, 0, 1, 0, 0, 0, 0]);
        stream.write_all(&msg).await?;
        Ok(Self {
            stream,
            width,
            height,
            name: String::from_utf8_lossy(&name).into_owned(),
            framebuffer: vec![0; width as usize * height as usize],
        })
    }

    pub async fn request_update(&mut self, incremental: bool) -> io::Result<()> {
        let mut msg = [3u8, incremental as u8, 0, 0, 0, 0, 0, 0, 0, 0];
        msg[6..8].copy_from_slice(&self.width.to_be_bytes());
        msg[8..10].copy_from_slice(&self.height.to_be_bytes());
        self.stream.write_all(&msg).await
    }

    /// Reads server messages until one framebuffer update has been applied. Returns the
    /// number of pixel bytes it carried.
    pub async fn read_update(&mut self) -> io::Result<usize> {
        loop {
            match self.stream.read_u8().await? {
                0 => return self.read_framebuffer_update().await,
                1 => {
                    // SetColourMapEntries: not used in true colour, but skip it if sent.
                    let mut head = [0u8; 5];
                    self.stream.read_exact(&mut head).await?;
                    let n = u16::from_be_bytes([head[3], head[4]]) as usize;
                    let mut skip = vec![0u8; n * 6];
                    self.stream.read_exact(&mut skip).await?;
                }
                2 => {} // Bell
                3 => {
                    let mut pad = [0u8; 3];
                    self.stream.read_exact(&mut pad).await?;
                    let len = self.stream.read_u32().await? as u64;
                    tokio::io::copy(&mut (&mut self.stream).take(len), &mut tokio::io::sink())
                        .await?;
                }
                other => return Err(invalid(format!("unexpected server message type {other}"))),
            }
        }
    }

    async fn read_framebuffer_update(&mut self) -> io::Result<usize> {
        let _pad = self.stream.read_u8().await?;
        let rects = self.stream.read_u16().await?;
        let mut bytes = 0;
        let mut row = Vec::new();
        for _ in 0..rects {
            let x = self.stream.read_u16().await? as usize;
            let y = self.stream.read_u16().await? as usize;
            let w = self.stream.read_u16().await? as usize;
            let h = self.stream.read_u16().await? as usize;
            let encoding = self.stream.read_i32().await?;
            if encoding != 0 {
                return Err(invalid(format!("unexpected encoding {encoding}")));
            }
            if x + w > self.width as usize || y + h > self.height as usize {
                return Err(invalid("rectangle outside the framebuffer"));
            }
            row.resize(w * 4, 0);
            for line in y..y + h {
                self.stream.read_exact(&mut row).await?;
                let start = line * self.width as usize + x;
                for (dst, px) in self.framebuffer[start..start + w]
                    .iter_mut()
                    .zip(row.chunks_exact(4))
                {
                    *dst = u32::from_le_bytes([px[0], px[1], px[2], px[3]]) & 0x00ff_ffff;
                }
            }
            bytes += w * h * 4;
        }
        Ok(bytes)
    }

    /// Share of pixels, 0.0..=1.0, within `tolerance` of `rgb` on every channel.
    pub fn share_of_colour(&self, rgb: (u8, u8, u8), tolerance: u8) -> f64 {
        let close = |a: u8, b: u8| a.abs_diff(b) <= tolerance;
        let hits = self
            .framebuffer
            .iter()
            .filter(|&&v| {
                close((v >> 16) as u8, rgb.0)
                    && close((v >> 8) as u8, rgb.1)
                    && close(v as u8, rgb.2)
            })
            .count();
        hits as f64 / self.framebuffer.len().max(1) as f64
    }

    /// The `n` commonest colours on the screen with their shares, commonest first: what a
    /// test that did not see its colour saw instead.
    pub fn commonest_colours(&self, n: usize) -> Vec<((u8, u8, u8), f64)> {
        let mut counts: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for &v in &self.framebuffer {
            *counts.entry(v & 0x00ff_ffff).or_default() += 1;
        }
        let mut counts: Vec<(u32, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1));
        let total = self.framebuffer.len().max(1) as f64;
        counts
            .into_iter()
            .take(n)
            .map(|(v, c)| (((v >> 16) as u8, (v >> 8) as u8, v as u8), c as f64 / total))
            .collect()
    }

    pub async fn key(&mut self, keysym: u32, down: bool) -> io::Result<()> {
        let mut msg = [4u8, down as u8, 0, 0, 0, 0, 0, 0];
        msg[4..].copy_from_slice(&keysym.to_be_bytes());
        self.stream.write_all(&msg).await
    }

    /// Types ASCII text as key presses (Latin-1 keysyms equal their code points).
    pub async fn type_text(&mut self, text: &str) -> io::Result<()> {
        for c in text.chars() {
            let keysym = if c == '\n' { 0xff0d } else { c as u32 };
            self.key(keysym, true).await?;
            self.key(keysym, false).await?;
        }
        Ok(())
    }

    pub async fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> io::Result<()> {
        let mut msg = [5u8, buttons, 0, 0, 0, 0];
        msg[2..4].copy_from_slice(&x.to_be_bytes());
        msg[4..6].copy_from_slice(&y.to_be_bytes());
        self.stream.write_all(&msg).await
    }

    pub async fn click(&mut self, x: u16, y: u16) -> io::Result<()> {
        self.pointer(x, y, 1).await?;
        self.pointer(x, y, 0).await
    }
}
