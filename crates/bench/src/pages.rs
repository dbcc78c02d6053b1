//! A loopback page server with the pages desktops open during benchmarks. Sandboxed
//! desktops reach it because the server under test gets `--desktop-host-ports <port>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;

/// A solid page; a frame shows it once most of the screen has its colour.
pub const SOLID_RGB: (u8, u8, u8) = (255, 0, 255);
const SOLID: &str = r#"<!doctype html><html><head><title>bench: solid</title>
<style>html,body{margin:0;height:100%;background:rgb(255,0,255)}</style></head>
<body><script>fetch('/loaded?page=solid')</script></body></html>"#;

/// Mostly green, with a counter ticking ten times a second and a box moving across.
pub const ANIMATED_RGB: (u8, u8, u8) = (0, 160, 80);
const ANIMATED: &str = r#"<!doctype html><html><head><title>bench: animated</title>
<style>html,body{margin:0;height:100%;overflow:hidden;background:rgb(0,160,80)}
#n{font:bold 64px sans-serif;color:#fff;margin:40px}
#b{position:absolute;top:220px;left:0;width:120px;height:120px;background:#fff;
animation:m 2s linear infinite alternate}@keyframes m{to{left:1100px}}</style></head>
<body><div id="n">0</div><div id="b"></div><script>
let n = 0; setInterval(() => { document.getElementById('n').textContent = ++n; }, 100);
fetch('/loaded?page=animated');
</script></body></html>"#;

/// A long page of coloured blocks of text that scrolls by itself on every animation frame
/// and reports how many frames it drew.
const SCROLLING: &str = r#"<!doctype html><html><head><title>bench: scrolling</title>
<style>body{margin:0;font:18px/1.5 sans-serif}.b{height:220px;padding:16px;overflow:hidden}</style>
</head><body><script>
const colours = ['#f4d35e', '#ee964b', '#f95738', '#0d3b66', '#faf0ca', '#83c5be', '#264653'];
for (let i = 0; i < 200; i++) {
  const d = document.createElement('div');
  d.className = 'b';
  d.style.background = colours[i % colours.length];
  d.style.color = i % colours.length === 3 || i % colours.length === 6 ? '#fff' : '#111';
  d.textContent = ('Block ' + i + ': the quick brown fox jumps over the lazy dog. ').repeat(14);
  document.body.appendChild(d);
}
let frames = 0;
function step() {
  window.scrollBy(0, 5);
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 2) window.scrollTo(0, 0);
  frames++;
  requestAnimationFrame(step);
}
requestAnimationFrame(step);
setInterval(() => fetch('/frames?n=' + frames), 500);
fetch('/loaded?page=scrolling');
</script></body></html>"#;

/// A signed-in page for the hibernation benchmark: on its first visit it stores a login
/// (a persistent cookie and a localStorage value) and shows orange; on every later visit
/// with both intact it shows green. A resumed desktop shows green only if its saved
/// state came back.
pub const LOGIN_FIRST_RGB: (u8, u8, u8) = (255, 140, 0);
pub const LOGIN_KEPT_RGB: (u8, u8, u8) = (0, 200, 0);
const LOGIN_STATE: &str = r#"<!doctype html><html><head><title>bench: login</title>
<style>html,body{margin:0;height:100%;background:rgb(255,140,0)}</style></head><body><h1 id="who"></h1><script>
const kept = document.cookie.includes('bench_login=') && localStorage.getItem('bench_login');
if (kept) {
  document.body.style.background = 'rgb(0,200,0)';
  document.documentElement.style.background = 'rgb(0,200,0)';
  document.getElementById('who').textContent = 'Signed in as ' + localStorage.getItem('bench_login');
} else {
  const user = 'user-' + Math.random().toString(36).slice(2);
  document.cookie = 'bench_login=' + user + '; Max-Age=31536000; Path=/';
  localStorage.setItem('bench_login', user);
}
fetch('/loaded?page=login');
</script></body></html>"#;

#[derive(Default)]
struct Reports {
    loaded: HashMap<String, usize>,
    /// The scrolling page's frame counter, with when it arrived.
    frames: Vec<(Instant, u64)>,
}

pub struct PageServer {
    pub port: u16,
    reports: Arc<Mutex<Reports>>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub async fn start() -> Result<Self, String> {
        let reports = Arc::new(Mutex::new(Reports::default()));
        type Q = Query<HashMap<String, String>>;
        let app = axum::Router::new()
            .route("/solid", get(|| async { Html(SOLID) }))
            .route("/animated", get(|| async { Html(ANIMATED) }))
            .route("/scrolling", get(|| async { Html(SCROLLING) }))
            .route("/login", get(|| async { Html(LOGIN_STATE) }))
            .route(
                "/loaded",
                get(
                    |State(r): State<Arc<Mutex<Reports>>>, Query(q): Q| async move {
                        let page = q.get("page").cloned().unwrap_or_default();
                        *r.lock().unwrap().loaded.entry(page).or_default() += 1;
                        "ok"
                    },
                ),
            )
            .route(
                "/frames",
                get(
                    |State(r): State<Arc<Mutex<Reports>>>, Query(q): Q| async move {
                        if let Some(n) = q.get("n").and_then(|n| n.parse().ok()) {
                            r.lock().unwrap().frames.push((Instant::now(), n));
                        }
                        "ok"
                    },
                ),
            )
            .with_state(reports.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            port,
            reports,
            task,
        })
    }

    pub fn url(&self, page: &str) -> String {
        format!("http://127.0.0.1:{}/{page}", self.port)
    }

    /// The `serve` flags that let desktops open these pages.
    pub fn server_args(&self) -> Vec<String> {
        vec!["--desktop-host-ports".into(), self.port.to_string()]
    }

    /// How many times a page has told us it loaded.
    pub fn loaded(&self, page: &str) -> usize {
        self.reports
            .lock()
            .unwrap()
            .loaded
            .get(page)
            .copied()
            .unwrap_or(0)
    }

    /// The scrolling page's animation frames per second between two instants, from its
    /// reports (a report every 0.5 s).
    pub fn page_fps(&self, from: Instant, to: Instant) -> Option<f64> {
        let reports = self.reports.lock().unwrap();
        let within: Vec<&(Instant, u64)> = reports
            .frames
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .collect();
        let (first, last) = (within.first()?, within.last()?);
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        (seconds > 0.0).then(|| last.1.saturating_sub(first.1) as f64 / seconds)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
