// Helpers for the end-to-end tests: the real livesession server binary, a
// loopback page for its desktops to open, and a headless Chromium.
//
// Everything listens on and talks to 127.0.0.1 only.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Belt and braces for "loopback only": no host name resolves except
  // localhost, so nothing in the browser can reach out by name.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
];

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Poll `fn` until it returns a truthy value or `timeoutMs` passes. `what`
 * describes the wait in the timeout error; a function is called only then,
 * so it can report the state at the end.
 */
export async function waitFor(fn, { timeoutMs, intervalMs = 250, what = 'condition' }) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last === undefined || last === null || last === false ? '' : ` (last: ${JSON.stringify(last)})`;
      const description = typeof what === 'function' ? what() : what;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}${detail}`);
    }
    await sleep(intervalMs);
  }
}

/** Keeps a child's output (the last `max` lines) for failure reports and checks. */
class LogTail {
  constructor(max = 20_000) {
    this.max = max;
    this.lines = [];
    this.partial = { stdout: '', stderr: '' };
  }

  push(stream, chunk) {
    const text = this.partial[stream] + chunk.toString('utf8');
    const parts = text.split('\n');
    this.partial[stream] = parts.pop();
    for (const line of parts) {
      this.lines.push(stream === 'stderr' ? `[err] ${line}` : line);
      if (this.lines.length > this.max) this.lines.shift();
    }
  }

  all() {
    const pending = Object.entries(this.partial)
      .filter(([, text]) => text)
      .map(([stream, text]) => (stream === 'stderr' ? `[err] ${text}` : text));
    return [...this.lines, ...pending];
  }

  tail(n = 80) {
    return this.all().slice(-n).join('\n');
  }
}

/**
 * Start `livesession serve` on a free loopback port with a fresh data
 * directory and wait until /healthz answers 200.
 *
 * `env` adds to (or overrides) the server's environment, e.g. the
 * LIVESESSION_STRIPE_* settings the payment tests pass.
 *
 * `port`, `dataDir` and `adminToken` start it again where an earlier server
 * (stopped with `stop({keepData: true})`) left off: same address, same
 * database and secrets.
 *
 * @param {{startUrl: string, env?: Record<string,string>, port?: number, dataDir?: string, adminToken?: string}} opts
 */
export async function startServer({ startUrl, env = {}, port: fixedPort, dataDir: existingDataDir, adminToken: fixedAdminToken }) {
  const bin = process.env.LIVESESSION_BIN ?? path.join(REPO_ROOT, 'target/debug/livesession');
  if (!existsSync(bin)) {
    throw new Error(`server binary not found at ${bin}: run \`cargo build -p livesession\` first (or set LIVESESSION_BIN)`);
  }
  const port = fixedPort ?? (await freePort());
  const dataDir = existingDataDir ?? (await mkdtemp(path.join(os.tmpdir(), 'livesession-e2e-')));
  const adminToken = fixedAdminToken ?? randomBytes(32).toString('hex');
  const baseUrl = `http://127.0.0.1:${port}`;
  const logs = new LogTail();
  // Desktops are sandboxed and reach nothing of this machine unless told: let them open
  // the test's own page server (and only it).
  const hostPorts = /^http:\/\/127\.0\.0\.1:(\d+)\//.exec(startUrl)?.[1];

  const child = spawn(bin, ['serve'], {
    cwd: dataDir,
    env: {
      ...process.env,
      LIVESESSION_LISTEN: `127.0.0.1:${port}`,
      LIVESESSION_DATA_DIR: dataDir,
      LIVESESSION_ADMIN_TOKEN: adminToken,
      LIVESESSION_START_URL: startUrl,
      LIVESESSION_LOG_FORMAT: 'json',
      ...(hostPorts ? { LIVESESSION_DESKTOP_HOST_PORTS: hostPorts } : {}),
      // No warm pool unless a test asks for one (the viewer test does): it only adds
      // load to a two-core machine running one desktop at a time.
      LIVESESSION_WARM_DESKTOPS: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (c) => logs.push('stdout', c));
  child.stderr.on('data', (c) => logs.push('stderr', c));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let exitStatus = null;
  // If this test process dies without stop() (a crash, Ctrl-C), don't leave
  // the server and its desktops running: SIGTERM makes it stop them.
  const killOnExit = () => child.kill('SIGTERM');
  process.once('exit', killOnExit);
  exited.then((s) => {
    exitStatus = s;
    process.off('exit', killOnExit);
  });

  const server = {
    baseUrl,
    port,
    adminToken,
    dataDir,
    process: child,
    tail: (n) => logs.tail(n),
    /** Everything the server printed so far, stdout and stderr interleaved. */
    output: () => logs.all().join('\n'),
    get exitStatus() {
      return exitStatus;
    },

    /** fetch() against the server; `path` is relative to baseUrl. */
    request(urlPath, init = {}) {
      return fetch(new URL(urlPath, baseUrl), { redirect: 'manual', ...init });
    },

    /** request() with the admin bearer token. */
    admin(urlPath, init = {}) {
      return server.request(urlPath, { ...init, headers: { Authorization: `Bearer ${adminToken}`, ...(init.headers ?? {}) } });
    },

    /** SIGTERM, wait up to 10 s, then SIGKILL; removes the data dir unless `keepData`. */
    async stop({ keepData = false } = {}) {
      if (exitStatus === null) {
        child.kill('SIGTERM');
        const killed = await Promise.race([exited, sleep(10_000).then(() => null)]);
        if (killed === null) {
          console.error('[e2e] server did not exit 10 s after SIGTERM; sending SIGKILL');
          child.kill('SIGKILL');
          await exited;
        }
      }
      if (!keepData) await rm(dataDir, { recursive: true, force: true });
      return exitStatus;
    },
  };

  try {
    await waitFor(
      async () => {
        if (exitStatus !== null) {
          throw new Error(`server exited early (${JSON.stringify(exitStatus)})`);
        }
        const res = await fetch(`${baseUrl}/healthz`).catch(() => null);
        return res?.status === 200;
      },
      { timeoutMs: 30_000, intervalMs: 200, what: `${baseUrl}/healthz to answer 200` },
    );
  } catch (err) {
    console.error(`[e2e] server failed to start; last output:\n${server.tail()}`);
    await server.stop();
    throw err;
  }
  return server;
}

// The page each session's Chromium opens: magenta everywhere (easy to find in
// the VNC framebuffer) and an autofocused input that reports every change
// back, so the test can see what keystrokes arrived in the remote browser.
const TYPING_PAGE = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>livesession e2e typing page</title>
<style>
  html, body { margin: 0; height: 100%; background: rgb(255, 0, 255); }
  #t {
    position: fixed; left: 40px; top: 40px; width: 60vw; height: 30vh;
    font: 48px sans-serif; background: #fff; color: #000; border: 0;
  }
