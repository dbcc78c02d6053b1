//! The server→client half of RFB for view-only connections: the desktop's clipboard is
//! withheld. Every ServerCutText message (type 3, in its classic form and in the extended
//! clipboard's, which announces itself with a negative length) is dropped; every other byte
//! is forwarded unchanged and in order.
//!
//! The desktop's stream is framed with [`Framing`] after the handshake (ProtocolVersion,
//! the security types, SecurityResult, ServerInit), which passes through as it is. Pixel
//! data streams through: only a message's type byte and the fixed headers of its parts are
//! looked at, nothing is held longer than one read. A stream the framing cannot follow (an
//! encoding it does not know) is an error: the connection must be closed rather than risk
//! passing a clipboard on unframed.
//!
//! Interactive connections do not run this: they may have the clipboard, and the framing
//! costs a parse of every rectangle header.

use crate::rfb_wire::Framing;

/// The ServerCutText message type.
const SERVER_CUT_TEXT: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// "RFB 003.008\n".
    Version,
    /// The count of security types (0: a reason follows, and the server closes).
    SecurityCount,
    SecurityTypes(u8),
    SecurityResult,
    /// ServerInit's fixed 20 bytes and its name length.
    ServerInit,
    Name(u32),
    /// The server refused: what follows is a reason, then the end of the stream.
    Refused,
    Done,
}

/// Drops the desktop's clipboard from what a view-only connection receives.
#[derive(Debug)]
pub struct ClipboardWithholder {
    handshake: Handshake,
    head: Vec<u8>,
    framing: Framing,
    /// Whether the message being passed is a ServerCutText.
    dropping: bool,
    dropped: u64,
}

impl Default for ClipboardWithholder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipboardWithholder {
    pub fn new() -> Self {
        Self {
            handshake: Handshake::Version,
            head: Vec::with_capacity(24),
            framing: Framing::new(),
            dropping: false,
            dropped: 0,
        }
    }

    /// ServerCutText messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends to `out` what of `input` the client may see.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() && self.handshake != Handshake::Done {
            if self.handshake == Handshake::Refused {
                out.extend_from_slice(input);
                return Ok(());
            }
            let need = match self.handshake {
                Handshake::Version => 12,
                Handshake::SecurityCount => 1,
                Handshake::SecurityTypes(n) => usize::from(n),
                Handshake::SecurityResult => 4,
                Handshake::ServerInit => 24,
                Handshake::Name(n) => n as usize,
                Handshake::Refused | Handshake::Done => 0,
            };
            // The name is passed on as it comes; the other parts are small.
            if let Handshake::Name(left) = self.handshake {
                let n = (left as usize).min(input.len());
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
                let left = left - n as u32;
                self.handshake = if left == 0 {
                    Handshake::Done
                } else {
                    Handshake::Name(left)
                };
                continue;
            }
            let n = (need - self.head.len()).min(input.len());
            self.head.extend_from_slice(&input[..n]);
            out.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.head.len() < need {
                return Ok(());
            }
            let head = std::mem::take(&mut self.head);
            self.handshake = match self.handshake {
                Handshake::Version => Handshake::SecurityCount,
                Handshake::SecurityCount if head[0] == 0 => Handshake::Refused,
                Handshake::SecurityCount => Handshake::SecurityTypes(head[0]),
                Handshake::SecurityTypes(_) => Handshake::SecurityResult,
                Handshake::SecurityResult if head != [0, 0, 0, 0] => Handshake::Refused,
                Handshake::SecurityResult => Handshake::ServerInit,
                Handshake::ServerInit => {
                    let len = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
                    if len > 4096 {
                        return Err(format!("desktop name of {len} bytes"));
                    }
                    if len == 0 {
                        Handshake::Done
                    } else {
                        Handshake::Name(len)
                    }
                }
                other => other,
            };
        }
        let mut events = Vec::new();
        while !input.is_empty() {
            if self.framing.at_message_start() {
                self.dropping = input[0] == SERVER_CUT_TEXT;
                if self.dropping {
                    self.dropped += 1;
                }
            }
            let n = self.framing.feed_one_message(input, &mut events)?;
            events.clear();
            if !self.dropping {
                out.extend_from_slice(&input[..n]);
            }
            input = &input[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake() -> Vec<u8> {
        let mut v = b"RFB 003.008\n".to_vec();
        v.extend_from_slice(&[1, 1]); // one security type: None
        v.extend_from_slice(&[0, 0, 0, 0]); // SecurityResult ok
        v.extend_from_slice(&[5, 0, 2, 208]); // 1280x720
        v.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        v.extend_from_slice(&11u32.to_be_bytes());
        v.extend_from_slice(b"livesession");
        v
    }

    fn cut_text(text: &[u8]) -> Vec<u8> {
        let mut v = vec![3, 0, 0, 0];
        v.extend_from_slice(&(text.len() as u32).to_be_bytes());
        v.extend_from_slice(text);
        v
    }

    fn extended_cut_text(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![3, 0, 0, 0];
        v.extend_from_slice(&(-(payload.len() as i32)).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A framebuffer update of one Raw 2x2 rectangle whose pixels spell the clipboard's
    /// type byte and length, so a filter that looked inside pixel data would cut it.
    fn raw_update() -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1];
        for n in [0u16, 0, 2, 2] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 4, 3, 3, 3, 3, 0, 0, 0, 0]);
        v
    }

    fn bell() -> Vec<u8> {
        vec![2]
    }

    fn stream() -> (Vec<u8>, Vec<u8>) {
        let parts: Vec<(Vec<u8>, bool)> = vec![
            (handshake(), true),
            (raw_update(), true),
            (cut_text(b"secret password"), false),
            (bell(), true),
            (extended_cut_text(&[0, 0, 0, 1, 1, 2, 3, 4, 5]), false),
            (raw_update(), true),
            (cut_text(b""), false),
            (bell(), true),
        ];
        let all = parts.iter().flat_map(|(p, _)| p.clone()).collect();
        let kept = parts
            .iter()
            .filter(|(_, k)| *k)
            .flat_map(|(p, _)| p.clone())
            .collect();
        (all, kept)
    }

    #[test]
    fn every_cut_text_is_dropped_and_everything_else_passes_unchanged() {
        let (all, kept) = stream();
        let mut filter = ClipboardWithholder::new();
        let mut out = Vec::new();
        filter.feed(&all, &mut out).unwrap();
        assert_eq!(out, kept);
        assert_eq!(filter.dropped(), 3);
    }

    #[test]
    fn the_output_does_not_depend_on_how_the_input_is_split() {
        let (all, kept) = stream();
        for size in 1..=all.len() {
            let mut filter = ClipboardWithholder::new();
            let mut out = Vec::new();
            for chunk in all.chunks(size) {
                filter.feed(chunk, &mut out).unwrap();
            }
            assert_eq!(out, kept, "chunks of {size}");
        }
    }

    #[test]
    fn a_refused_handshake_passes_through() {
        let mut v = b"RFB 003.008\n".to_vec();
        v.push(0);
        v.extend_from_slice(&4u32.to_be_bytes());
        v.extend_from_slice(b"nope");
        let mut out = Vec::new();
        ClipboardWithholder::new().feed(&v, &mut out).unwrap();
        assert_eq!(out, v);
    }

    #[test]
    fn an_unknown_message_is_an_error() {
        let mut v = handshake();
        v.push(77);
        let mut out = Vec::new();
        assert!(ClipboardWithholder::new().feed(&v, &mut out).is_err());
    }
}
