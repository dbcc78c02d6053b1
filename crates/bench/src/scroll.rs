//! `bench scroll`: what a viewer gets while a page scrolls continuously. The client
//! connects through livesession's proxy and behaves like noVNC as web/static/vnc.js
//! configures it (noVNC's encodings list, qualityLevel 6, compressionLevel 2; continuous
//! updates and fences when the server offers them, an incremental request after each
//! update otherwise) but only frames the updates. Tight (noVNC's own list), ZRLE (the same
//! list without Tight) and Raw, for comparison.

use std::time::{Duration, Instant};

use super::client::{FramingClient, Transport, connect_ws, rfb_over_ws};
use super::pages::PageServer;
use super::report::Table;
use super::server::Server;
use super::wire::{self, Event};
use super::{Options, progress};

/// What web/static/vnc.js sets (also noVNC's defaults in core/rfb.js).
pub const QUALITY: i32 = 6;
pub const COMPRESSION: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tight,
    Zrle,
    Raw,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tight => "Tight (noVNC's list)",
            Mode::Zrle => "ZRLE",
            Mode::Raw => "Raw",
        }
    }

    /// The SetEncodings list: noVNC's (`_sendEncodings`, without H.264, which needs
    /// WebCodecs and which this Xvnc does not offer), preference order first.
    pub fn encodings(self) -> Vec<i32> {
        use wire::*;
        let mut list = match self {
            Mode::Tight => vec![
                COPY_RECT, TIGHT, TIGHT_PNG, ZRLE, JPEG, HEXTILE, RRE, ZLIB, RAW,
            ],
            Mode::Zrle => vec![COPY_RECT, ZRLE, JPEG, HEXTILE, RRE, ZLIB, RAW],
            Mode::Raw => vec![RAW],
        };
        list.extend([
            QUALITY_LEVEL_0 + QUALITY,
            COMPRESS_LEVEL_0 + COMPRESSION,
            DESKTOP_SIZE,
            LAST_RECT,
            QEMU_EXTENDED_KEY,
            QEMU_LED,
            EXTENDED_DESKTOP_SIZE,
            XVP,
            FENCE,
            CONTINUOUS_UPDATES,
            DESKTOP_NAME,
            EXTENDED_CLIPBOARD,
            EXTENDED_MOUSE_BUTTONS,
            VMWARE_CURSOR,
            CURSOR,
        ]);
        list
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub mode: Mode,
    pub bytes: u64,
    pub updates: u64,
    /// Pixels the updates covered, and the screen's size.
    pub pixels: u64,
    pub screen: u64,
    pub seconds: f64,
    /// The page's own requestAnimationFrame rate meanwhile.
    pub page_fps: Option<f64>,
    pub continuous: bool,
    /// Pixel rectangles by encoding name.
    pub rects: Vec<(String, u64)>,
}

impl Row {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    pub fn updates_per_s(&self) -> f64 {
        self.updates as f64 / self.seconds.max(1e-9)
    }

    /// Screens' worth of pixels updated per second: the frame rate the viewer sees when
    /// every frame changes the whole screen, as scrolling does, whether the server sends a
    /// frame in one update or in several.
    pub fn fps(&self) -> f64 {
        self.pixels as f64 / self.screen.max(1) as f64 / self.seconds.max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct ScrollReport {
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// What the viewer-like client asks for, in words.
pub fn encodings_note() -> String {
    let names = |mode: Mode| {
        mode.encodings()
            .iter()
            .filter(|e| wire::is_pixel_encoding(**e))
            .map(|e| wire::encoding_name(*e))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Encodings asked for, in order: {} (Tight mode, as noVNC 1.x does without WebCodecs \
         H.264), {} (ZRLE mode), Raw; with quality level {QUALITY}, compression level \
         {COMPRESSION}, and pseudo-encodings for cursor, desktop size, LastRect, fences and \
         continuous updates. Frames/s counts screens' worth of pixels updated per second.",
        names(Mode::Tight),
        names(Mode::Zrle)
    )
}

impl ScrollReport {
    pub fn row(&self, mode: Mode) -> Option<&Row> {
        self.rows.iter().find(|r| r.mode == mode)
    }

    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "Scrolling, encoding",
            "Bandwidth",
            "Frames/s (screens)",
            "Updates/s",
            "Page frames/s",
            "Rects sent as",
            "Continuous updates",
        ]);
        for r in &self.rows {
            let total: u64 = r.rects.iter().map(|(_, n)| n).sum();
            let rects = r
                .rects
                .iter()
                .map(|(name, n)| format!("{name} {:.0} %", *n as f64 * 100.0 / total.max(1) as f64))
                .collect::<Vec<_>>()
                .join(", ");
            t.row([
                r.mode.name().to_owned(),
                format!("{:.2} MB/s", r.mb_per_s()),
                format!("{:.1}", r.fps()),
                format!("{:.1}", r.updates_per_s()),
                r.page_fps.map_or("—".into(), |f| format!("{f:.1}")),
                rects,
                if r.continuous { "yes" } else { "no" }.to_owned(),
            ]);
        }
        t
    }
}