</style>
</head>
<body>
<input id="t" autofocus autocomplete="off" spellcheck="false">
<script>
  const t = document.getElementById('t');
  t.addEventListener('input', () => {
    fetch('/typed?value=' + encodeURIComponent(t.value)).catch(() => {});
  });
  t.focus();
</script>
</body>
</html>
`;

/** Loopback HTTP server with /typing.html; records loads and typed values. */
export function startTestPageServer() {
  const state = { loads: 0, typed: null, typedHistory: [] };
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/typing.html') {
      state.loads += 1;
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(TYPING_PAGE);
    } else if (url.pathname === '/typed') {
      state.typed = url.searchParams.get('value');
      state.typedHistory.push(state.typed);
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return listenOnLoopback(srv, '/typing.html', state);
}

/**
 * Starts `srv` on a free 127.0.0.1 port: resolves to the URL of `pathname` on it,
 * the page's `state`, and `close()`.
 */
export function listenOnLoopback(srv, pathname, state) {
  return new Promise((resolve, reject) => {
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      resolve({
        url: `http://127.0.0.1:${port}${pathname}`,
        state,
        close: () =>
          new Promise((r) => {
            srv.closeAllConnections?.();
            srv.close(() => r());
          }),
      });
    });
  });
}

/** Launch headless Chromium through playwright-core. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
}

/**
 * Collect a page's console output so a failing test can show it. Returns a
 * function giving the last lines.
 */
export function recordConsole(page) {
  const lines = [];
  page.on('console', (msg) => {
    lines.push(`[${msg.type()}] ${msg.text()}`);
    if (lines.length > 200) lines.shift();
  });
  page.on('pageerror', (err) => lines.push(`[pageerror] ${err.message}`));
  return (n = 60) => lines.slice(-n).join('\n');
}

/**
 * Record every text the viewer's status line (`#status`) shows, from the page's
 * first load on, so a test can check what the person was told over time, also
 * texts that were replaced before the test looked. Call before `page.goto`.
 * Resolves to a function giving the texts so far, in order.
 */
export async function recordStatusTexts(page) {
  await page.addInitScript(() => {
    window.__statusTexts = [];
    document.addEventListener('DOMContentLoaded', () => {
      const status = document.getElementById('status');
      const note = () => {
        const text = status.textContent;
        if (window.__statusTexts.at(-1) !== text) window.__statusTexts.push(text);
      };
      new MutationObserver(note).observe(status, { childList: true, characterData: true, subtree: true });
      note();
    });
  });
  return () => page.evaluate(() => window.__statusTexts);
}

/**
 * Run `fn`; if it throws, print the server's log tail and whatever `extra`
 * reports (browser console, screenshots) before rethrowing.
 */
