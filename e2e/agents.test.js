// End to end: agents drive a session's Chromium over the DevTools protocol
// through the gateway (docs/agents.md) while a person watches in the real
// viewer, and the two hand control over.
//
// - Playwright (connectOverCDP, http discovery and ws forms) and Puppeteer
//   (connect, browserWSEndpoint) each connect with the session's token,
//   navigate the session's page to one served by this test, fill a form field
//   and read it back, while the real noVNC viewer (a local headless Chromium)
//   sees that page drawn in the page's own colour.
// - An agent's Livesession.requestHuman shows its reason in the viewer with
//   "Take control"; taking control holds back the agent's Input.insertText
//   until "Hand back to the agent", after which it arrives once.

import assert from 'node:assert/strict';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

import { assertLoopback, canvasColorShare, launchBrowser, recordConsole, startServer, waitFor, withDiagnostics } from './helpers.js';

// Each client paints the page its own colour, so the viewer proves it sees
// that client's page and not an earlier one.
const GREY = [120, 120, 120];
const GREEN = [0, 170, 80];
const BLUE = [30, 90, 250];
const ORANGE = [250, 140, 0];
const PURPLE = [150, 0, 200];
// The form page fills the remote screen except its input box and the browser
// chrome above it.
const MIN_SHARE = 0.4;
const hex = (rgb) => rgb.map((c) => c.toString(16).padStart(2, '0')).join('');

/**
 * The pages the session's desktop opens (it may reach this port only:
 * startServer passes it as the desktop's one host port). `/start.html` is
 * grey; `/form.html?bg=RRGGBB` is a page of that colour with a text field
 * that reports every change to `/typed`, so the test sees what arrived in
 * the remote page without asking the browser.
 */
