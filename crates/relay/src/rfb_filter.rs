//! A streaming filter for the client→server half of RFB (RFC 6143 and the extensions
//! noVNC 1.7 sends), which the VNC proxy runs every viewer's bytes through.
//!
//! It follows the handshake from the client's side (ProtocolVersion, the security type,
//! ClientInit), then frames every client message. A [`Policy::ViewOnly`] connection has
//! its input messages (keys, pointer, clipboard, desktop resize, xvp) dropped; everything
//! else is forwarded byte for byte. Both policies validate: an unknown message type, a
//! security type other than None, or a length over the bounds below is an error, after
//! which the connection must be closed.
//!
//! Why dropping is safe: the server only ever sees the messages the filter forwarded, and
//! every forwarded kind frames itself unambiguously (fixed size, or a count/length in its
//! own header), so the server frames the forwarded stream exactly as the filter did. A
//! dropped message cannot leave a half message behind for the server to misread.
//!
//! Input arrives in arbitrary chunks. Fixed parts of a message (at most
//! [`MAX_BUFFERED`] bytes) are collected before anything of it is forwarded; clipboard
//! payloads are streamed through (or skipped) as they arrive, never held whole. The output
//! does not depend on how the input was chunked.

use std::borrow::Cow;
use std::fmt;

/// Largest ClientCutText payload (either form) accepted; more closes the connection. The
/// desktop's Xvnc takes at most as much (`-MaxCutText`, launcher.sh), and the viewer
/// refuses larger text itself (web/static/clipboard.js): a client that sends more is not
/// the viewer. (A larger text Xvnc had dropped left the remote browser unresponsive.)
pub const MAX_CUT_TEXT: u32 = 256 * 1024;
/// Largest SetEncodings count accepted (noVNC sends about 40).
pub const MAX_ENCODINGS: usize = 1024;
/// Largest ClientFence payload: 64 bytes by the protocol.
pub const MAX_FENCE_PAYLOAD: usize = 64;
/// Largest screen count in a SetDesktopSize (noVNC sends 1).
pub const MAX_SCREENS: usize = 64;
/// The most bytes of one message the filter holds at a time: a SetEncodings at
/// [`MAX_ENCODINGS`].
pub const MAX_BUFFERED: usize = 4 + 4 * MAX_ENCODINGS;

/// The ExtendedMouseButtons pseudo-encoding: once a client announces it, a PointerEvent
/// whose mask has bit 7 set carries one more byte (the higher buttons), as the server
/// reads it.
const PSEUDO_ENCODING_EXTENDED_MOUSE_BUTTONS: i32 = -316;

/// What a connection may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every valid message is forwarded.
    Interactive,
    /// Input messages are dropped; the screen still updates.
    ViewOnly,
}

/// The client messages the filter knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    SetPixelFormat,
    SetEncodings,
    FramebufferUpdateRequest,
    KeyEvent,
    PointerEvent,
    ClientCutText,
    EnableContinuousUpdates,
    ClientFence,
    Xvp,
    SetDesktopSize,
    /// QEMU client message, subtype 0 (extended key event).
    QemuKeyEvent,
}

impl MessageKind {
    pub const ALL: [MessageKind; 11] = [
        MessageKind::SetPixelFormat,
        MessageKind::SetEncodings,
        MessageKind::FramebufferUpdateRequest,
        MessageKind::KeyEvent,
        MessageKind::PointerEvent,
        MessageKind::ClientCutText,
        MessageKind::EnableContinuousUpdates,
        MessageKind::ClientFence,
        MessageKind::Xvp,
        MessageKind::SetDesktopSize,
        MessageKind::QemuKeyEvent,
    ];

    /// The message-type byte.
    pub fn type_byte(self) -> u8 {
        match self {
            MessageKind::SetPixelFormat => 0,
            MessageKind::SetEncodings => 2,
            MessageKind::FramebufferUpdateRequest => 3,
            MessageKind::KeyEvent => 4,
            MessageKind::PointerEvent => 5,
            MessageKind::ClientCutText => 6,
            MessageKind::EnableContinuousUpdates => 150,
            MessageKind::ClientFence => 248,
            MessageKind::Xvp => 250,
            MessageKind::SetDesktopSize => 251,
            MessageKind::QemuKeyEvent => 255,
        }
    }

    fn from_type_byte(byte: u8) -> Option<Self> {
        MessageKind::ALL
            .into_iter()
            .find(|kind| kind.type_byte() == byte)
    }

    /// Whether the message acts on the desktop (input, clipboard, resize, power): what a
    /// view-only connection may not send.
    pub fn is_input(self) -> bool {
        matches!(
            self,
            MessageKind::KeyEvent
                | MessageKind::PointerEvent
                | MessageKind::ClientCutText
                | MessageKind::Xvp
                | MessageKind::SetDesktopSize
                | MessageKind::QemuKeyEvent
        )
    }

    fn index(self) -> usize {
        MessageKind::ALL
            .iter()
            .position(|&k| k == self)
            .expect("every kind is in ALL")
    }
}

/// Why the filter refused the stream. The reason is short, for people, and never quotes
/// the client's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    reason: Cow<'static, str>,
}

impl FilterError {
    fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for FilterError {}

/// Messages forwarded and dropped, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilterStats {
    forwarded: [u64; MessageKind::ALL.len()],
    dropped: [u64; MessageKind::ALL.len()],
}

impl FilterStats {
    pub fn forwarded(&self, kind: MessageKind) -> u64 {
        self.forwarded[kind.index()]
    }

    pub fn dropped(&self, kind: MessageKind) -> u64 {
        self.dropped[kind.index()]
    }

    /// Every message forwarded (the handshake not counted).
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.iter().sum()
    }

    /// Every message dropped.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Key events dropped: KeyEvent and QEMU extended key events.
    pub fn dropped_keys(&self) -> u64 {
        self.dropped(MessageKind::KeyEvent) + self.dropped(MessageKind::QemuKeyEvent)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The 12-byte ProtocolVersion.
    Version,
    /// The security type the client chose (3.7 and 3.8).
    Security,
    /// The 1-byte ClientInit.
    ClientInit,
    /// Client messages; `buf` holds the start of the current one.
    Messages,
    /// The payload of a ClientCutText, streamed through or skipped.
    Payload { remaining: u32, keep: bool },
}

