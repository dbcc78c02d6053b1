// The viewer on slow links, measured (docs/performance.md, "Viewer on slow links").
//
//   node bench/link/run.mjs [--rates 5,20,100] [--rtts 20,80] [--seconds 8] [--keys 15]
//
// A real livesession server (target/debug/livesession, or LIVESESSION_BIN), one
// session whose remote page scrolls on demand and flips a full-screen colour on
// each key, and headless /usr/bin/chromium running (a) our viewer with its
// adaptation and (b) noVNC's defaults (quality 6, compression 2, through
// websockify to the desktop's vnc.sock), each through the link emulator
// (emulator.mjs) at every rate and round trip. Per case: frames drawn per
// second on the viewer's canvas while the page scrolls, bandwidth on the link,
// and key press → changed pixels p50/p95. Everything on 127.0.0.1.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import { REPO_ROOT, freePort, launchBrowser, startServer, waitFor } from '../../e2e/helpers.js';
import { startLink } from './emulator.mjs';

const { values: args } = parseArgs({
  options: {
    rates: { type: 'string', default: '5,20,100' },
    rtts: { type: 'string', default: '20,80' },
    seconds: { type: 'string', default: '8' },
    keys: { type: 'string', default: '15' },
    websockify: { type: 'string', default: path.join(REPO_ROOT, 'target/bench-venv/bin/websockify') },
  },
});
const RATES = args.rates.split(',').map(Number);
const RTTS = args.rtts.split(',').map(Number);
const SECONDS = Number(args.seconds);
const KEYS = Number(args.keys);
const log = (line) => console.error(`bench link: ${line}`);

// The remote page: text that scrolls while `s` was pressed last; `x` stops it
// and shows a full-screen panel whose colour flips on every other key.
const REMOTE_PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>link bench</title>
<style>body{margin:0;font:18px/1.5 serif}#panel{position:fixed;inset:0;background:rgb(255,0,0)}
p{margin:0;padding:6px 24px}</style></head><body><div id="panel"></div><div id="text"></div><script>
const colours=['#c0392b','#2471a3','#229954','#b7950b','#7d3c98','#ca6f1e'];
const text=document.getElementById('text');
for(let i=0;i<3000;i++){const p=document.createElement('p');p.style.background=colours[i%6]+'33';
p.textContent=i+' The quick brown fox jumps over the lazy dog, a line of ordinary text to scroll past. '+'lorem ipsum dolor sit amet '.repeat(2);text.appendChild(p);}
let scrolling=false,red=true;const panel=document.getElementById('panel');
function step(){if(!scrolling)return;window.scrollBy(0,5);if(window.scrollY+innerHeight>=document.body.scrollHeight-5)window.scrollTo(0,0);requestAnimationFrame(step);}
addEventListener('keydown',e=>{if(e.key==='s'){scrolling=true;panel.style.display='none';requestAnimationFrame(step);}
else if(e.key==='x'){scrolling=false;panel.style.display='block';}
else{red=!red;panel.style.background=red?'rgb(255,0,0)':'rgb(0,0,255)';}});
</script></body></html>`;

// Instruments any viewer page alike: frames drawn on the visible canvas, and
// key press (capture phase, before noVNC sees it) → the canvas' centre colour.
const INSTRUMENT = () => {
  const m = (window.__linkBench = { frames: 0, area: 0, probe: null, latencies: [] });
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  const probe = document.createElement('canvas');
  probe.width = probe.height = 1;
  const pctx = probe.getContext('2d', { willReadFrequently: true });
  CanvasRenderingContext2D.prototype.drawImage = function (...a) {
    const r = draw.apply(this, a);
    if (this.canvas.isConnected && this.canvas !== probe) {
      m.frames += 1;
      if (a.length === 9) m.area += a[7] * a[8];
      if (m.probe) {
        const c = this.canvas;
        draw.call(pctx, c, c.width >> 1, c.height >> 1, 1, 1, 0, 0, 1, 1);
        const [r0, , b0] = pctx.getImageData(0, 0, 1, 1).data;
        const isRed = r0 > 180 && b0 < 80;
        const isBlue = b0 > 180 && r0 < 80;
        if ((m.probe.wantRed && isRed) || (!m.probe.wantRed && isBlue)) {
          m.latencies.push(performance.now() - m.probe.t0);
          m.probe = null;
        }
      }
    }
    return r;
  };
  addEventListener('keydown', (e) => { if (m.armed) { m.probe = { t0: performance.now(), wantRed: m.armed.wantRed }; m.armed = null; } }, true);
};

function pageServer() {
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(REMOTE_PAGE);
  });
  return new Promise((r) => srv.listen(0, '127.0.0.1', () => r({ url: `http://127.0.0.1:${srv.address().port}/remote.html`, close: () => srv.close() })));
}

