// The viewer's task logic (web/static/tasks.js), the control client's extra
// query parameters (control.js `query`, used for `?tasks_after=`), and the
// landing page's goal check (start.js), in Node: no browser, no server.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ControlClient, withQuery } from '../web/static/control.js';
import { MAX_GOAL_CHARS, goalProblem } from '../web/static/start.js';
import {
  TaskApi,
  TaskApiError,
  TaskModel,
  eventText,
  isFinalState,
  mayCancel,
  resultView,
  safeScreenshotUrl,
  stateLabel,
  summaryText,
  taskTitle,
} from '../web/static/tasks.js';

const SID = 'abc123';
const shot = (task, seq) => `/api/sessions/${SID}/tasks/${task}/screenshots/${seq}`;
const update = (task_id, seq, cursor, state, extra = {}) => ({ type: 'TASK_UPDATE', task_id, seq, cursor, state, at: '2026-11-28T12:00:00Z', ...extra });
const apiTask = (id, fields = {}) => ({
  id,
  session_id: SID,
  kind: 'steps',
  input: { steps: [{ action: 'goto', url: 'http://127.0.0.1:1/' }, { action: 'screenshot' }] },
  state: 'queued',
  attempts: 0,
  max_attempts: 3,
  lease: null,
  result: null,
  error: null,
  seq: 1,
  created_at: '2026-11-28T12:00:00Z',
  updated_at: '2026-11-28T12:00:00Z',
  finished_at: null,
  url: `/api/tasks/${id}`,
  ...fields,
});

describe('task words', () => {
  test('states read as people say them', () => {
    assert.deepEqual(
      ['queued', 'running', 'waiting_for_person', 'succeeded', 'failed', 'cancelled'].map(stateLabel),
      ['queued', 'running', 'waiting for you', 'succeeded', 'failed', 'cancelled'],
    );
    assert.deepEqual(['succeeded', 'failed', 'cancelled', 'running', 'queued', 'waiting_for_person'].map(isFinalState), [true, true, true, false, false, false]);
  });

  test('a task is its goal (agent) or its number of steps', () => {
    assert.equal(taskTitle({ kind: 'agent', goal: 'Find the library hours' }), 'Find the library hours');
    assert.equal(taskTitle({ kind: 'steps', stepCount: 5 }), '5 steps');
    assert.equal(taskTitle({ kind: 'steps', stepCount: 1 }), '1 step');
    assert.equal(taskTitle({ kind: null }), 'Task');
  });

  test('only interactive viewers may cancel, and only open tasks', () => {
    for (const state of ['queued', 'running', 'waiting_for_person']) {
      assert.equal(mayCancel({ state }, 'interactive'), true, state);
      assert.equal(mayCancel({ state }, 'view'), false, state);
      assert.equal(mayCancel({ state }, 'agent'), false, state);
    }
    for (const state of ['succeeded', 'failed', 'cancelled']) assert.equal(mayCancel({ state }, 'interactive'), false, state);
  });

  test('an event without a message says its state', () => {
    assert.equal(eventText({ message: '1: goto http://x/', state: 'running' }), '1: goto http://x/');
    assert.equal(eventText({ message: null, state: 'queued' }), 'queued');
  });

  test('the summary counts what matters first', () => {
    const tasks = [{ state: 'running' }, { state: 'waiting_for_person' }, { state: 'succeeded' }, { state: 'cancelled' }, { state: 'queued' }];
    assert.equal(summaryText(tasks), '1 waiting for you · 1 running · 1 queued · 2 finished');
    assert.equal(summaryText([]), '');
  });

  test('only a screenshot path of the session API becomes an image source', () => {
    assert.equal(safeScreenshotUrl(shot('t_1', 3)), shot('t_1', 3));
    for (const bad of ['https://evil.example/x.png', '//evil.example/api/sessions/a/tasks/b/screenshots/1', 'javascript:alert(1)', '/api/sessions/a/tasks/b/screenshots/1?x=1', null, 5]) {
      assert.equal(safeScreenshotUrl(bad), null, String(bad));
    }
  });
});

