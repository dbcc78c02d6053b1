//! `bench start`: from `POST /api/sessions` to the first frame, read through the VNC
//! proxy, in which the start page (a solid colour) covers half the screen. Cold (no warm
//! pool); warm (`--warm-desktops 2`, the pool refilled before each run) with the page as
//! the session's `start_url`; and warm with the page as the server's `--start-url` and
//! none in the POST (warm desktops already show the server's start page).

use std::time::{Duration, Instant};

use super::pages::{PageServer, SOLID_RGB};
use super::report::{Table, fmt_ms};
use super::server::{Server, warm_pool_default};
use super::stats::Summary;
use super::{Options, open_session, progress};

pub const WARM_POOL: usize = 2;

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: &'static str,
    pub flags: String,
    /// Milliseconds from the POST to the drawn frame, or why there are none.
    pub result: Result<Summary, String>,
    /// Milliseconds from the POST to its answer, and to the RFB handshake's end.
    pub created: Summary,
    pub handshake: Summary,
}

#[derive(Debug, Clone)]
pub struct StartReport {
    pub variants: Vec<Variant>,
}

impl StartReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "Start",
            "Server flags",
            "Runs",
            "p50",
            "p95",
            "min",
            "max",
            "p50: POST answered / RFB handshake done",
        ]);
        for v in &self.variants {
            let mut row = vec![v.name.to_owned(), format!("`{}`", v.flags)];
            match &v.result {
                Ok(s) => row.extend([
                    s.count.to_string(),
                    fmt_ms(s.p50),
                    fmt_ms(s.p95),
                    fmt_ms(s.min),
                    fmt_ms(s.max),
                    format!("{} / {}", fmt_ms(v.created.p50), fmt_ms(v.handshake.p50)),
                ]),
                Err(e) => row.push(e.clone()),
            }
            t.row(row);
        }
        t
    }
}

pub async fn run(options: &Options) -> Result<StartReport, String> {
    let runs = options.runs.unwrap_or(if options.quick { 3 } else { 10 });
    let pages = PageServer::start().await?;
    let mut variants = vec![variant(options, &pages, "cold", 0, false, runs).await];
    for (name, server_page) in [("warm", false), ("warm, server's start page", true)] {
        variants.push(if warm_pool_default().is_some() {
            variant(options, &pages, name, WARM_POOL, server_page, runs).await
        } else {
            Variant {
                name,
                flags: format!("--warm-desktops {WARM_POOL}"),
                result: Err("not available: this build has no --warm-desktops".into()),
                created: Summary::default(),
                handshake: Summary::default(),
            }
        });
    }
    Ok(StartReport { variants })
}

async fn variant(
    options: &Options,
    pages: &PageServer,
    name: &'static str,
    warm: usize,
    server_page: bool,
    runs: usize,
) -> Variant {
    let mut flags = if warm_pool_default().is_some() {
        vec!["--warm-desktops".to_owned(), warm.to_string()]
    } else {
        Vec::new()
    };
    let page = pages.url("solid");
    if server_page {
        flags.extend(["--start-url".to_owned(), page.clone()]);
    }
    let (mut created_ms, mut handshake_ms) = (Vec::new(), Vec::new());
    let result = async {
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = Server::start(&options.server_flags(pages, &refs)).await?;
        let mut times = Vec::new();
        for run in 1..=runs {
            let waited = server.settle(Duration::from_secs(120)).await;
            // Let the last desktop's stop (or the pool's last start) finish.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (created, rfb, opened) =
                open_session(&server, (!server_page).then_some(&*page), SOLID_RGB).await?;
            let ms = opened.drawn.as_secs_f64() * 1000.0;
            created_ms.push(opened.created.as_secs_f64() * 1000.0);
            handshake_ms.push(opened.handshake.as_secs_f64() * 1000.0);
            let pool = if warm > 0 {
                format!(
                    " (after {:.1} s waiting for the pool to fill)",
                    waited.as_secs_f64()
                )
            } else {
                String::new()
            };
            progress(format!(
                "  start ({name}) run {run}/{runs}: {ms:.0} ms{pool}"
            ));
            times.push(ms);
            drop(rfb);
            let stopping = Instant::now();
            server.revoke(&created.id).await;
            // The revoke returns before the desktop is gone; wait for it.
            while server.desktop_dir(&created.id).is_some()
                && stopping.elapsed() < Duration::from_secs(15)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        server.stop().await;
        Ok(Summary::of(&times))
    }
    .await;
    Variant {
        name,
        flags: if flags.is_empty() {
            "(defaults)".into()
        } else {
            flags.join(" ").replace(&page, "<page>")
        },
        result,
        created: Summary::of(&created_ms),
        handshake: Summary::of(&handshake_ms),
    }
}
