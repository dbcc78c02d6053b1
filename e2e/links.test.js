// End to end: a view-only viewer link in the real join page and viewer.
// The secret leaves the address bar at once, the viewer says "view only",
// and revoking the link ends this viewer (4008 "viewer link revoked") while
// the session goes on; the revoked link's page then says so.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { launchBrowser, recordConsole, startServer, startTestPageServer, withDiagnostics } from './helpers.js';

describe('viewer links', { timeout: 180_000 }, () => {
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

  const waitForState = (page, state, timeout) =>
    page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 100 });

  test('a view link opens the viewer view-only; revoking it ends that viewer only', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const requested = [];
    page.on('request', (req) => requested.push(req.url()));

    await withDiagnostics(
      server,
      async () => {
        const created = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
        assert.equal(created.status, 201);
        const session = await created.json();
        const made = await server.admin(`/api/sessions/${session.id}/links`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ role: 'view', label: 'e2e' }),
        });
        assert.equal(made.status, 201);
        const link = await made.json();
        const secret = new URL(link.url).hash.slice(1);
        assert.match(secret, /^[0-9a-f]{64}$/);

        await page.goto(link.url);
        await page.waitForURL(new RegExp(`/s/${session.id}$`), { timeout: 15_000 });
        assert.equal(new URL(page.url()).hash, '', 'the secret left the address bar');
        assert.ok(requested.every((u) => !u.includes(secret)), 'the secret is in no request URL');
        const cookies = await context.cookies(`${server.baseUrl}/api/sessions/${session.id}/token`);
        assert.deepEqual(cookies.map((c) => c.name).sort(), [`ls_${session.id}`, `lsr_${session.id}`]);
        assert.ok(cookies.every((c) => c.httpOnly));

        await waitForState(page, 'connected', 90_000);
        assert.equal(await page.evaluate(() => document.body.dataset.role), 'view');
        assert.match(await page.locator('#status').textContent(), /view only/);

        const revoked = await server.admin(`/api/sessions/${session.id}/links/${link.id}`, { method: 'DELETE' });
        assert.equal(revoked.status, 200);
        await waitForState(page, 'ended', 10_000);
        const shown = await page.evaluate(() => ({ code: document.body.dataset.lastCloseCode, status: document.getElementById('status').textContent }));
        assert.equal(shown.code, '4008', JSON.stringify(shown));
        assert.match(shown.status, /viewer link revoked/, JSON.stringify(shown));
        const after = await (await server.admin(`/api/sessions/${session.id}`)).json();
        assert.equal(after.state, 'active', 'the session goes on');

        // The revoked link's page says so.
        const again = await context.newPage();
        await again.goto(link.url);
        await again.waitForFunction(() => document.body.dataset.state === 'revoked', null, { timeout: 10_000 });
        assert.equal(new URL(again.url()).hash, '');
        assert.match(await again.locator('#headline-text').textContent(), /revoked/);

        assert.ok(!server.output().includes(secret), 'the secret does not appear in the server log');
      },
      async () => `[e2e] page ${page.url()}\n${consoleTail()}`,
    );
  });
});
