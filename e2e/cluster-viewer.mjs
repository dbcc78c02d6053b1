// The real viewer in the three-node test (crates/livesession/tests/integration/cluster.rs):
// a person opens a session's viewer link on one node (not the one running the desktop),
// watches the remote page and types into it through noVNC; then, optionally, keeps the
// page open until the session ends and reports how its sockets were closed.
//
// Not a `*.test.js`: `node --test e2e/` does not run it; the Rust test starts it with
//
//   node e2e/cluster-viewer.mjs --url 'http://10.213.N.3:8080/s/{id}#token={refresh}' \
//        --text 'typed through b' [--wait-close 120]
//
// (or CLUSTER_VIEWER_URL, CLUSTER_VIEWER_TEXT, CLUSTER_VIEWER_WAIT_CLOSE). Output, on
// stdout, one JSON line per phase:
//
//   {"phase":"typed", …}   the viewer is connected, shows the page, the text was typed
//                          (whether it arrived is for the caller to read in the page)
//   {"phase":"ended", …}   with --wait-close: every socket open after typing was closed;
//                          each close's code, reason and wall-clock time (epoch ms)
//
// Exit 0 when every check held; otherwise a message on stderr (and an `"error"` line on
// stdout) and exit 1. Only headless Chromium from CHROMIUM_PATH (/usr/bin/chromium) is
// used: nothing is downloaded.

import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

import { CHROMIUM_ARGS, CHROMIUM_PATH, canvasColorShare, findColorTop, recordConsole, waitFor, watchConsoleProblems } from './helpers.js';

const MAGENTA = [255, 0, 255];
// The whole run, whatever happens: never leave a browser behind.
const OVERALL_LIMIT_MS = 10 * 60_000;

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: process.env.CLUSTER_VIEWER_URL },
    text: { type: 'string', default: process.env.CLUSTER_VIEWER_TEXT ?? 'cluster viewer' },
    'wait-close': { type: 'string', default: process.env.CLUSTER_VIEWER_WAIT_CLOSE },
  },
});

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

