// The control channel client (web/static/control.js) in the real viewer
// against the real server: a server restart, access tokens that expire every
// few seconds, revocation, and a page reload. Each test is bounded in time.
//
// Every test also checks that no access token appears in a WebSocket URL the
// page opens or in the server's log: the viewer authenticates its sockets
// with the session's HttpOnly cookie, renewed at the token endpoint.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import os from 'node:os';
import path from 'node:path';

import { launchBrowser, recordConsole, startServer, startTestPageServer, waitFor, withDiagnostics } from './helpers.js';

// docs/protocol.md: backoff 3 s doubling to a 30 s cap (full jitter); the
// page must be back within one full wait plus slack.
const RECONNECT_WINDOW_MS = 35_000;
const DESKTOP_READY_MS = 60_000;

describe('control channel client in the viewer', { timeout: 600_000 }, () => {
  let pages;
  let browser;

  before(async () => {
    pages = await startTestPageServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await pages?.close();
  });

  /** Start a server for one test; stopped when the test ends. */
  async function serverFor(t, opts = {}) {
    const server = await startServer({ startUrl: pages.url, ...opts });
    t.after(() => server.stop());
    return server;
  }

  /**
   * A fresh browser context whose page records every WebSocket it opens, the
   * token endpoint's requests and the tokens it answered (to look for them
   * where they must not be), plus a failure dump.
   */
  async function openPage(t, serverRef) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const record = { sockets: [], tokenRequests: [], tokens: new Set(), frames: { sent: [], received: [] } };
    page.on('websocket', (ws) => {
      const kind = new URL(ws.url()).pathname.split('/').pop();
      const entry = { url: ws.url(), kind, at: Date.now(), closedAt: null };
      record.sockets.push(entry);
      ws.on('close', () => {
        entry.closedAt = Date.now();
      });
      if (kind === 'control') {
        ws.on('framesent', (f) => record.frames.sent.push({ at: Date.now(), type: frameType(f.payload) }));
        ws.on('framereceived', (f) => record.frames.received.push({ at: Date.now(), type: frameType(f.payload) }));
      }
    });
    page.on('request', (req) => {
      if (req.method() === 'POST' && /^\/api\/sessions\/[^/]+\/token$/.test(new URL(req.url()).pathname)) {
        record.tokenRequests.push({ at: Date.now() });
      }
    });
    page.on('response', async (res) => {
      if (res.request().method() === 'POST' && /^\/api\/sessions\/[^/]+\/token$/.test(new URL(res.url()).pathname) && res.status() === 200) {
        const body = await res.json().catch(() => null);
        if (body?.token) record.tokens.add(body.token);
      }
    });
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const body = await page
        .evaluate(() => ({ ...document.body.dataset, status: document.getElementById('status')?.textContent, lastClose: document.getElementById('last-close')?.textContent }))
        .catch(() => null);
      const sockets = record.sockets.map((s) => `${s.kind}@${s.at}${s.closedAt ? `–${s.closedAt}` : ''}`).join(', ');
      return `[e2e] page ${page.url()}\n[e2e] viewer: ${JSON.stringify(body)}\n[e2e] sockets: ${sockets}\n[e2e] screenshot: ${shot}\n[e2e] ---- browser console (tail) ----\n${consoleTail()}`;
    };
    return { context, page, record, diagnostics };
  }

  const dataset = (page) => page.evaluate(() => ({ ...document.body.dataset }));

  const waitForState = (page, state, timeout) =>
    page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 100 });

  const waitForControl = (page, state, timeout) =>
    page.waitForFunction((s) => document.body.dataset.control === s, state, { timeout, polling: 100 });

  /** Free mode: the landing page's "Start a session" → the viewer; returns the session id. */
  async function startSession(page, server) {
    await page.goto(`${server.baseUrl}/`);
    const start = page.getByRole('button', { name: 'Start a session', exact: true });
    await start.waitFor({ state: 'visible', timeout: 10_000 });
    await start.click();
    await page.waitForURL(/\/s\/[^/?#]+$/, { timeout: 15_000 });
    return new URL(page.url()).pathname.split('/').pop();
  }

  async function sessionCount(server) {
    const res = await server.admin('/api/sessions?limit=1000');
    assert.equal(res.status, 200, `GET /api/sessions: ${res.status}`);
    return (await res.json()).sessions.length;
  }

  /** No token the page was given may appear in a WebSocket URL or a server log. */
  function assertNoTokenLeaks(record, servers) {
    assert.ok(record.sockets.length > 0, 'the page opened WebSockets');
    for (const { url } of record.sockets) {
      assert.ok(!/[?&]token=/.test(url), `no token parameter in the WebSocket URL ${url}`);
      for (const token of record.tokens) assert.ok(!url.includes(token), 'no access token in a WebSocket URL');
    }
    assert.ok(record.tokens.size > 0, 'the page was given tokens to look for');
    for (const server of servers) {
      const log = server.output();
      for (const token of record.tokens) assert.ok(!log.includes(token), 'the access token does not appear in the server log');
    }
  }

  test('(a) server stopped and started again: the page reconnects by itself to the same session', { timeout: 240_000 }, async (t) => {
    const first = await startServer({ startUrl: pages.url });
    let second = null;
    t.after(async () => {
      await first.stop({ keepData: second !== null }).catch(() => {});
      await second?.stop();
    });
    const { page, record, diagnostics } = await openPage(t);
    const current = () => second ?? first;
    await withDiagnostics(
      { tail: (n) => current().tail(n) },
      async () => {
        const id = await startSession(page, first);
        await waitForState(page, 'connected', DESKTOP_READY_MS);
        const viewerUrl = page.url();
        const sessionsBefore = await sessionCount(first);

        // SIGTERM: the server closes every socket with 4011 and exits.
        await first.stop({ keepData: true });
        await waitFor(async () => (await dataset(page)).control !== 'connected', { timeoutMs: 10_000, what: 'the page to notice the server went away' });
        const socketsWhileDown = record.sockets.length;

        second = await startServer({ startUrl: pages.url, port: first.port, dataDir: first.dataDir, adminToken: first.adminToken });
        const upAt = Date.now();
        await waitForControl(page, 'connected', RECONNECT_WINDOW_MS);
        const reconnectMs = Date.now() - upAt;
        console.info(`[e2e] control channel back ${reconnectMs} ms after the server answered /healthz`);
        assert.ok(reconnectMs <= RECONNECT_WINDOW_MS, `reconnected within ${RECONNECT_WINDOW_MS} ms (took ${reconnectMs})`);
        assert.ok(record.sockets.length > socketsWhileDown, 'new sockets were opened');

        // The desktop was stopped with the server; the control channel starts it again.
        await waitForState(page, 'connected', DESKTOP_READY_MS);
        assert.equal(page.url(), viewerUrl, 'same viewer URL');
        assert.equal(await sessionCount(second), sessionsBefore, 'no session was created');
        const info = await (await second.admin(`/api/sessions/${id}`)).json();
        assert.equal(info.state, 'active');

        // Requirement: a reload resumes the same session (cookies persist).
        await page.reload();
        await waitForState(page, 'connected', DESKTOP_READY_MS);
        assert.equal(page.url(), viewerUrl, 'same viewer URL after a reload');
        assert.equal(await sessionCount(second), sessionsBefore, 'no session was created by the reload');

        assertNoTokenLeaks(record, [first, second]);
      },
      diagnostics,
    );
  });

  test('(b) access tokens that live 5 s: renewed over the open connection, no reconnect loop', { timeout: 180_000 }, async (t) => {
    const server = await serverFor(t, { env: { LIVESESSION_ACCESS_TOKEN_TTL: '5' } });
    const { page, record, diagnostics } = await openPage(t);
    await withDiagnostics(
      server,
      async () => {
        const id = await startSession(page, server);
        await waitForState(page, 'connected', DESKTOP_READY_MS);
        const sessionsBefore = await sessionCount(server);
        const controls = () => record.sockets.filter((s) => s.kind === 'control');
        const controlsAtStart = controls().length;
        const from = Date.now();
        const renewalsAtStart = record.frames.received.filter((f) => f.type === 'AUTH_OK').length;

        // Three times the token's life: without renewal the server would
        // close the control channel with 4003 at least twice.
        await sleep(15_000);

        const inWindow = controls().filter((s) => s.at >= from).length;
        assert.ok(controls().length <= 2, `at most 2 control connection attempts in all (${controls().length})`);
        assert.equal(inWindow, 0, `no control reconnect during the 15 s (opened ${inWindow})`);
        assert.ok(controlsAtStart <= 2, `at most 2 control attempts to get connected (${controlsAtStart})`);
        const authOks = record.frames.received.filter((f) => f.type === 'AUTH_OK').length - renewalsAtStart;
        assert.ok(authOks >= 3, `the token was renewed with AUTH over the open connection (${authOks} AUTH_OK in 15 s)`);
        const shown = await dataset(page);
        assert.equal(shown.state, 'connected', `still connected (${JSON.stringify(shown)})`);
        assert.equal(shown.control, 'connected');
        assert.notEqual(shown.lastCloseCode, '4003', 'never closed for an expired token');
        assert.ok(controls().every((s) => s.closedAt === null), 'the control socket stayed open');
        const vnc = record.sockets.filter((s) => s.kind === 'vnc');
        assert.equal(vnc.length, 1, 'one VNC connection');
        assert.equal(vnc[0].closedAt, null, 'the VNC connection stayed open');

        // A reload long after the access cookie expired: the refresh cookie
        // gets a new one, same session.
        const url = page.url();
        await page.reload();
        await waitForState(page, 'connected', DESKTOP_READY_MS);
        assert.equal(page.url(), url);
        assert.equal(new URL(page.url()).pathname, `/s/${id}`);
        assert.equal(await sessionCount(server), sessionsBefore, 'no session was created');

        assertNoTokenLeaks(record, [server]);
      },
      diagnostics,
    );
  });

  test('(c) revoked: the page says so and makes no further connection attempts', { timeout: 120_000 }, async (t) => {
    const server = await serverFor(t);
    const { page, record, diagnostics } = await openPage(t);
    await withDiagnostics(
      server,
      async () => {
        const id = await startSession(page, server);
        await waitForState(page, 'connected', DESKTOP_READY_MS);

        const del = await server.admin(`/api/sessions/${id}`, { method: 'DELETE' });
        assert.equal(del.status, 200, `DELETE /api/sessions/{id}: ${del.status}`);
        await waitForState(page, 'ended', 15_000);
        await page.waitForFunction(() => document.body.dataset.lastCloseCode === '4008', null, { timeout: 5_000 }).catch(() => {});
        const shown = await page.evaluate(() => ({ ...document.body.dataset, text: document.body.innerText }));
        assert.equal(shown.lastCloseCode, '4008', `closed with 4008 (${JSON.stringify(shown)})`);
        assert.match(shown.text, /revoked/i);
        assert.match(await page.locator('#status').textContent(), /revoked/i, 'the status line says revoked');

        const sockets = record.sockets.length;
        const tokenRequests = record.tokenRequests.length;
        await sleep(10_000);
        assert.equal(record.sockets.length, sockets, 'no WebSocket opened after revocation');
        assert.equal(record.tokenRequests.length, tokenRequests, 'no token requests after revocation');
        assert.equal((await dataset(page)).state, 'ended');
        assert.ok(['stopped', 'idle'].includes((await dataset(page)).control), 'the control client gave up');

        // A reload of a revoked session's viewer: the token endpoint answers
        // 410 and the page says so without opening a socket.
        const before = record.sockets.length;
        await page.reload();
        await waitForState(page, 'ended', 15_000);
        assert.match(await page.locator('#status').textContent(), /revoked/i);
        await sleep(5_000);
        assert.equal(record.sockets.length, before, 'no socket after the reload');

        assertNoTokenLeaks(record, [server]);
      },
      diagnostics,
    );
  });
});

