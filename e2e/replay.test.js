// A recorded session replays on /replay/{id} in the real noVNC client: the
// replay's canvas shows the page the session's desktop showed, also while the
// session is still live (the page follows the growing recording); pause holds
// the position, seeking back shows the earlier picture again, and the page's
// console stays clean. The operator opens it with the admin token in the link.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import zlib from 'node:zlib';

import {
  canvasColorShare,
  launchBrowser,
  recordConsole,
  startColourPageServer,
  startServer,
  waitFor,
  watchConsoleProblems,
  withDiagnostics,
} from './helpers.js';

const TEAL = [0, 160, 160];
const ORANGE = [255, 140, 0];

/**
 * Where the replay's timeline starts, in Unix ms: the recording's start (its
 * header) plus its first segment's time. Read from the file as the admin
 * downloads it (a live file ends at its last flush, without a gzip trailer).
 */
async function timelineOrigin(server, id) {
  const res = await server.admin(`/api/sessions/${id}/recording`);
  assert.equal(res.status, 200);
  const raw = zlib.gunzipSync(Buffer.from(await res.arrayBuffer()), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  assert.equal(raw.subarray(0, 5).toString(), 'LSREC');
  const startedAt = Number(raw.readBigUInt64BE(8));
  assert.equal(raw[16], 1, 'the first record starts a segment');
  return startedAt + Number(raw.readBigUInt64BE(17));
}

describe('replay', { timeout: 420_000 }, () => {
  let pages;
  let server;
  let browser;

  before(async () => {
    pages = await startColourPageServer({ colour: TEAL, text: 'recorded early' });
    server = await startServer({ startUrl: pages.url });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await pages?.close();
  });

  test('a recorded session replays on /replay/{id}, live and after, with pause and seek', async (t) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    t.after(() => context.close());
    const viewer = await context.newPage();
    const viewerConsole = recordConsole(viewer);
    let replayConsole = () => '';
    let problems = () => [];

    await withDiagnostics(
      server,
      async () => {
        const res = await server.admin('/api/sessions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ record: true }),
        });
        assert.equal(res.status, 201);
        const session = await res.json();

        // The person watches: the desktop runs, the server records it on its own.
        await viewer.goto(`${new URL(session.viewer_url, server.baseUrl).href}#token=${session.refresh_token}`);
        await waitFor(async () => (await canvasColorShare(viewer, TEAL)) >= 0.3, {
          timeoutMs: 90_000,
          intervalMs: 500,
          what: 'the teal page in the viewer',
        });
        const tealSeen = Date.now();
        await sleep(4_000);
        pages.state.colour = ORANGE;
        pages.state.text = 'recorded later';
        await waitFor(async () => (await canvasColorShare(viewer, ORANGE)) >= 0.3, {
          timeoutMs: 30_000,
          intervalMs: 300,
          what: 'the orange page in the viewer',
        });

        // The replay, in the same browser (the viewer's cookie gives access), while
        // the session is live: it starts at the beginning (teal) and plays on to
        // the later picture (orange).
        const replay = await context.newPage();
        replayConsole = recordConsole(replay);
        problems = watchConsoleProblems(replay);
        await replay.goto(new URL(`/replay/${session.id}`, server.baseUrl).href);
        await waitFor(async () => (await canvasColorShare(replay, TEAL)) >= 0.3, {
          timeoutMs: 30_000,
          intervalMs: 200,
          what: 'the recorded teal page in the replay',
        });
        await waitFor(async () => (await canvasColorShare(replay, ORANGE)) >= 0.3, {
          timeoutMs: 60_000,
          intervalMs: 300,
          what: 'the recorded orange page in the replay',
        });
        assert.match(await replay.locator('#status').textContent(), /still recorded|live/);

        // Pause: the position holds.
        await replay.locator('#play').click();
        await replay.waitForFunction(() => document.body.dataset.state === 'paused', null, { timeout: 5_000 });
        const paused = Number(await replay.locator('#time').getAttribute('data-position-ms'));
        await sleep(1_500);
        assert.equal(Number(await replay.locator('#time').getAttribute('data-position-ms')), paused, 'paused');
        assert.equal(await replay.locator('#play').textContent(), 'Play');

        // Seek back to while the page was teal (two seconds after the viewer saw
        // it): the early picture again, still paused, and the time display says so.
        const back = tealSeen + 2_000 - (await timelineOrigin(server, session.id));
        assert.ok(back > 0, `a position in the recording: ${back}`);
        await replay.locator('#seek').evaluate((input, value) => {
          input.value = String(value);
          input.dispatchEvent(new Event('input'));
          input.dispatchEvent(new Event('change'));
        }, back);
        await waitFor(async () => (await canvasColorShare(replay, TEAL)) >= 0.3, {
          timeoutMs: 15_000,
          intervalMs: 200,
          what: 'the teal page after seeking back',
        });
        const position = Number(await replay.locator('#time').getAttribute('data-position-ms'));
        assert.ok(Math.abs(position - back) <= 200, `the position is where it was sought: ${position} (sought ${back})`);
        assert.match(await replay.locator('#time').textContent(), new RegExp(`^0:0${Math.floor(position / 1000)} /`));
        assert.equal(await replay.evaluate(() => document.body.dataset.state), 'paused', 'seeking keeps it paused');

        // Seek forward to the end: the later picture.
        const duration = Number(await replay.locator('#time').getAttribute('data-duration-ms'));
        await replay.locator('#seek').evaluate((input, value) => {
          input.value = String(value);
          input.dispatchEvent(new Event('change'));
        }, duration);
        await waitFor(async () => (await canvasColorShare(replay, ORANGE)) >= 0.3, {
          timeoutMs: 15_000,
          intervalMs: 200,
          what: 'the orange page after seeking forward',
        });

        // Play at 8x from the start: the time advances.
        await replay.locator('#speed').selectOption('8');
        await replay.locator('#seek').evaluate((input) => {
          input.value = '0';
          input.dispatchEvent(new Event('change'));
        });
        await replay.locator('#play').click();
        await replay.waitForFunction(() => Number(document.getElementById('time').dataset.positionMs) > 2_000, null, { timeout: 10_000 });

        // The session ends; the operator replays it with the admin token in the link.
        const revoked = await server.admin(`/api/sessions/${session.id}`, { method: 'DELETE' });
        assert.equal(revoked.status, 200);
        const operatorContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
        t.after(() => operatorContext.close());
        const operator = await operatorContext.newPage();
        const operatorProblems = watchConsoleProblems(operator);
        await operator.goto(`${new URL(`/replay/${session.id}`, server.baseUrl).href}#token=${server.adminToken}`);
        await waitFor(async () => (await canvasColorShare(operator, TEAL)) >= 0.3, {
          timeoutMs: 30_000,
          intervalMs: 200,
          what: 'the recording in the operator\'s replay',
        });
        assert.ok(!(await operator.evaluate(() => location.href)).includes('token='), 'the token leaves the address bar');
        // At 8x the whole recording plays to its end: the later picture, and the end.
        await operator.locator('#speed').selectOption('8');
        await operator.waitForFunction(() => document.body.dataset.state === 'ended', null, { timeout: 60_000 });
        assert.ok((await canvasColorShare(operator, ORANGE)) >= 0.3, 'the last picture is the orange page');
        assert.match(await operator.locator('#status').textContent(), /revoked/);
        assert.deepEqual(operatorProblems(), [], 'the operator\'s replay console is clean');

        assert.deepEqual(problems(), [], 'the replay console is clean');
      },
      async () => `[e2e] viewer console:\n${viewerConsole()}\n[e2e] replay console:\n${replayConsole()}\n[e2e] problems: ${JSON.stringify(problems())}`,
    );
  });
});
