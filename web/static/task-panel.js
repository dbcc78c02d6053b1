/**
 * @module task-panel
 *
 * The viewer's task panel: the session's tasks (tasks.js holds them), each
 * with its goal or number of steps, its state, every step as it happens (the
 * message and a thumbnail), the agent's request for the person (with "Take
 * control", the hand-over banner's own action), the result once finished, and
 * "Cancel" for interactive viewers while the task is open.
 *
 * The viewer (viewer.js) wires it to the control channel:
 *
 * ```js
 * const panel = new TaskPanel({ sessionId, api: new TaskApi(sessionId, {auth}) });
 * new ControlClient({ …, query: () => ({ tasks_after: panel.lastCursor || null }) });
 * // CONNECTED → panel.setRole(role); panel.connected(server_time); panel.refresh()
 * // TASK_UPDATE → panel.update(msg)
 * // the hand-over banner's `change` → panel.setControl(view)
 * panel.addEventListener('take', () => handover.take());
 * ```
 *
 * The panel stays hidden until the session has a task. It sits beside the
 * screen (below it on narrow windows) and can be collapsed; a task waiting for
 * the person opens it again. New steps and state changes are announced
 * politely through one status region (`aria-live`), but only those that happen
 * while the page watches: the updates the server replays when the control
 * channel opens (everything before the CONNECTED message's `server_time`) are
 * shown, not read out.
 *
 * Mirrors for tests and scripts: `<body data-tasks="none|open|waiting|done">`,
 * and each task's `<li data-task-id data-state>`.
 */

import {
  TaskModel,
  clockTime,
  eventText,
  isFinalState,
  mayCancel,
  resultView,
  stateLabel,
  summaryText,
  taskTitle,
} from './tasks.js';

const log = (...args) => console.info('[livesession]', ...args);

/** Events shown per task; older ones stay in the model. */
const SHOWN_EVENTS = 200;
/** How long to wait before asking for the list again after a failure: doubling to a cap. */
const RETRY_MS = 3_000;
const RETRY_MAX_MS = 60_000;
/** Characters of a task's title in its buttons' accessible names. */
const LABEL_CHARS = 80;

function short(text, max = LABEL_CHARS) {
  const chars = [...text];
  return chars.length > max ? `${chars.slice(0, max - 1).join('')}…` : text;
}

function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k in node && !k.startsWith('aria') && k !== 'role') node[k] = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

/** Writes text only when it changes (live regions announce changes, not re-renders). */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

export class TaskPanel extends EventTarget {
  /**
   * @param {{sessionId: string, api: import('./tasks.js').TaskApi, doc?: Document}} opts
   */
  constructor({ sessionId, api, doc = document }) {
    super();
    this.sessionId = sessionId;
    this.api = api;
    this.doc = doc;
    this.model = new TaskModel();
    this.role = 'interactive';
    this.control = { take: false, release: false, disabled: true, holder: 'none' };
    this.listLoaded = false;
    this.loading = null;
    this.detailPending = new Set();
    this.cancelling = new Set();
    this.nodes = new Map();
    this.collapsed = false;
    this.ended = false;
    this.liveSince = 0; // server time (ms) of the last CONNECTED: later events are news
    this.retryMs = RETRY_MS;
    this.retryTimer = null;

    this.root = doc.getElementById('tasks');
    this.listEl = doc.getElementById('task-list');
    this.summaryEl = doc.getElementById('tasks-summary');
    this.announceEl = doc.getElementById('tasks-announce');
    this.toggleBtn = doc.getElementById('tasks-toggle');
    this.bodyEl = doc.getElementById('tasks-body');
    this.toggleBtn.addEventListener('click', () => this.setCollapsed(!this.collapsed));
    this._renderPanel();
  }

  /** The greatest TASK_UPDATE cursor seen: reconnect with `?tasks_after=` this. */
  get lastCursor() {
    return this.model.lastCursor;
  }

  /** The connection's role (CONNECTED): only interactive viewers may cancel. */
  setRole(role) {
    this.role = role ?? 'interactive';
    for (const task of this.model.tasks.values()) this._renderTask(task);
  }

  /** The hand-over banner's view (handover.js `change`): what "Take control" may do now. */
  setControl(view) {
    this.control = {
      take: Boolean(view?.take),
      release: Boolean(view?.release),
      disabled: Boolean(view?.disabled),
      holder: view?.active ? view.holder : 'none',
    };
    for (const task of this.model.tasks.values()) {
      if (task.state === 'waiting_for_person') this._renderTask(task);
    }
  }

