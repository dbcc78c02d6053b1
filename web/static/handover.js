/**
 * @module handover
 *
 * Who drives the session's browser — an agent over the DevTools protocol, the
 * person in this viewer, or nobody in particular — and the viewer's part in
 * handing control over (docs/agents.md, "Take over and hand back").
 *
 * The control channel sends `{"type":"CONTROL","holder":"agent"|"person"|"none",
 * "since":…, "reason"?:…}` right after CONNECTED and on every change; an
 * interactive connection may answer `TAKE_CONTROL` or `RELEASE_CONTROL`.
 *
 * `controlView(state, role)` decides what to show (no DOM: tested in Node);
 * `HandoverUi` renders it into the viewer page's `#handover` banner.
 */

const HOLDERS = new Set(['agent', 'person', 'none']);

/**
 * What the viewer shows for a CONTROL state.
 *
 * @param {{holder?: string, reason?: string}|null} state the last CONTROL message (null: none yet)
 * @param {string} role the connection's role: `interactive`, `view` or `agent`
 * @returns {{visible: boolean, holder: string, text: string, reason: string,
 *            take: boolean, release: boolean, inputPaused: boolean}}
 *   `take`/`release`: offer "Take control" / "Hand back to the agent";
 *   `inputPaused`: the server drops this viewer's input (the agent drives).
 */
export function controlView(state, role = 'interactive') {
  const holder = HOLDERS.has(state?.holder) ? state.holder : 'none';
  const reason = typeof state?.reason === 'string' ? state.reason.trim() : '';
  const mayAct = role === 'interactive';
  const view = { visible: true, holder, text: '', reason, take: false, release: false, inputPaused: false };
  switch (holder) {
    case 'agent':
      view.inputPaused = mayAct;
      view.take = mayAct;
      if (reason) view.text = mayAct ? 'The agent asks for a person; your input is paused until you take control' : 'The agent asks for a person';
      else view.text = mayAct ? 'An agent is driving; your input is paused' : 'An agent is driving';
      break;
    case 'person':
      // Handing back needs an agent to hand to (CONTROL counts them; a server
      // that does not send the count is taken to have one).
      view.release = mayAct && (typeof state?.agents !== 'number' || state.agents > 0);
      view.text = mayAct ? 'You have control; the agent waits' : 'A person has control; the agent waits';
      break;
    default:
      // No agent connected: nothing to hand over. An agent asking for a person
      // always holds or waits for control, so a reason here is only shown.
      view.visible = Boolean(reason);
      view.text = reason ? 'An agent asks for a person' : '';
      break;
  }
  return view;
}

/** How long a clicked button stays disabled waiting for the server's CONTROL. */
const PENDING_MS = 5_000;

/**
 * Renders the hand-over banner:
 *
 * ```html
 * <section id="handover" hidden>
 *   <p id="handover-status" role="status" aria-live="polite"></p>
 *   <p id="handover-reason" role="alert" hidden></p>
 *   <button id="take-control" type="button" hidden>Take control</button>
 *   <button id="release-control" type="button" hidden>Hand back to the agent</button>
 * </section>
 * ```
 *
 * Events: `take` and `release` (the person clicked, here or through `take()`
 * / `release()`; the caller sends the message and calls `pending(false)` if
 * it could not); `change` after every render, with the view in `detail` (the
 * task panel follows it).
 */
export class HandoverUi extends EventTarget {
  constructor(doc = document) {
    super();
    this.doc = doc;
    this.root = doc.getElementById('handover');
    this.statusEl = doc.getElementById('handover-status');
    this.reasonEl = doc.getElementById('handover-reason');
    this.takeBtn = doc.getElementById('take-control');
    this.releaseBtn = doc.getElementById('release-control');
    this.state = null;
    this.role = 'interactive';
    this.connected = false;
    this.pendingTimer = null;
    this.view = controlView(null);
    this.takeBtn.addEventListener('click', () => this._click('take'));
    this.releaseBtn.addEventListener('click', () => this._click('release'));
  }

  /** The connection's role (CONNECTED). */
  setRole(role) {
    this.role = role ?? 'interactive';
    this.render();
  }

  /** A CONTROL message. */
  setState(msg) {
    this.state = { holder: msg.holder, since: msg.since, reason: msg.reason, agents: msg.agents };
    this.pending(false);
    this.render();
  }

  /** Whether the control channel is up: the buttons only work while it is. */
  setConnected(on) {
    this.connected = Boolean(on);
    this.render();
  }

  /** The session is over: nothing to hand over any more. */
  clear() {
    this.state = null;
    this.pending(false);
    this.render();
    this.root.hidden = true;
  }

  /** A click waits for the server's answer (a CONTROL change). */
  pending(on) {
    clearTimeout(this.pendingTimer);
    this.pendingTimer = null;
    this.busy = Boolean(on);
    if (on) this.pendingTimer = setTimeout(() => this.pending(false), PENDING_MS);
    this.render();
  }

  render() {
    const view = controlView(this.state, this.role);
    this.view = view;
    const body = this.doc.body;
    body.dataset.holder = this.state ? view.holder : 'unknown';
    body.dataset.controlReason = view.reason ? 'yes' : 'no';
    this.root.hidden = !this.state || !view.visible;
    this.root.dataset.holder = view.holder;
    this.root.classList.toggle('asking', Boolean(view.reason));
    // Only write the live regions when their text changes, so screen readers
    // announce changes, not every re-render.
    if (this.statusEl.textContent !== view.text) this.statusEl.textContent = view.text;
    const reason = view.reason ? `“${view.reason}”` : '';
    if (this.reasonEl.textContent !== reason) this.reasonEl.textContent = reason;
    this.reasonEl.hidden = !reason;
    this.takeBtn.hidden = !view.take;
    this.releaseBtn.hidden = !view.release;
    const disabled = !this.connected || Boolean(this.busy);
    this.takeBtn.disabled = disabled;
    this.releaseBtn.disabled = disabled;
    this.dispatchEvent(new CustomEvent('change', { detail: { ...view, disabled, active: Boolean(this.state) } }));
  }

  /**
   * "Take control" from elsewhere on the page (the task panel's button for a
   * task waiting for the person): the same action as the banner's button, with
   * the same checks. Returns whether it was started.
   */
  take() {
    if (!this.view.take) return false;
    return this._click('take');
  }

  /** "Hand back to the agent" from elsewhere on the page; as `take()`. */
  release() {
    if (!this.view.release) return false;
    return this._click('release');
  }

  _click(kind) {
    if (this.busy || !this.connected) return false;
    this.pending(true);
    this.dispatchEvent(new CustomEvent(kind));
    return true;
  }
}
