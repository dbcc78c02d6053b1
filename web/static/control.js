// The session's control channel: a JSON WebSocket that tells the viewer what
// the desktop is doing and why a connection ended, kept open with PING/PONG
// and reopened with backoff when it drops.
//
// Events (all CustomEvent, payload in `detail`):
//   connecting  {attempt}                 a socket is being opened
//   open        {}                        the socket is open
//   message     {type, ...}               one parsed server message
//   close       {code, reason, wasClean, final, retryInMs}
//                                          the socket closed; retryInMs is null
//                                          when no retry will follow
//
// The channel never gives up on its own for codes worth retrying; it stops
// for the "final" close codes, after SESSION_ENDED, and on stop().

import { Backoff } from './backoff.js';
import { isFinal } from './closecodes.js';

const PING_INTERVAL_MS = 30_000;
// Two missed PONGs plus slack: a half-open TCP connection (laptop sleep, NAT
// timeout) never delivers a close event, so the client must notice by itself.
const SILENCE_LIMIT_MS = 2 * PING_INTERVAL_MS + 15_000;
// After SESSION_ENDED the server closes the socket with the reason code; if it
// does not within this time, close it from our side.
const ENDED_CLOSE_GRACE_MS = 5_000;
// Synthetic close code for a connection this client declared dead.
export const CLIENT_HEARTBEAT_LOST = 4900;

export class ControlChannel extends EventTarget {
  /**
   * @param {() => string} urlFn builds the WebSocket URL for each attempt
   * @param {{backoff?: Backoff}} [opts]
   */
  constructor(urlFn, opts = {}) {
    super();
    this.urlFn = urlFn;
    this.backoff = opts.backoff ?? new Backoff();
    this.ws = null;
    this.attempt = 0;
    this.openedAt = 0;
    this.lastHeardAt = 0;
    this.stopped = false;
    this.ended = false; // SESSION_ENDED received: never reconnect
    this.retryTimer = null;
    this.pingTimer = null;
    this.endedTimer = null;
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Open the channel (and keep reopening it until stop()). */
  start() {
    this.stopped = false;
    this.connect();
  }

  /** Close for good: no retry follows, and no close event is reported. */
  stop() {
    this.stopped = true;
    this.clearTimers();
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        ws.close(1000, 'viewer stopped');
      }
    }
  }

  /** Skip the rest of the backoff wait and reconnect at once. */
  retryNow() {
    if (this.retryTimer === null || this.stopped) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.connect();
  }

  send(msg) {
    if (this.isOpen) this.ws.send(JSON.stringify(msg));
  }

  connect() {
    this.retryTimer = null;
    this.attempt += 1;
    this.emit('connecting', { attempt: this.attempt });

    const ws = new WebSocket(this.urlFn());
    this.ws = ws;
    ws.onopen = () => {
      this.openedAt = Date.now();
      this.lastHeardAt = this.openedAt;
      this.startHeartbeat();
      this.emit('open', {});
    };
    ws.onmessage = (ev) => {
      this.lastHeardAt = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        console.warn('[livesession] control: ignoring a message that is not JSON');
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      if (msg.type === 'SESSION_ENDED') this.onSessionEnded();
      this.emit('message', msg);
    };
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason, ev.wasClean);
    // 'error' is always followed by 'close', which carries the useful part.
  }

  onSessionEnded() {
    this.ended = true;
    clearTimeout(this.endedTimer);
    this.endedTimer = setTimeout(() => {
      if (this.ws) this.stop();
    }, ENDED_CLOSE_GRACE_MS);
  }

  onClose(ws, code, reason, wasClean) {
    if (ws !== this.ws) return; // a socket we already gave up on
    detach(ws);
    this.ws = null;
    this.clearTimers();

    const final = this.ended || isFinal(code);
    let retryInMs = null;
    if (!final && !this.stopped) {
      if (this.openedAt) this.backoff.connectionLasted(Date.now() - this.openedAt);
      retryInMs = Math.max(this.backoff.next(), retryAfterMs(code, reason));
      this.retryTimer = setTimeout(() => this.connect(), retryInMs);
    }
    this.openedAt = 0;
    this.emit('close', { code, reason, wasClean, final, retryInMs });
  }

  startHeartbeat() {
    this.pingTimer = setInterval(() => {
      if (Date.now() - this.lastHeardAt > SILENCE_LIMIT_MS) {
        // Treat the silent socket as closed now rather than waiting minutes
        // for TCP to notice; the late close event of `ws` is ignored.
        const ws = this.ws;
        this.onClose(ws, CLIENT_HEARTBEAT_LOST, 'no PONG from server', false);
        ws.close(CLIENT_HEARTBEAT_LOST, 'heartbeat lost');
        return;
      }
      this.send({ type: 'PING' });
    }, PING_INTERVAL_MS);
  }

  clearTimers() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    clearTimeout(this.endedTimer);
    this.endedTimer = null;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * A rate-limited close (4009) says when to come back, e.g. "too many
 * attempts; retry in 5 s"; never retry sooner than that.
 */
export function retryAfterMs(code, reason) {
  if (code !== 4009) return 0;
  const m = /retry in (\d+(?:\.\d+)?) ?s\b/i.exec(reason ?? '');
  return m ? Math.min(Number(m[1]) * 1000, 10 * 60_000) : 0;
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
}