/// How far a message's bytes in `buf` tell its length.
enum Frame {
    /// The header is not complete: read up to this many bytes, then look again.
    Header(usize),
    /// The whole message is this many bytes.
    Whole(usize),
    /// `buf` is the complete header; a payload of this many bytes follows.
    Streamed(u32),
}

/// The filter for one connection. Feed it the client's bytes in order.
#[derive(Debug)]
pub struct RfbClientFilter {
    policy: Policy,
    phase: Phase,
    /// The current unit (version, security byte, message) read so far; never more than
    /// [`MAX_BUFFERED`] bytes.
    buf: Vec<u8>,
    /// How many bytes of the current unit to collect in `buf` before looking at it.
    need: usize,
    /// The client's last SetEncodings listed ExtendedMouseButtons.
    extended_mouse_buttons: bool,
    stats: FilterStats,
    failed: Option<FilterError>,
    /// While set, input is dropped as for a view-only connection: an agent holds control
    /// of the session (`hold_input_while`).
    input_held: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Keys and buttons the forwarded input holds down (for `hold_input_while`).
    keys_down: std::collections::HashSet<u32>,
    buttons_down: u8,
}

/// Keys followed as held down; a client pressing more gets the rest dropped as usual.
const MAX_KEYS_DOWN: usize = 64;

