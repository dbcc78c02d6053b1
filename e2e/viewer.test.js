// End to end: the real server starts a real desktop (Xvnc + openbox +
// Chromium) that opens our loopback typing page; the real noVNC viewer in a
// headless Chromium shows it and types into it.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';

import {
  assertLoopback,
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
// The typing page fills the remote screen; its input box and any browser
// chrome around it take the rest. Half the screen is plenty of proof.
const MIN_MAGENTA_SHARE = 0.5;
const TEXT = 'hello livesession';

describe('viewer', { timeout: 300_000 }, () => {
  let pages;
  let server;
  let browser;

  before(async () => {
    pages = await startTestPageServer();
    // The default configuration a newcomer runs: a warm desktop waits for the first session.
    server = await startServer({ startUrl: pages.url, env: { LIVESESSION_WARM_DESKTOPS: '1' } });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    const status = await server?.stop();
    await pages?.close();
    if (status && status.code !== 0 && status.signal === null) {
      console.error(`[e2e] server exited with ${JSON.stringify(status)} after SIGTERM; tail:\n${server.tail(40)}`);
    }
  });

  /** A fresh browser context with its console recorded, plus a failure dump. */
  async function openPage(t) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const body = await page
        .evaluate(() => ({ ...document.body.dataset, status: document.getElementById('status')?.textContent, lastClose: document.getElementById('last-close')?.textContent }))
        .catch(() => null);
      return `[e2e] page ${page.url()}\n[e2e] viewer: ${JSON.stringify(body)}\n[e2e] screenshot: ${shot}\n[e2e] ---- browser console (tail) ----\n${consoleTail()}`;
    };
    return { context, page, diagnostics };
  }

  const waitForState = (page, state, timeout) =>
    page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 100 });

  test('free mode: start a session, see the remote page and type into it', async (t) => {
    const { context, page, diagnostics } = await openPage(t);
    const problems = watchConsoleProblems(page);
    await withDiagnostics(
      server,
      async () => {
        await page.goto(`${server.baseUrl}/`);
        await page.getByText(/free mode/i).first().waitFor({ state: 'visible', timeout: 10_000 });
        const start = page.getByRole('button', { name: 'Start a session', exact: true });
        await start.waitFor({ state: 'visible' });

        await start.click();
        await page.waitForURL(/\/s\/[^/?#]+$/, { timeout: 15_000 });
        const sessionId = new URL(page.url()).pathname.split('/').pop();
        assert.ok(sessionId, 'session id in viewer URL');
        // The viewer authenticates with the cookie from the start form, which
        // page scripts must not be able to read.
        // All of this fresh context's cookies: the server scopes them to the session's paths.
        const cookies = await context.cookies();
        assert.ok(cookies.length > 0, 'the start form set a cookie');
        assert.ok(cookies.every((c) => c.httpOnly), `cookies are HttpOnly: ${cookies.map((c) => c.name).join(', ')}`);

        await waitForState(page, 'connected', 60_000);
        assert.equal(await page.locator('#status').textContent(), 'connected');
        // "connected" means the screen is live; the session's Chromium may
        // still be loading its first page.
        await waitFor(() => pages.state.loads >= 1, { timeoutMs: 30_000, what: 'the session Chromium to load the typing page' });

        // The remote page is magenta: once enough of the canvas is, the
        // desktop is really being drawn in our viewer.
        let share = 0;
        await waitFor(
          async () => {
            share = await canvasColorShare(page, MAGENTA);
            return share >= MIN_MAGENTA_SHARE;
          },
          {
            timeoutMs: 30_000,
            intervalMs: 500,
            what: () => `≥ ${MIN_MAGENTA_SHARE * 100}% magenta in #screen canvas (last share ${share.toFixed(3)})`,
          },
        );

        // Click into the remote input box (40 px from the top-left of the
        // remote page, below whatever browser chrome is above it): that
        // focuses the canvas and keeps focus on the input in the remote page.
        const canvas = page.locator('#screen canvas').first();
        const box = await canvas.boundingBox();
        assert.ok(box && box.width > 100 && box.height > 100, `canvas is on screen (${JSON.stringify(box)})`);
        // Right after connecting the desktop is resized to the viewer (resizeSession)
        // and Chromium re-lays out its window: wait for the page's edge to settle.
        let top = null;
        await waitFor(
          async () => {
            top = await findColorTop(page, MAGENTA);
            return top !== null;
          },
          { timeoutMs: 10_000, intervalMs: 200, what: 'the top of the remote page' },
        );
        assert.ok(top, 'found the top of the remote page');
        const scale = box.width / top.width;
        await page.mouse.click(box.x + 120 * scale, box.y + (top.y + 80) * scale);
        // The click also makes openbox focus the remote Chromium window; keys
        // sent before that settles can land before the caret is placed.
        await sleep(500);
        await page.keyboard.type(TEXT, { delay: 30 });

        // The page reports every keystroke with its own request; under load they can
        // arrive out of order, so the full text is looked for in all of them.
        await waitFor(() => pages.state.typedHistory.includes(TEXT), {
          timeoutMs: 20_000,
          what: () => `the remote page to report "${TEXT}" (last values: ${JSON.stringify(pages.state.typedHistory.slice(-5))})`,
        });
        assert.ok(pages.state.typedHistory.includes(TEXT));
        // The landing page, the start form and the viewer: a clean console throughout.
        assert.deepEqual(problems(), [], 'no error or warning in the console');
      },
      diagnostics,
    );
  });

  test('admin API: token link connects, revocation ends the viewer for good', async (t) => {
    const { context, page, diagnostics } = await openPage(t);
    let wsCreated = 0;
    const wsUrls = [];
    page.on('websocket', (ws) => {
      wsCreated += 1;
      wsUrls.push(ws.url());
      console.info(`[e2e] websocket #${wsCreated}: ${ws.url().replace(/token=[^&]+/, 'token=…')}`);
    });
    const tokenRequests = [];
    page.on('request', async (req) => {
      if (req.method() === 'POST' && /\/api\/sessions\/[^/]+\/token$/.test(new URL(req.url()).pathname)) {
        tokenRequests.push({ url: req.url(), authorization: await req.headerValue('authorization') });
      }
    });

    await withDiagnostics(
      server,
      async () => {
        const auth = { Authorization: `Bearer ${server.adminToken}` };
        const res = await server.request('/api/sessions', {
          method: 'POST',
          headers: { ...auth, 'Content-Type': 'application/json' },
          body: '{}',
        });
        const text = await res.text();
        assert.equal(res.status, 201, `POST /api/sessions: ${res.status} ${text}`);
        const session = JSON.parse(text);
        for (const key of ['id', 'expires_at', 'token', 'refresh_token', 'viewer_url', 'vnc_url', 'control_url']) {
          assert.equal(typeof session[key], 'string', `response has string "${key}": ${text}`);
          assert.ok(session[key].length > 0, `"${key}" is not empty`);
        }
        assert.ok(!Number.isNaN(Date.parse(session.expires_at)), `expires_at parses: ${session.expires_at}`);

        const viewerUrl = new URL(session.viewer_url, server.baseUrl).href;
        assertLoopback(viewerUrl);
        // The link a person is handed carries the session's refresh token: an
        // access token cannot renew itself into the session's cookies.
        const refused = await server.request(`/api/sessions/${session.id}/token`, { method: 'POST', headers: { Authorization: `Bearer ${session.token}` } });
        assert.equal(refused.status, 401, 'an access token alone gets no new token');
        assert.equal((await refused.json()).error.code, 'refresh_required');
        assert.equal(refused.headers.get('set-cookie'), null, 'and no cookie');
        await page.goto(`${viewerUrl}#token=${session.refresh_token}`);

        await waitForState(page, 'connected', 60_000);
        // The token left the address bar, was exchanged once (Bearer) for the
        // session's HttpOnly cookies, and is kept nowhere in the page.
        assert.equal(new URL(page.url()).hash, '', 'token fragment removed from the URL');
        assert.ok(tokenRequests.length >= 1, 'the viewer called the token endpoint');
        assert.equal(tokenRequests[0].authorization, `Bearer ${session.refresh_token}`, 'the link token was exchanged with a Bearer header');
        assert.ok(tokenRequests.slice(1).every((r) => !r.authorization), 'later token requests use the refresh cookie only');
        const storage = await page.evaluate(() => JSON.stringify({ ...sessionStorage }) + JSON.stringify({ ...localStorage }));
        assert.ok(!storage.includes(session.refresh_token), 'the token is not kept in web storage');
        const cookies = await context.cookies(server.baseUrl + `/api/sessions/${session.id}/token`);
        const names = cookies.map((c) => c.name).sort();
        assert.deepEqual(names, [`ls_${session.id}`, `lsr_${session.id}`], 'the exchange set both session cookies');
        assert.ok(cookies.every((c) => c.httpOnly), 'the session cookies are HttpOnly');
        assert.ok(wsUrls.length >= 2, `control and VNC sockets opened (${wsUrls.length})`);
        for (const url of wsUrls) {
          assert.ok(!/[?&]token=/.test(url) && !url.includes(session.refresh_token), `no token in the WebSocket URL ${url.replace(session.refresh_token, '…')}`);
        }

        const del = await server.request(`/api/sessions/${encodeURIComponent(session.id)}`, { method: 'DELETE', headers: auth });
        assert.ok(del.status >= 200 && del.status < 300, `DELETE /api/sessions/{id}: ${del.status} ${await del.text()}`);

        await waitForState(page, 'ended', 15_000);
        // The close that ended it may still be on its way to the other socket.
        await page.waitForFunction(() => document.body.dataset.lastCloseCode === '4008', null, { timeout: 5_000 }).catch(() => {});
        const shown = await page.evaluate(() => ({
          code: document.body.dataset.lastCloseCode,
          status: document.getElementById('status').textContent,
          text: document.body.innerText,
        }));
        assert.equal(shown.code, '4008', `last close code (${JSON.stringify(shown)})`);
        assert.match(shown.text, /revoked/i, 'page says the session was revoked');

        // Revocation is final: the viewer must not try again.
        const before = wsCreated;
        await sleep(5_000);
        assert.equal(wsCreated, before, 'no WebSocket opened after revocation');
        assert.equal(await page.evaluate(() => document.body.dataset.state), 'ended');

        // The token went to the server once (the exchange); it must not
        // come back out in its logs.
        assert.ok(!server.output().includes(session.token), 'the access token does not appear in the server log');
        assert.ok(!server.output().includes(session.refresh_token), 'the refresh token does not appear in the server log');
      },
      diagnostics,
    );
  });
});