export async function withDiagnostics(server, fn, extra = async () => '') {
  try {
    return await fn();
  } catch (err) {
    let more = '';
    try {
      more = await extra();
    } catch (e) {
      more = `(could not collect diagnostics: ${e.message})`;
    }
    console.error(`\n[e2e] ---- server output (tail) ----\n${server.tail()}\n[e2e] ---- end server output ----`);
    if (more) console.error(more);
    throw err;
  }
}

/** Fraction of sampled pixels of `#screen canvas` that match rgb(r,g,b) ± tol. */
export function canvasColorShare(page, [r, g, b], tol = 24) {
  return page.evaluate(
    ({ r, g, b, tol }) => {
      const canvas = document.querySelector('#screen canvas');
      if (!canvas || canvas.width === 0 || canvas.height === 0) return 0;
      // Read a copy made for reading: reading noVNC's own canvas back makes
      // Chromium warn in the console the test keeps clean (console.test.js).
      const copy = Object.assign(document.createElement('canvas'), { width: canvas.width, height: canvas.height });
      const ctx = copy.getContext('2d', { willReadFrequently: true });
      ctx.drawImage(canvas, 0, 0);
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let hits = 0;
      let total = 0;
      // Every 7th pixel is plenty and keeps the evaluate cheap.
      for (let i = 0; i < data.length; i += 4 * 7) {
        total += 1;
        if (Math.abs(data[i] - r) <= tol && Math.abs(data[i + 1] - g) <= tol && Math.abs(data[i + 2] - b) <= tol) hits += 1;
      }
      return hits / total;
    },
    { r, g, b, tol },
  );
}

/**
 * Where the remote page starts inside the canvas: the first row, scanning
 * down column `x` of the framebuffer, whose pixel matches the colour. The
 * session's Chromium may show tabs and a toolbar above the page, so the
 * page's position is found, not assumed. Returns framebuffer coordinates and
 * the canvas' size, or null.
 */
export function findColorTop(page, [r, g, b], x = 8, tol = 24) {
  return page.evaluate(
    ({ r, g, b, x, tol }) => {
      const canvas = document.querySelector('#screen canvas');
      if (!canvas || canvas.width === 0) return null;
      const copy = Object.assign(document.createElement('canvas'), { width: 1, height: canvas.height });
      const ctx = copy.getContext('2d', { willReadFrequently: true });
      ctx.drawImage(canvas, x, 0, 1, canvas.height, 0, 0, 1, canvas.height);
      const { data } = ctx.getImageData(0, 0, 1, canvas.height);
      for (let y = 0; y < canvas.height; y += 1) {
        const i = y * 4;
        if (Math.abs(data[i] - r) <= tol && Math.abs(data[i + 1] - g) <= tol && Math.abs(data[i + 2] - b) <= tol) {
          return { y, width: canvas.width, height: canvas.height };
        }
      }
      return null;
    },
    { r, g, b, x, tol },
  );
}

/** Only ever point the browser at this machine. */
export function assertLoopback(url) {
  const { hostname } = new URL(url);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(hostname)) {
    throw new Error(`refusing to open non-loopback URL ${url}`);
  }
}

/**
 * Collects what a clean console must not have: `error` and `warning` messages
 * (from scripts, noVNC or the browser itself: failed requests, refused
 * sockets, CSP reports) and uncaught exceptions. Returns a function giving
 * them, each as `[type] text (url:line)`.
 */
export function watchConsoleProblems(page) {
  const problems = [];
  page.on('console', (msg) => {
    const type = msg.type();
    if (type === 'error' || type === 'warning') {
      const { url, lineNumber } = msg.location();
      problems.push(`[${type}] ${msg.text()}${url ? ` (${url}:${lineNumber})` : ''}`);
    }
  });
  page.on('pageerror', (err) => problems.push(`[pageerror] ${err.message}`));
  return () => [...problems];
}

/**
 * Loopback HTTP server with /colour.html: a page filled with `state.colour`
 * (an [r, g, b]) showing `state.text` in large letters. The page asks for both
 * every 250 ms, so a test changes what the remote screen shows when it likes
 * (e.g. a recording's early and late pictures differ).
 */
export function startColourPageServer({ colour = [0, 160, 160], text = 'livesession' } = {}) {
  const state = { colour, text, loads: 0 };
  const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>livesession e2e colour page</title>
<style>html, body { margin: 0; height: 100%; } h1 { margin: 0; padding: 40px; font: 64px sans-serif; color: #fff; }</style>
</head><body><h1 id="text"></h1>
<script>
  async function look() {
    try {
      const res = await fetch('/colour', { cache: 'no-store' });
      const { colour, text } = await res.json();
      document.body.style.background = 'rgb(' + colour.join(',') + ')';
      document.getElementById('text').textContent = text;
    } catch {}
    setTimeout(look, 250);
  }
  look();
</script></body></html>
`;
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/colour.html') {
      state.loads += 1;
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(page);
    } else if (url.pathname === '/colour') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify({ colour: state.colour, text: state.text }));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return listenOnLoopback(srv, '/colour.html', state);
}
