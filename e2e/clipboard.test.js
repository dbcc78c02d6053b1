// End to end: the clipboard both ways between the real viewer (noVNC in headless
// Chromium, web/static/clipboard.js) and the real desktop (Xvnc + Chromium).
//
// - Person → remote: text the viewer's page put in its clipboard
//   (navigator.clipboard.writeText) is pasted with Ctrl+V typed on the viewer's
//   screen into a focused <textarea> of the remote page; the text is read back over
//   the session's DevTools endpoint (Puppeteer). Unicode, line ends and tabs arrive
//   as they were. The panel's "Send to remote" does the same with its box.
// - Remote → person: the remote page's text is selected and Ctrl+C typed on the
//   viewer's screen; the page's `copy` handler puts a different text on the clipboard
//   than the selection, so only the copy (not the selection, X's PRIMARY) can bring
//   it. The viewer's panel shows it and navigator.clipboard.readText() in the
//   viewer's page returns it.
// - A selection alone (Ctrl+A in the remote: X's PRIMARY) does not reach the person;
//   only a copy does (Xvnc runs with -SendPrimary=0).
// - A view-only viewer (its own browser, so its own clipboard) gets nothing in its
//   panel after a copy the interactive viewer receives, its clipboard keeps what it
//   had, it has no "Send to remote", and its Ctrl+V pastes nothing into the remote.
// - Size: a text of 262145 bytes as Xvnc counts them (one over its MaxCutText) is
//   refused with a message, by Ctrl+V and by the panel, and nothing reaches the
//   remote page; a text of exactly 262144 bytes arrives whole.
//
// The agent (Puppeteer over the gateway's CDP) only prepares and reads the remote
// page, and disconnects before the person types: while an agent holds control the
// server drops the person's input, clipboard included (docs/agents.md).

import assert from 'node:assert/strict';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import puppeteer from 'puppeteer-core';

import { MAX_CLIPBOARD_BYTES, clipboardBytes, clipboardRefusal, isPasteKey } from '../web/static/clipboard.js';
import {
  assertLoopback,
  launchBrowser,
  listenOnLoopback,
  recordConsole,
  startServer,
  waitFor,
  watchConsoleProblems,
  withDiagnostics,
} from './helpers.js';

/** Xvnc's MaxCutText: counted as UTF-8 with CR LF line ends and a final NUL. */
const MAX_CUT_TEXT = 262144;
const wireBytes = (text) => Buffer.byteLength(text.replace(/\r\n|\r|\n/g, '\r\n'), 'utf8') + 1;

/** Lines of 'é' + 60 × 'x' + LF (64 bytes each on the wire), then ASCII to the limit. */
function textOfWireBytes(bytes) {
  const line = `é${'x'.repeat(60)}\n`;
  const lines = Math.floor((bytes - 1) / 64);
  const text = line.repeat(lines) + 'z'.repeat(bytes - 1 - lines * 64);
  assert.equal(wireBytes(text), bytes);
  return text;
}
const AT_LIMIT = textOfWireBytes(MAX_CUT_TEXT);
const OVER_LIMIT = `${AT_LIMIT}z`;

const refusalFor = (bytes) =>
  `Not sent: this text is ${bytes} bytes; the remote desktop accepts at most ${MAX_CUT_TEXT} bytes (256 KiB) from the clipboard.`;

/**
 * The page the session's Chromium opens: #paste (autofocused) reports its value
 * to the test on every input (POST /pasted), #copy is what gets selected; a `copy`
 * in the page puts `window.__copyAs` on the clipboard when it is set.
 */
