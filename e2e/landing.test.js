// End to end: the landing page's "Start a session" when this address already has
// its free sessions (LIVESESSION_MAX_FREE_SESSIONS_PER_IP): the page stays, says
// why, and the button works again. No desktop is started: the sessions that
// fill the cap are started without opening their viewer.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { launchBrowser, recordConsole, startServer, withDiagnostics } from './helpers.js';

describe('landing page', { timeout: 120_000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer({ startUrl: 'about:blank', env: { LIVESESSION_MAX_FREE_SESSIONS_PER_IP: '1' } });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('over the per-address cap, "Start a session" shows the limit on the page', async (t) => {
    // This machine's one free session, started the way the form posts it.
    const first = await fetch(`${server.baseUrl}/start`, { method: 'POST', redirect: 'manual' });
    assert.equal(first.status, 303);

    const context = await browser.newContext();
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    await withDiagnostics(
      server,
      async () => {
        await page.goto(`${server.baseUrl}/`);
        const start = page.getByRole('button', { name: 'Start a session', exact: true });
        await start.waitFor({ state: 'visible', timeout: 10_000 });
        const answered = page.waitForResponse((r) => new URL(r.url()).pathname === '/start');
        await start.click();
        assert.equal((await answered).status(), 429);
        const error = page.locator('#start-error');
        await error.waitFor({ state: 'visible', timeout: 10_000 });
        const text = await error.textContent();
        assert.match(text, /already has 1 free session/, text);
        assert.equal(new URL(page.url()).pathname, '/', 'the page stays');
        assert.equal(await start.isEnabled(), true, 'the button can be pressed again');
        assert.equal((await context.cookies()).length, 0, 'no session cookie was set');
      },
      async () => `[e2e] ---- browser console (tail) ----\n${consoleTail()}`,
    );
  });
});
