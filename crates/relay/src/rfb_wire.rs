//! Framing of RFB server-to-client messages: where each message and rectangle ends, for
//! every encoding noVNC asks for, without decoding pixels, and the client messages the
//! server's own RFB clients send. Whoever reads a desktop's screen itself (the
//! benchmark's clients, the recorder) feeds it whatever bytes arrive (any split) and gets
//! an event as each update or fence completes.
//!
//! Assumes the pixel format the clients set (32 bits per pixel, depth 24, 8 bits per
//! channel), so Tight's compact pixels (TPIXEL) are 3 bytes.

use std::collections::BTreeMap;

pub const RAW: i32 = 0;
pub const COPY_RECT: i32 = 1;
pub const RRE: i32 = 2;
pub const HEXTILE: i32 = 5;
pub const ZLIB: i32 = 6;
pub const TIGHT: i32 = 7;
pub const ZRLE: i32 = 16;
pub const JPEG: i32 = 21;
pub const TIGHT_PNG: i32 = -260;
pub const QUALITY_LEVEL_0: i32 = -32;
pub const COMPRESS_LEVEL_0: i32 = -256;
pub const DESKTOP_SIZE: i32 = -223;
pub const LAST_RECT: i32 = -224;
pub const CURSOR: i32 = -239;
pub const QEMU_EXTENDED_KEY: i32 = -258;
pub const QEMU_LED: i32 = -261;
pub const DESKTOP_NAME: i32 = -307;
pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
pub const XVP: i32 = -309;
pub const FENCE: i32 = -312;
pub const CONTINUOUS_UPDATES: i32 = -313;
pub const EXTENDED_MOUSE_BUTTONS: i32 = -316;
pub const VMWARE_CURSOR: i32 = 0x574d_5664;
pub const VMWARE_LED: i32 = 0x574d_5668;
pub const EXTENDED_CLIPBOARD: i32 = 0xc0a1_e5ce_u32 as i32;

/// Bytes per pixel on the wire, and per Tight compact pixel.
const BPP: u64 = 4;
const TPIXEL: u64 = 3;

/// Whether rectangles of this encoding carry pixels (the others are pseudo-encodings).
pub fn is_pixel_encoding(encoding: i32) -> bool {
    matches!(
        encoding,
        RAW | COPY_RECT | RRE | HEXTILE | ZLIB | TIGHT | ZRLE | JPEG | TIGHT_PNG
    )
}

