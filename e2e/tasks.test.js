// End to end: tasks in the viewer's task panel (web/static/task-panel.js), with
// the real server, its built-in steps runner, real desktops and the real
// viewer in headless Chromium.
//
// - A steps task created through the API (admin token) fills and submits a form
//   on a page this test serves: the panel shows the task, its steps and their
//   thumbnails as they happen (the thumbnails load with the viewer's cookie),
//   then "succeeded" with the extracted value; the page server got the form.
//   The control channel is dropped mid-task: it reconnects with
//   `?tasks_after=<the last cursor seen>` and the panel ends with every event
//   exactly once.
// - The free-mode landing page with a goal: the new session has an agent task
//   with that goal, queued (no model is configured), shown in the panel as
//   queued; /readyz says "degraded", naming agent tasks with no worker.
// - "Cancel" in the panel ends a long task (a 60 s sleep step): it shows
//   cancelled; a view-only viewer sees the task but no Cancel button.
// - An agent task whose model (a local stand-in for the Chat Completions API)
//   asks for the person: the panel shows "waiting for you" with the request
//   and the hand-over's own "Take control"; the person takes control, hands
//   it back from the panel, and the task ends "succeeded" with the model's
//   answer.

import assert from 'node:assert/strict';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { assertLoopback, launchBrowser, recordConsole, startServer, waitFor, withDiagnostics } from './helpers.js';

/**
 * The pages the session's desktop opens (startServer lets the desktop reach
 * this one port): `/start.html`; `/form.html`, a form posting `name` to
 * `/submit`, which answers `<p id="greeting">Hello, NAME</p>`.
 */