  /**
   * The control channel said CONNECTED at `serverTime` (RFC 3339): the updates
   * it replays next happened before, and are not announced.
   */
  connected(serverTime) {
    const ms = Date.parse(serverTime ?? '');
    this.liveSince = Number.isNaN(ms) ? 0 : ms;
  }

  /** The session ended: nothing can be cancelled or taken any more. */
  end() {
    this.ended = true;
    clearTimeout(this.retryTimer);
    for (const task of this.model.tasks.values()) this._renderTask(task);
  }

  /** (Re)load the task list: on every CONNECTED (new tasks, states while away). */
  refresh() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        const body = await this.api.list();
        // The list is how things are now: shown, not announced.
        for (const r of this.model.load(body)) this._changed(r.task, r.events, r.stateChanged, { announce: false });
        this.listLoaded = true;
        this.retryMs = RETRY_MS;
        // Updates that arrived before the list: ask about what is still unknown.
        for (const task of this.model.tasks.values()) this._maybeDetail(task);
      } catch (err) {
        console.warn('[livesession] tasks: could not load the task list:', err.message);
        if (err.status !== 401 && err.status !== 403 && err.status !== 404 && err.status !== 410 && !this.ended) {
          clearTimeout(this.retryTimer);
          this.retryTimer = setTimeout(() => this.refresh(), this.retryMs);
          this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
        }
      } finally {
        this.loading = null;
        this._renderPanel();
      }
    })();
    return this.loading;
  }

  /** A TASK_UPDATE message. */
  update(msg) {
    const r = this.model.applyUpdate(msg);
    if (!r) return;
    if (!r.event) return; // seen already
    if (r.created) log(`task ${r.task.id}: first seen (${msg.state})`);
    const at = Date.parse(msg.at ?? '');
    const live = Number.isNaN(at) || at >= this.liveSince;
    this._changed(r.task, [r.event], r.stateChanged, { announce: live });
    this._maybeDetail(r.task);
  }

  setCollapsed(on) {
    this.collapsed = Boolean(on);
    this._renderPanel();
  }

  // --- API ------------------------------------------------------------------

  _maybeDetail(task) {
    if (!this.listLoaded || !this.model.needsDetail(task) || this.detailPending.has(task.id)) return;
    this.detailPending.add(task.id);
    // Only the task itself (and its result): the events come over the control channel.
    this.api
      .get(task.id, { after: task.seq })
      .then((raw) => {
        const r = this.model.applyTask(raw);
        if (r) this._changed(r.task, r.events, r.stateChanged, { announce: false });
      })
      .catch((err) => {
        console.warn(`[livesession] tasks: could not load task ${task.id}:`, err.message);
      })
      .finally(() => {
        this.detailPending.delete(task.id);
      });
  }

  async _cancel(task) {
    if (this.cancelling.has(task.id)) return;
    this.cancelling.add(task.id);
    task.actionError = null;
    this._renderTask(task);
    log(`task ${task.id}: cancelling`);
    try {
      const raw = await this.api.cancel(task.id);
      const r = this.model.applyTask(raw);
      if (r) this._changed(r.task, r.events, r.stateChanged);
    } catch (err) {
      console.warn(`[livesession] tasks: cancelling ${task.id} failed:`, err.message);
      task.actionError = err.code === 'task_finished' ? `Could not cancel: ${err.message}.` : `Could not cancel: ${err.message}`;
      // It may have finished meanwhile: its final state and result follow.
      this.model.tasks.get(task.id) && this._maybeDetail(task);
    } finally {
      this.cancelling.delete(task.id);
      this._renderTask(task);
    }
  }

  // --- rendering --------------------------------------------------------------

  _changed(task, events, stateChanged, { announce = true } = {}) {
    const nodes = this._nodes(task);
    for (const event of events) this._renderEvent(task, nodes, event);
    this._renderTask(task);
    if (stateChanged) {
      // A finished task lets the next one start: its "waits" note changes.
      for (const other of this.model.tasks.values()) if (other !== task && other.state === 'queued') this._renderTask(other);
      // The person is needed: make sure they see it.
      if (task.state === 'waiting_for_person') this.setCollapsed(false);
    }
    if (announce) {
      const title = short(taskTitle(task));
      const parts = [];
      if (stateChanged) parts.push(`${title}: ${stateLabel(task.state)}`);
      // The step itself (a state change's own message is said with it).
      const last = events.at(-1);
      const text = last?.message?.trim();
      if (text) parts.push(stateChanged ? text : `${title}: ${text}`);
      if (parts.length > 0) this._announce(parts.join('. '));
    }
    this._renderPanel();
  }

  _announce(text) {
    // The same text twice in a row is announced again only if it changes.
    this.announceEl.textContent = '';
    this.announceEl.textContent = text;
  }

  _renderPanel() {
    const tasks = this.model.list();
    this.root.hidden = tasks.length === 0;
    const body = this.doc.body;
    body.dataset.tasks = tasks.length === 0 ? 'none' : this.model.waiting ? 'waiting' : this.model.open ? 'open' : 'done';
    this.root.dataset.collapsed = String(this.collapsed);
    this.root.classList.toggle('waiting', this.model.waiting);
    this.bodyEl.hidden = this.collapsed;
    this.toggleBtn.setAttribute('aria-expanded', String(!this.collapsed));
    setText(this.toggleBtn, this.collapsed ? 'Show' : 'Hide');
    this.toggleBtn.title = this.collapsed ? 'Show the tasks' : 'Hide the tasks';
    setText(this.summaryEl, summaryText(tasks));
    // Keep the DOM in the model's order (oldest first).
    let prev = null;
    for (const task of tasks) {
      const { li } = this._nodes(task);
      const want = prev ? prev.nextSibling : this.listEl.firstChild;
      if (want !== li) this.listEl.insertBefore(li, want);
      prev = li;
    }
  }

  _nodes(task) {
    let nodes = this.nodes.get(task.id);
    if (nodes) return nodes;
    const doc = this.doc;
    const titleId = `task-${task.id}-title`;
    const title = el(doc, 'span', { class: 'task-title', id: titleId });
    const badge = el(doc, 'span', { class: 'task-state' });
    const cancel = el(doc, 'button', { type: 'button', class: 'small task-cancel', text: 'Cancel', hidden: true });
    cancel.addEventListener('click', () => {
      const t = this.model.get(task.id);
      if (t) this._cancel(t);
    });
    const progress = el(doc, 'span', { class: 'task-progress muted' });
    const head = el(doc, 'div', { class: 'task-head' }, [title, el(doc, 'span', { class: 'task-meta' }, [badge, progress]), cancel]);
    // The agent's request for the person.
    const askText = el(doc, 'p', { class: 'task-ask-text' });
    const take = el(doc, 'button', { type: 'button', class: 'small task-take', text: 'Take control', hidden: true });
    const handBack = el(doc, 'button', { type: 'button', class: 'small task-release', text: 'Hand back to the agent', hidden: true });
    take.addEventListener('click', () => this.dispatchEvent(new CustomEvent('take', { detail: { taskId: task.id } })));
    handBack.addEventListener('click', () => this.dispatchEvent(new CustomEvent('release', { detail: { taskId: task.id } })));
    const ask = el(doc, 'div', { class: 'task-ask', hidden: true }, [askText, el(doc, 'span', { class: 'task-ask-actions' }, [take, handBack])]);
    // Steps are announced through the panel's status region (see `_changed`).
    const events = el(doc, 'ol', { class: 'task-events', 'aria-label': 'Steps' });
    const result = el(doc, 'div', { class: 'task-result', hidden: true });
    const actionError = el(doc, 'p', { class: 'task-action-error error', role: 'alert', hidden: true });
    const li = el(doc, 'li', { class: 'task', dataset: { taskId: task.id }, 'aria-labelledby': titleId }, [head, ask, actionError, events, result]);
    nodes = { li, title, badge, progress, cancel, ask, askText, take, handBack, events, result, actionError, resultKey: null };
    this.nodes.set(task.id, nodes);
    return nodes;
  }

  _renderTask(task) {
    const n = this._nodes(task);
    n.li.dataset.state = task.state;
    n.li.dataset.kind = task.kind ?? 'unknown';
    const title = taskTitle(task);
    setText(n.title, title);
    n.title.title = title;
    setText(n.badge, stateLabel(task.state));
    n.badge.dataset.state = task.state;
    // Steps tasks: how far along.
    let progress = '';
    if (task.kind === 'steps' && Number.isInteger(task.stepCount) && !isFinalState(task.state)) {
      const done = task.events.reduce((m, e) => (e.step !== null ? Math.max(m, e.step + 1) : m), 0);
      if (done > 0) progress = `${Math.min(done, task.stepCount)} of ${task.stepCount}`;
    }
    // Tasks of a session run one at a time, in order: say why a queued one waits.
    if (task.state === 'queued') {
      const list = this.model.list();
      const earlier = list.slice(0, list.indexOf(task)).some((t) => !isFinalState(t.state));
      if (earlier) progress = 'after the task above';
    }
    setText(n.progress, progress);

    // Cancel: interactive viewers, open tasks, a live session.
    const cancellable = !this.ended && mayCancel(task, this.role);
    n.cancel.hidden = !cancellable;
    n.cancel.disabled = this.cancelling.has(task.id);
    setText(n.cancel, this.cancelling.has(task.id) ? 'Cancelling…' : 'Cancel');
    n.cancel.setAttribute('aria-label', `Cancel task: ${short(title)}`);

    n.actionError.hidden = !task.actionError;
    setText(n.actionError, task.actionError ?? '');

    // Waiting for the person: what the agent asks, and the hand-over's actions.
    const waiting = task.state === 'waiting_for_person' && !this.ended;
    n.ask.hidden = !waiting;
    if (waiting) {
      const reason = [...task.events].reverse().find((e) => e.state === 'waiting_for_person' && e.message)?.message ?? '';
      let text;
      if (this.control.holder === 'person') {
        text = this.control.release
          ? 'You have control. When you are done, hand it back to the agent.'
          : 'A person has control; the agent waits.';
      } else {
        text = reason ? `The agent needs you: ${reason}` : 'The agent needs you.';
      }
      setText(n.askText, text);
      n.take.hidden = !(this.control.take && this.control.holder !== 'person');
      n.handBack.hidden = !(this.control.release && this.control.holder === 'person');
      n.take.disabled = this.control.disabled;
      n.handBack.disabled = this.control.disabled;
    }

    this._renderResult(task, n);
  }

  _renderResult(task, n) {
    const view = resultView(task);
    const key = view ? JSON.stringify(view) : null;
    if (key === n.resultKey) return;
    n.resultKey = key;
    n.result.replaceChildren();
    n.result.hidden = !view;
    if (!view) return;
    const doc = this.doc;
    n.result.dataset.tone = view.tone;
    n.result.append(el(doc, 'p', { class: 'task-result-head', text: view.headline }));
    if (view.answer) n.result.append(el(doc, 'p', { class: 'task-answer', text: view.answer }));
    if (view.items.length > 0) {
      const dl = el(doc, 'dl', { class: 'task-extracted' });
      for (const [name, value] of view.items) {
        dl.append(el(doc, 'dt', { text: name }), el(doc, 'dd', { text: value }));
      }
      n.result.append(dl);
    }
    if (view.url) n.result.append(el(doc, 'p', { class: 'task-url muted', text: `Last page: ${view.url}` }));
    if (view.raw) n.result.append(el(doc, 'pre', { class: 'task-raw', text: view.raw }));
    if (task.state === 'succeeded' && !view.answer && view.items.length === 0 && !view.raw && !task.resultLoaded) {
      n.result.append(el(doc, 'p', { class: 'muted', text: 'Loading the result…' }));
    }
  }

  _renderEvent(task, n, event) {
    const doc = this.doc;
    const list = n.events;
    // Stick to the newest unless the person scrolled up to read.
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    const time = el(doc, 'time', { class: 'task-event-time muted', text: clockTime(event.at) });
    if (event.at) time.setAttribute('datetime', event.at);
    const text = el(doc, 'span', { class: 'task-event-text', text: eventText(event) });
    const children = [time, text];
    if (event.screenshotUrl) children.push(this._thumbnail(task, event));
    const li = el(doc, 'li', { class: 'task-event', dataset: { seq: String(event.seq), state: event.state } }, children);
    // In seq order (events from the API may be older than those shown).
    let before = null;
    for (const other of list.children) {
      if (Number(other.dataset.seq) > event.seq) {
        before = other;
        break;
      }
    }
    list.insertBefore(li, before);
    while (list.children.length > SHOWN_EVENTS) list.firstElementChild.remove();
    if (atEnd && !before) list.scrollTop = list.scrollHeight;
  }

  _thumbnail(task, event) {
    const doc = this.doc;
    const label = event.step !== null && task.kind === 'steps' ? `Screenshot after step ${event.step + 1}` : 'Screenshot';
    const img = el(doc, 'img', { class: 'task-shot', alt: label, decoding: 'async', loading: 'lazy', width: 160 });
    // The image endpoint is under /api/sessions/{id}: the access cookie goes with it.
    // A refusal (the cookie ran out) renews access once and asks again.
    let retried = false;
    img.addEventListener('error', () => {
      if (retried) return;
      retried = true;
      const again = () => {
        img.src = `${event.screenshotUrl}?retry=1`;
      };
      const ensure = this.api.auth?.ensure;
      if (ensure) Promise.resolve(ensure()).then(again, again);
      else again();
    });
    img.src = event.screenshotUrl;
    const link = el(doc, 'a', { class: 'task-shot-link', href: event.screenshotUrl, target: '_blank', rel: 'noopener' }, [img]);
    link.setAttribute('aria-label', `${label} (opens full size)`);
    return link;
  }
}
