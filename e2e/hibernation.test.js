// End to end: the viewer while its session waits in line for a desktop and while its
// hibernated desktop resumes. One desktop (LIVESESSION_MAX_DESKTOPS=1), two sessions:
// the second viewer is told its place in line and is served once the first viewer
// leaves (its idle desktop hibernates to make room); the first session's viewer then
// comes back, waits, and sees its desktop resume once the second leaves.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ordinal, queueText } from '../web/static/ui.js';
import {
  assertLoopback,
  canvasColorShare,
  launchBrowser,
  recordConsole,
  recordStatusTexts,
  startServer,
  startTestPageServer,
  waitFor,
  withDiagnostics,
} from './helpers.js';

const MAGENTA = [255, 0, 255];

describe('the wait queue in words', () => {
  test('places are said as ordinals', () => {
    assert.deepEqual([1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].map(ordinal), [
      '1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd', '101st', '111th',
    ]);
    assert.equal(queueText(2), 'waiting for a desktop: you are 2nd in line');
    assert.equal(queueText(undefined), 'waiting for a desktop');
    assert.equal(queueText(0), 'waiting for a desktop');
  });
});

describe('viewer: waiting in line and resuming', { timeout: 300_000 }, () => {
  let pages;
  let server;
  let browser;

  before(async () => {
    pages = await startTestPageServer();
    // Idle desktops hibernate only to make room (the idle timeout is long).
    server = await startServer({
      startUrl: pages.url,
      env: { LIVESESSION_MAX_DESKTOPS: '1', LIVESESSION_IDLE_TIMEOUT: '600' },
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await pages?.close();
  });

  async function createSession() {
    const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    assert.equal(res.status, 201);
    return res.json();
  }

  async function desktopOf(id) {
    const res = await server.admin(`/api/sessions/${id}`);
    return (await res.json()).desktop;
  }

  /**
   * Opens the viewer of `session` as a person would (a token link), recording every
   * text its status line shows.
   */
  async function openViewer(session) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const texts = await recordStatusTexts(page);
    const viewerUrl = new URL(session.viewer_url, server.baseUrl).href;
    assertLoopback(viewerUrl);
    await page.goto(`${viewerUrl}#token=${session.refresh_token}`);
    const diagnostics = async () =>
      `[e2e] ${session.id} status texts: ${JSON.stringify(await texts().catch(() => null))}\n[e2e] console:\n${consoleTail()}`;
    return { context, page, texts, diagnostics };
  }

  const connected = (page) =>
    page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 90_000, polling: 200 });

  async function seesThePage(page) {
    let share = 0;
    await waitFor(
      async () => {
        share = await canvasColorShare(page, MAGENTA);
        return share >= 0.5;
      },
      { timeoutMs: 30_000, intervalMs: 500, what: () => `the remote page on the canvas (magenta share ${share.toFixed(3)})` },
    );
  }

  test('a second viewer waits in line and is served when the first leaves; the first session resumes later', async () => {
    const a = await createSession();
    const b = await createSession();

    const viewerA = await openViewer(a);
    let viewerB = null;
    let viewerA2 = null;
    const diagnostics = async () =>
      [viewerA, viewerB, viewerA2].filter(Boolean).map((v) => v.diagnostics()).reduce(async (acc, d) => `${await acc}\n${await d}`, '');
    await withDiagnostics(
      server,
      async () => {
        await connected(viewerA.page);
        await seesThePage(viewerA.page);

        // The only desktop is A's: B's viewer waits, told its place, over the screen too.
        viewerB = await openViewer(b);
        await viewerB.page.waitForFunction(
          () => document.getElementById('status').textContent === 'waiting for a desktop: you are 1st in line',
          null,
          { timeout: 30_000, polling: 100 },
        );
        assert.equal(await viewerB.page.locator('#overlay-text').textContent(), 'Waiting for a desktop: you are 1st in line');
        assert.equal(await desktopOf(b.id), 'queued');

        // A's viewer leaves: A's idle desktop hibernates to make room, and B is served.
        await viewerA.context.close();
        await connected(viewerB.page);
        await seesThePage(viewerB.page);
        assert.equal(await desktopOf(a.id), 'hibernated');

        // A's viewer comes back: it waits for B's desktop, then A resumes.
        viewerA2 = await openViewer(a);
        await viewerA2.page.waitForFunction(
          () => document.getElementById('status').textContent.startsWith('waiting for a desktop'),
          null,
          { timeout: 30_000, polling: 100 },
        );
        await viewerB.context.close();
        await connected(viewerA2.page);
        await seesThePage(viewerA2.page);
        const texts = await viewerA2.texts();
        assert.ok(texts.some((t) => t.startsWith('resuming desktop')), `the viewer said it was resuming: ${JSON.stringify(texts)}`);
        assert.ok(!texts.some((t) => t.startsWith('starting desktop')), `not starting afresh: ${JSON.stringify(texts)}`);
        assert.equal(await desktopOf(a.id), 'ready');
        await viewerA2.context.close();
      },
      diagnostics,
    );
  });
});