function startClipboardPageServer() {
  const state = { pasted: null, inputs: 0 };
  const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>livesession e2e clipboard page</title>
<style>
  html, body { margin: 0; height: 100%; background: rgb(30, 90, 200); }
  textarea { display: block; margin: 30px; width: 60vw; height: 25vh; font: 20px monospace; }
</style>
</head><body>
<textarea id="paste" autofocus spellcheck="false"></textarea>
<textarea id="copy" spellcheck="false"></textarea>
<script>
  const paste = document.getElementById('paste');
  paste.addEventListener('input', () => {
    fetch('/pasted', { method: 'POST', body: paste.value }).catch(() => {});
  });
  window.__copyAs = null;
  document.addEventListener('copy', (ev) => {
    if (window.__copyAs === null) return;
    ev.clipboardData.setData('text/plain', window.__copyAs);
    ev.preventDefault();
  });
  paste.focus();
</script></body></html>
`;
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/clipboard.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(page);
    } else if (url.pathname === '/pasted' && req.method === 'POST') {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        state.pasted = Buffer.concat(chunks).toString('utf8');
        state.inputs += 1;
        res.writeHead(204);
        res.end();
      });
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return listenOnLoopback(srv, '/clipboard.html', state);
}

describe('clipboard.js in Node', () => {
  test("bytes are counted as Xvnc counts them, and the limit is Xvnc's MaxCutText", () => {
    assert.equal(MAX_CLIPBOARD_BYTES, MAX_CUT_TEXT);
    assert.equal(clipboardBytes(''), 1, 'the final NUL');
    assert.equal(clipboardBytes('abc'), 4);
    assert.equal(clipboardBytes('a\nb'), 5, 'LF is sent as CR LF');
    assert.equal(clipboardBytes('a\r\nb\rc'), 8, 'CR LF and a lone CR too');
    assert.equal(clipboardBytes('é東✓'), 9, 'UTF-8');
    assert.equal(clipboardBytes(AT_LIMIT), MAX_CUT_TEXT);
    assert.equal(clipboardRefusal(AT_LIMIT), null);
    assert.equal(clipboardRefusal(OVER_LIMIT), refusalFor(MAX_CUT_TEXT + 1));
  });

  test('the paste key: Ctrl+V or Cmd+V, with Shift, never with Alt or both', () => {
    const key = (k, mods = {}) => ({ key: k, keyCode: k.toUpperCase().charCodeAt(0), ctrlKey: false, metaKey: false, altKey: false, ...mods });
    assert.equal(isPasteKey(key('v', { ctrlKey: true })), true);
    assert.equal(isPasteKey(key('V', { ctrlKey: true })), true, 'Ctrl+Shift+V');
    assert.equal(isPasteKey(key('v', { metaKey: true })), true);
    assert.equal(isPasteKey({ key: 'м', keyCode: 86, ctrlKey: true, metaKey: false, altKey: false }), true, 'another layout');
    assert.equal(isPasteKey(key('v')), false);
    assert.equal(isPasteKey(key('v', { ctrlKey: true, altKey: true })), false);
    assert.equal(isPasteKey(key('v', { ctrlKey: true, metaKey: true })), false);
    assert.equal(isPasteKey(key('c', { ctrlKey: true })), false);
  });
});

describe('clipboard', { timeout: 600_000 }, () => {
  let pages;
  let server;
  let browser; // the person's Chromium
  let viewBrowser; // a view-only watcher's, with a clipboard of its own
  let session;
  let viewer; // the interactive viewer

  before(async () => {
    pages = await startClipboardPageServer();
    server = await startServer({ startUrl: pages.url });
    browser = await launchBrowser();
    viewBrowser = await launchBrowser();
    const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    const text = await res.text();
    assert.equal(res.status, 201, `POST /api/sessions: ${text}`);
    session = JSON.parse(text);
  });

  after(async () => {
    await browser?.close();
    await viewBrowser?.close();
    await server?.stop();
    await pages?.close();
  });

  /** The real viewer with a token link, clipboard permissions granted; waits for the screen. */
  async function openViewer(inBrowser, token) {
    const context = await inBrowser.newContext({ viewport: { width: 1280, height: 800 } });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.baseUrl });
    const page = await context.newPage();
    const problems = watchConsoleProblems(page);
    const consoleTail = recordConsole(page);
    const viewerUrl = new URL(session.viewer_url, server.baseUrl).href;
    assertLoopback(viewerUrl);
    await page.goto(`${viewerUrl}#token=${token}`);
    await page.waitForFunction(() => document.body.dataset.state === 'connected' && document.body.dataset.screen === 'live', null, {
      timeout: 120_000,
      polling: 200,
    });
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-clipboard-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const panel = await page
        .evaluate(() => ({
          ...document.body.dataset,
          ...Object.fromEntries(Object.entries(document.getElementById('clipboard').dataset).map(([k, v]) => [`panel_${k}`, v])),
          text: document.getElementById('clipboard-text')?.value.slice(0, 200),
          error: document.querySelector('#clipboard .clipboard-error')?.textContent,
          status: document.querySelector('#clipboard .clipboard-status')?.textContent,
        }))
        .catch(() => null);
      const pasted = pages.state.pasted === null ? null : `${pages.state.pasted.length} chars: ${JSON.stringify(pages.state.pasted.slice(0, 200))}`;
      return `[e2e] viewer: ${JSON.stringify(panel)}\n[e2e] remote page's last input: ${pasted}\n[e2e] screenshot: ${shot}\n[e2e] ---- viewer console (tail) ----\n${consoleTail()}`;
    };
    return { context, page, problems, diagnostics };
  }

  /**
   * Runs `fn(remotePage)` as an agent over the session's DevTools endpoint, then
   * disconnects and waits until the person's input flows again (no holder).
   */
  async function asAgent(fn) {
    const res = await server.admin(`/api/sessions/${session.id}/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"role":"agent"}' });
    const minted = await res.json();
    assert.equal(res.status, 200, JSON.stringify(minted));
    const agent = await puppeteer.connect({
      browserWSEndpoint: `ws://127.0.0.1:${server.port}/api/sessions/${session.id}/cdp?token=${encodeURIComponent(minted.token)}`,
      defaultViewport: null,
      protocolTimeout: 60_000,
    });
    let result;
    try {
      const remote = (await agent.pages()).find((p) => p.url().startsWith(pages.url));
      assert.ok(remote, 'the remote browser shows the clipboard page');
      await remote.waitForSelector('#paste', { timeout: 30_000 });
      result = await fn(remote);
    } finally {
      // disconnect, never close(): close() would end the session's browser.
      await agent.disconnect();
    }
    await viewer.page.waitForFunction(() => document.body.dataset.holder === 'none', null, { timeout: 15_000, polling: 100 });
    return result;
  }

  /** Empties the remote #paste and focuses it. */
  const clearPasteTarget = () =>
    asAgent((remote) =>
      remote.evaluate(() => {
        const t = document.getElementById('paste');
        t.value = '';
        t.focus();
        return document.activeElement === t;
      }),
    ).then((focused) => assert.equal(focused, true, 'the remote #paste has the focus'));

  /** The remote #paste's value, read over DevTools. */
  const remoteValue = () => asAgent((remote) => remote.$eval('#paste', (t) => t.value));

  /** Keys typed on the viewer's screen go to noVNC's canvas. */
  const focusScreen = (page) => page.evaluate(() => document.querySelector('#screen canvas').focus());

  const panelText = (page) => page.locator('#clipboard-text').inputValue();

  /** The remote page's #copy selected and `copyAs` set, then Ctrl+C on the viewer's screen. */
  async function copyInRemote(page, { selected, copyAs }) {
    const ready = await asAgent((remote) =>
      remote.evaluate(
        ({ selected, copyAs }) => {
          const t = document.getElementById('copy');
          t.value = selected;
          t.focus();
          t.select();
          window.__copyAs = copyAs;
          return document.activeElement === t && t.selectionEnd - t.selectionStart === selected.length;
        },
        { selected, copyAs },
      ),
    );
    assert.equal(ready, true, 'the remote #copy is focused and selected');
    await focusScreen(page);
    await page.keyboard.press('Control+c');
  }

  test("the person's clipboard is pasted into the remote page with Ctrl+V on the screen", async () => {
    viewer = await openViewer(browser, session.refresh_token);
    const { page } = viewer;
    const TEXT = 'livesession paste ✓ Grüße, naïve café, 東京\nsecond line\twith a tab\n\nlast line 31415';
    await withDiagnostics(
      server,
      async () => {
        await clearPasteTarget();
        assert.equal(await page.evaluate((t) => navigator.clipboard.writeText(t).then(() => 'ok'), TEXT), 'ok');
        await focusScreen(page);
        await page.keyboard.press('Control+v');
        await waitFor(() => pages.state.pasted === TEXT, { timeoutMs: 20_000, what: 'the remote page to receive the pasted text' });
        assert.equal(await remoteValue(), TEXT, "the remote textarea holds the person's clipboard, exactly");
        assert.equal(await page.locator('#clipboard').getAttribute('data-sent'), '1', 'given to the desktop once');
        assert.equal(await page.locator('#clipboard').isHidden(), true, 'the panel stays closed');

        // Pasting the same clipboard again gives the same text once more (it is kept by the desktop).
        await clearPasteTarget();
        await focusScreen(page);
        await page.keyboard.press('Control+v');
        await waitFor(() => pages.state.pasted === TEXT, { timeoutMs: 20_000, what: 'the second paste' });
        assert.equal(await remoteValue(), TEXT);
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test('the panel\'s "Send to remote" gives the desktop its text; Ctrl+V on the screen pastes it', async () => {
    const { page } = viewer;
    const TEXT = 'from the clipboard panel: Ω ≈ ç\nline two';
    await withDiagnostics(
      server,
      async () => {
        await clearPasteTarget();
        await page.locator('#clipboard-toggle').click();
        await page.locator('#clipboard').waitFor({ state: 'visible' });
        assert.equal(await page.locator('#clipboard-toggle').getAttribute('aria-expanded'), 'true');
        await page.locator('#clipboard-text').fill(TEXT);
        await page.locator('#clipboard .clipboard-send').click();
        await page.waitForFunction(() => document.getElementById('clipboard').dataset.sent === '2', null, { timeout: 10_000 });
        assert.equal(await page.locator('#clipboard .clipboard-status').textContent(), 'Sent to the remote browser: press Ctrl+V on the screen to paste it.');
        assert.equal(await page.locator('#clipboard .clipboard-error').isHidden(), true);
        assert.equal(await page.evaluate(() => navigator.clipboard.readText()), TEXT, "the person's clipboard has it too");
        await page.locator('#clipboard .clipboard-close').click();
        await page.locator('#clipboard').waitFor({ state: 'hidden' });

        await focusScreen(page);
        await page.keyboard.press('Control+v');
        await waitFor(() => pages.state.pasted === TEXT, { timeoutMs: 20_000, what: "the remote page to receive the panel's text" });
        assert.equal(await remoteValue(), TEXT);
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test("a copy in the remote page reaches the viewer's panel and the person's clipboard", async () => {
    const { page } = viewer;
    const COPIED = `copied in the remote ✓ Grüße 東京\nline 2 ${Date.now()}`;
    await withDiagnostics(
      server,
      async () => {
        const before = Number(await page.evaluate(() => document.body.dataset.clipboard));
        await copyInRemote(page, { selected: 'only selected, never copied', copyAs: COPIED });
        await waitFor(async () => (await panelText(page)) === COPIED, { timeoutMs: 20_000, what: 'the copied text in the panel' });
        await page.waitForFunction(() => document.getElementById('clipboard').dataset.written === 'true', null, { timeout: 10_000 });
        assert.equal(await page.evaluate(() => navigator.clipboard.readText()), COPIED, "navigator.clipboard.readText() in the viewer's page returns the copy");
        assert.ok(Number(await page.evaluate(() => document.body.dataset.clipboard)) > before, 'counted as received');
        assert.equal(await page.locator('#clipboard-toggle').getAttribute('data-unseen'), '1', 'the closed panel marks news on its button');
        assert.match(await page.locator('#clipboard .clipboard-status').textContent(), /^Copied in the remote browser: \d+ characters, also in your clipboard\.$/);

        // A copy and paste inside the remote browser keeps the remote's own text.
        await clearPasteTarget();
        await focusScreen(page);
        await page.keyboard.press('Control+v');
        await waitFor(() => pages.state.pasted === COPIED, { timeoutMs: 20_000, what: 'the copy pasted back into the remote page' });
        assert.equal(await remoteValue(), COPIED);
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test('a selection without a copy stays in the remote (Xvnc -SendPrimary=0)', async () => {
    const { page } = viewer;
    const SELECTED = `selected by the person, not copied ${Date.now()}`;
    await withDiagnostics(
      server,
      async () => {
        const focused = await asAgent((remote) =>
          remote.evaluate((text) => {
            const t = document.getElementById('copy');
            t.value = text;
            t.focus();
            t.setSelectionRange(0, 0);
            window.__copyAs = null;
            return document.activeElement === t;
          }, SELECTED),
        );
        assert.equal(focused, true);
        const received = await page.evaluate(() => document.body.dataset.clipboard);
        const local = await page.evaluate(() => navigator.clipboard.readText());
        assert.notEqual(local, SELECTED);
        // Ctrl+A selects the remote textarea's text (X's PRIMARY selection): nothing copied.
        await focusScreen(page);
        await page.keyboard.press('Control+a');
        await sleep(3_000);
        assert.equal(await page.evaluate(() => document.body.dataset.clipboard), received, 'no clipboard text received for a selection');
        assert.equal(await page.evaluate(() => navigator.clipboard.readText()), local, "the person's clipboard is untouched");
        // Ctrl+C copies that selection: now it arrives.
        await page.keyboard.press('Control+c');
        await waitFor(async () => (await panelText(page)) === SELECTED, { timeoutMs: 20_000, what: 'the copied selection in the panel' });
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });

  test('a view-only viewer gets none of the clipboard and cannot send to it', async () => {
    const res = await server.admin(`/api/sessions/${session.id}/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"role":"view"}' });
    const minted = await res.json();
    assert.equal(res.status, 200, JSON.stringify(minted));
    const view = await openViewer(viewBrowser, minted.refresh_token);
    const SENTINEL = 'the view-only clipboard, untouched';
    const COPIED = `a second copy ${Date.now()} for interactive viewers only`;
    try {
      await withDiagnostics(
        server,
        async () => {
          const vpage = view.page;
          await vpage.waitForFunction(() => document.body.dataset.role === 'view', null, { timeout: 10_000 });
          assert.equal(await vpage.evaluate((t) => navigator.clipboard.writeText(t).then(() => 'ok'), SENTINEL), 'ok');
          await vpage.locator('#clipboard-toggle').click();
          await vpage.locator('#clipboard').waitFor({ state: 'visible' });
          assert.equal(await vpage.locator('#clipboard .clipboard-send').isHidden(), true, 'no "Send to remote"');
          assert.equal(await vpage.locator('#clipboard-text').getAttribute('readonly'), '', 'the box is read-only');
          assert.match(await vpage.locator('#clipboard .clipboard-hint').textContent(), /^View only: /);

          // The interactive viewer receives a copy; the view-only one does not.
          await copyInRemote(viewer.page, { selected: 'selected text, not for view-only viewers', copyAs: COPIED });
          await waitFor(async () => (await panelText(viewer.page)) === COPIED, { timeoutMs: 20_000, what: "the copy in the interactive viewer's panel" });
          await sleep(3_000);
          assert.equal(await panelText(vpage), '', "the view-only panel is empty");
          assert.equal(await vpage.evaluate(() => document.body.dataset.clipboard), '0', 'nothing received');
          assert.equal(await vpage.evaluate(() => navigator.clipboard.readText()), SENTINEL, "the view-only person's clipboard is untouched");

          // Its Ctrl+V pastes nothing into the remote page.
          await clearPasteTarget();
          const inputs = pages.state.inputs;
          await focusScreen(vpage);
          await vpage.keyboard.press('Control+v');
          await sleep(3_000);
          assert.equal(pages.state.inputs, inputs, 'no input in the remote page');
          assert.equal(await remoteValue(), '', 'the remote textarea stays empty');
          assert.equal(await vpage.locator('#clipboard').getAttribute('data-sent'), null, 'nothing sent');
          assert.deepEqual(view.problems(), [], "the view-only viewer's console has no error or warning");
          assert.deepEqual(viewer.problems(), [], "the interactive viewer's console has no error or warning");
        },
        view.diagnostics,
      );
    } finally {
      await view.context.close();
    }
  });

  test("a text over Xvnc's MaxCutText is refused with a message; one at the limit arrives whole", async () => {
    const { page } = viewer;
    await withDiagnostics(
      server,
      async () => {
        await clearPasteTarget();
        const inputs = pages.state.inputs;
        const sent = await page.locator('#clipboard').getAttribute('data-sent');
        const error = page.locator('#clipboard .clipboard-error');

        // By Ctrl+V: the panel opens with the reason; the key does not go on.
        assert.equal(await page.evaluate((t) => navigator.clipboard.writeText(t).then(() => 'ok'), OVER_LIMIT), 'ok');
        await focusScreen(page);
        await page.keyboard.press('Control+v');
        await page.locator('#clipboard').waitFor({ state: 'visible', timeout: 10_000 });
        await error.waitFor({ state: 'visible', timeout: 10_000 });
        assert.equal(await error.textContent(), refusalFor(MAX_CUT_TEXT + 1));
        assert.equal(await error.getAttribute('role'), 'alert');

        // By the panel's "Send to remote": the same.
        await page.locator('#clipboard-text').fill('');
        await page.locator('#clipboard .clipboard-send').click();
        assert.equal(await error.textContent(), 'Nothing to send: the box is empty.');
        // As if pasted into the box (typing a quarter megabyte would take minutes).
        await page.locator('#clipboard-text').evaluate((t, text) => {
          t.value = text;
        }, OVER_LIMIT);
        await page.locator('#clipboard .clipboard-send').click();
        await waitFor(async () => (await error.textContent()) === refusalFor(MAX_CUT_TEXT + 1), { timeoutMs: 5_000, what: 'the refusal for the panel' });
        assert.equal(await page.locator('#clipboard').getAttribute('data-sent'), sent, 'nothing given to the desktop');
        await sleep(2_000);
        assert.equal(pages.state.inputs, inputs, 'no input in the remote page');
        assert.equal(await remoteValue(), '', 'the remote textarea stays empty');

        // Exactly at the limit: the whole text arrives.
        await page.locator('#clipboard .clipboard-close').click();
        assert.equal(await page.evaluate((t) => navigator.clipboard.writeText(t).then(() => 'ok'), AT_LIMIT), 'ok');
        await focusScreen(page);
        await page.keyboard.press('Control+v');
        await waitFor(() => pages.state.pasted?.length === AT_LIMIT.length, {
          timeoutMs: 30_000,
          what: () => `the text at the limit in the remote page (last input: ${pages.state.pasted?.length ?? 'none'} chars)`,
        });
        assert.ok(pages.state.pasted === AT_LIMIT, 'the text at the limit arrives unchanged');
        const value = await remoteValue();
        assert.equal(value.length, AT_LIMIT.length);
        assert.ok(value === AT_LIMIT, 'the remote textarea holds the whole text');
        assert.equal(await error.isHidden(), true, 'no refusal');
        assert.deepEqual(viewer.problems(), [], 'the console has no error or warning');
      },
      viewer.diagnostics,
    );
  });
});