describe('resultView', () => {
  test('a steps task: extracted values by name, the last page', () => {
    const v = resultView({
      state: 'succeeded',
      result: { extracted: { greeting: 'Hello, Ada', count: 3 }, steps: 5, url: 'http://127.0.0.1:1/done', title: 'Done' },
    });
    assert.equal(v.headline, 'Succeeded');
    assert.deepEqual(v.items, [['greeting', 'Hello, Ada'], ['count', '3']]);
    assert.equal(v.url, 'http://127.0.0.1:1/done');
    assert.equal(v.raw, '');
  });

  test("an agent task: the model's answer", () => {
    const v = resultView({ state: 'succeeded', result: { result: 'Open 9 to 5', turns: 4, tokens: 900, url: 'http://x/' } });
    assert.equal(v.answer, 'Open 9 to 5');
    assert.deepEqual(v.items, []);
    const structured = resultView({ state: 'succeeded', result: { result: { hours: '9-5' }, other: 1 } });
    assert.equal(structured.answer, '{"hours":"9-5"}');
    assert.match(structured.raw, /"other": 1/);
  });

  test('failed and cancelled tasks show their error; open tasks nothing', () => {
    assert.deepEqual(
      [resultView({ state: 'failed', error: '2 failed: click "#go": no element' }).answer, resultView({ state: 'failed', error: 'x' }).headline],
      ['2 failed: click "#go": no element', 'Failed'],
    );
    const c = resultView({ state: 'cancelled', error: 'cancelled by the person' });
    assert.deepEqual([c.headline, c.answer, c.tone], ['Cancelled', 'cancelled by the person', 'cancelled']);
    assert.equal(resultView({ state: 'running' }), null);
  });
});

describe('TaskModel', () => {
  test('updates are kept once per (task_id, seq), and the cursor only grows', () => {
    const m = new TaskModel();
    const a = m.applyUpdate(update('t_a', 1, 10, 'queued'));
    assert.equal(a.created, true);
    assert.ok(a.event);
    assert.equal(a.needsDetail, true, 'an unknown task is asked about');
    assert.equal(m.lastCursor, 10);
    const dup = m.applyUpdate(update('t_a', 1, 10, 'queued'));
    assert.equal(dup.event, null, 'a repeated update is dropped');
    m.applyUpdate(update('t_a', 2, 12, 'running', { step: 0, message: '1: goto http://x/', screenshot_url: shot('t_a', 2) }));
    m.applyUpdate(update('t_b', 1, 11, 'queued'));
    assert.equal(m.lastCursor, 12);
    const t = m.get('t_a');
    assert.deepEqual(t.events.map((e) => e.seq), [1, 2]);
    assert.equal(t.state, 'running');
    assert.equal(t.events[1].screenshotUrl, shot('t_a', 2));
    assert.equal(t.events[1].step, 0);
    assert.equal(m.applyUpdate({ type: 'TASK_UPDATE', seq: 1 }), null, 'no task id: not an update');
  });

  test('an update from an unknown task, then the list: the task is filled in, newer states win', () => {
    const m = new TaskModel();
    m.applyUpdate(update('t_a', 1, 1, 'queued'));
    m.applyUpdate(update('t_a', 2, 2, 'running'));
    // The list was read before the task started running.
    const [r] = m.load({ tasks: [apiTask('t_a', { state: 'queued', seq: 1 })] });
    assert.equal(r.task.state, 'running', 'the later event wins over the older list entry');
    assert.equal(r.task.known, true);
    assert.equal(r.task.stepCount, 2);
    assert.equal(taskTitle(r.task), '2 steps');
    assert.equal(m.needsDetail(r.task), false);
    // A newer list entry wins over older events.
    m.load({ tasks: [apiTask('t_a', { state: 'succeeded', seq: 5, result: { extracted: { x: '1' } } })] });
    assert.equal(m.get('t_a').state, 'succeeded');
    assert.deepEqual(m.get('t_a').result, { extracted: { x: '1' } });
    assert.equal(m.get('t_a').resultLoaded, true);
  });

  test('a task that finishes over the channel needs its result from the API, once', () => {
    const m = new TaskModel();
    m.load({ tasks: [apiTask('t_a', { state: 'running', seq: 3 })] });
    const r = m.applyUpdate(update('t_a', 4, 9, 'succeeded', { message: 'done' }));
    assert.equal(r.stateChanged, true);
    assert.equal(r.needsDetail, true);
    // GET …/tasks/t_a?after=4 answers the task, no events.
    const d = m.applyTask(apiTask('t_a', { state: 'succeeded', seq: 4, result: { extracted: { answer: '42' } }, events: [] }));
    assert.equal(d.task.resultLoaded, true);
    assert.equal(m.needsDetail(d.task), false);
    assert.deepEqual(resultView(d.task).items, [['answer', '42']]);
  });

  test("the API's events fill gaps in order but never move the cursor", () => {
    const m = new TaskModel();
    m.applyUpdate(update('t_a', 3, 30, 'running'));
    const r = m.applyTask(apiTask('t_a', { state: 'running', seq: 3, events: [update('t_a', 1, 5, 'queued'), update('t_a', 2, 7, 'running'), update('t_a', 3, 30, 'running')] }));
    assert.deepEqual(r.events.map((e) => e.seq), [1, 2], 'only the new ones');
    assert.deepEqual(m.get('t_a').events.map((e) => e.seq), [1, 2, 3]);
    assert.equal(m.lastCursor, 30);
    m.applyTask(apiTask('t_b', { events: [update('t_b', 1, 99, 'queued')] }));
    assert.equal(m.lastCursor, 30, 'a cursor read through the API is not the channel\'s');
  });

  test('a cancel answer ends the task with its reason', () => {
    const m = new TaskModel();
    m.load({ tasks: [apiTask('t_a', { state: 'running', seq: 2 })] });
    m.applyTask(apiTask('t_a', { state: 'cancelled', seq: 3, error: 'cancelled by the person' }));
    const t = m.get('t_a');
    assert.equal(t.state, 'cancelled');
    assert.equal(resultView(t).answer, 'cancelled by the person');
    // The channel's copy of that event changes nothing.
    const again = m.applyUpdate(update('t_a', 3, 40, 'cancelled'));
    assert.equal(again.stateChanged, false);
    assert.equal(again.needsDetail, false);
  });

  test("a cancel or failure told over the channel shows its reason before the API answers", () => {
    const m = new TaskModel();
    m.load({ tasks: [apiTask('t_a', { state: 'running', seq: 2 }), apiTask('t_b', { state: 'running', seq: 2 })] });
    m.applyUpdate(update('t_a', 3, 40, 'cancelled', { message: 'cancelled by the person' }));
    assert.deepEqual([resultView(m.get('t_a')).headline, resultView(m.get('t_a')).answer], ['Cancelled', 'cancelled by the person']);
    m.applyUpdate(update('t_b', 3, 41, 'failed', { message: 'step 1 (goto): timed out' }));
    assert.equal(resultView(m.get('t_b')).answer, 'step 1 (goto): timed out');
    assert.equal(m.needsDetail(m.get('t_a')), true, 'the stored result is still fetched');
    // The API's answer is the truth once it arrives.
    m.applyTask(apiTask('t_a', { state: 'cancelled', seq: 3, error: 'cancelled by the operator' }));
    assert.equal(resultView(m.get('t_a')).answer, 'cancelled by the operator');
  });

  test('tasks are listed oldest first; waiting and open are told', () => {
    const m = new TaskModel();
    m.load({
      tasks: [
        apiTask('t_new', { created_at: '2026-11-28T12:05:00Z', state: 'waiting_for_person' }),
        apiTask('t_old', { created_at: '2026-11-28T12:01:00Z', state: 'succeeded' }),
      ],
    });
    assert.deepEqual(m.list().map((t) => t.id), ['t_old', 't_new']);
    assert.equal(m.waiting, true);
    assert.equal(m.open, true);
    m.applyUpdate(update('t_new', 2, 3, 'cancelled'));
    assert.equal(m.waiting, false);
    assert.equal(m.open, false);
  });
});

