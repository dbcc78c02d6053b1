// What the viewer shows about its connections: the status line, the last
// close, the session's remaining time. Also mirrors the state onto
// <body data-state data-last-close-code> so tests and scripts can read it.

import { describe, isFinal } from './closecodes.js';

/** @typedef {'connecting'|'starting'|'connected'|'reconnecting'|'ended'|'failed'} ViewerState */

/** "1st", "2nd", "3rd", "4th", … "11th", "12th", "13th", "21st", … */
export function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] ?? 'th');
  return `${n}${suffix}`;
}

/** What the viewer says while its session waits in line for a desktop. */
export function queueText(position) {
  return Number.isInteger(position) && position > 0
    ? `waiting for a desktop: you are ${ordinal(position)} in line`
    : 'waiting for a desktop';
}

export class ViewerUi {
  constructor(doc = document) {
    this.doc = doc;
    this.statusEl = doc.getElementById('status');
    this.lastCloseEl = doc.getElementById('last-close');
    this.noticeEl = doc.getElementById('notice');
    this.expiresEl = doc.getElementById('expires');
    this.retryBtn = doc.getElementById('retry-now');
    this.overlayText = doc.getElementById('overlay-text');
    this.countdownTimer = null;
    this.renderCountdown = null;
    this.expiryTimer = null;
    this.viewOnly = false;
  }

  /** A view-only session (a view link): the status line says so from now on. */
  setViewOnly(on) {
    this.viewOnly = Boolean(on);
    this.doc.body.dataset.role = this.viewOnly ? 'view' : 'interactive';
    this.setText(this.text ?? this.statusEl.textContent);
  }

  get state() {
    return this.doc.body.dataset.state;
  }

  /** Set the state and the status line text. */
  setState(state, text = state) {
    this.stopCountdown();
    this.doc.body.dataset.state = state;
    this.setText(text);
  }

  /** The status line, repeated large over the screen area while it is empty. */
  setText(text) {
    this.text = text;
    if (this.viewOnly) text = `${text} · view only`;
    this.statusEl.textContent = text;
    this.statusEl.title = text; // the bar may cut it short
    this.overlayText.textContent = text.charAt(0).toUpperCase() + text.slice(1);
  }

  /** Whether a live picture is on screen (hides the overlay). */
  setScreenLive(live) {
    this.doc.body.dataset.screen = live ? 'live' : 'off';
    this.renderCountdown?.();
  }

  /**
   * State "reconnecting" (or `state`) with a live "reconnecting in N s"
   * countdown. `what` (a string, or a function read at every tick since the
   * situation can change during the wait) says what was lost.
   */
  reconnecting(delayMs, what = '', state = 'reconnecting') {
    this.setState(state);
    const at = Date.now() + delayMs;
    const render = () => {
      const lost = typeof what === 'function' ? what() : what;
      const prefix = lost ? `${lost}; reconnecting` : 'reconnecting';
      const s = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      this.setText(s > 0 ? `${prefix} in ${s} s` : `${prefix}…`);
    };
    render();
    this.renderCountdown = render;
    this.countdownTimer = setInterval(render, 500);
    this.retryBtn.hidden = false;
  }

  stopCountdown() {
    clearInterval(this.countdownTimer);
    this.countdownTimer = null;
    this.renderCountdown = null;
    this.retryBtn.hidden = true;
  }

  /**
   * Record a close of the control or VNC socket. Once the session has ended,
   * only another final code may replace the one that ended it: the sockets
   * closing afterwards (1005, 1006) would otherwise hide the real reason.
   */
  lastClose(channel, code, reason) {
    if (code === null || code === undefined) return;
    if (this.state === 'ended' && !isFinal(code)) return;
    this.doc.body.dataset.lastCloseCode = String(code);
    const why = reason ? `${reason}` : describe(code);
    this.lastCloseEl.textContent = `last close (${channel}): ${code} ${why}`;
    this.lastCloseEl.title = `${describe(code)}: ${why}`;
  }

  notice(text) {
    this.noticeEl.textContent = text ?? '';
    this.noticeEl.hidden = !text;
  }

  /**
   * Show the time left until the session expires. The server's clock is the
   * one that counts, so correct for the difference to ours.
   */
  expiry(expiresAt, serverTime) {
    clearInterval(this.expiryTimer);
    const expires = Date.parse(expiresAt);
    if (Number.isNaN(expires)) return;
    const skew = Number.isNaN(Date.parse(serverTime)) ? 0 : Date.parse(serverTime) - Date.now();
    const render = () => {
      const left = expires - (Date.now() + skew);
      this.expiresEl.textContent = left > 0 ? `ends in ${formatDuration(left)}` : 'ending';
      this.expiresEl.title = `Session expires at ${new Date(expires).toLocaleString()}`;
    };
    render();
    this.expiryTimer = setInterval(render, 30_000);
  }

  stopExpiry() {
    clearInterval(this.expiryTimer);
    this.expiresEl.textContent = '';
  }
}

export function formatDuration(ms) {
  const min = Math.floor(ms / 60_000);
  if (min < 1) return 'less than a minute';
  const h = Math.floor(min / 60);
  const m = min % 60;
  return h > 0 ? `${h} h ${m} min` : `${m} min`;
}
