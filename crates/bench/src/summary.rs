//! The report of a whole run (`bench all`): the headline figures beside the issue's
//! goals, then every benchmark's own table.

use std::fmt::Write as _;
use std::time::Duration;

use super::capacity::CapacityReport;
use super::cdp::{self, CdpReport};
use super::memory::MemoryReport;
use super::proxy::{ProxyReport, Via};
use super::report::{Table, fmt_mib, fmt_ms, machine};
use super::scroll::{self, Mode, ScrollReport};
use super::start::StartReport;
use super::tasks::TasksReport;

const SCROLLING: &str = "Scrolling";
const CDP: &str = "DevTools (CDP): gateway and direct, alternating rounds";
const TASKS: &str = "Tasks";

/// Everything one `bench all` measured.
#[derive(Debug, Default)]
pub struct Report {
    pub quick: bool,
    /// /proc/loadavg's 1- and 5-minute figures when the run began: anything else busy on
    /// the machine shows in every figure.
    pub load_at_start: String,
    pub elapsed: Duration,
    pub proxy: Option<Result<ProxyReport, String>>,
    pub start: Option<Result<StartReport, String>>,
    pub memory: Option<Result<MemoryReport, String>>,
    pub scroll: Option<Result<ScrollReport, String>>,
    pub cdp: Option<Result<CdpReport, String>>,
    pub tasks: Option<Result<TasksReport, String>>,
    pub capacity: Option<Result<CapacityReport, String>>,
}

fn met(ok: bool) -> String {
    if ok { "yes" } else { "**no**" }.into()
}

impl Report {
    /// The headline figures beside the goals.
    pub fn summary(&self) -> Table {
        let mut t = Table::new(["Measure", "Result", "Goal", "Met"]);
        let failed =
            |t: &mut Table, what: &str, e: &str| t.row([what.into(), format!("failed: {e}")]);
        match &self.proxy {
            Some(Ok(p)) => proxy_summary(&mut t, p),
            Some(Err(e)) => failed(&mut t, "VNC proxy", e),
            None => {}
        }
        match &self.start {
            Some(Ok(s)) => {
                for v in &s.variants {
                    let goal = if v.name == "cold" { 700.0 } else { 100.0 };
                    let what = format!("Session start, {} (POST → page drawn)", v.name);
                    match &v.result {
                        Ok(r) => t.row([
                            what,
                            format!(
                                "p50 {}, p95 {} ({} runs)",
                                fmt_ms(r.p50),
                                fmt_ms(r.p95),
                                r.count
                            ),
                            format!("≤ {goal:.0} ms p50"),
                            met(r.p50 <= goal),
                        ]),
                        Err(e) => {
                            t.row([what, e.clone(), format!("≤ {goal:.0} ms p50"), "—".into()])
                        }
                    }
                }
            }
            Some(Err(e)) => failed(&mut t, "Session start", e),
            None => {}
        }
        match &self.memory {
            Some(Ok(m)) => {
                let parts: Vec<String> = m
                    .by_size()
                    .iter()
                    .map(|(n, m)| format!("{n} {:.0}", m.pss as f64 / 1024.0))
                    .collect();
                let total = m.total();
                t.row([
                    "Idle desktop PSS, alone".into(),
                    format!(
                        "{} ({} MiB); USS {}",
                        fmt_mib(total.pss),
                        parts.join(", "),
                        fmt_mib(total.uss)
                    ),
                    "≤ 200 MiB".into(),
                    met(total.pss <= 200 * 1024),
                ]);
                let per: Vec<String> = m
                    .gateway
                    .iter()
                    .map(|g| format!("{:.1} KiB per {} connection", g.kib_each(), g.kind))
                    .collect();
                t.row(["Gateway PSS per idle connection".into(), per.join(", ")]);
            }
            Some(Err(e)) => failed(&mut t, "Memory", e),
            None => {}
        }
        match &self.scroll {
            Some(Ok(s)) => {
                for r in &s.rows {
                    let (goal, ok) = if r.mode == Mode::Tight {
                        let fps = r.fps();
                        let ok = if fps >= 25.0 {
                            "yes (≥ 25)".into()
                        } else if fps >= 10.0 {
                            "≥ 10 only".into()
                        } else {
                            met(false)
                        };
                        ("≥ 10 fps, ≥ 25 where possible".to_owned(), ok)
                    } else {
                        (String::new(), String::new())
                    };
                    t.row([
                        format!(
                            "Scrolling 1280x720, {}{}",
                            r.mode.name(),
                            if r.mode == Mode::Raw {
                                String::new()
                            } else {
                                format!(" q{} c{}", scroll::QUALITY, scroll::COMPRESSION)
                            }
                        ),
                        format!("{:.1} fps, {:.2} MB/s", r.fps(), r.mb_per_s()),
                        goal,
                        ok,
                    ]);
                }
            }
            Some(Err(e)) => failed(&mut t, "Scrolling", e),
            None => {}
        }
        match &self.cdp {
            Some(Ok(c)) => cdp_summary(&mut t, c),
            Some(Err(e)) => failed(&mut t, "DevTools (CDP)", e),
            None => {}
        }
        match &self.tasks {
            Some(Ok(r)) => tasks_summary(&mut t, r),
            Some(Err(e)) => failed(&mut t, "Tasks", e),
            None => {}
        }
        match &self.capacity {
            Some(Ok(c)) => t.row([
                "Concurrent live sessions (each getting frames)".into(),
                format!(
                    "{}{} (stopped: {}); every viewer ≥ 10 updates/s up to {}, ≥ 25 up to {}; \
                     {} PSS per desktop with all running",
                    if c.bounded { "≥ " } else { "" },
                    c.held,
                    c.stop_reason,
                    c.held_at_10,
                    c.held_at_25,
                    fmt_mib(c.desktop_pss_kib.p50 as u64)
                ),
            ]),
            Some(Err(e)) => failed(&mut t, "Capacity", e),
            None => {}
        }
        t
    }