describe('TaskApi', () => {
  const json = (status, body) => ({ ok: status >= 200 && status < 300, status, json: async () => body });

  test('calls the session-scoped endpoints with the cookie, never a token', async () => {
    const calls = [];
    const api = new TaskApi(SID, {
      fetchImpl: async (url, init) => {
        calls.push([init.method, url, init.credentials]);
        return json(200, { tasks: [] });
      },
    });
    await api.list();
    await api.get('t_1', { after: 4 });
    await api.cancel('t_1');
    assert.deepEqual(calls, [
      ['GET', `/api/sessions/${SID}/tasks`, 'same-origin'],
      ['GET', `/api/sessions/${SID}/tasks/t_1?after=4`, 'same-origin'],
      ['POST', `/api/sessions/${SID}/tasks/t_1/cancel`, 'same-origin'],
    ]);
  });

  test('a 401 renews access once and asks again; a second 401 is reported', async () => {
    let renewed = 0;
    let ensured = 0;
    const answers = [json(401, { error: { code: 'token_expired', message: 'the access token expired' } }), json(200, { tasks: [1] })];
    const api = new TaskApi(SID, {
      fetchImpl: async () => answers.shift(),
      auth: { ensure: async () => (ensured += 1), renew: async () => (renewed += 1) },
    });
    assert.deepEqual(await api.list(), { tasks: [1] });
    assert.equal(renewed, 1);
    assert.equal(ensured, 2);

    const refusing = new TaskApi(SID, {
      fetchImpl: async () => json(401, { error: { code: 'token_invalid', message: 'the token is invalid' } }),
      auth: { renew: async () => (renewed += 1) },
    });
    await assert.rejects(refusing.list(), (err) => err instanceof TaskApiError && err.status === 401 && err.code === 'token_invalid');
    assert.equal(renewed, 2, 'renewed once more, not in a loop');
  });

  test("the server's refusal comes with its code and message", async () => {
    const api = new TaskApi(SID, { fetchImpl: async () => json(409, { error: { code: 'task_finished', message: 'the task is already succeeded' } }) });
    await assert.rejects(api.cancel('t_1'), (err) => err.status === 409 && err.code === 'task_finished' && /already succeeded/.test(err.message));
  });
});