describe('control channel client: the token endpoint fails while connected', { timeout: 300_000 }, () => {
  let pages;
  let browser;
  let server;

  before(async () => {
    pages = await startTestPageServer();
    browser = await launchBrowser();
    server = await startServer({ startUrl: pages.url, env: { LIVESESSION_ACCESS_TOKEN_TTL: '5' } });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await pages?.close();
  });

  async function connectedPage(t) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const sockets = [];
    page.on('websocket', (ws) => sockets.push({ kind: new URL(ws.url()).pathname.split('/').pop(), at: Date.now() }));
    await page.goto(`${server.baseUrl}/`);
    const start = page.getByRole('button', { name: 'Start a session', exact: true });
    await start.waitFor({ state: 'visible', timeout: 10_000 });
    await start.click();
    await page.waitForURL(/\/s\/[^/?#]+$/, { timeout: 15_000 });
    await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: DESKTOP_READY_MS, polling: 100 });
    const diagnostics = async () => {
      const body = await page.evaluate(() => ({ ...document.body.dataset, status: document.getElementById('status')?.textContent })).catch(() => null);
      return `[e2e] viewer: ${JSON.stringify(body)}\n[e2e] sockets: ${JSON.stringify(sockets)}\n[e2e] ---- browser console (tail) ----\n${consoleTail()}`;
    };
    const controls = () => sockets.filter((s) => s.kind === 'control');
    return { page, controls, diagnostics };
  }

  const TOKEN_PATH = /\/api\/sessions\/[^/]+\/token$/;

  test('unreachable for a while: 4003, then one refresh and one reconnect once it is back', { timeout: 120_000 }, async (t) => {
    const { page, controls, diagnostics } = await connectedPage(t);
    await withDiagnostics(
      server,
      async () => {
        const before = controls().length;
        await page.route(TOKEN_PATH, (route) => route.abort('internetdisconnected'));
        // The renewal fails, the token ends, the server closes with 4003.
        await page.waitForFunction(() => document.body.dataset.lastCloseCode === '4003', null, { timeout: 15_000, polling: 100 });
        await sleep(2_000);
        assert.equal(controls().length, before, 'no reconnect without a fresh token');
        await page.unroute(TOKEN_PATH);
        await page.waitForFunction(() => document.body.dataset.control === 'connected', null, { timeout: RECONNECT_WINDOW_MS, polling: 100 });
        assert.equal(controls().length, before + 1, 'exactly one reconnect');
        await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 15_000, polling: 100 });
        await sleep(8_000);
        assert.equal(controls().length, before + 1, 'and it stays up (renewed again)');
      },
      diagnostics,
    );
  });

  test('refused (401): 4003, one refresh that fails, then a stop — no loop', { timeout: 120_000 }, async (t) => {
    const { page, controls, diagnostics } = await connectedPage(t);
    await withDiagnostics(
      server,
      async () => {
        const before = controls().length;
        let refused = 0;
        await page.route(TOKEN_PATH, (route) => {
          refused += 1;
          return route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'token_invalid', message: 'the refresh cookie is invalid' } }) });
        });
        await page.waitForFunction(() => document.body.dataset.state === 'ended', null, { timeout: 20_000, polling: 100 });
        const shown = await page.evaluate(() => ({ ...document.body.dataset, status: document.getElementById('status').textContent }));
        assert.equal(shown.lastCloseCode, '4003', `closed with 4003 (${JSON.stringify(shown)})`);
        assert.match(shown.status, /access refused/);
        assert.equal(shown.control, 'stopped');
        const refusedAtStop = refused;
        assert.ok(refusedAtStop <= 2, `the endpoint was asked at most twice: the renewal and the refresh after 4003 (${refusedAtStop})`);
        await sleep(10_000);
        assert.equal(controls().length, before, 'no reconnect after the refused refresh');
        assert.equal(refused, refusedAtStop, 'no further refresh');
      },
      diagnostics,
    );
  });
});

function frameType(payload) {
  if (typeof payload !== 'string') return null;
  try {
    return JSON.parse(payload).type ?? null;
  } catch {
    return null;
  }
}
