//! One session's recorder: follows the session's desktop without starting it or counting
//! as activity, and records the screen from its own RFB connection to the desktop's VNC
//! socket (Xvnc runs `-AlwaysShared`, so viewers are not disturbed). Each connection is a
//! segment of the recording; when the desktop hibernates, restarts or resumes, the
//! recorder connects again and a new segment begins.
//!
//! The connection asks what noVNC asks (RFB 3.8, security None, a shared ClientInit, its
//! pixel format, encodings it decodes), so the recorded bytes replay in noVNC as they are.
//! Updates are requested one at a time, an incremental request after each complete
//! update, at most [`MAX_FPS`] a second.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livesession_desktop::DesktopHandle;
use livesession_relay::rfb_wire::{self, Event, Framing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::format::{self, Writer};
use crate::desktops::{DesktopStatus, Desktops};

/// The most updates a second the recorder asks for.
pub const MAX_FPS: u32 = 10;

/// What the recorder asks the desktop for, as noVNC decodes it. Tight with a moderate
/// JPEG quality (6 of 9) and zlib level 2, as the viewer uses (docs/performance.md);
/// ZRLE, CopyRect and Raw as fallbacks; resizes and LastRect. Not the cursor
/// pseudo-encoding: without it Xvnc draws the pointer into the picture, so a replay shows
/// where the person or agent pointed. The extended clipboard, so that Xvnc only notifies
/// the recorder that the desktop's clipboard changed (a client without it is sent the
/// text itself): the recorder never asks for it, and a recording holds no clipboard.
const ENCODINGS: &[i32] = &[
    rfb_wire::COPY_RECT,
    rfb_wire::TIGHT,
    rfb_wire::ZRLE,
    rfb_wire::RAW,
    rfb_wire::QUALITY_LEVEL_0 + 6,
    rfb_wire::COMPRESS_LEVEL_0 + 2,
    rfb_wire::DESKTOP_SIZE,
    rfb_wire::EXTENDED_DESKTOP_SIZE,
    rfb_wire::LAST_RECT,
    rfb_wire::EXTENDED_CLIPBOARD,
];

/// The wait before asking again after an update without pixels.
const NOTICE_RETRY: Duration = Duration::from_millis(10);

/// How often the recorder looks for a desktop when this server has none for the session.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Waits between attempts on a desktop whose connection failed or ended at once.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A handshake that does not finish in this time is given up (and retried).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What reaches the writer thread: a record's kind, when it happened (Unix ms), bytes.
pub(super) struct Entry {
    pub kind: u8,
    pub at_ms: u64,
    pub bytes: Vec<u8>,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a segment ended.
pub(super) enum SegmentEnd {
    /// The connection closed or failed (the desktop stopped, or Xvnc went away).
    Closed(String),
    /// The desktop is no longer this one (hibernating, stopped, another desktop).
    DesktopLeft,
    /// The writer stopped (size limit, a write error): the recording is over.
    WriterGone,
}

/// Whether the desktop followed by a status has left `handle` (a new segment is due). A
/// browser restarting inside the same desktop keeps the segment: the screen is the same.
fn left(status: &DesktopStatus, handle: &Arc<DesktopHandle>) -> bool {
    match status {
        DesktopStatus::Ready(h) | DesktopStatus::Restarting(h) => !Arc::ptr_eq(h, handle),
        DesktopStatus::Queued(_)
        | DesktopStatus::Starting(_)
        | DesktopStatus::Resuming(_)
        | DesktopStatus::Hibernating
        | DesktopStatus::Hibernated
        | DesktopStatus::Failed(_)
        | DesktopStatus::Stopped => true,
    }
}

/// Waits until the session's desktop is ready on this server, without asking for it.
/// Returns the desktop and the subscription to its status.
pub(super) async fn next_ready(
    desktops: &Desktops,
    id: &str,
) -> (Arc<DesktopHandle>, watch::Receiver<DesktopStatus>) {
    loop {
        if let Some(mut rx) = desktops.follow(id) {
            loop {
                let ready = match &*rx.borrow_and_update() {
                    DesktopStatus::Ready(handle) => Some(handle.clone()),
                    _ => None,
                };
                if let Some(handle) = ready {
                    return (handle, rx);
                }
                // The slot went away (the desktop stopped): look again for the next one.
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// A growing wait between failed attempts, reset by a segment that lasted.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Self(RETRY_FIRST)
    }

    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted > RETRY_MAX * 2 {
            self.0 = RETRY_FIRST;
        }
        let wait = self.0;
        self.0 = (self.0 * 2).min(RETRY_MAX);
        wait
    }
}

/// The handshake, as a client that has read `buf` so far: what it waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    SecurityTypes,
    SecurityResult,
    ServerInit,
    Normal,
}

/// The client side of one segment's connection.
struct Client {
    phase: Phase,
    /// Handshake bytes not yet acted on.
    buf: Vec<u8>,
    framing: Framing,
    events: Vec<Event>,
    width: u16,
    height: u16,
    /// An update finished; the next request is sent at `next_request`.
    request_due: bool,
    next_request: Instant,
}

impl Client {
    fn new() -> Self {
        Self {
            phase: Phase::Version,
            buf: Vec::new(),
            framing: Framing::new(),
            events: Vec::new(),
            width: 0,
            height: 0,
            request_due: false,
            next_request: Instant::now(),
        }
    }

    /// Acts on bytes from the server; returns what to send back.
    fn receive(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut reply = Vec::new();
        if self.phase == Phase::Normal {
            self.on_messages(data, &mut reply)?;
            return Ok(reply);
        }
        self.buf.extend_from_slice(data);
        loop {
            let b = &self.buf;
            let used = match self.phase {
                Phase::Version if b.len() >= 12 => {
                    if !b.starts_with(b"RFB 003.") {
                        return Err("the desktop's VNC server does not speak RFB 3".into());
                    }
                    reply.extend_from_slice(b"RFB 003.008\n");
                    self.phase = Phase::SecurityTypes;
                    12
                }
                Phase::SecurityTypes if !b.is_empty() && b.len() > usize::from(b[0]) => {
                    let types = &b[1..=usize::from(b[0])];
                    if !types.contains(&1) {
                        return Err(format!(
                            "the desktop's VNC server offers no security type None: {types:?}"
                        ));
                    }
                    reply.push(1);
                    self.phase = Phase::SecurityResult;
                    1 + types.len()
                }
                Phase::SecurityResult if b.len() >= 4 => {
                    if b[..4] != [0, 0, 0, 0] {
                        return Err("the desktop's VNC server refused the connection".into());
                    }
                    reply.push(1); // ClientInit: shared
                    self.phase = Phase::ServerInit;
                    4
                }
                Phase::ServerInit if b.len() >= 24 => {
                    let name_len = u32::from_be_bytes([b[20], b[21], b[22], b[23]]) as usize;
                    if b.len() < 24 + name_len {
                        break;
                    }
                    self.width = u16::from_be_bytes([b[0], b[1]]);
                    self.height = u16::from_be_bytes([b[2], b[3]]);
                    reply.extend_from_slice(&rfb_wire::set_pixel_format());
                    reply.extend_from_slice(&rfb_wire::set_encodings(ENCODINGS));
                    reply.extend_from_slice(&rfb_wire::update_request(
                        false,
                        self.width,
                        self.height,
                    ));
                    self.phase = Phase::Normal;
                    24 + name_len
                }
                _ => break,
            };
            self.buf.drain(..used);
            if self.phase == Phase::Normal {
                let rest = std::mem::take(&mut self.buf);
                self.on_messages(&rest, &mut reply)?;
                break;
            }
        }
        Ok(reply)
    }

    fn on_messages(&mut self, data: &[u8], reply: &mut Vec<u8>) -> Result<(), String> {
        self.framing.feed(data, &mut self.events)?;
        for event in self.events.drain(..) {
            match event {
                Event::Update { pixel_rects, .. } => {
                    self.request_due = true;
                    self.next_request = if pixel_rects > 0 {
                        self.next_request.max(Instant::now())
                    } else {
                        // An update without pixels (a screen layout notice) uses up the
                        // request in Xvnc: the picture comes only after another, so it
                        // is asked for at once (a little later, in case notices repeat).
                        Instant::now() + NOTICE_RETRY
                    };
                }
                Event::Resize { width, height } => {
                    self.width = width;
                    self.height = height;
                }
                // Not asked for (no Fence pseudo-encoding); answered as noVNC would.
                Event::Fence { flags, payload } if flags & (1 << 31) != 0 => {
                    reply.extend_from_slice(&rfb_wire::fence_response(flags, &payload));
                }
                Event::Fence { .. } | Event::EndOfContinuousUpdates => {}
            }
        }
        Ok(())
    }

    /// The next incremental request, if one is due now; the one after waits a frame.
    fn take_request(&mut self) -> Option<[u8; 10]> {
        if !self.request_due || Instant::now() < self.next_request {
            return None;
        }
        self.request_due = false;
        // The next one waits a frame, unless the answer to this one has no pixels.
        self.next_request = Instant::now() + Duration::from_secs(1) / MAX_FPS;
        Some(rfb_wire::update_request(true, self.width, self.height))
    }
}

/// Records one segment: a new connection to `handle`'s VNC server, every byte it sends
/// passed to the writer with the time it arrived, until the connection ends, the
/// desktop's status leaves this desktop, or the writer stops.
pub(super) async fn record_segment(
    handle: &Arc<DesktopHandle>,
    status: &mut watch::Receiver<DesktopStatus>,
    tx: &mpsc::Sender<Entry>,
) -> SegmentEnd {
    let stream: UnixStream = match handle.vnc_socket.connect().await {
        Ok(stream) => stream,
        Err(e) => {
            return SegmentEnd::Closed(format!(
                "could not connect to the desktop's VNC server: {e}"
            ));
        }
    };
    let entry = Entry {
        kind: format::SEGMENT,
        at_ms: now_ms(),
        bytes: Vec::new(),
    };
    if tx.send(entry).await.is_err() {
        return SegmentEnd::WriterGone;
    }
    let (mut rd, mut wr) = stream.into_split();
    let mut client = Client::new();
    let mut buf = vec![0u8; 64 * 1024];
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let wake = if client.request_due {
            client.next_request
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        let handshaking = client.phase != Phase::Normal;
        tokio::select! {
            read = rd.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return SegmentEnd::Closed("the desktop's VNC server closed the connection".into()),
                    Ok(n) => n,
                    Err(e) => return SegmentEnd::Closed(format!("reading from the desktop's VNC server: {e}")),
                };
                let entry = Entry { kind: format::DATA, at_ms: now_ms(), bytes: buf[..n].to_vec() };
                if tx.send(entry).await.is_err() {
                    return SegmentEnd::WriterGone;
                }
                let reply = match client.receive(&buf[..n]) {
                    Ok(reply) => reply,
                    Err(e) => return SegmentEnd::Closed(e),
                };
                if !reply.is_empty()
                    && let Err(e) = wr.write_all(&reply).await
                {
                    return SegmentEnd::Closed(format!("writing to the desktop's VNC server: {e}"));
                }
            }
            _ = tokio::time::sleep_until(wake), if client.request_due => {}
            _ = tokio::time::sleep_until(handshake_deadline), if handshaking => {
                return SegmentEnd::Closed("the desktop's VNC server did not finish the handshake".into());
            }
            changed = status.changed() => {
                if changed.is_err() || left(&status.borrow_and_update(), handle) {
                    return SegmentEnd::DesktopLeft;
                }
            }
        }
        if let Some(request) = client.take_request()
            && let Err(e) = wr.write_all(&request).await
        {
            return SegmentEnd::Closed(format!("writing to the desktop's VNC server: {e}"));
        }
    }
}