impl RfbClientFilter {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            phase: Phase::Version,
            buf: Vec::with_capacity(32),
            need: 12,
            extended_mouse_buttons: false,
            stats: FilterStats::default(),
            failed: None,
            input_held: None,
            keys_down: Default::default(),
            buttons_down: 0,
        }
    }

    /// Drops input whenever `flag` is set (and forwards it again when it is cleared), for
    /// an interactive connection whose person does not hold control right now.
    pub fn hold_input_while(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.input_held = Some(flag);
        self
    }

    /// The keysym and whether it is a press, of a complete key message.
    fn key_of(&self, kind: MessageKind) -> Option<(u32, bool)> {
        let b = &self.buf;
        match kind {
            MessageKind::KeyEvent => Some((u32::from_be_bytes([b[4], b[5], b[6], b[7]]), b[1] != 0)),
            MessageKind::QemuKeyEvent => Some((u32::from_be_bytes([b[4], b[5], b[6], b[7]]), b[2] != 0 || b[3] != 0)),
            _ => None,
        }
    }

    fn releases_a_forwarded_press(&self, kind: MessageKind) -> bool {
        if let Some((key, down)) = self.key_of(kind) {
            return !down && self.keys_down.contains(&key);
        }
        kind == MessageKind::PointerEvent && self.buttons_down != 0 && self.buf[1] & 0x7f == 0
    }

    /// Keeps track of what forwarded input holds down.
    fn note_forwarded(&mut self, kind: MessageKind) {
        if let Some((key, down)) = self.key_of(kind) {
            if !down {
                self.keys_down.remove(&key);
            } else if self.keys_down.len() < MAX_KEYS_DOWN {
                self.keys_down.insert(key);
            }
        } else if kind == MessageKind::PointerEvent {
            self.buttons_down = self.buf[1] & 0x7f;
        }
    }

    fn input_allowed(&self) -> bool {
        self.policy == Policy::Interactive
            && !self
                .input_held
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn stats(&self) -> &FilterStats {
        &self.stats
    }

    /// Whether the handshake (version, security, ClientInit) is behind.
    pub fn handshake_done(&self) -> bool {
        matches!(self.phase, Phase::Messages | Phase::Payload { .. })
    }

    /// Takes the next bytes from the client and appends what may reach the server to
    /// `out`. After an error every later call returns the same error and appends nothing
    /// more: the connection must be closed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.run(input, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn run(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
        while !input.is_empty() {
            if let Phase::Payload { remaining, keep } = &mut self.phase {
                let n = input.len().min(*remaining as usize);
                if *keep {
                    out.extend_from_slice(&input[..n]);
                }
                *remaining -= n as u32;
                if *remaining == 0 {
                    self.phase = Phase::Messages;
                }
                input = &input[n..];
                continue;
            }
            let n = input.len().min(self.need - self.buf.len());
            self.buf.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.buf.len() == self.need {
                self.step(out)?;
            }
        }
        Ok(())
    }

    /// `buf` holds `need` bytes: act on them.
    fn step(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        match self.phase {
            Phase::Version => {
                let minor = match &self.buf[..] {
                    b"RFB 003.003\n" => 3,
                    b"RFB 003.007\n" => 7,
                    b"RFB 003.008\n" => 8,
                    _ => {
                        return Err(FilterError::new(
                            "not an RFB 3.3, 3.7 or 3.8 ProtocolVersion",
                        ));
                    }
                };
                out.extend_from_slice(&self.buf);
                // In 3.3 the server picks the security type and the client says nothing.
                self.next_unit(if minor == 3 {
                    Phase::ClientInit
                } else {
                    Phase::Security
                });
            }
            Phase::Security => {
                if self.buf[0] != 1 {
                    return Err(FilterError::new(format!(
                        "security type {} is not offered (only None)",
                        self.buf[0]
                    )));
                }
                out.push(1);
                self.next_unit(Phase::ClientInit);
            }
            Phase::ClientInit => {
                // Always shared: no viewer may disconnect the others.
                out.push(1);
                self.next_unit(Phase::Messages);
            }
            Phase::Messages => self.message(out)?,
            Phase::Payload { .. } => unreachable!("payload bytes never reach step"),
        }
        Ok(())
    }

    fn next_unit(&mut self, phase: Phase) {
        self.phase = phase;
        self.buf.clear();
        self.need = 1;
    }

    fn message(&mut self, out: &mut Vec<u8>) -> Result<(), FilterError> {
        let kind = MessageKind::from_type_byte(self.buf[0])
            .ok_or_else(|| FilterError::new(format!("unknown message type {}", self.buf[0])))?;
        let frame = self.frame(kind)?;
        let mut keep = !kind.is_input() || self.input_allowed();
        match frame {
            Frame::Header(len) | Frame::Whole(len) if len > self.buf.len() => {
                debug_assert!(len <= MAX_BUFFERED);
                self.need = len;
                return Ok(());
            }
            Frame::Header(_) => unreachable!("a header is never complete at its own length"),
            Frame::Whole(_) => {
                if kind == MessageKind::SetEncodings {
                    self.extended_mouse_buttons = self.buf[4..].chunks_exact(4).any(|e| {
                        i32::from_be_bytes([e[0], e[1], e[2], e[3]])
                            == PSEUDO_ENCODING_EXTENDED_MOUSE_BUTTONS
                    });
                }
                // A key or button pressed before the input was held is still released:
                // otherwise the X server keeps it down while someone else drives.
                keep = keep || (self.input_held.is_some() && self.releases_a_forwarded_press(kind));
                if keep {
                    self.note_forwarded(kind);
                    out.extend_from_slice(&self.buf);
                }
                self.next_unit(Phase::Messages);
            }
            Frame::Streamed(payload) => {
                if keep {
                    out.extend_from_slice(&self.buf);
                }
                self.next_unit(if payload == 0 {
                    Phase::Messages
                } else {
                    Phase::Payload {
                        remaining: payload,
                        keep,
                    }
                });
            }
        }
        if keep {
            self.stats.forwarded[kind.index()] += 1;
        } else {
            self.stats.dropped[kind.index()] += 1;
        }
        Ok(())
    }

    /// What the bytes of the current message (type byte first) say of its length.
    fn frame(&self, kind: MessageKind) -> Result<Frame, FilterError> {
        let b = &self.buf;
        Ok(match kind {
            MessageKind::SetPixelFormat => {
                if b.len() < 20 {
                    return Ok(Frame::Whole(20));
                }
                // Bits per pixel, depth, true-colour flag: what the server checks too.
                let (bpp, depth) = (b[4], b[5]);
                if !matches!(bpp, 8 | 16 | 32) || depth == 0 || depth > bpp {
                    return Err(FilterError::new(format!(
                        "SetPixelFormat with {bpp} bits per pixel and depth {depth}"
                    )));
                }
                Frame::Whole(20)
            }
            MessageKind::SetEncodings => {
                if b.len() < 4 {
                    return Ok(Frame::Header(4));
                }
                let count = u16::from_be_bytes([b[2], b[3]]) as usize;
                if count > MAX_ENCODINGS {
                    return Err(FilterError::new(format!(
                        "SetEncodings with {count} encodings (at most {MAX_ENCODINGS})"
                    )));
                }
                Frame::Whole(4 + 4 * count)
            }
            MessageKind::FramebufferUpdateRequest | MessageKind::EnableContinuousUpdates => {
                Frame::Whole(10)
            }
            MessageKind::KeyEvent => Frame::Whole(8),
            MessageKind::PointerEvent => {
                if b.len() < 2 {
                    return Ok(Frame::Header(2));
                }
                if self.extended_mouse_buttons && b[1] & 0x80 != 0 {
                    Frame::Whole(7)
                } else {
                    Frame::Whole(6)
                }
            }
            MessageKind::ClientCutText => {
                if b.len() < 8 {
                    return Ok(Frame::Header(8));
                }
                let length = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                // A negative length is the extended clipboard form: its size is -length
                // and it starts with 4 bytes of flags.
                let payload = if length & 0x8000_0000 != 0 {
                    let size = (length as i32).unsigned_abs();
                    if size < 4 {
                        return Err(FilterError::new(
                            "extended clipboard message shorter than its flags",
                        ));
                    }
                    size
                } else {
                    length
                };
                if payload > MAX_CUT_TEXT {
                    return Err(FilterError::new(format!(
                        "clipboard message of {payload} bytes (at most {MAX_CUT_TEXT})"
                    )));
                }
                Frame::Streamed(payload)
            }
            MessageKind::ClientFence => {
                if b.len() < 9 {
                    return Ok(Frame::Header(9));
                }
                let payload = b[8] as usize;
                if payload > MAX_FENCE_PAYLOAD {
                    return Err(FilterError::new(format!(
                        "fence payload of {payload} bytes (at most {MAX_FENCE_PAYLOAD})"
                    )));
                }
                Frame::Whole(9 + payload)
            }
            MessageKind::Xvp => Frame::Whole(4),
            MessageKind::SetDesktopSize => {
                if b.len() < 8 {
                    return Ok(Frame::Header(8));
                }
                let screens = b[6] as usize;
                if screens == 0 || screens > MAX_SCREENS {
                    return Err(FilterError::new(format!(
                        "SetDesktopSize with {screens} screens (1 to {MAX_SCREENS})"
                    )));
                }
                Frame::Whole(8 + 16 * screens)
            }
            MessageKind::QemuKeyEvent => {
                if b.len() < 2 {
                    return Ok(Frame::Header(2));
                }
                if b[1] != 0 {
                    return Err(FilterError::new(format!(
                        "unknown QEMU client message subtype {}",
                        b[1]
                    )));
                }
                Frame::Whole(12)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V38: &[u8; 12] = b"RFB 003.008\n";

    /// What a view-only connection may not send, written out here rather than taken from
    /// [`MessageKind::is_input`], so that a change there fails these tests.
    const INPUT: [MessageKind; 6] = [
        MessageKind::KeyEvent,
        MessageKind::PointerEvent,
        MessageKind::ClientCutText,
        MessageKind::Xvp,
        MessageKind::SetDesktopSize,
        MessageKind::QemuKeyEvent,
    ];

    fn forbidden(kind: MessageKind) -> bool {
        INPUT.contains(&kind)
    }
    const V37: &[u8; 12] = b"RFB 003.007\n";
    const V33: &[u8; 12] = b"RFB 003.003\n";

    // ------------------------------------------------------------ message builders

    /// What a client sends for the handshake (ClientInit not shared), and what the server
    /// must get (shared forced).
    fn handshake(version: &[u8; 12]) -> (Vec<u8>, Vec<u8>) {
        let mut sent = version.to_vec();
        let mut expected = version.to_vec();
        if version != V33 {
            sent.push(1);
            expected.push(1);
        }
        sent.push(0);
        expected.push(1);
        (sent, expected)
    }

    fn set_pixel_format() -> Vec<u8> {
        vec![
            0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0,
        ]
    }

    fn set_encodings(encodings: &[i32]) -> Vec<u8> {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
        for e in encodings {
            m.extend_from_slice(&e.to_be_bytes());
        }
        m
    }

    /// noVNC 1.7's list at depth 24, without H.264.
    const NOVNC_ENCODINGS: &[i32] = &[
        1,
        7,
        -260,
        16,
        21,
        5,
        2,
        6,
        0,
        -32 + 6,
        -256 + 2,
        -223,
        -224,
        -258,
        -261,
        -308,
        -309,
        -312,
        -313,
        -307,
        0xc0a1e5ceu32 as i32,
        -316,
        0x574d5664,
        -239,
    ];

    fn fbur(incremental: bool, w: u16, h: u16) -> Vec<u8> {
        let mut m = vec![3, incremental as u8, 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m
    }

    fn key(keysym: u32, down: bool) -> Vec<u8> {
        let mut m = vec![4, down as u8, 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        m
    }

    fn pointer(x: u16, y: u16, mask: u8) -> Vec<u8> {
        let mut m = vec![5, mask];
        m.extend_from_slice(&x.to_be_bytes());
        m.extend_from_slice(&y.to_be_bytes());
        m
    }

    /// The ExtendedMouseButtons form: marker bit 7 set and one more byte.
    fn pointer_extended(x: u16, y: u16, mask: u16) -> Vec<u8> {
        let mut m = pointer(x, y, (mask & 0x7f) as u8 | 0x80);
        m.push((mask >> 7) as u8);
        m
    }

    fn cut_text(text: &[u8]) -> Vec<u8> {
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&(text.len() as u32).to_be_bytes());
        m.extend_from_slice(text);
        m
    }

    /// The extended clipboard form: a negative length.
    fn cut_text_extended(data: &[u8]) -> Vec<u8> {
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&(-(data.len() as i32)).to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    fn continuous_updates(enable: bool, w: u16, h: u16) -> Vec<u8> {
        let mut m = vec![150, enable as u8, 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m
    }

    fn fence(flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![248, 0, 0, 0];
        m.extend_from_slice(&flags.to_be_bytes());
        m.push(payload.len() as u8);
        m.extend_from_slice(payload);
        m
    }

    fn xvp(op: u8) -> Vec<u8> {
        vec![250, 0, 1, op]
    }

    fn set_desktop_size(w: u16, h: u16, screens: u8) -> Vec<u8> {
        let mut m = vec![251, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m.extend_from_slice(&[screens, 0]);
        for i in 0..screens {
            m.extend_from_slice(&u32::from(i).to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 0]);
            m.extend_from_slice(&w.to_be_bytes());
            m.extend_from_slice(&h.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0, 0]);
        }
        m
    }

    fn qemu_key(keysym: u32, keycode: u32, down: bool) -> Vec<u8> {
        let mut m = vec![255, 0, 0, down as u8];
        m.extend_from_slice(&keysym.to_be_bytes());
        m.extend_from_slice(&keycode.to_be_bytes());
        m
    }

    /// One of every message kind, with its kind.
    fn one_of_each() -> Vec<(MessageKind, Vec<u8>)> {
        vec![
            (MessageKind::SetPixelFormat, set_pixel_format()),
            (MessageKind::SetEncodings, set_encodings(NOVNC_ENCODINGS)),
            (
                MessageKind::FramebufferUpdateRequest,
                fbur(false, 1280, 720),
            ),
            (MessageKind::KeyEvent, key(0x61, true)),
            (MessageKind::PointerEvent, pointer(300, 140, 1)),
            (MessageKind::ClientCutText, cut_text(b"pasted")),
            (
                MessageKind::EnableContinuousUpdates,
                continuous_updates(true, 1280, 720),
            ),
            (MessageKind::ClientFence, fence(0x8000_0003, b"sync")),
            (MessageKind::Xvp, xvp(2)),
            (MessageKind::SetDesktopSize, set_desktop_size(1024, 768, 1)),
            (MessageKind::QemuKeyEvent, qemu_key(0x61, 0x1e, true)),
        ]
    }

    /// A session as noVNC 1.7 would send it to our Xvnc, with a few hand-made extras.
    fn novnc_like_stream() -> (Vec<u8>, Vec<MessageKind>) {
        let mut kinds = Vec::new();
        let mut s = Vec::new();
        let mut push = |kind, bytes: Vec<u8>| {
            kinds.push(kind);
            s.extend_from_slice(&bytes);
        };
        push(MessageKind::SetPixelFormat, set_pixel_format());
        push(MessageKind::SetEncodings, set_encodings(NOVNC_ENCODINGS));
        push(
            MessageKind::FramebufferUpdateRequest,
            fbur(false, 1280, 720),
        );
        // Clipboard caps (text, 10 MiB), answered to the server's caps.
        push(
            MessageKind::ClientCutText,
            cut_text_extended(&[0x1f, 0, 0, 1, 0, 0xa0, 0, 0]),
        );
        push(MessageKind::ClientFence, fence(0x8000_0003, &[]));
        push(
            MessageKind::EnableContinuousUpdates,
            continuous_updates(true, 1280, 720),
        );
        for i in 0..5u16 {
            push(MessageKind::PointerEvent, pointer(100 + i, 200 + i, 0));
        }
        push(MessageKind::PointerEvent, pointer(300, 140, 1));
        push(MessageKind::PointerEvent, pointer(300, 140, 0));
        push(MessageKind::PointerEvent, pointer_extended(300, 140, 0x80));
        for c in b"hi" {
            push(
                MessageKind::QemuKeyEvent,
                qemu_key(u32::from(*c), 0x23, true),
            );
            push(
                MessageKind::QemuKeyEvent,
                qemu_key(u32::from(*c), 0x23, false),
            );
        }
        push(MessageKind::KeyEvent, key(0xff0d, true));
        push(MessageKind::KeyEvent, key(0xff0d, false));
        push(MessageKind::ClientCutText, cut_text_extended(&[8, 0, 0, 1]));
        let provide: Vec<u8> = [0x10, 0, 0, 1]
            .into_iter()
            .chain((0..3000u32).map(|i| (i * 7) as u8))
            .collect();
        push(MessageKind::ClientCutText, cut_text_extended(&provide));
        push(MessageKind::ClientCutText, cut_text(&[b'x'; 5000]));
        push(MessageKind::ClientCutText, cut_text(b""));
        push(MessageKind::SetDesktopSize, set_desktop_size(1024, 768, 1));
        push(MessageKind::Xvp, xvp(4));
        push(MessageKind::FramebufferUpdateRequest, fbur(true, 1024, 768));
        (s, kinds)
    }

    fn run(policy: Policy, chunks: &[&[u8]]) -> (Result<(), FilterError>, Vec<u8>) {
        let mut filter = RfbClientFilter::new(policy);
        let mut out = Vec::new();
        for chunk in chunks {
            if let Err(e) = filter.feed(chunk, &mut out) {
                return (Err(e), out);
            }
        }
        (Ok(()), out)
    }

    fn run_ok(policy: Policy, input: &[u8]) -> Vec<u8> {
        let (result, out) = run(policy, &[input]);
        result.expect("valid input");
        out
    }

    fn err_of(policy: Policy, input: &[u8]) -> FilterError {
        run(policy, &[input]).0.expect_err("malformed input")
    }

    // ------------------------------------------------------------ handshake

    #[test]
    fn handshake_3_8_and_3_7_pass_the_security_byte_and_force_a_shared_client_init() {
        for version in [V38, V37] {
            let (sent, expected) = handshake(version);
            assert_eq!(sent.len(), 14);
            for policy in [Policy::Interactive, Policy::ViewOnly] {
                let mut filter = RfbClientFilter::new(policy);
                let mut out = Vec::new();
                filter.feed(&sent[..13], &mut out).unwrap();
                assert!(!filter.handshake_done());
                filter.feed(&sent[13..], &mut out).unwrap();
                assert!(filter.handshake_done());
                assert_eq!(out, expected);
                assert_eq!(out.last(), Some(&1), "shared flag forced");
            }
        }
    }

    #[test]
    fn handshake_3_3_has_no_security_byte() {
        // The byte after the version is the ClientInit; a message follows at once.
        let (mut sent, mut expected) = handshake(V33);
        assert_eq!(sent.len(), 13);
        sent.extend(fbur(false, 1, 1));
        expected.extend(fbur(false, 1, 1));
        for policy in [Policy::Interactive, Policy::ViewOnly] {
            assert_eq!(run_ok(policy, &sent), expected);
        }
    }

    #[test]
    fn a_version_is_not_forwarded_until_it_is_whole_and_valid() {
        let mut filter = RfbClientFilter::new(Policy::Interactive);
        let mut out = Vec::new();
        filter.feed(b"RFB 003.00", &mut out).unwrap();
        assert!(out.is_empty());
        filter.feed(b"8\n", &mut out).unwrap();
        assert_eq!(out, V38);
    }

    // ------------------------------------------------------------ messages by policy

    #[test]
    fn interactive_forwards_every_message_kind_byte_for_byte() {
        let (mut sent, mut expected) = handshake(V38);
        for (_, m) in one_of_each() {
            sent.extend_from_slice(&m);
            expected.extend_from_slice(&m);
        }
        let mut filter = RfbClientFilter::new(Policy::Interactive);
        let mut out = Vec::new();
        filter.feed(&sent, &mut out).unwrap();
        assert_eq!(out, expected);
        for kind in MessageKind::ALL {
            assert_eq!(filter.stats().forwarded(kind), 1, "{kind:?}");
            assert_eq!(filter.stats().dropped(kind), 0, "{kind:?}");
        }
    }

    #[test]
    fn an_interactive_connection_drops_input_only_while_its_input_is_held() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let held = Arc::new(AtomicBool::new(false));
        let mut filter = RfbClientFilter::new(Policy::Interactive).hold_input_while(held.clone());
        let (sent, expected) = handshake(V38);
        let mut out = Vec::new();
        filter.feed(&sent, &mut out).unwrap();
        assert_eq!(out, expected);
        let key = one_of_each().into_iter().find(|(k, _)| *k == MessageKind::KeyEvent).unwrap().1;
        let update = fbur(true, 1, 2);
        out.clear();
        held.store(true, Ordering::Relaxed);
        filter.feed(&[key.clone(), update.clone()].concat(), &mut out).unwrap();
        assert_eq!(out, update, "the key is dropped, the update request passes");
        out.clear();
        held.store(false, Ordering::Relaxed);
        filter.feed(&key, &mut out).unwrap();
        assert_eq!(out, key, "input flows again once released");
        assert_eq!(filter.stats().dropped(MessageKind::KeyEvent), 1);
    }

    #[test]
    fn a_key_or_button_pressed_before_the_hold_is_still_released() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let held = Arc::new(AtomicBool::new(false));
        let mut filter = RfbClientFilter::new(Policy::Interactive).hold_input_while(held.clone());
        let mut out = Vec::new();
        filter.feed(&handshake(V38).0, &mut out).unwrap();
        // The person presses 'a', a mouse button and qemu 'b'; then an agent takes control.
        let presses = [key(0x61, true), pointer(10, 10, 1), qemu_key(0x62, 0x30, true)].concat();
        out.clear();
        filter.feed(&presses, &mut out).unwrap();
        assert_eq!(out, presses);
        held.store(true, Ordering::Relaxed);
        let releases = [key(0x61, false), pointer(12, 12, 0), qemu_key(0x62, 0x30, false)].concat();
        let others = [key(0x63, true), key(0x63, false), pointer(20, 20, 1), key(0x61, false)].concat();
        out.clear();
        filter.feed(&[releases.clone(), others].concat(), &mut out).unwrap();
        assert_eq!(out, releases, "only the releases of earlier presses pass, once");
    }

    #[test]
    fn view_only_drops_exactly_the_input_messages() {
        for (kind, m) in one_of_each() {
            // Each kind between two update requests: the neighbours must survive intact.
            let (mut sent, mut expected) = handshake(V38);
            let before = fbur(true, 10, 20);
            let after = fbur(false, 30, 40);
            sent.extend(before.iter().chain(&m).chain(&after));
            expected.extend(&before);
            if !forbidden(kind) {
                expected.extend(&m);
            }
            expected.extend(&after);
            let mut filter = RfbClientFilter::new(Policy::ViewOnly);
            let mut out = Vec::new();
            filter.feed(&sent, &mut out).unwrap();
            assert_eq!(out, expected, "{kind:?}");
            let stats = filter.stats();
            assert_eq!(stats.dropped(kind), u64::from(forbidden(kind)), "{kind:?}");
            assert_eq!(
                stats.dropped_total(),
                u64::from(forbidden(kind)),
                "{kind:?}"
            );
            assert_eq!(
                stats.forwarded(MessageKind::FramebufferUpdateRequest),
                2 + u64::from(kind == MessageKind::FramebufferUpdateRequest)
            );
        }
        let by_the_filter: Vec<_> = MessageKind::ALL
            .into_iter()
            .filter(|k| k.is_input())
            .collect();
        assert_eq!(by_the_filter, INPUT);
    }

    #[test]
    fn the_novnc_like_stream_is_kept_or_dropped_message_by_message() {
        let (hs, hs_out) = handshake(V38);
        let (stream, kinds) = novnc_like_stream();
        let sent = [hs.clone(), stream.clone()].concat();
        let interactive = run_ok(Policy::Interactive, &sent);
        assert_eq!(interactive, [hs_out.clone(), stream].concat());

        let mut filter = RfbClientFilter::new(Policy::ViewOnly);
        let mut view = Vec::new();
        filter.feed(&sent, &mut view).unwrap();
        let dropped = kinds.iter().filter(|k| forbidden(**k)).count() as u64;
        assert_eq!(filter.stats().dropped_total(), dropped);
        assert_eq!(
            filter.stats().forwarded_total() + dropped,
            kinds.len() as u64
        );
        assert_eq!(filter.stats().dropped_keys(), 6);
        assert_eq!(filter.stats().dropped(MessageKind::PointerEvent), 8);
        assert_eq!(filter.stats().dropped(MessageKind::ClientCutText), 5);
        let mut expected = hs_out;
        expected.extend(set_pixel_format());
        expected.extend(set_encodings(NOVNC_ENCODINGS));
        expected.extend(fbur(false, 1280, 720));
        expected.extend(fence(0x8000_0003, &[]));
        expected.extend(continuous_updates(true, 1280, 720));
        expected.extend(fbur(true, 1024, 768));
        assert_eq!(view, expected);
    }

    #[test]
    fn splitting_at_every_offset_or_feeding_byte_by_byte_changes_nothing() {
        let (hs, _) = handshake(V38);
        let (stream, _) = novnc_like_stream();
        let sent = [hs, stream].concat();
        for policy in [Policy::Interactive, Policy::ViewOnly] {
            let whole = run_ok(policy, &sent);
            for at in 0..=sent.len() {
                let (result, out) = run(policy, &[&sent[..at], &sent[at..]]);
                result.unwrap();
                assert_eq!(out, whole, "{policy:?} split at {at}");
            }
            let bytes: Vec<&[u8]> = sent.chunks(1).collect();
            let (result, out) = run(policy, &bytes);
            result.unwrap();
            assert_eq!(out, whole, "{policy:?} byte by byte");
        }
    }

    #[test]
    fn a_kept_message_is_forwarded_only_once_whole() {
        let (hs, hs_out) = handshake(V38);
        let mut filter = RfbClientFilter::new(Policy::ViewOnly);
        let mut out = Vec::new();
        filter.feed(&hs, &mut out).unwrap();
        assert_eq!(out, hs_out);
        out.clear();
        let m = set_encodings(NOVNC_ENCODINGS);
        filter.feed(&m[..m.len() - 1], &mut out).unwrap();
        assert!(out.is_empty());
        filter.feed(&m[m.len() - 1..], &mut out).unwrap();
        assert_eq!(out, m);
    }

    #[test]
    fn a_long_cut_text_is_skipped_or_streamed_without_being_held() {
        // The longest allowed: several chunks, none of it held.
        let text = vec![b'a'; MAX_CUT_TEXT as usize];
        let m = cut_text(&text);
        for policy in [Policy::Interactive, Policy::ViewOnly] {
            let (hs, hs_out) = handshake(V38);
            let mut filter = RfbClientFilter::new(policy);
            let mut out = Vec::new();
            filter.feed(&hs, &mut out).unwrap();
            assert_eq!(out, hs_out);
            let mut forwarded = 0;
            for chunk in m.chunks(16 * 1024) {
                out.clear();
                filter.feed(chunk, &mut out).unwrap();
                forwarded += out.len();
                assert!(filter.buf.capacity() <= MAX_BUFFERED);
                if policy == Policy::ViewOnly {
                    assert!(out.is_empty());
                }
            }
            let expected = if policy == Policy::Interactive {
                m.len()
            } else {
                0
            };
            assert_eq!(forwarded, expected, "{policy:?}");
            // The next message is read as one.
            out.clear();
            filter.feed(&fbur(true, 1, 1), &mut out).unwrap();
            assert_eq!(out, fbur(true, 1, 1));
        }
    }

    #[test]
    fn extended_pointer_events_are_seven_bytes_only_after_the_client_announced_them() {
        let (hs, hs_out) = handshake(V38);
        // Not announced: the server reads 6 bytes, so does the filter; the high bit is a
        // button.
        let sent = [hs.clone(), pointer(1, 2, 0x81), fbur(true, 1, 1)].concat();
        let out = run_ok(Policy::ViewOnly, &sent);
        assert_eq!(out, [hs_out.clone(), fbur(true, 1, 1)].concat());

        let announce = set_encodings(&[0, -316]);
        let sent = [
            hs.clone(),
            announce.clone(),
            pointer_extended(1, 2, 0x101),
            pointer(3, 4, 1),
            fbur(true, 1, 1),
        ]
        .concat();
        let mut filter = RfbClientFilter::new(Policy::ViewOnly);
        let mut out = Vec::new();
        filter.feed(&sent, &mut out).unwrap();
        assert_eq!(out, [hs_out.clone(), announce, fbur(true, 1, 1)].concat());
        assert_eq!(filter.stats().dropped(MessageKind::PointerEvent), 2);

        // A later SetEncodings without it takes it back.
        let sent = [
            hs,
            set_encodings(&[-316]),
            set_encodings(&[0]),
            pointer(1, 2, 0x80),
            fbur(true, 1, 1),
        ]
        .concat();
        let out = run_ok(Policy::ViewOnly, &sent);
        assert!(out.ends_with(&fbur(true, 1, 1)));
    }

    // ------------------------------------------------------------ malformed input

    #[test]
    fn malformed_input_is_an_error_for_both_policies() {
        let (hs, _) = handshake(V38);
        let after = |m: Vec<u8>| [hs.clone(), m].concat();
        let mut too_long = vec![6, 0, 0, 0];
        too_long.extend_from_slice(&(MAX_CUT_TEXT + 1).to_be_bytes());
        let mut too_long_extended = vec![6, 0, 0, 0];
        too_long_extended.extend_from_slice(&(-(MAX_CUT_TEXT as i32) - 1).to_be_bytes());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("RFB 4", b"RFB 004.000\n".to_vec(), "ProtocolVersion"),
            ("RFB 3.5", b"RFB 003.005\n".to_vec(), "ProtocolVersion"),
            ("Apple", b"RFB 003.889\n".to_vec(), "ProtocolVersion"),
            ("HTTP", b"GET / HTTP/1.1\r\n".to_vec(), "ProtocolVersion"),
            ("VNC auth", [&V38[..], &[2]].concat(), "security type 2"),
            ("no security", [&V38[..], &[0]].concat(), "security type 0"),
            ("type 1", after(vec![1]), "unknown message type 1"),
            ("type 7", after(vec![7, 0, 0, 0]), "unknown message type 7"),
            ("type 249", after(vec![249]), "unknown message type 249"),
            ("type 127", after(vec![127]), "unknown message type 127"),
            ("oversize cut text", after(too_long), "clipboard"),
            (
                "oversize extended cut text",
                after(too_long_extended),
                "clipboard",
            ),
            (
                "extended cut text without flags",
                after(vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 0xfd]),
                "shorter than its flags",
            ),
            (
                "i32::MIN cut text",
                after(vec![6, 0, 0, 0, 0x80, 0, 0, 0]),
                "clipboard",
            ),
            (
                "too many encodings",
                after(vec![2, 0, 0x04, 0x01]),
                "encodings",
            ),
            ("fence payload 65", after(fence(0, &[0; 65])), "fence"),
            (
                "no screens",
                after(vec![251, 0, 0, 1, 0, 1, 0, 0]),
                "screens",
            ),
            (
                "65 screens",
                after(vec![251, 0, 0, 1, 0, 1, 65, 0]),
                "screens",
            ),
            ("QEMU audio", after(vec![255, 1, 0, 0]), "QEMU"),
            (
                "24 bpp",
                after({
                    let mut m = set_pixel_format();
                    m[4] = 24;
                    m
                }),
                "bits per pixel",
            ),
        ];
        for (name, input, reason) in cases {
            for policy in [Policy::Interactive, Policy::ViewOnly] {
                let e = err_of(policy, &input);
                assert!(
                    e.reason().contains(reason),
                    "{name} ({policy:?}): {e} should mention {reason:?}"
                );
            }
        }
    }

    #[test]
    fn an_error_sticks_and_nothing_more_is_forwarded() {
        let (hs, hs_out) = handshake(V38);
        let mut filter = RfbClientFilter::new(Policy::Interactive);
        let mut out = Vec::new();
        let first = filter
            .feed(&[hs, vec![9], fbur(true, 1, 1)].concat(), &mut out)
            .unwrap_err();
        assert_eq!(out, hs_out, "nothing after the handshake");
        let again = filter.feed(&fbur(true, 1, 1), &mut out).unwrap_err();
        assert_eq!(first, again);
        assert_eq!(out, hs_out);
    }

    // ------------------------------------------------------------ properties

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// 256 cases by default (a few seconds in CI); `PROPTEST_CASES` overrides.
        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// A valid client message of any kind, with random fields.
        fn message() -> impl Strategy<Value = (MessageKind, Vec<u8>)> {
            prop_oneof![
                (prop::sample::select(vec![8u8, 16, 32]), any::<[u8; 14]>()).prop_map(
                    |(bpp, rest)| {
                        let mut m = set_pixel_format();
                        m[4] = bpp;
                        m[5] = 1 + rest[0] % bpp;
                        m[6..20].copy_from_slice(&rest);
                        (MessageKind::SetPixelFormat, m)
                    }
                ),
                prop::collection::vec(prop_oneof![any::<i32>(), Just(-316), Just(0)], 0..64)
                    .prop_map(|e| (MessageKind::SetEncodings, set_encodings(&e))),
                (any::<bool>(), any::<u16>(), any::<u16>())
                    .prop_map(|(i, w, h)| (MessageKind::FramebufferUpdateRequest, fbur(i, w, h))),
                (any::<u32>(), any::<bool>()).prop_map(|(k, d)| (MessageKind::KeyEvent, key(k, d))),
                (any::<u16>(), any::<u16>(), any::<u8>())
                    .prop_map(|(x, y, m)| (MessageKind::PointerEvent, pointer(x, y, m & 0x7f))),
                (any::<u16>(), any::<u16>(), 0u16..0x200)
                    .prop_map(|(x, y, m)| (MessageKind::PointerEvent, pointer_extended(x, y, m))),
                prop::collection::vec(any::<u8>(), 0..2048)
                    .prop_map(|t| (MessageKind::ClientCutText, cut_text(&t))),
                prop::collection::vec(any::<u8>(), 4..512)
                    .prop_map(|t| (MessageKind::ClientCutText, cut_text_extended(&t))),
                (any::<bool>(), any::<u16>(), any::<u16>()).prop_map(|(e, w, h)| (
                    MessageKind::EnableContinuousUpdates,
                    continuous_updates(e, w, h)
                )),
                (any::<u32>(), prop::collection::vec(any::<u8>(), 0..=64))
                    .prop_map(|(f, p)| (MessageKind::ClientFence, fence(f, &p))),
                any::<u8>().prop_map(|op| (MessageKind::Xvp, xvp(op))),
                (any::<u16>(), any::<u16>(), 1u8..=4)
                    .prop_map(|(w, h, s)| (MessageKind::SetDesktopSize, set_desktop_size(w, h, s))),
                (any::<u32>(), any::<u32>(), any::<bool>())
                    .prop_map(|(s, c, d)| (MessageKind::QemuKeyEvent, qemu_key(s, c, d))),
            ]
        }

        /// A valid sequence: an extended pointer event only while the client's last
        /// SetEncodings announced them (the plain form otherwise).
        fn messages() -> impl Strategy<Value = Vec<(MessageKind, Vec<u8>)>> {
            prop::collection::vec(message(), 0..40).prop_map(|mut messages| {
                let mut extended = false;
                for (kind, m) in &mut messages {
                    match kind {
                        MessageKind::SetEncodings => {
                            extended = m[4..].chunks(4).any(|e| e == (-316i32).to_be_bytes());
                        }
                        MessageKind::PointerEvent if m.len() == 7 && !extended => {
                            m.pop();
                            m[1] &= 0x7f;
                        }
                        _ => {}
                    }
                }
                messages
            })
        }

        fn version() -> impl Strategy<Value = &'static [u8; 12]> {
            prop::sample::select(vec![V33, V37, V38])
        }

        /// Splits `input` at the given cut points (taken modulo its length).
        fn chunks<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            at.sort_unstable();
            let mut parts = Vec::new();
            let mut start = 0;
            for cut in at {
                parts.push(&input[start..cut]);
                start = cut;
            }
            parts.push(&input[start..]);
            parts
        }

        /// Re-reads a view-only output (handshake included) as an interactive filter would
        /// see it: valid RFB, and not one input message.
        fn assert_no_input(output: &[u8]) {
            let mut reader = RfbClientFilter::new(Policy::Interactive);
            let mut echo = Vec::new();
            reader
                .feed(output, &mut echo)
                .expect("view-only output is valid RFB");
            assert_eq!(echo, output);
            for kind in MessageKind::ALL.into_iter().filter(|k| forbidden(*k)) {
                assert_eq!(reader.stats().forwarded(kind), 0, "{kind:?} got through");
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn arbitrary_bytes_after_a_handshake_never_panic(
                version in version(),
                garbage in prop::collection::vec(any::<u8>(), 0..4096),
                cuts in prop::collection::vec(any::<usize>(), 0..16),
            ) {
                let (hs, _) = handshake(version);
                let input = [hs, garbage].concat();
                for policy in [Policy::Interactive, Policy::ViewOnly] {
                    let (_, out) = run(policy, &chunks(&input, &cuts));
                    prop_assert!(out.len() <= input.len());
                    if policy == Policy::ViewOnly {
                        assert_no_input(&out);
                    }
                }
            }

            #[test]
            fn arbitrary_bytes_from_the_start_never_panic(
                garbage in prop::collection::vec(any::<u8>(), 0..512),
            ) {
                for policy in [Policy::Interactive, Policy::ViewOnly] {
                    let _ = run(policy, &[&garbage]);
                }
            }

            #[test]
            fn valid_streams_give_the_same_output_however_they_are_chunked(
                version in version(),
                messages in messages(),
                cuts in prop::collection::vec(any::<usize>(), 0..24),
            ) {
                let (hs, hs_out) = handshake(version);
                let body: Vec<u8> = messages.iter().flat_map(|(_, m)| m.clone()).collect();
                let input = [hs, body.clone()].concat();
                let kept: Vec<u8> = messages
                    .iter()
                    .filter(|(k, _)| !forbidden(*k))
                    .flat_map(|(_, m)| m.clone())
                    .collect();
                for (policy, expected) in [
                    (Policy::Interactive, [hs_out.clone(), body.clone()].concat()),
                    (Policy::ViewOnly, [hs_out.clone(), kept.clone()].concat()),
                ] {
                    let (result, whole) = run(policy, &[&input]);
                    prop_assert!(result.is_ok(), "{:?}", result);
                    prop_assert_eq!(&whole, &expected);
                    let (result, chunked) = run(policy, &chunks(&input, &cuts));
                    prop_assert!(result.is_ok(), "{:?}", result);
                    prop_assert_eq!(&chunked, &expected);
                }
            }

            #[test]
            fn view_only_output_never_carries_input(
                messages in messages(),
                cuts in prop::collection::vec(any::<usize>(), 0..24),
            ) {
                let (hs, hs_out) = handshake(V38);
                let body: Vec<u8> = messages.iter().flat_map(|(_, m)| m.clone()).collect();
                let input = [hs, body].concat();
                let mut filter = RfbClientFilter::new(Policy::ViewOnly);
                let mut out = Vec::new();
                for chunk in chunks(&input, &cuts) {
                    filter.feed(chunk, &mut out).unwrap();
                }
                prop_assert!(out.starts_with(&hs_out));
                assert_no_input(&out);
                let inputs = messages.iter().filter(|(k, _)| forbidden(*k)).count() as u64;
                prop_assert_eq!(filter.stats().dropped_total(), inputs);
            }
        }
    }
}