function baselineDir() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'link-bench-web-'));
  symlinkSync(path.join(REPO_ROOT, 'web/node_modules/@novnc/novnc'), path.join(dir, 'novnc'));
  // noVNC with its defaults (qualityLevel 6, compressionLevel 2), scaled to the window.
  writeFileSync(path.join(dir, 'baseline.html'), `<!doctype html><html><head><meta charset="utf-8"><style>html,body,#screen{margin:0;width:100%;height:100%}</style></head>
<body><div id="screen"></div><script type="module">
import RFB from './novnc/core/rfb.js';
const rfb = new RFB(document.getElementById('screen'), 'ws://' + location.host + '/websockify');
rfb.scaleViewport = true;
rfb.addEventListener('connect', () => { document.body.dataset.state = 'connected'; window.__rfb = rfb; });
</script></body></html>`);
  return dir;
}

function vncSocket(dataDir, id) {
  const candidates = [path.join(dataDir, 'desktops', id, 'run/vnc.sock')];
  if (existsSync('/run/livesession')) {
    for (const d of readdirSync('/run/livesession')) candidates.push(path.join('/run/livesession', d, id, 'run/vnc.sock'));
  }
  return candidates.find((p) => existsSync(p));
}

async function measure(page, link) {
  const canvas = page.locator('#screen canvas').first();
  await canvas.click({ position: { x: 5, y: 5 } }).catch(() => {});
  // Latency: the panel shows; each key flips its colour.
  await page.keyboard.press('x');
  await sleep(1500);
  let wantRed = true;
  // The panel is red after 'x' if an even number of flips happened; read it.
  await page.evaluate(() => { window.__linkBench.latencies = []; });
  for (let i = 0; i < KEYS; i += 1) {
    const current = await page.evaluate(() => {
      const c = document.querySelector('#screen canvas');
      const p = document.createElement('canvas'); p.width = p.height = 1;
      const x = p.getContext('2d', { willReadFrequently: true });
      x.drawImage(c, c.width >> 1, c.height >> 1, 1, 1, 0, 0, 1, 1);
      const d = x.getImageData(0, 0, 1, 1).data; return d[0] > 180 && d[2] < 80 ? 'red' : 'blue';
    });
    wantRed = current !== 'red';
    await page.evaluate((w) => { window.__linkBench.armed = { wantRed: w }; }, wantRed);
    await page.keyboard.press('a');
    await waitFor(() => page.evaluate(() => window.__linkBench.probe === null && window.__linkBench.armed === null), { timeoutMs: 5000, intervalMs: 20, what: 'the colour change' }).catch(() => {});
    await sleep(300);
  }
  const latencies = await page.evaluate(() => window.__linkBench.latencies);
  // Scrolling: 3 s to settle (and adapt), then SECONDS measured.
  await page.keyboard.press('s');
  await sleep(3000);
  const before = await page.evaluate(() => ({ ...window.__linkBench, t: performance.now() }));
  const bytes0 = link.bytes.down;
  await sleep(SECONDS * 1000);
  const after = await page.evaluate(() => ({ ...window.__linkBench, t: performance.now(), w: document.querySelector('#screen canvas').width, h: document.querySelector('#screen canvas').height, q: document.body.dataset.vncQuality ?? null, cu: window.__rfb?._enabledContinuousUpdates ?? null }));
  const bytes = link.bytes.down - bytes0;
  await page.keyboard.press('x');
  const secs = (after.t - before.t) / 1000;
  const sorted = [...latencies].sort((a, b) => a - b);
  const pct = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);
  return {
    fps: (after.frames - before.frames) / secs,
    screens: (after.area - before.area) / (after.w * after.h) / secs,
    bandwidth: (bytes * 8) / 1e6 / secs,
    p50: pct(50),
    p95: pct(95),
    keys: latencies.length,
    quality: after.q,
    size: `${after.w}x${after.h}`,
    // noVNC's own flag (baseline page only): continuous updates enabled after Xvnc's EndOfContinuousUpdates.
    continuous: after.cu,
  };
}