function startFormServer() {
  const state = { loads: [], submissions: [] };
  const page = (title, body) => `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title>
<style>html, body { margin: 0; height: 100%; background: #ffe08a; font: 32px sans-serif; } input, button { font: inherit; margin: 20px; }</style>
</head><body>${body}</body></html>
`;
  const srv = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    state.loads.push(`${req.method} ${url.pathname}`);
    const html = (status, body) => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(body);
    };
    if (url.pathname === '/start.html') {
      html(200, page('tasks e2e start', '<p>start</p>'));
    } else if (url.pathname === '/form.html') {
      html(
        200,
        page(
          'tasks e2e form',
          `<form method="post" action="/submit">
  <input id="name" name="name" autocomplete="off" spellcheck="false">
  <button id="send" type="submit">Send</button>
</form>`,
        ),
      );
    } else if (url.pathname === '/submit' && req.method === 'POST') {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c) => {
        body += c;
      });
      req.on('end', () => {
        const name = new URLSearchParams(body).get('name') ?? '';
        state.submissions.push({ contentType: req.headers['content-type'], body, name });
        const safe = name.replace(/[<>&"]/g, '');
        html(200, page('tasks e2e done', `<p id="greeting">Hello, ${safe}</p>`));
      });
    } else {
      html(404, 'not found');
    }
  });
  return new Promise((resolve, reject) => {
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const base = `http://127.0.0.1:${srv.address().port}`;
      resolve({
        base,
        startUrl: `${base}/start.html`,
        formUrl: `${base}/form.html`,
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

// Before any page script: keep every WebSocket the page opens, so the test can
// read their URLs and drop the control channel.
const RECORD_SOCKETS = `(() => {
  const Orig = window.WebSocket;
  window.__sockets = [];
  // A function that returns the real socket: noVNC accepts only a genuine WebSocket.
  function Recording(url, protocols) {
    const ws = protocols === undefined ? new Orig(url) : new Orig(url, protocols);
    window.__sockets.push(ws);
    return ws;
  }
  Recording.prototype = Orig.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Recording[k] = Orig[k];
  window.WebSocket = Recording;
})();`;

describe('tasks in the viewer', { timeout: 900_000 }, () => {
  let pages;
  let server;
  let browser;

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
    return JSON.parse(text);
  }

  /** Ends the session (and its desktop) so the next test has the machine to itself. */
  async function revoke(id) {
    await server.admin(`/api/sessions/${id}`, { method: 'DELETE' }).catch(() => {});
  }

  async function createTask(sessionId, body) {
    const res = await server.admin(`/api/sessions/${sessionId}/tasks`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    assert.equal(res.status, 201, `POST /api/sessions/{id}/tasks: ${text}`);
    return JSON.parse(text);
  }

  async function getTask(sessionId, taskId) {
    const res = await server.admin(`/api/sessions/${sessionId}/tasks/${taskId}`);
    const text = await res.text();
    assert.equal(res.status, 200, `GET /api/sessions/{id}/tasks/{task_id}: ${text}`);
    return JSON.parse(text);
  }

  /** A viewer page (its own browser context) with the helpers a failure report needs. */
  async function newViewerPage(t, name) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 860 } });
    t.after(() => context.close());
    await context.addInitScript(RECORD_SOCKETS);
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-tasks-${name}-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const body = await page
        .evaluate(() => ({
          ...document.body.dataset,
          status: document.getElementById('status')?.textContent,
          tasks: document.getElementById('tasks')?.innerText,
          sockets: (window.__sockets ?? []).map((s) => s.url),
        }))
        .catch(() => null);
      return `[e2e] ${name}: ${JSON.stringify(body)}\n[e2e] page server: ${JSON.stringify(pages.state.loads.slice(-20))}\n[e2e] screenshot: ${shot}\n[e2e] ---- ${name} console (tail) ----\n${consoleTail()}`;
    };
    return { context, page, diagnostics };
  }

  /** The real viewer for `session` with a token link, as a person opens it; waits for the picture. */
  async function openViewer(t, session, { token = session.refresh_token ?? session.token, name = 'viewer' } = {}) {
    const v = await newViewerPage(t, name);
    const viewerUrl = new URL(session.viewer_url, server.baseUrl).href;
    assertLoopback(viewerUrl);
    await withDiagnostics(
      server,
      async () => {
        await v.page.goto(`${viewerUrl}#token=${token}`);
        await v.page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 120_000, polling: 250 });
      },
      v.diagnostics,
    );
    return v;
  }

  /** What the panel shows of one task. */
  function panelTask(page, taskId) {
    return page.evaluate((id) => {
      const li = [...document.querySelectorAll('#task-list > li.task')].find((el) => el.dataset.taskId === id);
      if (!li) return null;
      const visible = (el) => Boolean(el) && !el.hidden && el.getClientRects().length > 0;
      return {
        state: li.dataset.state,
        kind: li.dataset.kind,
        title: li.querySelector('.task-title')?.textContent,
        badge: li.querySelector('.task-state')?.textContent,
        events: [...li.querySelectorAll('.task-event')].map((e) => ({
          seq: Number(e.dataset.seq),
          state: e.dataset.state,
          text: e.querySelector('.task-event-text')?.textContent,
          img: e.querySelector('img')?.getAttribute('src') ?? null,
          loaded: Boolean(e.querySelector('img')?.complete && e.querySelector('img')?.naturalWidth > 0),
        })),
        result: visible(li.querySelector('.task-result')) ? li.querySelector('.task-result').innerText : null,
        cancel: visible(li.querySelector('.task-cancel')),
        panelVisible: visible(document.getElementById('tasks')),
      };
    }, taskId);
  }

  test('a steps task from the API: steps and thumbnails appear live, then "succeeded" with the extracted value; a dropped control channel resumes without gaps', async (t) => {
    const session = await createSession();
    t.after(() => revoke(session.id));
    const { page, diagnostics } = await openViewer(t, session);
    const shots = [];
    page.on('response', async (res) => {
      if (!/\/screenshots\/\d+/.test(new URL(res.url()).pathname)) return;
      const headers = await res.request().allHeaders().catch(() => ({}));
      shots.push({ url: res.url(), status: res.status(), type: res.headers()['content-type'], cookie: headers.cookie ?? '' });
    });
    await withDiagnostics(
      server,
      async () => {
        assert.equal(await page.locator('#tasks').isVisible(), false, 'no tasks: no panel');
        assert.equal(await page.evaluate(() => document.body.dataset.tasks), 'none');

        const steps = [
          { action: 'goto', url: pages.formUrl },
          { action: 'type', selector: '#name', text: 'Ada' },
          // A pause while the person watches: the task is seen running, mid-way.
          { action: 'sleep', ms: 6000 },
          { action: 'click', selector: '#send' },
          { action: 'wait_for', selector: '#greeting', timeout_ms: 30000 },
          { action: 'extract', selector: '#greeting', name: 'greeting' },
        ];
        const task = await createTask(session.id, { kind: 'steps', steps });
        assert.equal(task.state, 'queued');

        // The panel appears with the task, then its steps arrive while it runs.
        await page.locator('#tasks').waitFor({ state: 'visible', timeout: 15_000 });
        let seen = null;
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen && seen.state === 'running' && seen.events.some((e) => e.img && e.loaded && /^2: type/.test(e.text)) && seen;
          },
          { timeoutMs: 120_000, intervalMs: 200, what: () => `the panel to show the running task with its first steps' thumbnails (${JSON.stringify(seen)})` },
        );
        assert.equal(seen.title, '6 steps');
        assert.equal(seen.badge, 'running');
        assert.equal(seen.result, null, 'no result while running');
        assert.ok(seen.cancel, 'Cancel is offered to the interactive viewer while the task runs');
        assert.ok(seen.events.some((e) => /^1: goto /.test(e.text)), JSON.stringify(seen.events));

        // Drop the control channel while the task sleeps: the client reconnects
        // with the last cursor it saw.
        const before = await page.evaluate(() => (window.__sockets ?? []).filter((s) => /\/control/.test(s.url)).map((s) => s.url));
        assert.ok(before.length >= 1, 'the viewer opened a control channel');
        assert.ok(!before.some((u) => /[?&]token=/.test(u)), `no token in a control URL: ${before}`);
        await page.evaluate(() => {
          for (const s of window.__sockets) if (/\/control/.test(s.url) && s.readyState === 1) s.close(4000, 'test drops the control channel');
        });

        // The rest of the run, the result and the form's submission.
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen?.state === 'succeeded' && seen.result && /Hello, Ada/.test(seen.result) && seen;
          },
          { timeoutMs: 120_000, intervalMs: 250, what: () => `the panel to show "succeeded" with the extracted greeting (${JSON.stringify(seen)})` },
        );
        assert.equal(seen.badge, 'succeeded');
        assert.match(seen.result, /Succeeded/);
        // Screen readers hear it: the panel's status region says what just happened.
        await page.locator('#tasks-announce').filter({ hasText: /6 steps: succeeded/ }).waitFor({ state: 'attached', timeout: 10_000 });
        assert.match(seen.result, /greeting/);
        assert.equal(seen.cancel, false, 'no Cancel once finished');
        assert.deepEqual(
          pages.state.submissions.map((s) => s.name),
          ['Ada'],
          `the page server got the form once: ${JSON.stringify(pages.state.submissions)}`,
        );
        assert.match(pages.state.submissions[0].contentType, /application\/x-www-form-urlencoded/);

        const after = await page.evaluate(() => (window.__sockets ?? []).filter((s) => /\/control/.test(s.url)).map((s) => s.url));
        assert.ok(after.length > before.length, `the control channel was opened again: ${after}`);
        const resumed = after.slice(before.length).map((u) => new URL(u).searchParams.get('tasks_after'));
        assert.ok(resumed.every((c) => c !== null && Number(c) > 0), `each reconnect named the last cursor: ${after}`);
        assert.ok(!after.some((u) => /[?&]token=/.test(u)), `no token in a control URL: ${after}`);

        // The API agrees, and the panel holds every event exactly once.
        const stored = await getTask(session.id, task.id);
        assert.equal(stored.state, 'succeeded');
        assert.equal(stored.result.extracted.greeting, 'Hello, Ada');
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen.events.length === stored.events.length && seen;
          },
          { timeoutMs: 10_000, what: () => `the panel to hold the ${stored.events.length} events (has ${seen.events.length})` },
        );
        assert.deepEqual(
          seen.events.map((e) => e.seq),
          stored.events.map((e) => e.seq),
          'each event once, in order: none lost or repeated across the reconnect',
        );
        // Every step's event carries a thumbnail, and each loaded.
        const stepEvents = stored.events.filter((e) => typeof e.step === 'number' && e.screenshot_url);
        assert.ok(stepEvents.length >= steps.length, `a thumbnail per step: ${JSON.stringify(stored.events)}`);
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen.events.filter((e) => e.img).every((e) => e.loaded) && seen;
          },
          { timeoutMs: 15_000, what: () => `every thumbnail to load (${JSON.stringify(seen.events)})` },
        );
        assert.ok(shots.length >= stepEvents.length, `the thumbnails were fetched: ${JSON.stringify(shots)}`);
        for (const s of shots) {
          assert.equal(s.status, 200, JSON.stringify(s));
          assert.match(s.type, /^image\//);
          assert.ok(!/[?&]token=/.test(s.url), `no token in an image URL: ${s.url}`);
          assert.match(s.cookie, new RegExp(`(^|; )ls_${session.id}=`), `the image request carried the session's cookie: ${JSON.stringify(s)}`);
        }

        // A reload rebuilds the panel from the start: the same events, once each.
        await page.reload();
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen?.state === 'succeeded' && seen.result && seen.events.length === stored.events.length && seen;
          },
          { timeoutMs: 60_000, intervalMs: 250, what: () => `the reloaded panel to show the finished task (${JSON.stringify(seen)})` },
        );
        assert.match(seen.result, /Hello, Ada/);
        // The replayed history is shown, not read out again.
        assert.equal(await page.locator('#tasks-announce').textContent(), '', 'nothing announced after a reload');
      },
      diagnostics,
    );
  });

  test('the free-mode landing page with a goal: an agent task, queued without a model; /readyz says degraded', async (t) => {
    const { page, diagnostics } = await newViewerPage(t, 'landing');
    const goal = 'Find the opening hours of the city library\nand write them down.';
    let sessionId = null;
    t.after(() => sessionId && revoke(sessionId));
    await withDiagnostics(
      server,
      async () => {
        await page.goto(`${server.baseUrl}/`);
        const field = page.getByLabel('What should the agent do? (optional)').and(page.locator('#start-goal'));
        await field.waitFor({ state: 'visible', timeout: 15_000 });
        assert.equal(await field.getAttribute('maxlength'), '4000');
        await field.fill(goal);
        const posted = page.waitForRequest((r) => new URL(r.url()).pathname === '/start' && r.method() === 'POST');
        await page.getByRole('button', { name: 'Start a session', exact: true }).click();
        const request = await posted;
        assert.match(request.headers()['content-type'] ?? '', /application\/x-www-form-urlencoded/);
        assert.equal(new URLSearchParams(request.postData() ?? '').get('goal'), goal, 'the form posts the goal');
        await page.waitForURL(/\/s\/[^/]+$/, { timeout: 30_000 });
        sessionId = new URL(page.url()).pathname.split('/').pop();

        // The session has the agent task, queued: no model is configured.
        const res = await server.admin(`/api/sessions/${sessionId}/tasks`);
        const text = await res.text();
        assert.equal(res.status, 200, text);
        const { tasks } = JSON.parse(text);
        assert.equal(tasks.length, 1, text);
        assert.equal(tasks[0].kind, 'agent');
        assert.equal(tasks[0].input.goal, goal);
        assert.equal(tasks[0].state, 'queued');

        // The panel shows it, queued, with its goal.
        let seen = null;
        await waitFor(
          async () => {
            seen = await panelTask(page, tasks[0].id);
            return seen?.state === 'queued' && seen.kind === 'agent' && seen.panelVisible && seen;
          },
          { timeoutMs: 60_000, intervalMs: 250, what: () => `the panel to show the queued agent task (${JSON.stringify(seen)})` },
        );
        assert.equal(seen.kind, 'agent');
        assert.equal(seen.badge, 'queued');
        assert.equal(seen.title.replace(/\s+/g, ' '), goal.replace(/\s+/g, ' '));
        assert.ok(seen.cancel, 'the person who started it may cancel it');
        await page.getByRole('complementary', { name: 'Tasks' }).getByText('Find the opening hours of the city library').waitFor({ timeout: 5_000 });

        // /readyz: degraded, naming agent tasks that no worker will take.
        const ready = await server.request('/readyz');
        const body = await ready.json();
        assert.equal(ready.status, 200, JSON.stringify(body));
        assert.equal(body.status, 'degraded', JSON.stringify(body));
        assert.ok(
          body.degraded.some((r) => /agent task\(s\) queued and no worker/.test(r)),
          `a reason names agent tasks with no worker: ${JSON.stringify(body.degraded)}`,
        );

        // Still queued a moment later, in the API and the panel.
        await sleep(2_000);
        assert.equal((await getTask(sessionId, tasks[0].id)).state, 'queued');
        assert.equal((await panelTask(page, tasks[0].id)).state, 'queued');
      },
      diagnostics,
    );
  });

  test('"Cancel" in the panel ends a long task; a view-only viewer sees the task without the button', async (t) => {
    const session = await createSession();
    t.after(() => revoke(session.id));
    const { page, diagnostics } = await openViewer(t, session);
    await withDiagnostics(
      server,
      async () => {
        const task = await createTask(session.id, {
          kind: 'steps',
          steps: [
            { action: 'goto', url: pages.formUrl },
            { action: 'sleep', ms: 60000 },
            { action: 'screenshot' },
          ],
        });
        let seen = null;
        // Running, and past its first step: the runner is in the long sleep.
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen?.state === 'running' && seen.events.some((e) => /^1: goto /.test(e.text)) && seen;
          },
          { timeoutMs: 120_000, intervalMs: 250, what: () => `the panel to show the task running its sleep (${JSON.stringify(seen)})` },
        );
        assert.equal(seen.title, '3 steps');

        // Someone watching through a view link: the task, no Cancel.
        const res = await server.admin(`/api/sessions/${session.id}/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"role":"view"}' });
        const tokenBody = await res.json();
        assert.equal(res.status, 200, JSON.stringify(tokenBody));
        const watcher = await openViewer(t, session, { token: tokenBody.refresh_token ?? tokenBody.token, name: 'watcher' });
        let watched = null;
        await waitFor(
          async () => {
            watched = await panelTask(watcher.page, task.id);
            return watched?.state === 'running' && watched;
          },
          { timeoutMs: 30_000, intervalMs: 250, what: () => `the view-only panel to show the running task (${JSON.stringify(watched)})` },
        );
        assert.equal(watched.cancel, false, 'no Cancel for a view link');
        assert.equal(await page.evaluate(() => document.body.dataset.role), 'interactive');

        const cancelled = page.waitForResponse((r) => r.url().endsWith(`/api/sessions/${session.id}/tasks/${task.id}/cancel`) && r.request().method() === 'POST');
        await page.getByRole('button', { name: 'Cancel task: 3 steps' }).click();
        assert.equal((await cancelled).status(), 200);
        await waitFor(
          async () => {
            seen = await panelTask(page, task.id);
            return seen?.state === 'cancelled' && seen.result && seen;
          },
          { timeoutMs: 15_000, intervalMs: 200, what: () => `the panel to show "cancelled" (${JSON.stringify(seen)})` },
        );
        assert.equal(seen.badge, 'cancelled');
        assert.match(seen.result, /Cancelled/);
        assert.match(seen.result, /cancelled by the person/);
        assert.equal(seen.cancel, false, 'no Cancel once cancelled');
        const stored = await getTask(session.id, task.id);
        assert.equal(stored.state, 'cancelled');
        await waitFor(async () => (await panelTask(watcher.page, task.id))?.state === 'cancelled', {
          timeoutMs: 15_000,
          what: 'the view-only panel to show "cancelled"',
        });
        // It stays cancelled: the sleeping runner was stopped, not finished later.
        await sleep(3_000);
        assert.equal((await getTask(session.id, task.id)).state, 'cancelled');
        assert.equal((await panelTask(page, task.id)).state, 'cancelled');
      },
      async () => `${await diagnostics()}`,
    );
  });
});

/**
 * A stand-in for an OpenAI-compatible Chat Completions API: the first call
 * asks for the person (`ask_person`), every later one ends the task
 * (`finish`). It records what it was asked.
 */
function startFakeModel() {
  const state = { requests: [] };
  const srv = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => {
      body += c;
    });
    req.on('end', () => {
      const url = new URL(req.url, 'http://127.0.0.1');
      if (req.method !== 'POST' || url.pathname !== '/v1/chat/completions') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end('{"error":{"message":"not found"}}');
        return;
      }
      let parsed = null;
      try {
        parsed = JSON.parse(body);
      } catch {
        // recorded as null
      }
      state.requests.push({ authorization: req.headers.authorization ?? null, body: parsed });
      const n = state.requests.length;
      const call =
        n === 1
          ? { name: 'ask_person', arguments: JSON.stringify({ reason: 'Please solve the captcha on this page' }) }
          : { name: 'finish', arguments: JSON.stringify({ result: 'The captcha is solved' }) };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: `chatcmpl-${n}`,
          object: 'chat.completion',
          created: Math.floor(Date.now() / 1000),
          model: parsed?.model ?? 'fake',
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: null, tool_calls: [{ id: `call_${n}`, type: 'function', function: call }] },
              finish_reason: 'tool_calls',
            },
          ],
          usage: { prompt_tokens: 100, completion_tokens: 10, total_tokens: 110 },
        }),
      );
    });
  });
  return new Promise((resolve, reject) => {
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      resolve({
        base: `http://127.0.0.1:${srv.address().port}/v1`,
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

describe('an agent task that asks for the person', { timeout: 600_000 }, () => {
  let pages;
  let model;
  let server;
  let browser;

  before(async () => {
    pages = await startFormServer();
    model = await startFakeModel();
    server = await startServer({
      startUrl: pages.startUrl,
      env: { LIVESESSION_AGENT_API_BASE: model.base, LIVESESSION_AGENT_API_KEY: 'sk-e2e-fake', LIVESESSION_AGENT_MODEL: 'fake-model' },
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await model?.close();
    await pages?.close();
  });

  test('"waiting for you" with the request and "Take control"; handed back from the panel, the task succeeds', async (t) => {
    const res = await server.admin('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    const session = await res.json();
    assert.equal(res.status, 201, JSON.stringify(session));
    t.after(() => server.admin(`/api/sessions/${session.id}`, { method: 'DELETE' }).catch(() => {}));

    const context = await browser.newContext({ viewport: { width: 1400, height: 860 } });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const diagnostics = async () => {
      const body = await page.evaluate(() => ({ ...document.body.dataset, tasks: document.getElementById('tasks')?.innerText, handover: document.getElementById('handover')?.innerText })).catch(() => null);
      return `[e2e] viewer: ${JSON.stringify(body)}\n[e2e] model requests: ${model.state.requests.length}\n[e2e] ---- viewer console (tail) ----\n${consoleTail()}`;
    };
    await withDiagnostics(
      server,
      async () => {
        await page.goto(`${new URL(session.viewer_url, server.baseUrl).href}#token=${session.refresh_token ?? session.token}`);
        await page.waitForFunction(() => document.body.dataset.state === 'connected', null, { timeout: 120_000, polling: 250 });

        const created = await server.admin(`/api/sessions/${session.id}/tasks`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ kind: 'agent', goal: 'Get past the captcha' }),
        });
        const task = await created.json();
        assert.equal(created.status, 201, JSON.stringify(task));
        const item = page.locator(`#task-list > li.task[data-task-id="${task.id}"]`);

        // The agent asks for the person: the task says so, with the banner's action.
        await item.and(page.locator('[data-state="waiting_for_person"]')).waitFor({ timeout: 120_000 });
        assert.equal(await item.locator('.task-state').textContent(), 'waiting for you');
        assert.match(await item.locator('.task-ask').innerText(), /The agent needs you: Please solve the captcha on this page/);
        assert.equal(await page.evaluate(() => document.body.dataset.tasks), 'waiting');
        await page.getByRole('alert').filter({ hasText: 'Please solve the captcha on this page' }).waitFor({ timeout: 10_000 });
        const take = item.getByRole('button', { name: 'Take control' });
        await take.waitFor({ state: 'visible', timeout: 10_000 });
        assert.equal(model.state.requests[0].authorization, 'Bearer sk-e2e-fake');
        assert.equal(model.state.requests[0].body?.model, 'fake-model');

        // The panel's "Take control" is the hand-over's: the person holds control.
        await take.click();
        await page.waitForFunction(() => document.body.dataset.holder === 'person', null, { timeout: 15_000 });
        const handBack = item.getByRole('button', { name: 'Hand back to the agent' });
        await handBack.waitFor({ state: 'visible', timeout: 10_000 });
        assert.match(await item.locator('.task-ask').innerText(), /You have control/);
        assert.equal(await take.isVisible(), false);
        assert.equal(model.state.requests.length, 1, 'the agent waits while the person holds control');

        // Handed back: the agent goes on and finishes.
        await handBack.click();
        await item.and(page.locator('[data-state="succeeded"]')).waitFor({ timeout: 60_000 });
        await item.locator('.task-result').filter({ hasText: 'The captcha is solved' }).waitFor({ timeout: 15_000 });
        assert.equal(await item.locator('.task-ask').isVisible(), false);
        assert.ok(
          await item.locator('.task-event-text').filter({ hasText: 'the person handed control back' }).count(),
          'the hand-back is one of the steps shown',
        );
        assert.equal(model.state.requests.length, 2);
        const stored = await (await server.admin(`/api/sessions/${session.id}/tasks/${task.id}`)).json();
        assert.equal(stored.state, 'succeeded');
        assert.equal(stored.result.result, 'The captcha is solved');
      },
      diagnostics,
    );
  });
});
