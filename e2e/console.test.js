// A normal session leaves the viewer's browser console clean: connect, type,
// resize the viewer's window, reload (reconnect), and not one error, warning or
// uncaught exception, from our modules, from noVNC or from the browser itself
// (a failed request, a refused WebSocket, a CSP violation all show up there).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  canvasColorShare,
  findColorTop,
  launchBrowser,
  recordConsole,
  startServer,
  startTestPageServer,
  waitFor,
  watchConsoleProblems,
  withDiagnostics,
} from './helpers.js';

const MAGENTA = [255, 0, 255];
const TEXT = 'clean console';

describe('viewer console', { timeout: 300_000 }, () => {
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

  test('connect, type, resize and reconnect: no error or warning in the console', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const problems = watchConsoleProblems(page);
    const waitForState = (state, timeout) =>
      page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 100 });

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
        await waitForState('connected', 90_000);
        await waitFor(async () => (await canvasColorShare(page, MAGENTA)) >= 0.3, {
          timeoutMs: 45_000,
          intervalMs: 500,
          what: 'the remote page in the viewer',
        });

        // Type into the remote page.
        const canvas = page.locator('#screen canvas').first();
        let top = null;
        await waitFor(async () => (top = await findColorTop(page, MAGENTA)) !== null, {
          timeoutMs: 15_000,
          intervalMs: 200,
          what: 'the top of the remote page',
        });
        const box = await canvas.boundingBox();
        const scale = box.width / top.width;
        await page.mouse.click(box.x + 120 * scale, box.y + (top.y + 80) * scale);
        await sleep(500);
        await page.keyboard.type(TEXT, { delay: 30 });
        await waitFor(() => pages.state.typedHistory.includes(TEXT), {
          timeoutMs: 20_000,
          what: 'the remote page to receive the typed text',
        });

        // Resize the viewer: the remote screen follows each size.
        for (const viewport of [{ width: 1000, height: 700 }, { width: 1400, height: 900 }]) {
          await page.setViewportSize(viewport);
          await sleep(1_500);
          await waitFor(async () => (await canvasColorShare(page, MAGENTA)) >= 0.3, {
            timeoutMs: 20_000,
            intervalMs: 500,
            what: `the remote page after resizing to ${viewport.width}x${viewport.height}`,
          });
        }

        // Reconnect: a reload resumes the same session with the cookies.
        await page.reload();
        await waitForState('connected', 60_000);
        await waitFor(async () => (await canvasColorShare(page, MAGENTA)) >= 0.3, {
          timeoutMs: 30_000,
          intervalMs: 500,
          what: 'the remote page after the reload',
        });
        await sleep(1_000);

        assert.deepEqual(problems(), [], 'the console has no error, warning or uncaught exception');
      },
      async () => `[e2e] ---- browser console (tail) ----\n${consoleTail()}`,
    );
  });
});