// The link's token is a credential: never print it.
const redact = (text) => String(text).replace(/#token=[^\s"'\\]+/g, '#token=…');

function fail(message, extra = {}) {
  message = redact(message);
  console.error(`[cluster-viewer] FAILED: ${message}`);
  emit({ phase: 'error', error: message, ...extra });
  process.exitCode = 1;
}

async function main() {
  const url = values.url;
  if (!url) throw new Error('no viewer URL: pass --url (or CLUSTER_VIEWER_URL)');
  const parsed = new URL(url);
  if (!/^\/s\/[^/]+$/.test(parsed.pathname) || !parsed.hash.startsWith('#token=')) {
    throw new Error(`not a viewer link (a /s/{id} path with a token fragment): ${parsed.origin}${parsed.pathname}`);
  }
  const waitCloseMs = values['wait-close'] ? Number(values['wait-close']) * 1000 : 0;
  if (!existsSync(CHROMIUM_PATH)) throw new Error(`no Chromium at ${CHROMIUM_PATH} (apt-get install chromium); nothing is downloaded`);
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (err) {
    throw new Error(`playwright-core is not installed (npm ci --prefix e2e): ${err.message}`);
  }

  const browser = await chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    // As the e2e tests' browser (no name resolves, nothing but this machine), plus the
    // node's address (an IP literal is mapped by the rules' `*` too), and no proxy
    // whatever the environment says: the nodes are on a private bridge.
    args: [
      ...CHROMIUM_ARGS.map((a) => (a.startsWith('--host-resolver-rules=') ? `${a}, EXCLUDE ${parsed.hostname}` : a)),
      '--no-proxy-server',
      // A person reaches the nodes through HTTPS (one public URL); here the page is on a
      // node's plain-HTTP bridge address, which is not a secure context: noVNC needs one
      // (it says so in the console), and the server's COOP header is ignored without one.
      // Treat the node's origin as it would be behind TLS.
      `--unsafely-treat-insecure-origin-as-secure=${parsed.origin}`,
    ],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const problems = watchConsoleProblems(page);
    // Every WebSocket the viewer opens (control and VNC, both `new WebSocket`), with its
    // CloseEvent's code and reason and the wall-clock time it was seen (epoch ms: the
    // caller compares it with when the revocation was answered).
    // noVNC checks the socket it is handed for WebSocket's own properties (its prototype's
    // names), so the constructor is wrapped to return the native socket, not subclassed.
    await page.addInitScript(() => {
      const Native = window.WebSocket;
      window.__sockets = [];
      function WebSocket(...args) {
        const ws = new Native(...args);
        const entry = { path: new URL(ws.url).pathname, opened_at: Date.now(), closed: null, closed_by_page_at: null };
        window.__sockets.push(entry);
        // The viewer closes its VNC socket itself once the control channel says the
        // session ended: the server then answers that close (it may not get to send its
        // own 4008 first). Recorded on the instance, so the socket stays native.
        const nativeClose = ws.close.bind(ws);
        ws.close = (...a) => {
          if (entry.closed_by_page_at === null) entry.closed_by_page_at = Date.now();
          return nativeClose(...a);
        };
        ws.addEventListener('close', (ev) => {
          entry.closed = { code: ev.code, reason: ev.reason, clean: ev.wasClean, at: Date.now() };
        });
        return ws;
      }
      WebSocket.prototype = Native.prototype;
      for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) WebSocket[k] = Native[k];
      window.WebSocket = WebSocket;
    });

    const shown = () =>
      page
        .evaluate(() => ({
          state: document.body.dataset.state ?? null,
          screen: document.body.dataset.screen ?? null,
          last_close_code: document.body.dataset.lastCloseCode ?? null,
          status: document.getElementById('status')?.textContent ?? null,
          last_close: document.getElementById('last-close')?.textContent ?? null,
          sockets: window.__sockets,
        }))
        .catch((e) => ({ error: e.message }));
    const diagnose = async () => `viewer: ${JSON.stringify(await shown())}\nbrowser console (tail):\n${consoleTail()}`;

    const started = Date.now();
    try {
      await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 30_000 });
      await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 120_000, polling: 100 });
    } catch (err) {
      throw new Error(`the viewer did not connect: ${err.message.split('\n')[0]}\n${await diagnose()}`);
    }
    const connectedMs = Date.now() - started;
    const hashLeft = new URL(page.url()).hash;

    let share = 0;
    let top = null;
    try {
      await waitFor(async () => (share = await canvasColorShare(page, MAGENTA)) >= 0.5, {
        timeoutMs: 60_000,
        intervalMs: 500,
        what: () => `≥ 50% magenta in the viewer's canvas (last ${share.toFixed(3)})`,
      });
      // The desktop follows the viewer's size (resizeSession): wait for the page's top.
      await waitFor(async () => (top = await findColorTop(page, MAGENTA)) !== null, {
        timeoutMs: 15_000,
        intervalMs: 200,
        what: 'the top of the remote page',
      });
    } catch (err) {
      throw new Error(`${err.message}\n${await diagnose()}`);
    }
    const canvas = page.locator('#screen canvas').first();
    const box = await canvas.boundingBox();
    if (!box || box.width < 100 || box.height < 100) throw new Error(`the canvas is not on screen: ${JSON.stringify(box)}`);
    const scale = box.width / top.width;
    // The cluster page's input: 40 px from the page's top-left, 600 px wide, 32 px text.
    const click = { x: 200, y: top.y + 58 };
    await page.mouse.click(box.x + click.x * scale, box.y + click.y * scale);
    // The click also makes openbox focus the remote Chromium window.
    await sleep(500);
    await page.keyboard.type(values.text, { delay: 30 });
    // Give the last keys time to leave the browser (they go out on the VNC socket).
    await sleep(500);

    const atTyped = await shown();
    const typedProblems = problems();
    emit({
      phase: 'typed',
      text: values.text,
      page_origin: new URL(page.url()).origin,
      hash_left: hashLeft,
      connected_ms: connectedMs,
      magenta_share: Number(share.toFixed(3)),
      page_top: top,
      click,
      scale: Number(scale.toFixed(3)),
      ...atTyped,
      console_problems: typedProblems,
    });
    if (typedProblems.length > 0) {
      fail(`the browser console had errors or warnings while connecting and typing: ${JSON.stringify(typedProblems)}\n${consoleTail()}`);
      return;
    }
    if (!waitCloseMs) return;

    // Keep watching until the session ends (the caller revokes it): every socket open now
    // must close, and the viewer must say it ended.
    const open = atTyped.sockets.filter((s) => s.closed === null).length;
    const before = atTyped.sockets.length;
    try {
      await page.waitForFunction(
        (n) => window.__sockets.slice(0, n).every((s) => s.closed !== null) && document.body.dataset.state === 'ended',
        before,
        { timeout: waitCloseMs, polling: 20 },
      );
      // The close that ended it may still be on its way to the other socket's handler.
      await page.waitForFunction(() => document.body.dataset.lastCloseCode === '4008', null, { timeout: 5_000 }).catch(() => {});
    } catch (err) {
      throw new Error(`the viewer's sockets did not all close within ${waitCloseMs} ms: ${err.message.split('\n')[0]}\n${await diagnose()}`);
    }
    // A revocation is final: no socket may open again.
    await sleep(2_000);
    const atEnd = await shown();
    const text = await page.evaluate(() => document.body.innerText).catch(() => '');
    // `__sockets` only grows: the first `before` are those the viewer had when it typed.
    const closes = atEnd.sockets.slice(0, before).filter((_, i) => atTyped.sockets[i].closed === null);
    const endedProblems = problems().slice(typedProblems.length);
    const result = {
      phase: 'ended',
      open_at_typing: open,
      closes,
      opened_after_end: atEnd.sockets.length - before,
      state: atEnd.state,
      last_close_code: atEnd.last_close_code,
      status: atEnd.status,
      last_close: atEnd.last_close,
      says_revoked: /revoked/i.test(text),
      console_problems: endedProblems,
    };
    emit(result);
    const bad = [];
    if (result.state !== 'ended') bad.push(`state ${result.state}, not ended`);
    if (result.last_close_code !== '4008') bad.push(`last close code ${result.last_close_code}, not 4008`);
    if (!result.says_revoked) bad.push('the page does not say the session was revoked');
    if (result.opened_after_end !== 0) bad.push(`${result.opened_after_end} socket(s) opened after the end`);
    if (open === 0) bad.push('no socket was open after typing');
    for (const c of result.closes) if (c.closed === null) bad.push(`${c.path} was not closed`);
    // Each socket closes with 4008, but one the viewer itself closed after the control
    // channel said "revoked" (it then gets the answer to its own close): that one must
    // have closed cleanly.
    const endedByControl = result.closes.find((c) => c.path.endsWith('/control') && c.closed && c.closed.code === 4008);
    for (const c of result.closes) {
      if (!c.closed || c.closed.code === 4008) continue;
      const closedByViewer = c.closed_by_page_at !== null && endedByControl && c.closed.clean;
      if (!closedByViewer) bad.push(`${c.path} closed with ${c.closed.code} ${JSON.stringify(c.closed.reason)}`);
    }
    if (bad.length > 0) fail(`after the end: ${bad.join('; ')}\n${consoleTail()}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => {
  fail(`no result within ${OVERALL_LIMIT_MS} ms`);
  process.exit(1);
}, OVERALL_LIMIT_MS);
watchdog.unref();

try {
  await main();
} catch (err) {
  fail(err.message);
}