async function main() {
  const load = (await import('node:fs')).readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  log(`load average at start: ${load}`);
  const pages = await pageServer();
  const server = await startServer({ startUrl: pages.url });
  const browser = await launchBrowser();
  const rows = [];
  let websockify = null;
  let webDir = null;
  try {
    const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ start_url: pages.url }) });
    const session = await res.json();
    if (res.status !== 201) throw new Error(`POST /api/sessions: ${res.status} ${JSON.stringify(session)}`);
    const serverPort = Number(new URL(server.baseUrl).port);
    for (const rtt of RTTS) {
      for (const mbit of RATES) {
        for (const viewer of ['ours', 'novnc']) {
          if (viewer === 'novnc' && !websockify) {
            const sock = vncSocket(server.dataDir, session.id);
            if (!sock || !existsSync(args.websockify)) { log(`noVNC defaults not measured: ${sock ? '' : 'no vnc.sock found; '}${existsSync(args.websockify) ? '' : `no websockify at ${args.websockify}`}`); continue; }
            const port = await freePort();
            webDir = baselineDir();
            websockify = spawn(args.websockify, ['--web', webDir, `--unix-target=${sock}`, `127.0.0.1:${port}`], { stdio: 'ignore' });
            websockify.port = port;
            await sleep(1500);
          }
          const link = await startLink({ target: viewer === 'ours' ? serverPort : websockify.port, mbit, rttMs: rtt });
          const context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
          await context.addInitScript(INSTRUMENT);
          const page = await context.newPage();
          const url = viewer === 'ours' ? `http://127.0.0.1:${link.port}${new URL(session.viewer_url, server.baseUrl).pathname}#token=${session.refresh_token}` : `http://127.0.0.1:${link.port}/baseline.html`;
          log(`${viewer} at ${mbit} Mbit/s, ${rtt} ms`);
          await page.goto(url);
          await waitFor(() => page.evaluate(() => document.body.dataset.state === 'connected'), { timeoutMs: 90_000, what: `${viewer} connected` });
          await sleep(2000);
          const r = await measure(page, link);
          rows.push({ viewer, mbit, rtt, ...r });
          log(JSON.stringify(rows.at(-1)));
          await context.close();
          await link.close();
        }
      }
    }
  } finally {
    websockify?.kill('SIGTERM');
    if (webDir) rmSync(webDir, { recursive: true, force: true });
    await browser.close();
    await server.stop();
    pages.close();
  }
  const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '—');
  console.log(`\nLoad average at start: ${load}\n`);
  console.log('| Link | Viewer | Frames/s (canvas draws) | Screens/s | Bandwidth | Key → pixels p50 / p95 | Goal p50 (RTT + 40 ms) | Quality at end | Screen |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.mbit} Mbit/s, ${r.rtt} ms | ${r.viewer === 'ours' ? 'livesession (adaptive)' : 'noVNC defaults, websockify'} | ${f(r.fps)} | ${f(r.screens)} | ${f(r.bandwidth)} Mbit/s | ${f(r.p50, 0)} / ${f(r.p95, 0)} ms (${r.keys}) | ${r.rtt + 40} ms | ${r.quality ?? '6 (fixed)'} | ${r.size} |`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