pub fn encoding_name(encoding: i32) -> String {
    match encoding {
        RAW => "Raw".into(),
        COPY_RECT => "CopyRect".into(),
        RRE => "RRE".into(),
        HEXTILE => "Hextile".into(),
        ZLIB => "Zlib".into(),
        TIGHT => "Tight".into(),
        ZRLE => "ZRLE".into(),
        TIGHT_PNG => "TightPNG".into(),
        JPEG => "JPEG".into(),
        other => format!("encoding {other}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A FramebufferUpdate ended; `pixel_rects` of its rectangles carried pixels (not
    /// pseudo-encodings such as the cursor or a resize), covering `pixels` in all.
    Update { pixel_rects: u32, pixels: u64 },
    /// The server sent a fence request (or response); a client answers requests.
    Fence { flags: u32, payload: Vec<u8> },
    /// The server supports continuous updates (sent once, then at each disable).
    EndOfContinuousUpdates,
    /// The framebuffer changed size.
    Resize { width: u16, height: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TightFilter {
    Copy,
    Palette(u64),
    Gradient,
}

/// What the parser waits for; each state needs a fixed number of header bytes (maybe 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    MessageType,
    UpdateHeader,
    NextRect,
    RectHeader,
    /// A u32 length, then that many bytes (ZRLE, Zlib, DesktopName).
    LengthThenData,
    RreHeader,
    HextileTile,
    HextileExtras(u8),
    HextileNext,
    TightControl,
    TightFilterId,
    TightPaletteSize,
    TightData(TightFilter),
    /// Tight's 1–3 byte length: byte `index`, value so far.
    TightLength(u8, u64),
    VmwareCursorType,
    ExtendedDesktopSize,
    ColourMap,
    CutText,
    FenceHeader,
    FencePayload(u32, u8),
    Xvp,
}

impl State {
    fn needs(self) -> usize {
        match self {
            State::MessageType => 1,
            State::UpdateHeader => 3,
            State::NextRect | State::HextileNext | State::TightData(_) => 0,
            State::RectHeader => 12,
            State::LengthThenData => 4,
            State::RreHeader => 4 + BPP as usize,
            State::HextileTile => 1,
            State::HextileExtras(sub) => {
                let colour = |bit: u8| if sub & bit != 0 { BPP as usize } else { 0 };
                colour(2) + colour(4) + usize::from(sub & 8 != 0)
            }
            State::TightControl | State::TightFilterId | State::TightPaletteSize => 1,
            State::TightLength(..) => 1,
            State::VmwareCursorType => 2,
            State::ExtendedDesktopSize => 4,
            State::ColourMap => 5,
            State::CutText => 7,
            State::FenceHeader => 8,
            State::FencePayload(_, len) => len as usize,
            State::Xvp => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Rect {
    w: u64,
    h: u64,
    /// The Hextile tile being read.
    tile_x: u64,
    tile_y: u64,
}

/// The framing parser. Feed it every byte the server sends after the handshake.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    skip: u64,
    rects_left: u32,
    until_last_rect: bool,
    pixel_rects: u32,
    pixels: u64,
    rect: Rect,
    /// Pixel rectangles seen, by encoding.
    pub rects_by_encoding: BTreeMap<i32, u64>,
}

impl Default for Framing {
    fn default() -> Self {
        Self::new()
    }
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Framing {
    pub fn new() -> Self {
        Self {
            state: State::MessageType,
            head: Vec::with_capacity(16),
            skip: 0,
            rects_left: 0,
            until_last_rect: false,
            pixel_rects: 0,
            pixels: 0,
            rect: Rect::default(),
            rects_by_encoding: BTreeMap::new(),
        }
    }

    /// Consumes `data`, pushing an event for each message of interest that completes.
    pub fn feed(&mut self, mut data: &[u8], events: &mut Vec<Event>) -> Result<(), String> {
        loop {
            // Also run with nothing left: a rectangle that ended with the data may end
            // its update.
            let n = self.feed_one_message(data, events)?;
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Whether the next byte fed starts a server message (its type byte).
    pub fn at_message_start(&self) -> bool {
        self.state == State::MessageType && self.head.is_empty() && self.skip == 0
    }

    /// Like [`feed`](Self::feed), but stops right after the message that the first byte
    /// belongs to (or continues) is complete: returns how many bytes of `data` were
    /// consumed (all of them when the message goes on past `data`). A filter uses it to
    /// act on whole messages while the bytes stream through.
    pub fn feed_one_message(&mut self, mut data: &[u8], events: &mut Vec<Event>) -> Result<usize, String> {
        let total = data.len();
        loop {
            if total != data.len() && self.at_message_start() {
                return Ok(total - data.len());
            }
            if self.skip > 0 {
                if data.is_empty() {
                    return Ok(total);
                }
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
                continue;
            }
            let need = self.state.needs();
            if self.head.len() < need {
                if data.is_empty() {
                    return Ok(total);
                }
                let n = (need - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..n]);
                data = &data[n..];
                continue;
            }
            let head = std::mem::take(&mut self.head);
            let result = self.step(&head, events);
            self.head = head;
            self.head.clear();
            result?;
        }
    }

    /// Acts on a state's complete header: the next state, and bytes to skip before it.
    fn step(&mut self, head: &[u8], events: &mut Vec<Event>) -> Result<(), String> {
        let (w, h) = (self.rect.w, self.rect.h);
        self.state = match self.state {
            State::MessageType => match head[0] {
                0 => State::UpdateHeader,
                1 => State::ColourMap,
                2 => State::MessageType, // Bell
                3 => State::CutText,
                150 => {
                    events.push(Event::EndOfContinuousUpdates);
                    State::MessageType
                }
                248 => State::FenceHeader,
                250 => State::Xvp,
                other => return Err(format!("unknown server message type {other}")),
            },
            State::UpdateHeader => {
                let n = be16(&head[1..3]) as u32;
                self.until_last_rect = n == 0xffff;
                self.rects_left = n;
                self.pixel_rects = 0;
                self.pixels = 0;
                State::NextRect
            }
            State::NextRect => {
                if !self.until_last_rect && self.rects_left == 0 {
                    events.push(Event::Update {
                        pixel_rects: self.pixel_rects,
                        pixels: self.pixels,
                    });
                    State::MessageType
                } else {
                    State::RectHeader
                }
            }
            State::RectHeader => {
                if !self.until_last_rect {
                    self.rects_left -= 1;
                }
                let (w, h) = (be16(&head[4..6]), be16(&head[6..8]));
                self.rect = Rect {
                    w,
                    h,
                    ..Rect::default()
                };
                let encoding = be32(&head[8..12]) as i32;
                self.rect_data(encoding, be16(&head[2..4]), events)?
            }
            State::LengthThenData | State::RreHeader => {
                let n = u64::from(be32(&head[..4]));
                self.skip = if self.state == State::RreHeader {
                    n * (BPP + 8)
                } else {
                    n
                };
                State::NextRect
            }
            State::HextileTile => {
                let sub = head[0];
                if sub & 1 != 0 {
                    let r = self.rect;
                    self.skip = (w - r.tile_x).min(16) * (h - r.tile_y).min(16) * BPP;
                    State::HextileNext
                } else {
                    State::HextileExtras(sub)
                }
            }
            State::HextileExtras(sub) => {
                if sub & 8 != 0 {
                    let count = u64::from(head[head.len() - 1]);
                    self.skip = count * if sub & 16 != 0 { BPP + 2 } else { 2 };
                }
                State::HextileNext
            }
            State::HextileNext => {
                self.rect.tile_x += 16;
                if self.rect.tile_x >= w {
                    self.rect.tile_x = 0;
                    self.rect.tile_y += 16;
                }
                if self.rect.tile_y >= h {
                    State::NextRect
                } else {
                    State::HextileTile
                }
            }
            State::TightControl => match head[0] >> 4 {
                8 => {
                    self.skip = TPIXEL; // fill
                    State::NextRect
                }
                9 | 10 => State::TightLength(0, 0), // JPEG, PNG
                c if c > 10 => return Err(format!("bad Tight compression control {c}")),
                _ if head[0] & 0x40 != 0 => State::TightFilterId,
                _ => State::TightData(TightFilter::Copy),
            },
            State::TightFilterId => match head[0] {
                0 => State::TightData(TightFilter::Copy),
                1 => State::TightPaletteSize,
                2 => State::TightData(TightFilter::Gradient),
                f => return Err(format!("bad Tight filter {f}")),
            },
            State::TightPaletteSize => {
                let colours = u64::from(head[0]) + 1;
                self.skip = colours * TPIXEL;
                State::TightData(TightFilter::Palette(colours))
            }
            State::TightData(filter) => {
                let raw = match filter {
                    TightFilter::Palette(2) => w.div_ceil(8) * h,
                    TightFilter::Palette(_) => w * h,
                    TightFilter::Copy | TightFilter::Gradient => w * h * TPIXEL,
                };
                if raw < 12 {
                    self.skip = raw; // sent as is, not compressed
                    State::NextRect
                } else {
                    State::TightLength(0, 0)
                }
            }
            State::TightLength(index, value) => {
                let b = u64::from(head[0]);
                if index == 2 {
                    self.skip = value | (b << 14);
                    State::NextRect
                } else {
                    let value = value | ((b & 0x7f) << (7 * index));
                    if b & 0x80 != 0 {
                        State::TightLength(index + 1, value)
                    } else {
                        self.skip = value;
                        State::NextRect
                    }
                }
            }
            State::VmwareCursorType => {
                self.skip = match head[0] {
                    0 => 2 * w * h * BPP, // AND and XOR masks
                    1 => w * h * 4,       // RGBA
                    t => return Err(format!("bad VMware cursor type {t}")),
                };
                State::NextRect
            }
            State::ExtendedDesktopSize => {
                self.skip = u64::from(head[0]) * 16;
                State::NextRect
            }
            State::ColourMap => {
                self.skip = be16(&head[3..5]) * 6;
                State::MessageType
            }
            State::CutText => {
                // Negative lengths announce the extended clipboard format.
                self.skip = u64::from((be32(&head[3..7]) as i32).unsigned_abs());
                State::MessageType
            }
            State::FenceHeader => {
                let len = head[7];
                if len > 64 {
                    return Err(format!("fence payload of {len} bytes"));
                }
                State::FencePayload(be32(&head[3..7]), len)
            }
            State::FencePayload(flags, _) => {
                events.push(Event::Fence {
                    flags,
                    payload: head.to_vec(),
                });
                State::MessageType
            }
            State::Xvp => State::MessageType,
        };
        Ok(())
    }

    /// The state after a rectangle's header, by encoding; `y` carries ExtendedDesktopSize's
    /// status.
    fn rect_data(
        &mut self,
        encoding: i32,
        y: u64,
        events: &mut Vec<Event>,
    ) -> Result<State, String> {
        let Rect { w, h, .. } = self.rect;
        if is_pixel_encoding(encoding) {
            self.pixel_rects += 1;
            self.pixels += w * h;
            *self.rects_by_encoding.entry(encoding).or_default() += 1;
        }
        Ok(match encoding {
            RAW => {
                self.skip = w * h * BPP;
                State::NextRect
            }
            COPY_RECT => {
                self.skip = 4;
                State::NextRect
            }
            RRE => State::RreHeader,
            HEXTILE if w == 0 || h == 0 => State::NextRect,
            HEXTILE => State::HextileTile,
            ZLIB | ZRLE | DESKTOP_NAME => State::LengthThenData,
            TIGHT | TIGHT_PNG => State::TightControl,
            CURSOR => {
                self.skip = w * h * BPP + w.div_ceil(8) * h;
                State::NextRect
            }
            VMWARE_CURSOR => State::VmwareCursorType,
            DESKTOP_SIZE => {
                events.push(Event::Resize {
                    width: w as u16,
                    height: h as u16,
                });
                State::NextRect
            }
            EXTENDED_DESKTOP_SIZE => {
                if y == 0 {
                    events.push(Event::Resize {
                        width: w as u16,
                        height: h as u16,
                    });
                }
                State::ExtendedDesktopSize
            }
            LAST_RECT => {
                self.until_last_rect = false;
                self.rects_left = 0;
                State::NextRect
            }
            // Acknowledgements without data.
            QEMU_EXTENDED_KEY | EXTENDED_MOUSE_BUTTONS => State::NextRect,
            QEMU_LED => {
                self.skip = 1;
                State::NextRect
            }
            VMWARE_LED => {
                self.skip = 4;
                State::NextRect
            }
            other => return Err(format!("unexpected encoding {other}")),
        })
    }
}

/// SetPixelFormat: 32 bits per pixel, depth 24, little-endian true colour, as noVNC asks.
pub fn set_pixel_format() -> [u8; 20] {
    [
        0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ]
}

pub fn set_encodings(encodings: &[i32]) -> Vec<u8> {
    let mut msg = vec![2, 0];
    msg.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
    for e in encodings {
        msg.extend_from_slice(&e.to_be_bytes());
    }
    msg
}

pub fn update_request(incremental: bool, width: u16, height: u16) -> [u8; 10] {
    let mut msg = [3u8, incremental as u8, 0, 0, 0, 0, 0, 0, 0, 0];
    msg[6..8].copy_from_slice(&width.to_be_bytes());
    msg[8..10].copy_from_slice(&height.to_be_bytes());
    msg
}

pub fn enable_continuous_updates(width: u16, height: u16) -> [u8; 10] {
    let mut msg = [150u8, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    msg[6..8].copy_from_slice(&width.to_be_bytes());
    msg[8..10].copy_from_slice(&height.to_be_bytes());
    msg
}

/// The answer to a fence request, as noVNC gives it: BlockBefore/BlockAfter kept.
pub fn fence_response(flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut msg = vec![248, 0, 0, 0];
    msg.extend_from_slice(&(flags & 0b11).to_be_bytes());
    msg.push(payload.len() as u8);
    msg.extend_from_slice(payload);
    msg
}

#[cfg(test)]
#[path = "rfb_wire_tests.rs"]
mod tests;