/// What the writer thread ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WriterEnd {
    /// Every sender went away (the recorder stopped): the file was finished.
    Finished,
    /// The size bound was reached: an END record was written and the file finished.
    SizeLimit,
    Failed(String),
}

/// The writer thread: writes entries as they come, flushes about once a second, ends the
/// recording at `max_bytes`. Runs on a blocking thread (compression is CPU work).
pub(super) fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Entry>,
    max_bytes: u64,
    id: &str,
) -> WriterEnd {
    let runtime = tokio::runtime::Handle::current();
    let result = (|| -> std::io::Result<WriterEnd> {
        loop {
            match runtime.block_on(tokio::time::timeout(format::FLUSH_EVERY, rx.recv())) {
                Ok(Some(entry)) => {
                    let t = writer.t_ms(entry.at_ms);
                    writer.write_record(entry.kind, t, &entry.bytes)?;
                    if entry.kind == format::END {
                        writer.finish()?;
                        return Ok(WriterEnd::Finished);
                    }
                    if writer.size() >= max_bytes {
                        tracing::warn!(session_id = %id, max_bytes, "the recording reached its size limit (--recording-max-mib); recording stops");
                        let t = writer.t_ms(now_ms());
                        writer.write_record(
                            format::END,
                            t,
                            b"the recording reached its size limit",
                        )?;
                        writer.finish()?;
                        return Ok(WriterEnd::SizeLimit);
                    }
                    writer.flush_if_due()?;
                }
                Ok(None) => {
                    writer.finish()?;
                    return Ok(WriterEnd::Finished);
                }
                Err(_) => writer.flush_if_due()?,
            }
        }
    })();
    result.unwrap_or_else(|e| WriterEnd::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_is_novncs_and_updates_are_requested_one_at_a_time() {
        let mut c = Client::new();
        // Split at odd places: the greeting, the security types, the result, ServerInit.
        assert_eq!(c.receive(b"RFB 003.0").unwrap(), b"");
        assert_eq!(c.receive(b"08\n\x01").unwrap(), b"RFB 003.008\n");
        assert_eq!(c.receive(b"\x01").unwrap(), [1]);
        assert_eq!(c.receive(&[0, 0, 0, 0]).unwrap(), [1]);
        let mut init = vec![0x05, 0x00, 0x02, 0xd0];
        init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        init.extend_from_slice(&3u32.to_be_bytes());
        init.extend_from_slice(b"abc");
        // The first update arrives with ServerInit.
        init.extend_from_slice(&[0, 0, 0, 0]);
        let reply = c.receive(&init).unwrap();
        assert_eq!(&reply[..20], &rfb_wire::set_pixel_format());
        assert_eq!(
            &reply[reply.len() - 10..],
            &rfb_wire::update_request(false, 1280, 720)
        );
        assert_eq!(c.phase, Phase::Normal);
        // An update without pixels (a layout notice, here empty) completed: the next
        // request follows at once (after a few ms), then not again until an update.
        std::thread::sleep(NOTICE_RETRY * 2);
        let request = c.take_request().expect("due");
        assert_eq!(request, rfb_wire::update_request(true, 1280, 720));
        assert!(c.take_request().is_none());
        // An update with pixels (one Raw pixel): the next request waits a frame.
        let mut update = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        update.extend_from_slice(&[1, 2, 3, 0]);
        c.receive(&update).unwrap();
        assert!(c.take_request().is_none(), "at most {MAX_FPS} a second");
        std::thread::sleep(Duration::from_secs(1) / MAX_FPS);
        assert!(c.take_request().is_some());
    }

    #[test]
    fn a_server_without_security_none_is_refused() {
        let mut c = Client::new();
        c.receive(b"RFB 003.008\n").unwrap();
        assert!(c.receive(&[1, 2]).is_err());
    }
}