describe('ControlClient query (tasks_after)', () => {
  test('withQuery adds parameters, leaves out empty ones, refuses a token', () => {
    const base = 'ws://127.0.0.1:9/api/sessions/s1/control';
    assert.equal(withQuery(base, { tasks_after: 42 }), `${base}?tasks_after=42`);
    assert.equal(withQuery(base, { tasks_after: null, x: undefined, y: '' }), base);
    assert.equal(withQuery(`${base}?a=1`, { tasks_after: 7 }), `${base}?a=1&tasks_after=7`);
    assert.equal(withQuery(base, null), base);
    assert.throws(() => withQuery(base, { token: 'secret' }), /never go into WebSocket URLs/);
    assert.throws(() => withQuery(base, { Token: 'secret' }), /never go into WebSocket URLs/);
  });

  test('every connection attempt asks query() afresh: a reconnect resumes after the last cursor', async () => {
    const sockets = [];
    class WS {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        sockets.push(this);
      }
      send() {}
      close() {
        this.readyState = 3;
      }
    }
    let cursor = 0;
    const timers = [];
    const clock = {
      now: () => 0,
      setTimeout: (fn) => timers.push(fn),
      clearTimeout: () => {},
      setInterval: () => 0,
      clearInterval: () => {},
    };
    const client = new ControlClient({
      sessionId: 's1',
      token: 'given',
      tokenExpiresAt: 10 * 60_000,
      refreshToken: async () => ({ token: 'fresh', expiresAt: 20 * 60_000 }),
      url: 'ws://127.0.0.1:9/api/sessions/s1/control',
      query: () => ({ tasks_after: cursor > 0 ? cursor : null }),
      WebSocket: WS,
      clock,
      random: () => 0,
      window: null,
      document: null,
    });
    client.connect();
    assert.equal(sockets[0].url, 'ws://127.0.0.1:9/api/sessions/s1/control', 'nothing seen yet: no tasks_after');
    const ws = sockets[0];
    ws.readyState = 1;
    ws.onopen();
    ws.onmessage({ data: JSON.stringify({ type: 'CONNECTED', session_id: 's1', expires_at: new Date(86_400_000).toISOString(), server_time: new Date(0).toISOString() }) });
    cursor = 17; // the panel saw TASK_UPDATE cursor 17
    ws.readyState = 3;
    ws.onclose({ code: 1006, reason: '', wasClean: false });
    // The backoff wait (random 0 → at once) runs the retry.
    while (timers.length) timers.shift()();
    assert.equal(sockets.length, 2);
    assert.equal(sockets[1].url, 'ws://127.0.0.1:9/api/sessions/s1/control?tasks_after=17');
    client.disconnect();
  });

  test('a query that would put a token into the URL stops the client', () => {
    class WS {
      constructor() {
        throw new Error('no socket may be opened');
      }
    }
    const client = new ControlClient({
      sessionId: 's1',
      token: 'given',
      tokenExpiresAt: Date.now() + 10 * 60_000,
      url: 'ws://127.0.0.1:9/api/sessions/s1/control',
      query: () => ({ token: 'given' }),
      WebSocket: WS,
      window: null,
      document: null,
    });
    const stopped = [];
    client.addEventListener('stopped', (ev) => stopped.push(ev.detail.message));
    client.connect();
    assert.equal(client.state, 'stopped');
    assert.match(stopped[0], /never go into WebSocket URLs/);
  });

  test('query must be a function', () => {
    assert.throws(() => new ControlClient({ sessionId: 's1', query: { tasks_after: 1 }, window: null, document: null }), /query must be a function/);
  });
});

describe('goalProblem (landing page)', () => {
  test('blank and ordinary goals pass; too long ones are named', () => {
    assert.equal(goalProblem(''), null);
    assert.equal(goalProblem('   '), null);
    assert.equal(goalProblem('Find the opening hours'), null);
    assert.equal(goalProblem('x'.repeat(MAX_GOAL_CHARS)), null);
    assert.equal(goalProblem(`  ${'x'.repeat(MAX_GOAL_CHARS)}  `), null, 'trimmed as the server trims');
    assert.match(goalProblem('x'.repeat(MAX_GOAL_CHARS + 1)), /too long: 4001 characters, at most 4000/);
  });

  test('characters, not UTF-16 units, are counted', () => {
    assert.equal(goalProblem('😀'.repeat(MAX_GOAL_CHARS)), null);
  });

  test('a form the browser posts itself sends line breaks as two characters', () => {
    const goal = `${'x'.repeat(MAX_GOAL_CHARS - 2)}\na`;
    assert.equal(goalProblem(goal), null);
    assert.match(goalProblem(goal, { crlf: true }), /4001 characters/);
  });
});
