/**
 * @module tasks
 *
 * A session's tasks as the viewer knows them (no DOM: tested in Node; the
 * panel that shows them is task-panel.js). Two sources feed it:
 *
 * - `GET /api/sessions/{id}/tasks` → `{"tasks": [task, …]}` (and
 *   `GET /api/sessions/{id}/tasks/{task_id}` for one task, its result and
 *   events): what each task is (`kind`, `input.goal` or `input.steps`), its
 *   `state`, `seq` (its latest event), `result` and `error`;
 * - the control channel's `TASK_UPDATE` messages, `{type, task_id, seq, cursor,
 *   state, at, step?, message?, screenshot_url?}`, one per event, in `cursor`
 *   order.
 *
 * Updates are deduplicated by `(task_id, seq)`, whatever their source, and
 * `lastCursor` is the greatest `cursor` of a TASK_UPDATE seen on the control
 * channel: the control client reconnects with `?tasks_after=<lastCursor>`, so
 * no update is lost or repeated across reconnects. Events read through the
 * HTTP API never move `lastCursor` (other tasks' updates between the two
 * cursors would be skipped).
 *
 * `TaskApi` wraps the HTTP calls (the session's `ls_<id>` cookie
 * authenticates them; a 401 renews it once through the control client).
 */

export const TASK_STATES = Object.freeze(['queued', 'running', 'waiting_for_person', 'succeeded', 'failed', 'cancelled']);
const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);
const OPEN_STATES = new Set(['queued', 'running', 'waiting_for_person']);

/** Words for people, per state. */
export const STATE_LABELS = Object.freeze({
  queued: 'queued',
  running: 'running',
  waiting_for_person: 'waiting for you',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
});

/** Events kept per task (the oldest are dropped first). */
export const MAX_EVENTS_PER_TASK = 500;

export function stateLabel(state) {
  return STATE_LABELS[state] ?? String(state ?? 'unknown');
}

/** No change follows. */
export function isFinalState(state) {
  return FINAL_STATES.has(state);
}

/** Queued, running or waiting for the person: it may still be cancelled. */
export function isOpenState(state) {
  return OPEN_STATES.has(state);
}

/**
 * Whether this page may offer "Cancel" for a task: only interactive viewers
 * (the server refuses view tokens anyway), and only while the task is open.
 */
export function mayCancel(task, role) {
  return role === 'interactive' && isOpenState(task?.state);
}

/** What a task is, in a line: its goal (agent) or "N steps" (steps). */
export function taskTitle(task) {
  if (task?.kind === 'agent') return task.goal ? task.goal : 'Agent task';
  if (task?.kind === 'steps') {
    const n = task.stepCount;
    if (Number.isInteger(n)) return `${n} ${n === 1 ? 'step' : 'steps'}`;
    return 'Steps';
  }
  return 'Task';
}

/** Text for one event: its message, or the state it moved to. */
export function eventText(event) {
  const message = typeof event?.message === 'string' ? event.message.trim() : '';
  if (message) return message;
  return stateLabel(event?.state);
}