    /// The generated section: when, where, the summary and every detail table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let now = time::OffsetDateTime::now_utc();
        let _ = writeln!(
            out,
            "Generated by `livesession bench all{}` on {:04}-{:02}-{:02} {:02}:{:02} UTC ({:.0} s).\n",
            if self.quick { " --quick" } else { "" },
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "Machine: {}. Load average when the run began: {} (1 and 5 min).\n",
            machine(),
            self.load_at_start
        );
        out.push_str(&self.summary().render());
        let details: [(&str, Option<Result<Table, String>>); 7] = [
            (
                "VNC proxy, Raw 1280x720 full-screen updates",
                self.proxy
                    .as_ref()
                    .map(|r| r.as_ref().map(ProxyReport::table).map_err(Clone::clone)),
            ),
            (
                "Session start",
                self.start
                    .as_ref()
                    .map(|r| r.as_ref().map(StartReport::table).map_err(Clone::clone)),
            ),
            (
                "Memory",
                self.memory
                    .as_ref()
                    .map(|r| r.as_ref().map(MemoryReport::table).map_err(Clone::clone)),
            ),
            (
                SCROLLING,
                self.scroll
                    .as_ref()
                    .map(|r| r.as_ref().map(ScrollReport::table).map_err(Clone::clone)),
            ),
            (
                CDP,
                self.cdp
                    .as_ref()
                    .map(|r| r.as_ref().map(CdpReport::table).map_err(Clone::clone)),
            ),
            (
                TASKS,
                self.tasks
                    .as_ref()
                    .map(|r| r.as_ref().map(TasksReport::table).map_err(Clone::clone)),
            ),
            (
                "Capacity",
                self.capacity
                    .as_ref()
                    .map(|r| r.as_ref().map(CapacityReport::table).map_err(Clone::clone)),
            ),
        ];
        for (title, table) in details {
            match table {
                Some(Ok(t)) => {
                    let _ = write!(out, "\n#### {title}\n\n{}", t.render());
                    if title == SCROLLING {
                        let _ = writeln!(out, "\n{}", scroll::encodings_note());
                    }
                    if title == CDP
                        && let Some(Ok(c)) = &self.cdp
                    {
                        let _ = writeln!(out, "\n{}", c.note());
                    }
                    if title == TASKS
                        && let Some(Ok(r)) = &self.tasks
                    {
                        let _ = writeln!(out, "\n{}", r.note());
                    }
                }
                Some(Err(e)) => {
                    let _ = writeln!(out, "\n#### {title}\n\nFailed: {e}");
                }
                None => {}
            }
        }
        out
    }
}

