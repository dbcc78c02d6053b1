// End to end: login capture. The operator asks for a login session (POST
// /api/logins); a person opens the viewer link in a real browser, types into the
// remote login page through the noVNC canvas (mouse click, keyboard) and submits
// it; the server sees the done URL over DevTools, saves the profile and ends the
// session; the viewer says "Login saved"; and the operator's events endpoint (a
// local receiver) gets `login.captured`, whose signature is checked as
// docs/profiles.md documents it and by Stripe's own webhook check (the same scheme).

import assert from 'node:assert/strict';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import Stripe from 'stripe';

import { assertLoopback, canvasColorShare, findColorTop, launchBrowser, recordConsole, startServer, waitFor, withDiagnostics } from './helpers.js';

const MAGENTA = [255, 0, 255];
const USER = 'alice';
const EVENTS_SECRET = `evsec_${randomBytes(16).toString('hex')}`;

// The remote login page: magenta like the typing page (so the viewer's canvas
// shows where it starts), a large user-name field near its top-left, and a form
// that Enter submits. The server answers the post with the login cookie and a
// redirect to /home.
const LOGIN_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>e2e login</title>
<style>
  html, body { margin: 0; height: 100%; background: rgb(255, 0, 255); }
  #user { position: fixed; left: 40px; top: 40px; width: 60vw; height: 30vh; font: 48px sans-serif; background: #fff; color: #000; border: 0; }
</style></head>
<body><form method="post" action="/login"><input id="user" name="user" autofocus autocomplete="off" spellcheck="false"></form>
<script>document.getElementById('user').focus();</script></body></html>
`;
const HOME_PAGE = `<!doctype html><html><head><title>e2e home</title>
<style>html, body { margin: 0; height: 100%; background: rgb(0, 160, 0); }</style></head>
<body><h1>Signed in</h1></body></html>
`;

/** The provider: /login, its form post, and /home behind it. */
function startLoginSite() {
  const state = { loginPages: 0, submitted: [], homes: [] };
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/login' && req.method === 'GET') {
      state.loginPages += 1;
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(LOGIN_PAGE);
    } else if (url.pathname === '/login' && req.method === 'POST') {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const user = new URLSearchParams(body).get('user') ?? '';
        state.submitted.push(user);
        res.writeHead(303, { location: '/home', 'set-cookie': `e2e_session=${encodeURIComponent(user)}; Path=/; HttpOnly; SameSite=Lax` });
        res.end();
      });
    } else if (url.pathname === '/home') {
      state.homes.push(/(?:^|;\s*)e2e_session=/.test(req.headers.cookie ?? ''));
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(HOME_PAGE);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return listen(srv, (port) => ({
    loginUrl: `http://127.0.0.1:${port}/login`,
    homeUrl: `http://127.0.0.1:${port}/home`,
    state,
  }));
}

/** The operator's events endpoint: keeps every delivery, answers 200. */
function startReceiver() {
  const deliveries = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      deliveries.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"received":true}');
    });
  });
  return listen(srv, (port) => ({ url: `http://127.0.0.1:${port}/hooks/livesession`, deliveries }));
}

function listen(srv, describe) {
  return new Promise((resolve, reject) => {
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      resolve({
        ...describe(port),
        close: () =>
          new Promise((r) => {
            srv.closeAllConnections?.();
            srv.close(() => r());
          }),
      });
    });
  });
}

/**
 * `Livesession-Signature` checked as docs/profiles.md ("Events") says: `t` and
 * each `v1` from the header, HMAC-SHA256 over "<t>.<raw body>" with the
 * secret, hex, compared in constant time; `t` within 5 minutes.
 */
function verifySignature(header, body, secret) {
  const parts = header.split(',').map((p) => p.split('='));
  const t = parts.find(([k]) => k === 't')?.[1];
  assert.ok(t && /^\d+$/.test(t), `a t= in ${header}`);
  assert.ok(Math.abs(Date.now() / 1000 - Number(t)) <= 300, `t=${t} is within 5 minutes`);
  const expected = createHmac('sha256', secret).update(`${t}.${body}`).digest();
  const signatures = parts.filter(([k]) => k === 'v1').map(([, v]) => Buffer.from(v, 'hex'));
  assert.ok(signatures.length > 0, `a v1= in ${header}`);
  assert.ok(
    signatures.some((s) => s.length === expected.length && timingSafeEqual(s, expected)),
    'a v1 matches the HMAC of the body',
  );
}