/** `HH:MM:SS` (local time) of an RFC 3339 time; '' if it is not one. */
export function clockTime(at) {
  const ms = Date.parse(at ?? '');
  if (Number.isNaN(ms)) return '';
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

/** A value of a result as text: strings as they are, anything else as JSON. */
export function valueText(value) {
  if (typeof value === 'string') return value;
  if (value === undefined) return '';
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/**
 * What to show of a finished task: `{tone, headline, items, answer, url,
 * raw}`. `items`: `[name, text]` pairs of extracted values; `answer`: an agent's
 * result; `url`: the page it ended on; `raw`: other results as JSON text.
 * `null` while the task is not finished.
 */
export function resultView(task) {
  if (!task || !isFinalState(task.state)) return null;
  const view = { tone: task.state, headline: '', items: [], answer: '', url: '', raw: '' };
  if (task.state === 'succeeded') {
    view.headline = 'Succeeded';
    const result = task.result;
    if (result && typeof result === 'object' && !Array.isArray(result)) {
      const known = new Set(['extracted', 'steps', 'url', 'title', 'result', 'turns', 'tokens']);
      if (result.extracted && typeof result.extracted === 'object' && !Array.isArray(result.extracted)) {
        view.items = Object.entries(result.extracted).map(([name, value]) => [name, valueText(value)]);
      }
      if (result.result !== undefined && result.result !== null) view.answer = valueText(result.result);
      if (typeof result.url === 'string') view.url = result.url;
      const rest = Object.fromEntries(Object.entries(result).filter(([k]) => !known.has(k)));
      if (Object.keys(rest).length > 0) view.raw = JSON.stringify(rest, null, 2);
    } else if (result !== undefined && result !== null) {
      view.raw = valueText(result);
    }
  } else {
    view.headline = task.state === 'failed' ? 'Failed' : 'Cancelled';
    if (task.error) view.answer = String(task.error);
  }
  return view;
}

/** "2 running · 1 waiting for you · 3 finished" */
export function summaryText(tasks) {
  const count = (pred) => tasks.filter(pred).length;
  const parts = [];
  const waiting = count((t) => t.state === 'waiting_for_person');
  const running = count((t) => t.state === 'running');
  const queued = count((t) => t.state === 'queued');
  const finished = count((t) => isFinalState(t.state));
  if (waiting) parts.push(`${waiting} waiting for you`);
  if (running) parts.push(`${running} running`);
  if (queued) parts.push(`${queued} queued`);
  if (finished) parts.push(`${finished} finished`);
  return parts.join(' · ');
}

function validSeq(n) {
  return Number.isInteger(n) && n >= 0;
}

/**
 * The session's tasks. Methods return what changed so the panel can render
 * only that.
 */
export class TaskModel {
  constructor() {
    /** @type {Map<string, object>} */
    this.tasks = new Map();
    this.lastCursor = 0;
    this._order = 0;
  }

  get size() {
    return this.tasks.size;
  }

  get(id) {
    return this.tasks.get(id) ?? null;
  }

  /** Tasks, oldest first. */
  list() {
    return [...this.tasks.values()].sort((a, b) => {
      if (a.createdAt !== null && b.createdAt !== null && a.createdAt !== b.createdAt) return a.createdAt - b.createdAt;
      return a.order - b.order;
    });
  }

  /** The task with this id, created empty (not `known`) if it is new. */
  _task(id) {
    let task = this.tasks.get(id);
    if (!task) {
      task = {
        id,
        kind: null,
        goal: null,
        stepCount: null,
        state: 'queued',
        seq: 0,
        createdAt: null,
        events: [],
        seen: new Set(),
        result: null,
        error: null,
        // Its kind and input came from the API.
        known: false,
        // Its result/error came from the API after it finished.
        resultLoaded: false,
        order: (this._order += 1),
      };
      this.tasks.set(id, task);
    }
    return task;
  }

  /** Adds an event unless one with its seq is there; returns it, or null. */
  _addEvent(task, raw) {
    if (!validSeq(raw.seq) || task.seen.has(raw.seq)) return null;
    task.seen.add(raw.seq);
    const event = {
      seq: raw.seq,
      at: typeof raw.at === 'string' ? raw.at : null,
      state: TASK_STATES.includes(raw.state) ? raw.state : task.state,
      step: Number.isInteger(raw.step) ? raw.step : null,
      message: typeof raw.message === 'string' ? raw.message : null,
      screenshotUrl: safeScreenshotUrl(raw.screenshot_url),
    };
    // Usually the newest: append; an older one (from the API) goes in its place.
    let i = task.events.length;
    while (i > 0 && task.events[i - 1].seq > event.seq) i -= 1;
    task.events.splice(i, 0, event);
    if (task.events.length > MAX_EVENTS_PER_TASK) task.events.splice(0, task.events.length - MAX_EVENTS_PER_TASK);
    if (event.seq >= task.seq && TASK_STATES.includes(raw.state)) {
      task.seq = event.seq;
      task.state = raw.state;
      // A failure's or cancel's event carries its reason: show it now rather
      // than a bare headline until the API's answer arrives.
      if ((raw.state === 'failed' || raw.state === 'cancelled') && !task.resultLoaded && event.message) {
        task.error = event.message;
      }
    }
    return event;
  }

  /**
   * A TASK_UPDATE from the control channel. Returns `{task, event, created,
   * stateChanged, needsDetail}` (`event` null for a duplicate), or null when
   * the message is not a usable update. `needsDetail`: fetch the task from
   * the API (unknown task, or finished without its result yet).
   */
  applyUpdate(msg) {
    if (!msg || typeof msg.task_id !== 'string' || !msg.task_id || !validSeq(msg.seq)) return null;
    if (validSeq(msg.cursor) && msg.cursor > this.lastCursor) this.lastCursor = msg.cursor;
    const created = !this.tasks.has(msg.task_id);
    const task = this._task(msg.task_id);
    const before = task.state;
    const event = this._addEvent(task, msg);
    return {
      task,
      event,
      created,
      stateChanged: task.state !== before,
      needsDetail: this.needsDetail(task),
    };
  }

  /** Whether the API should be asked about this task. */
  needsDetail(task) {
    return !task.known || (isFinalState(task.state) && !task.resultLoaded);
  }

  /**
   * A task as the API answers it (from the list, the task endpoint or a
   * cancel). Its `events`, when present, are merged too. Returns `{task,
   * created, stateChanged, events}` (`events`: the ones that were new).
   */
  applyTask(raw) {
    if (!raw || typeof raw.id !== 'string' || !raw.id) return null;
    const created = !this.tasks.has(raw.id);
    const task = this._task(raw.id);
    const before = task.state;
    if (raw.kind === 'agent' || raw.kind === 'steps') task.kind = raw.kind;
    const input = raw.input && typeof raw.input === 'object' ? raw.input : {};
    if (typeof input.goal === 'string') task.goal = input.goal;
    if (Array.isArray(input.steps)) task.stepCount = input.steps.length;
    const created_at = Date.parse(raw.created_at ?? '');
    if (!Number.isNaN(created_at)) task.createdAt = created_at;
    task.known = true;
    const events = [];
    if (Array.isArray(raw.events)) {
      for (const e of raw.events) {
        const added = e && this._addEvent(task, e);
        if (added) events.push(added);
      }
    }
    // The task's own state is as of its `seq`: newer than the events we hold, or not.
    const seq = validSeq(raw.seq) ? raw.seq : 0;
    if (TASK_STATES.includes(raw.state) && seq >= task.seq) {
      task.seq = seq;
      task.state = raw.state;
    }
    if (isFinalState(raw.state) && isFinalState(task.state)) {
      task.result = raw.result ?? null;
      task.error = typeof raw.error === 'string' ? raw.error : null;
      task.resultLoaded = true;
    }
    return { task, created, stateChanged: task.state !== before, events };
  }

  /** `GET …/tasks`' answer. Returns the `applyTask` results. */
  load(body) {
    const list = Array.isArray(body?.tasks) ? body.tasks : [];
    return list.map((raw) => this.applyTask(raw)).filter(Boolean);
  }

  /** Whether some task waits for the person. */
  get waiting() {
    for (const t of this.tasks.values()) if (t.state === 'waiting_for_person') return true;
    return false;
  }

  /** Whether some task is queued, running or waiting. */
  get open() {
    for (const t of this.tasks.values()) if (isOpenState(t.state)) return true;
    return false;
  }
}

/**
 * Only a same-origin path under the session's API is used as an image source
 * (the server gives `/api/sessions/{id}/tasks/{task_id}/screenshots/{seq}`).
 */
export function safeScreenshotUrl(url) {
  if (typeof url !== 'string') return null;
  return /^\/api\/sessions\/[^/?#]+\/tasks\/[^/?#]+\/screenshots\/\d+$/.test(url) ? url : null;
}

/** An API refusal: `status`, and the server's `code` and message. */
export class TaskApiError extends Error {
  constructor(message, { status = 0, code = null } = {}) {
    super(message);
    this.name = 'TaskApiError';
    this.status = status;
    this.code = code;
  }
}

/**
 * The task endpoints under `/api/sessions/{id}`, with the session's cookie.
 * `auth.ensure()` (before each call) and `auth.renew()` (after a 401, then
 * one more try) keep that cookie fresh: the viewer passes the control
 * client's `ensureToken` and `refreshAuth`.
 */
export class TaskApi {
  constructor(sessionId, { fetchImpl = (...a) => globalThis.fetch(...a), auth = null } = {}) {
    this.base = `/api/sessions/${encodeURIComponent(sessionId)}/tasks`;
    this.fetch = fetchImpl;
    this.auth = auth;
  }

  list() {
    return this._json('GET', this.base);
  }

  /** One task with its events after `after` (its result once finished). */
  get(taskId, { after = 0 } = {}) {
    const q = after > 0 ? `?after=${encodeURIComponent(after)}` : '';
    return this._json('GET', `${this.base}/${encodeURIComponent(taskId)}${q}`);
  }

  cancel(taskId) {
    return this._json('POST', `${this.base}/${encodeURIComponent(taskId)}/cancel`);
  }

  async _json(method, url) {
    for (let attempt = 0; ; attempt += 1) {
      if (this.auth?.ensure) {
        try {
          await this.auth.ensure();
        } catch {
          // The request says what is wrong, if anything.
        }
      }
      const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
      let res;
      try {
        res = await this.fetch(url, init);
      } catch (err) {
        throw new TaskApiError(`the server is unreachable (${err?.message ?? err})`);
      }
      const body = await res.json().catch(() => null);
      if (res.ok) return body;
      const code = body?.error?.code ?? null;
      const message = body?.error?.message ?? `the server answered ${res.status}`;
      if (res.status === 401 && attempt === 0 && this.auth?.renew) {
        try {
          await this.auth.renew();
          continue;
        } catch {
          // fall through: report the 401
        }
      }
      throw new TaskApiError(message, { status: res.status, code });
    }
  }
}