fn cdp_summary(t: &mut Table, c: &CdpReport) {
    let added = c.added_p50();
    t.row([
        "CDP Runtime.evaluate round trip, p50, gateway vs direct".into(),
        format!(
            "{:+.3} ms ({:.3} vs {:.3} ms; p99 {:.3} vs {:.3} ms)",
            added,
            c.gateway.evaluate.p50,
            c.direct.evaluate.p50,
            c.gateway.evaluate.p99,
            c.direct.evaluate.p99
        ),
        format!("≤ direct + {} ms", cdp::GOAL_ADDED_P50_MS),
        met(added <= cdp::GOAL_ADDED_P50_MS),
    ]);
    let ratio = c.screenshot_ratio();
    t.row([
        format!(
            "CDP Page.captureScreenshot PNG {}x{}, gateway vs direct",
            cdp::WIDTH,
            cdp::HEIGHT
        ),
        format!(
            "{ratio:.3}× ({:.2} vs {:.2} screenshots/s)",
            c.gateway.screenshots_per_s(),
            c.direct.screenshots_per_s()
        ),
        format!("≥ {:.2}× direct", cdp::GOAL_SCREENSHOT_RATIO),
        met(ratio >= cdp::GOAL_SCREENSHOT_RATIO),
    ]);
}

/// The issue names no goal for tasks: figures only.
fn tasks_summary(t: &mut Table, r: &TasksReport) {
    for row in &r.throughput {
        t.row([
            format!(
                "Steps tasks per minute, {} runners: {}",
                row.runners, row.steps
            ),
            format!(
                "{:.0} per minute; each created → succeeded p50 {}, p99 {} ({} tasks)",
                row.per_minute(),
                fmt_ms(row.latency.p50),
                fmt_ms(row.latency.p99),
                row.succeeded
            ),
        ]);
    }
    let s = &r.steps;
    t.row([
        "Steps runner per step against raw CDP (`assert_text`)".into(),
        format!(
            "{} vs {} ({:+.2} ms); raw evaluate + thumbnail {}",
            fmt_ms(s.runner_mean),
            fmt_ms(s.raw_evaluate_mean),
            s.runner_mean - s.raw_evaluate_mean,
            fmt_ms(s.raw_thumbnail_mean)
        ),
    ]);
    let c = &r.claims;
    t.row([
        format!("Worker claim with {} tasks queued", c.queued),
        format!(
            "p50 {}, p99 {} (first {} claims); {:.0} creates/s",
            fmt_ms(c.deep.p50),
            fmt_ms(c.deep.p99),
            c.deep.count,
            c.creates_per_s
        ),
    ]);
}

fn proxy_summary(t: &mut Table, p: &ProxyReport) {
    for (conns, goal) in [(1, 0.95), (8, 0.90)] {
        let (Some(ours), Some(direct)) =
            (p.row(Via::Livesession, conns), p.row(Via::Direct, conns))
        else {
            continue;
        };
        let ratio = ours.mb_per_s() / direct.mb_per_s();
        let websockify = p
            .ratio(Via::Websockify, conns)
            .map_or(String::new(), |x| format!("; websockify {x:.2}×"));
        t.row([
            format!(
                "Proxy throughput, {conns} connection{}",
                if conns > 1 { "s" } else { "" }
            ),
            format!(
                "{:.2}× direct ({:.0} of {:.0} MB/s){websockify}",
                ratio,
                ours.mb_per_s(),
                direct.mb_per_s()
            ),
            format!("≥ {goal:.2}×"),
            met(ratio >= goal),
        ]);
    }
    if let Some(added) = p.added_p50(Via::Livesession, 1) {
        let websockify = p
            .added_p50(Via::Websockify, 1)
            .map_or(String::new(), |a| format!("; websockify +{}", fmt_ms(a)));
        t.row([
            "Proxy latency added per full update, p50, 1 connection".into(),
            format!("+{}{websockify}", fmt_ms(added)),
            "≤ 0.3 ms".into(),
            met(added <= 0.3),
        ]);
    }
    let mut cpu = Vec::new();
    let mut all_met = true;
    for conns in [1, 8] {
        let ours = p
            .row(Via::Livesession, conns)
            .and_then(|r| r.proxy_cpu_per_gb());
        let theirs = p
            .row(Via::Websockify, conns)
            .and_then(|r| r.proxy_cpu_per_gb());
        if let Some(ours) = ours {
            let vs = theirs.map_or(String::new(), |w| {
                all_met &= ours <= w / 4.0;
                format!(" vs websockify {w:.2} ({:.2}×)", ours / w)
            });
            cpu.push(format!("{conns} conn: {ours:.2} s/GB{vs}"));
        }
    }
    if !cpu.is_empty() {
        let has_websockify = p.websockify.is_ok();
        t.row([
            "Proxy CPU per GB moved".into(),
            cpu.join("; "),
            "≤ ¼ of websockify's".into(),
            if has_websockify {
                met(all_met)
            } else {
                "—".into()
            },
        ]);
    }
}