describe('login capture', { timeout: 300_000 }, () => {
  let site;
  let receiver;
  let server;
  let browser;

  before(async () => {
    site = await startLoginSite();
    receiver = await startReceiver();
    server = await startServer({
      startUrl: site.loginUrl,
      env: { LIVESESSION_EVENTS_URL: receiver.url, LIVESESSION_EVENTS_SECRET: EVENTS_SECRET },
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await site?.close();
    await receiver?.close();
  });

  test('a person logs in through the viewer; the viewer says "Login saved" and the signed event arrives', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    let sockets = 0;
    page.on('websocket', () => (sockets += 1));
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-logins-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const body = await page
        .evaluate(() => ({ ...document.body.dataset, status: document.getElementById('status')?.textContent, notice: document.getElementById('notice')?.textContent }))
        .catch(() => null);
      return `[e2e] viewer: ${JSON.stringify(body)}\n[e2e] site: ${JSON.stringify(site.state)}\n[e2e] deliveries: ${receiver.deliveries.length}\n[e2e] screenshot: ${shot}\n[e2e] ---- browser console (tail) ----\n${consoleTail()}`;
    };

    await withDiagnostics(
      server,
      async () => {
        const res = await server.admin('/api/logins', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ start_url: site.loginUrl, profile: 'e2e-acme', done: { url_prefix: site.homeUrl } }),
        });
        const text = await res.text();
        assert.equal(res.status, 201, `POST /api/logins: ${text}`);
        const login = JSON.parse(text);
        assert.match(login.id, /^lg_[0-9a-f]{32}$/);
        assert.equal(login.profile, 'e2e-acme');
        assert.deepEqual(login.done, { url_prefix: site.homeUrl });
        assertLoopback(login.viewer_url);
        assert.match(login.viewer_url, new RegExp(`/s/${login.session_id}#token=.+`), 'the link carries the session token in its fragment');

        // The person opens the link they were given.
        await page.goto(login.viewer_url);
        await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 90_000, polling: 100 });
        await waitFor(() => site.state.loginPages >= 1, { timeoutMs: 30_000, what: 'the remote browser to load the login page' });
        let share = 0;
        await waitFor(
          async () => {
            share = await canvasColorShare(page, MAGENTA);
            return share >= 0.5;
          },
          { timeoutMs: 30_000, intervalMs: 500, what: () => `the login page on the canvas (magenta share ${share.toFixed(3)})` },
        );

        // Click into the remote user-name field, type, press Enter: real noVNC input.
        const canvas = page.locator('#screen canvas').first();
        const box = await canvas.boundingBox();
        assert.ok(box && box.width > 100 && box.height > 100, `canvas on screen (${JSON.stringify(box)})`);
        let top = null;
        await waitFor(
          async () => {
            top = await findColorTop(page, MAGENTA);
            return top !== null;
          },
          { timeoutMs: 10_000, intervalMs: 200, what: 'the top of the remote page' },
        );
        const scale = box.width / top.width;
        await page.mouse.click(box.x + 120 * scale, box.y + (top.y + 80) * scale);
        await sleep(500); // openbox focuses the remote window on the click
        await page.keyboard.type(USER, { delay: 40 });
        await page.keyboard.press('Enter');

        // The login went through the remote browser, and the viewer says it was saved.
        await waitFor(() => site.state.submitted.length >= 1, {
          timeoutMs: 30_000,
          what: () => `the login form to be submitted (${JSON.stringify(site.state)})`,
        });
        assert.deepEqual(site.state.submitted, [USER], 'the typed name reached the provider');
        await page.waitForFunction(() => document.body.dataset.state === 'ended', null, { timeout: 90_000, polling: 100 });
        const shown = await page.evaluate(() => ({
          status: document.getElementById('status').textContent,
          notice: document.getElementById('notice').textContent,
          login: document.body.dataset.login,
          text: document.body.innerText,
        }));
        assert.equal(shown.status, 'Login saved', JSON.stringify(shown));
        assert.equal(shown.login, 'login-captured');
        assert.match(shown.notice, /login was saved/i);
        assert.ok(site.state.homes.includes(true), 'the remote browser reached /home signed in');

        // The session ended with that reason.
        const session = await (await server.admin(`/api/sessions/${login.session_id}`)).json();
        assert.equal(session.state, 'revoked');
        assert.equal(session.end_reason, 'login captured');

        // The event: one delivery, signed as documented, accepted by Stripe's check too.
        await waitFor(() => receiver.deliveries.length >= 1, { timeoutMs: 30_000, what: 'the login.captured event' });
        const [delivery] = receiver.deliveries;
        assert.equal(delivery.method, 'POST');
        assert.equal(delivery.url, '/hooks/livesession');
        assert.equal(delivery.headers['content-type'], 'application/json');
        const header = delivery.headers['livesession-signature'];
        assert.ok(header, 'a Livesession-Signature header');
        verifySignature(header, delivery.body, EVENTS_SECRET);
        const viaStripe = Stripe.webhooks.constructEvent(delivery.body, header, EVENTS_SECRET);
        assert.equal(viaStripe.id, JSON.parse(delivery.body).id, "Stripe's webhook check accepts the signature");
        assert.throws(() => Stripe.webhooks.constructEvent(delivery.body, header, `${EVENTS_SECRET}x`), /signature/i, 'and refuses another secret');
        const event = JSON.parse(delivery.body);
        assert.match(event.id, /^evt_[0-9a-f]{32}$/);
        assert.equal(event.type, 'login.captured');
        assert.ok(Number.isInteger(event.created) && Math.abs(Date.now() / 1000 - event.created) < 300, `created: ${event.created}`);
        assert.deepEqual(
          { ...event.data, captured_at: undefined },
          { session_id: login.session_id, login_id: login.id, profile: 'e2e-acme', url: site.homeUrl, captured_at: undefined },
        );
        assert.ok(!Number.isNaN(Date.parse(event.data.captured_at)), `captured_at: ${event.data.captured_at}`);

        // Ended for good: no reconnect attempts.
        const before = sockets;
        await sleep(5_000);
        assert.equal(sockets, before, 'no WebSocket opened after the end');
        assert.equal(receiver.deliveries.length, 1, 'delivered once');

        // Nothing secret in the server's log.
        const output = server.output();
        const token = new URL(login.viewer_url).hash.slice('#token='.length);
        assert.ok(!output.includes(token), 'the link token is not logged');
        assert.ok(!output.includes(EVENTS_SECRET), 'the events secret is not logged');
        assert.ok(!output.includes('/hooks/livesession'), "the endpoint's path is not logged");
      },
      diagnostics,
    );
  });
});