function startFormServer() {
  const state = { loads: [], typed: [] };
  const page = (bg, body) => `<!doctype html>
<html><head><meta charset="utf-8"><title>agent e2e ${bg}</title>
<style>
  html, body { margin: 0; height: 100%; background: #${bg}; }
  #field { position: fixed; left: 40px; top: 40px; width: 40vw; height: 15vh; font: 40px sans-serif; border: 0; }
</style></head>
<body>${body}</body></html>
`;
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/start.html') {
      state.loads.push(url.pathname);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(page(hex(GREY), ''));
    } else if (url.pathname === '/form.html') {
      const bg = /^[0-9a-f]{6}$/.test(url.searchParams.get('bg') ?? '') ? url.searchParams.get('bg') : 'ffffff';
      state.loads.push(`${url.pathname}?bg=${bg}`);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(
        page(
          bg,
          `<form onsubmit="return false"><input id="field" name="field" autocomplete="off" spellcheck="false"></form>
<script>
  const f = document.getElementById('field');
  f.addEventListener('input', () => { fetch('/typed?value=' + encodeURIComponent(f.value)).catch(() => {}); });
</script>`,
        ),
      );
    } else if (url.pathname === '/typed') {
      state.typed.push(url.searchParams.get('value'));
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve, reject) => {
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const base = `http://127.0.0.1:${srv.address().port}`;
      resolve({
        base,
        startUrl: `${base}/start.html`,
        formUrl: (rgb) => `${base}/form.html?bg=${hex(rgb)}`,
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

describe('agents over CDP', { timeout: 600_000 }, () => {
  let pages;
  let server;
  let browser; // the person's local Chromium, showing the real viewer

  before(async () => {
    pages = await startFormServer();
    server = await startServer({ startUrl: pages.startUrl });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await pages?.close();
  });

  async function createSession() {
    const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    const text = await res.text();
    assert.equal(res.status, 201, `POST /api/sessions: ${text}`);
    const session = JSON.parse(text);
    assert.equal(session.cdp_url, `ws://127.0.0.1:${server.port}/api/sessions/${session.id}/cdp`, `cdp_url: ${text}`);
    return session;
  }

  /** A view-only access token for the session (what a view link's holder gets). */
  async function viewToken(session) {
    const res = await server.admin(`/api/sessions/${session.id}/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"role":"view"}' });
    const text = await res.text();
    assert.equal(res.status, 200, `POST /api/sessions/{id}/token {"role":"view"}: ${text}`);
    const body = JSON.parse(text);
    assert.equal(body.role, 'view');
    // A viewer link carries the refresh token where the server gives one.
    return body.refresh_token ?? body.token;
  }

  /**
   * The real viewer for `session`, opened with a token link (the session's
   * interactive token, or its refresh token where POST /api/sessions answers
   * one, unless `token` is given) as a person would; waits until the screen
   * is live.
   */
  async function openViewer(t, session, token = session.refresh_token ?? session.token) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const viewerUrl = new URL(session.viewer_url, server.baseUrl).href;
    assertLoopback(viewerUrl);
    await page.goto(`${viewerUrl}#token=${token}`);
    await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 90_000, polling: 200 });
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-agents-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const body = await page
        .evaluate(() => ({ ...document.body.dataset, status: document.getElementById('status')?.textContent, handover: document.getElementById('handover')?.innerText }))
        .catch(() => null);
      return `[e2e] viewer: ${JSON.stringify(body)}\n[e2e] page loads: ${JSON.stringify(pages.state.loads)}\n[e2e] typed: ${JSON.stringify(pages.state.typed.slice(-5))}\n[e2e] screenshot: ${shot}\n[e2e] ---- viewer console (tail) ----\n${consoleTail()}`;
    };
    return { page, diagnostics };
  }

  /** The viewer's canvas shows mostly `rgb`: the agent's page is what the person sees. */
  async function waitForColour(viewer, rgb, what) {
    let share = 0;
    await waitFor(
      async () => {
        share = await canvasColorShare(viewer, rgb);
        return share >= MIN_SHARE;
      },
      { timeoutMs: 30_000, intervalMs: 300, what: () => `the viewer to show ${what} (rgb ${rgb}; share ${share.toFixed(3)})` },
    );
  }

  const cdpPath = (session) => `/api/sessions/${session.id}/cdp?token=${encodeURIComponent(session.token)}`;

  describe('Playwright and Puppeteer connect through the gateway while the viewer watches', () => {
    let session;
    let viewer;

    before(async () => {
      session = await createSession();
    });

    // One viewer for the three clients: opened by the first test that runs.
    async function viewerFor(t) {
      if (!viewer) {
        // The viewer outlives the test that opens it: its context is closed with the browser.
        viewer = await openViewer({ after: () => {} }, session);
      }
      return viewer;
    }

    test('Playwright connectOverCDP with the http discovery URL', async (t) => {
      const { page: viewerPage, diagnostics } = await viewerFor(t);
      await withDiagnostics(
        server,
        async () => {
          const agent = await chromium.connectOverCDP(`${server.baseUrl}${cdpPath(session)}`, { timeout: 90_000 });
          t.after(() => agent.close());
          const context = agent.contexts()[0];
          assert.ok(context, 'the session browser has its default context');
          const page = context.pages()[0] ?? (await context.newPage());
          await page.goto(pages.formUrl(GREEN), { timeout: 30_000 });
          await page.fill('#field', 'playwright over http');
          assert.equal(await page.inputValue('#field'), 'playwright over http');
          await waitFor(() => pages.state.typed.includes('playwright over http'), { timeoutMs: 10_000, what: 'the remote page to report the filled value' });
          await waitForColour(viewerPage, GREEN, "Playwright's page");
        },
        diagnostics,
      );
    });

    test('Playwright connectOverCDP with the ws URL', async (t) => {
      const { page: viewerPage, diagnostics } = await viewerFor(t);
      await withDiagnostics(
        server,
        async () => {
          const agent = await chromium.connectOverCDP(`ws://127.0.0.1:${server.port}${cdpPath(session)}`, { timeout: 90_000 });
          t.after(() => agent.close());
          const context = agent.contexts()[0];
          assert.ok(context, 'the session browser has its default context');
          const page = context.pages()[0] ?? (await context.newPage());
          await page.goto(pages.formUrl(BLUE), { timeout: 30_000 });
          await page.fill('#field', 'playwright over ws');
          assert.equal(await page.inputValue('#field'), 'playwright over ws');
          await waitFor(() => pages.state.typed.includes('playwright over ws'), { timeoutMs: 10_000, what: 'the remote page to report the filled value' });
          await waitForColour(viewerPage, BLUE, "Playwright's page");
        },
        diagnostics,
      );
    });

    test('Puppeteer connect with browserWSEndpoint', async (t) => {
      const { page: viewerPage, diagnostics } = await viewerFor(t);
      await withDiagnostics(
        server,
        async () => {
          const agent = await puppeteer.connect({
            browserWSEndpoint: `ws://127.0.0.1:${server.port}${cdpPath(session)}`,
            // Keep the window's own size: an emulated 800x600 viewport would not fill the screen.
            defaultViewport: null,
            protocolTimeout: 60_000,
          });
          // disconnect, never close(): close() would send Browser.close and end the session's browser.
          t.after(() => agent.disconnect());
          const existing = (await agent.pages()).filter((p) => p.url().startsWith(pages.base));
          const page = existing[0] ?? (await agent.newPage());
          await page.goto(pages.formUrl(ORANGE), { timeout: 30_000 });
          await page.type('#field', 'puppeteer');
          assert.equal(await page.$eval('#field', (el) => el.value), 'puppeteer');
          await waitFor(() => pages.state.typed.includes('puppeteer'), { timeoutMs: 10_000, what: 'the remote page to report the typed value' });
          await waitForColour(viewerPage, ORANGE, "Puppeteer's page");
        },
        diagnostics,
      );
    });
  });

  test('requestHuman: the viewer shows the reason, the person takes control, the agent waits until handed back', async (t) => {
    const session = await createSession();
    const { page: viewer, diagnostics } = await openViewer(t, session);
    // Someone watching through a view link sees who drives but has no buttons.
    const { page: watcher } = await openViewer(t, session, await viewToken(session));
    await withDiagnostics(
      server,
      async () => {
        const agent = await chromium.connectOverCDP(`${server.baseUrl}${cdpPath(session)}`, { timeout: 90_000 });
        t.after(() => agent.close());
        const cdp = await agent.newBrowserCDPSession();
        const changes = [];
        cdp.on('Livesession.controlChanged', (e) => changes.push(e));
        const context = agent.contexts()[0];
        const page = context.pages()[0] ?? (await context.newPage());
        await page.goto(pages.formUrl(PURPLE), { timeout: 30_000 });
        await page.focus('#field');
        await waitForColour(viewer, PURPLE, "the agent's page");

        // An agent drives: the person's input is paused, and they may take control.
        const handover = viewer.locator('#handover');
        const take = viewer.getByRole('button', { name: 'Take control' });
        const handBack = viewer.getByRole('button', { name: 'Hand back to the agent' });
        await viewer.getByRole('status').filter({ hasText: 'An agent is driving; your input is paused' }).waitFor({ timeout: 15_000 });
        await take.waitFor({ state: 'visible' });
        assert.equal(await viewer.evaluate(() => document.body.dataset.holder), 'agent');
        await watcher.getByRole('status').filter({ hasText: 'An agent is driving' }).waitFor({ timeout: 15_000 });
        assert.equal(await watcher.getByRole('button', { name: 'Take control' }).isVisible(), false, 'no "Take control" for a view link');

        // The agent asks for a person: the reason is shown with "Take control".
        assert.deepEqual(await cdp.send('Livesession.requestHuman', { reason: 'Please solve the captcha' }), {});
        await viewer.getByRole('alert').filter({ hasText: 'Please solve the captcha' }).waitFor({ timeout: 10_000 });
        assert.ok(await take.isVisible(), '"Take control" is offered with the reason');
        assert.ok(await take.isEnabled());
        assert.match(await handover.innerText(), /Please solve the captcha/);
        await watcher.getByRole('alert').filter({ hasText: 'Please solve the captcha' }).waitFor({ timeout: 10_000 });
        assert.equal(await watcher.getByRole('button', { name: 'Take control' }).isVisible(), false, 'still no button for a view link');

        await take.click();
        await handBack.waitFor({ state: 'visible', timeout: 10_000 });
        assert.equal(await viewer.evaluate(() => document.body.dataset.holder), 'person');
        await watcher.getByRole('status').filter({ hasText: 'A person has control' }).waitFor({ timeout: 10_000 });
        assert.equal(await watcher.getByRole('button', { name: 'Hand back to the agent' }).isVisible(), false, 'no "Hand back" for a view link');
        assert.ok(!(await viewer.getByText('Please solve the captcha').isVisible()), 'the reason is gone once someone took control');
        assert.equal((await cdp.send('Livesession.getControl')).holder, 'person', 'the agent sees the person holds control');
        await waitFor(() => changes.some((c) => c.holder === 'person'), {
          timeoutMs: 10_000,
          what: () => `Livesession.controlChanged {holder: "person"} on the browser CDP session (got ${JSON.stringify(changes)})`,
        });

        // While the person holds control the agent's input waits…
        const pageCdp = await context.newCDPSession(page);
        let delivered = false;
        const insert = pageCdp.send('Input.insertText', { text: 'from the agent' }).then(() => {
          delivered = true;
        });
        // …reading passes meanwhile…
        const doc = await pageCdp.send('DOM.getDocument', { depth: 1 });
        assert.ok(doc.root.nodeId, 'a read-only command is answered while the person holds control');
        await sleep(3_000);
        assert.equal(delivered, false, 'Input.insertText is held back while the person holds control');
        assert.ok(!pages.state.typed.includes('from the agent'), `nothing reached the page: ${JSON.stringify(pages.state.typed)}`);

        // …and arrives once when the person hands back.
        await handBack.click();
        await insert;
        await waitFor(() => pages.state.typed.includes('from the agent'), { timeoutMs: 10_000, what: 'the held text to reach the page' });
        await sleep(1_000);
        assert.equal(pages.state.typed.filter((v) => v.includes('from the agent')).length, 1, `arrived once: ${JSON.stringify(pages.state.typed)}`);
        assert.equal(await page.inputValue('#field'), 'from the agent');
        await take.waitFor({ state: 'visible', timeout: 10_000 });
        assert.equal(await viewer.evaluate(() => document.body.dataset.holder), 'agent');
        assert.equal((await cdp.send('Livesession.getControl')).holder, 'agent');
        await waitFor(() => changes.at(-1)?.holder === 'agent', {
          timeoutMs: 10_000,
          what: () => `Livesession.controlChanged {holder: "agent"} after the hand-back (got ${JSON.stringify(changes)})`,
        });
      },
      diagnostics,
    );
  });
});
