// The browser fills the remote screen at every size the viewer asks for: the
// viewer's window is resized to three sizes, the remote screen follows
// (noVNC's resizeSession), and the frames the viewer reads through the VNC
// proxy show the remote page reaching the left, right and bottom edges of the
// screen (Chromium's own tab strip and address bar span the top), with no
// black band and nothing cut off. The page itself agrees: its viewport is as
// wide as the screen.
//
// A person never faces an empty desktop either: an agent crashes the remote
// browser (CDP Browser.crash, through the gateway); the viewer says the browser
// is starting again, then shows the page again on the same connection.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import puppeteer from 'puppeteer-core';
import { setTimeout as sleep } from 'node:timers/promises';

import { canvasColorShare, launchBrowser, recordConsole, recordStatusTexts, startServer, startTestPageServer, waitFor, watchConsoleProblems, withDiagnostics } from './helpers.js';

const MAGENTA = [255, 0, 255];

/**
 * The share of magenta pixels along each edge of the remote framebuffer as the
 * viewer's canvas holds it: the left and right columns (below the top third,
 * clear of Chromium's toolbar) and the bottom row. Also the framebuffer's size.
 */
function edgeShares(page, [r, g, b], tol = 24) {
  return page.evaluate(
    ({ r, g, b, tol }) => {
      const canvas = document.querySelector('#screen canvas');
      if (!canvas || canvas.width === 0 || canvas.height === 0) return null;
      const copy = Object.assign(document.createElement('canvas'), { width: canvas.width, height: canvas.height });
      const ctx = copy.getContext('2d', { willReadFrequently: true });
      ctx.drawImage(canvas, 0, 0);
      const { width: w, height: h } = canvas;
      const match = (x, y) => {
        const [pr, pg, pb] = ctx.getImageData(x, y, 1, 1).data;
        return Math.abs(pr - r) <= tol && Math.abs(pg - g) <= tol && Math.abs(pb - b) <= tol;
      };
      const share = (points) => points.filter(([x, y]) => match(x, y)).length / points.length;
      const column = (x) => Array.from({ length: 20 }, (_, i) => [x, Math.floor(h / 3 + (i * (h * 2) / 3) / 20)]);
      const row = (y) => Array.from({ length: 20 }, (_, i) => [Math.floor(((i + 0.5) * w) / 20), y]);
      return { width: w, height: h, left: share(column(0)), right: share(column(w - 1)), bottom: share(row(h - 1)) };
    },
    { r, g, b, tol },
  );
}

describe('the browser fills the screen', { timeout: 300_000 }, () => {
  let pages;
  let server;
  let browser;

  before(async () => {
    pages = await startTestPageServer();
    server = await startServer({ startUrl: pages.url });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await pages?.close();
  });

  test('at three viewer sizes the remote page reaches every edge of the screen', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const problems = watchConsoleProblems(page);

    await withDiagnostics(
      server,
      async () => {
        const auth = { Authorization: `Bearer ${server.adminToken}` };
        const res = await server.request('/api/sessions', {
          method: 'POST',
          headers: { ...auth, 'Content-Type': 'application/json' },
          body: '{}',
        });
        assert.equal(res.status, 201, `POST /api/sessions: ${res.status}`);
        const session = await res.json();
        await page.goto(`${new URL(session.viewer_url, server.baseUrl).href}#token=${session.refresh_token}`);
        await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 90_000, polling: 100 });

        for (const viewport of [{ width: 1400, height: 900 }, { width: 1000, height: 700 }, { width: 1200, height: 800 }]) {
          await page.setViewportSize(viewport);
          // The screen area is the viewer's window below its status bar: the remote
          // screen takes that size, then Chromium's window follows it.
          const area = await page.evaluate(() => {
            const r = document.getElementById('screen').getBoundingClientRect();
            return { width: Math.floor(r.width), height: Math.floor(r.height) };
          });
          let edges = null;
          await waitFor(
            async () => {
              edges = await edgeShares(page, MAGENTA);
              return (
                edges !== null &&
                Math.abs(edges.width - area.width) <= 2 &&
                Math.abs(edges.height - area.height) <= 2 &&
                edges.left >= 0.9 &&
                edges.right >= 0.9 &&
                edges.bottom >= 0.9
              );
            },
            {
              timeoutMs: 30_000,
              intervalMs: 500,
              what: () => `the remote page at every edge of a ${area.width}x${area.height} screen (last: ${JSON.stringify(edges)})`,
            },
          );
          assert.ok(edges.right >= 0.9 && edges.bottom >= 0.9 && edges.left >= 0.9, `edges at ${JSON.stringify(viewport)}: ${JSON.stringify(edges)}`);
          await sleep(300);
        }
        assert.deepEqual(problems(), [], 'no error or warning in the console');
      },
      async () => `[e2e] ---- browser console (tail) ----\n${consoleTail()}`,
    );
  });

  test('a crashed browser comes back and the viewer says so', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const problems = watchConsoleProblems(page);
    const texts = await recordStatusTexts(page);

    await withDiagnostics(
      server,
      async () => {
        const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
        assert.equal(res.status, 201, `POST /api/sessions: ${res.status}`);
        const session = await res.json();
        await page.goto(`${new URL(session.viewer_url, server.baseUrl).href}#token=${session.refresh_token}`);
        await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 90_000, polling: 100 });
        await waitFor(async () => (await canvasColorShare(page, MAGENTA)) > 0.5, { timeoutMs: 30_000, what: 'the page on screen' });

        const agent = await puppeteer.connect({
          browserWSEndpoint: `ws://127.0.0.1:${server.port}/api/sessions/${session.id}/cdp?token=${encodeURIComponent(session.token)}`,
          defaultViewport: null,
        });
        const cdp = await agent.target().createCDPSession();
        const disconnected = new Promise((resolve) => agent.once('disconnected', resolve));
        // Crashes the browser process on its main thread: a real crash, not a close.
        cdp.send('Browser.crash').catch(() => {});
        await disconnected;

        await waitFor(async () => (await texts()).includes('the browser is starting again…'), { timeoutMs: 10_000, what: 'the viewer saying the browser restarts' });
        await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 30_000, polling: 100 });
        await waitFor(async () => (await canvasColorShare(page, MAGENTA)) > 0.5, { timeoutMs: 30_000, what: 'the page on screen again' });
        const seen = await texts();
        assert.deepEqual(seen.slice(seen.indexOf('the browser is starting again…')), ['the browser is starting again…', 'connected'], JSON.stringify(seen));
        // The viewer shows the last close of either connection: there was none.
        assert.equal(await page.textContent('#last-close'), '', 'the VNC and control connections stayed up');

        // The browser is back for agents too.
        const again = await puppeteer.connect({
          browserWSEndpoint: `ws://127.0.0.1:${server.port}/api/sessions/${session.id}/cdp?token=${encodeURIComponent(session.token)}`,
          defaultViewport: null,
        });
        const tabs = await again.pages();
        assert.ok(tabs.some((tab) => tab.url() === pages.url), `a tab shows the start page again: ${tabs.map((tab) => tab.url())}`);
        await again.disconnect();
        assert.deepEqual(problems(), [], 'no error or warning in the console');
      },
      async () => `[e2e] status texts: ${JSON.stringify(await texts().catch(() => null))}\n[e2e] ---- browser console (tail) ----\n${consoleTail()}`,
    );
  });
});