pub async fn run(options: &Options) -> Result<ScrollReport, String> {
    let seconds = options.seconds(10.0, 3.0);
    let warmup = Duration::from_secs(if options.quick { 1 } else { 2 });
    let pages = PageServer::start().await?;
    let server = Server::start(&options.server_flags(&pages, &[])).await?;
    server.settle(Duration::from_secs(120)).await;
    progress("  scroll: starting a desktop on the scrolling page");
    let created = server.create_session(Some(&pages.url("scrolling"))).await?;
    // A first connection starts the desktop; the page then reports that it loaded.
    let ws = connect_ws(&created.vnc_url, Some(&created.token))
        .await
        .map_err(|e| e.to_string())?;
    let starter = rfb_over_ws(ws).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pages.loaded("scrolling") == 0 {
        if Instant::now() > deadline {
            return Err("the scrolling page did not load within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(starter);
    server.settle(Duration::from_secs(120)).await;

    let mut rows = Vec::new();
    for mode in [Mode::Tight, Mode::Zrle, Mode::Raw] {
        progress(format!(
            "  scroll: {} for {:.0} s",
            mode.name(),
            seconds.as_secs_f64()
        ));
        let ws = connect_ws(&created.vnc_url, Some(&created.token))
            .await
            .map_err(|e| e.to_string())?;
        let client = FramingClient::handshake(Transport::Ws(Box::new(ws)), &mode.encodings())
            .await
            .map_err(|e| e.to_string())?;
        rows.push(
            view(mode, client, warmup, seconds, &pages)
                .await
                .map_err(|e| format!("{}: {e}", mode.name()))?,
        );
    }
    server.stop().await;
    Ok(ScrollReport {
        rows,
        seconds: seconds.as_secs_f64(),
    })
}

/// Views like noVNC for `warmup`, then counts bytes and updates for `duration`.
async fn view(
    mode: Mode,
    mut c: FramingClient,
    warmup: Duration,
    duration: Duration,
    pages: &PageServer,
) -> std::io::Result<Row> {
    c.request(false).await?;
    let mut continuous = false;
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let (mut bytes, mut updates, mut area) = (0u64, 0u64, 0u64);
    loop {
        let next = tokio::time::timeout_at(end.into(), c.next_events()).await;
        let Ok(next) = next else { break };
        let (n, events) = next?;
        let measuring = Instant::now() >= measure_from;
        if measuring {
            bytes += n as u64;
        }
        for event in events {
            match event {
                Event::Update {
                    pixel_rects,
                    pixels,
                } => {
                    if measuring && pixel_rects > 0 {
                        updates += 1;
                        area += pixels;
                    }
                    if !continuous {
                        c.request(true).await?;
                    }
                }
                Event::Fence { flags, payload } if flags & (1 << 31) != 0 => {
                    c.transport
                        .send(&wire::fence_response(flags, &payload))
                        .await?;
                }
                Event::EndOfContinuousUpdates if !continuous => {
                    continuous = true;
                    let msg = wire::enable_continuous_updates(c.width, c.height);
                    c.transport.send(&msg).await?;
                }
                _ => {}
            }
        }
    }
    let seconds = duration.as_secs_f64();
    Ok(Row {
        mode,
        bytes,
        updates,
        pixels: area,
        screen: u64::from(c.width) * u64::from(c.height),
        seconds,
        page_fps: pages.page_fps(measure_from, end),
        continuous,
        rects: c
            .framing
            .rects_by_encoding
            .iter()
            .map(|(e, n)| (wire::encoding_name(*e), *n))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encodings_note_names_every_pixel_encoding() {
        let note = encodings_note();
        assert!(note.starts_with("Encodings asked for, in order: CopyRect, Tight, TightPNG, ZRLE"));
        assert!(!note.contains("encoding "), "{note}");
        assert_eq!(Mode::Tight.encodings()[1], wire::TIGHT);
        assert!(!Mode::Zrle.encodings().contains(&wire::TIGHT));
        assert!(Mode::Raw.encodings().contains(&wire::CONTINUOUS_UPDATES));
    }
}
