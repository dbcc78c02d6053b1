/**
 * @module control
 *
 * ControlClient — the browser client library for a livesession control
 * channel (`/api/sessions/{id}/control`, docs/protocol.md). It keeps one JSON
 * WebSocket up for as long as the session lives: across access-token expiry,
 * network drops, server restarts and page sleeps, without ever looping on an
 * auth failure. The viewer (viewer.js) uses it; it has no other dependency on
 * the page and works on its own in any page served by the livesession origin.
 *
 * ```js
 * import { ControlClient } from '/static/control.js';
 * import { sessionTokenProvider } from '/static/tokens.js';
 *
 * const client = new ControlClient({
 *   sessionId,
 *   // The token refresh callback: POST /api/sessions/{id}/token with the
 *   // refresh cookie (renews the cookies the WebSocket upgrade sends).
 *   refreshToken: sessionTokenProvider(sessionId, { initialToken: tokenFromLink }),
 * });
 * client.addEventListener('message', (ev) => console.log(ev.detail.type, ev.detail));
 * client.addEventListener('stopped', (ev) => console.log('gave up:', ev.detail.message));
 * client.connect();
 * ```
 *
 * ## Constructor options
 * - `sessionId` (string, required)
 * - `refreshToken` (`({sessionId, reason}) => Promise<{token, expiresAt?} | string>`):
 *   the token provider / refresh callback. `expiresAt` is ms since the epoch
 *   (or an RFC 3339 string, or `expires_at`); without it the JWT's `exp` is
 *   used. It throws to fail; an error with `.final === true` or an HTTP
 *   `.status` of 400/401/403/404/409/410 (see `TokenRefreshError` in
 *   tokens.js) is final, anything else (network error, 429, 5xx) is retried
 *   with backoff, after `.retryAfterMs` at the earliest. `reason` is
 *   `"connect"`, `"renew"`, `"expired"` (after 4003), `"auth-required"`
 *   (after 4001) or `"manual"`.
 * - `token`, `tokenExpiresAt` (optional): a token to start with.
 * - `url` (string or `(sessionId) => string`): the WebSocket URL; default
 *   the same-origin `ws(s)://<host>/api/sessions/<id>/control`. The
 *   connection authenticates with the session's `ls_<id>` cookie: a URL
 *   carrying a `token` parameter is refused (tokens never go into URLs).
 * - `query` (`() => object`, optional): extra query parameters, computed
 *   afresh for every connection attempt and added to the URL (entries whose
 *   value is `null`, `undefined` or `''` are left out). The viewer uses it to
 *   resume task updates where it left off:
 *   `query: () => ({ tasks_after: panel.lastCursor || null })`, so a
 *   reconnect gets every TASK_UPDATE after the last one seen, none twice and
 *   none lost. A `token` parameter is refused here too. If the function
 *   throws, the attempt fails like a bad URL (the client stops).
 * - Tuning: `pingIntervalMs` (30 s), `silenceLimitMs` (75 s: no message for
 *   this long → the socket is presumed dead and closed as 4900),
 *   `renewBeforeMs` (60 s), `backoff` (a Backoff, or options for one:
 *   3 s doubling to 30 s, full jitter, reset after a connection that lived
 *   30 s), `endedCloseGraceMs` (5 s).
 * - Environment, replaceable in tests: `WebSocket`, `clock` (`{now,
 *   setTimeout, clearTimeout, setInterval, clearInterval}`), `random`,
 *   `window` and `document` (for `online` and `visibilitychange`; `null`
 *   to not listen).
 *
 * ## Methods
 * - `connect()` — connect, and keep reconnecting until `disconnect()`, a
 *   final close or a final auth failure. If the client holds no usable token
 *   (none yet, or one that ends within the renewal lead) it calls
 *   `refreshToken` first. Also resumes after `disconnect()` or `stopped`.
 * - `disconnect()` — close the socket and stop reconnecting, but KEEP the
 *   auth state (session id, token, refresh callback): a later `connect()`
 *   resumes the same session.
 * - `forceDisconnect()` — for logout: `disconnect()` and CLEAR the auth
 *   state. `connect()` then throws until `setAuth()` gives it new state.
 * - `setAuth({sessionId?, token?, tokenExpiresAt?, refreshToken?})` — (re)arm.
 * - `updateAuthToken(token, expiresAt?)` — replace the token; when connected,
 *   send `{"type":"AUTH","token":…}` (answered `AUTH_OK`, or `ERROR`).
 * - `refreshAuth(reason?)` — call the refresh callback now (one call at a
 *   time; concurrent callers share it), store the token and, when
 *   connected, send AUTH. Resolves `{token, expiresAt}`; rejects on failure.
 * - `ensureToken(minValidityMs?)` — the current token if it is good for that
 *   long, else `refreshAuth()`. Use it before opening another socket of the
 *   session (VNC), whose cookie must be fresh.
 * - `retryNow()` — skip the rest of a backoff wait (not a 4009 "retry in N
 *   s"). Called by itself on `online` and when the page becomes visible.
 * - `send(message)` — send a JSON message if connected; returns whether it was.
 *
 * ## Properties (read-only)
 * `state` (`idle` | `authenticating` | `connecting` | `connected` |
 * `waiting` | `stopped`), `sessionId`, `hasAuth`, `isOpen` (socket open),
 * `isConnected` (CONNECTED received), `tokenExpiresAt` (ms, server clock),
 * `retryAt` (ms, local clock, while waiting), `attempt` (sockets opened).
 * The token itself is not exposed as a property.
 *
 * ## Events (CustomEvent, payload in `detail`)
 * - `state` `{state, previous}`
 * - `connecting` `{attempt}` — a socket is being opened
 * - `open` `{}` — the socket is open (the server may still refuse it)
 * - `message` `{type, …}` — each server message (`CONNECTED`,
 *   `DESKTOP_STATUS`, `CONTROL`, `TASK_UPDATE`, `PONG`, `AUTH_OK`,
 *   `SESSION_EXPIRING`, `SESSION_ENDED`, `ERROR`). `TASK_UPDATE` carries a
 *   `cursor`: pass the last one seen back through `query` as `tasks_after`.
 *   `CONTROL` says who drives the browser (agent, person or none;
 *   handover.js); answer it with
 *   `send({type: 'TAKE_CONTROL'})` / `send({type: 'RELEASE_CONTROL'})`.
 * - `close` `{code, reason, wasClean, final, refresh, retryInMs}` — the
 *   socket closed; `refresh`: a token refresh and one reconnect follow;
 *   `retryInMs`: the backoff wait, or null when no retry follows
 * - `token` `{expiresAt, sessionExpiresAt, reason}` — a new token is held
 * - `authrenewed` `{expiresAt}` — the server accepted an AUTH (`AUTH_OK`)
 * - `autherror` `{message, status, code}` — an AUTH was refused, or a
 *   proactive renewal failed (the connection stays up until its token ends)
 * - `refresherror` `{message, status, code, final, retryInMs}` — the refresh
 *   before a connection failed
 * - `stopped` `{source, code, reason, status, errorCode, message}` — the client
 *   gave up for good: `source` `"close"` (a final close code, or an auth close
 *   right after a refresh), `"ended"` (SESSION_ENDED; `code` 4007/4008) or
 *   `"refresh"` (the refresh callback failed finally; `status` 401, 410, …)
 *
 * ## Behaviour
 * - Auth: the WebSocket upgrade carries the `ls_<id>` cookie; the refresh
 *   callback renews it. About `renewBeforeMs` before the token ends (half its
 *   lifetime for short tokens) the client calls the refresh callback and sends
 *   AUTH, so the server does not close the connection with 4003. Renewals
 *   are at least 1 s apart, and a token that ends with the session is not
 *   renewed (the session's end closes the connection then).
 * - Close 4003 (token expired) or 4001 (auth required): refresh, then
 *   reconnect at once, exactly once. If that connection is refused with
 *   4001/4002/4003, or the refresh fails finally, the client stops: never a
 *   loop. The one retry is re-armed once a connection proved its token (AUTH_OK,
 *   or 30 s connected).
 * - Closes 4002, 4004, 4005, 4007, 4008 and `SESSION_ENDED`: stop.
 * - Everything else (1006, 4006, 4009, 4010, 4011, 4900, network errors):
 *   backoff; 4009 waits at least the "retry in N s" of its reason.
 * - Heartbeat: PING every 30 s; the server's PONG (or any message) is a sign
 *   of life; 75 s of silence closes the socket as dead (4900) and retries.
 */

import { Backoff } from './backoff.js';
import { action } from './closecodes.js';
import { jwtExpiry } from './tokens.js';

export const DEFAULTS = Object.freeze({
  pingIntervalMs: 30_000,
  // Two missed PONGs plus slack: a half-open TCP connection (laptop sleep, NAT
  // timeout) never delivers a close event, so the client must notice by itself.
  silenceLimitMs: 75_000,
  renewBeforeMs: 60_000,
  // After SESSION_ENDED the server closes the socket with the reason code; if
  // it does not within this time, close it from our side.
  endedCloseGraceMs: 5_000,
  // A connection that stayed up this long proved its token (re-arms the one
  // refresh-and-reconnect).
  stableMs: 30_000,
});

// JWT `exp` is whole seconds while `expires_at` may carry a fraction: treat a
// token as ending this much before its `expires_at`.
const EXPIRY_SAFETY_MS = 1_000;
// A token with less than this left is not worth opening a socket with.
const MIN_TOKEN_VALIDITY_MS = 2_000;
// A failed proactive renewal is tried again after at most this long.
const RENEW_RETRY_MAX_MS = 5_000;
// Proactive renewals are at least this far apart.
const MIN_RENEW_INTERVAL_MS = 1_000;

/** Synthetic close code for a connection this client declared dead. */
export const CLIENT_HEARTBEAT_LOST = 4900;
// SESSION_ENDED reasons and the close codes that carry the same news.
// (A login-capture session ends with 4008 too: docs/profiles.md, "Login capture".)
const ENDED_CODE = Object.freeze({ expired: 4007, revoked: 4008, login_captured: 4008, login_not_saved: 4008 });
const AUTH_CLOSE_CODES = new Set([4001, 4002, 4003]);
const FINAL_HTTP_STATUSES = new Set([400, 401, 403, 404, 409, 410]);

const WS_OPEN = 1;
const WS_CONNECTING = 0;

const realClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (id) => clearInterval(id),
});

export class ControlClient extends EventTarget {
  /** @param {object} opts see the module documentation */
  constructor(opts = {}) {
    super();
    this._opts = {
      pingIntervalMs: opts.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
      silenceLimitMs: opts.silenceLimitMs ?? DEFAULTS.silenceLimitMs,
      renewBeforeMs: opts.renewBeforeMs ?? DEFAULTS.renewBeforeMs,
      endedCloseGraceMs: opts.endedCloseGraceMs ?? DEFAULTS.endedCloseGraceMs,
      stableMs: opts.stableMs ?? DEFAULTS.stableMs,
    };
    this._url = opts.url ?? null;
    if (opts.query !== undefined && opts.query !== null && typeof opts.query !== 'function') {
      throw new TypeError('ControlClient: query must be a function returning the extra query parameters');
    }
    this._query = opts.query ?? null;
    this._WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    this._clock = opts.clock ?? realClock;
    this._backoff =
      opts.backoff instanceof Backoff ? opts.backoff : new Backoff({ random: opts.random, ...(opts.backoff ?? {}) });
    this._window = opts.window !== undefined ? opts.window : globalThis.window ?? null;
    this._document = opts.document !== undefined ? opts.document : globalThis.document ?? null;

    this._auth = null;
    this.setAuth({
      sessionId: opts.sessionId,
      token: opts.token,
      tokenExpiresAt: opts.tokenExpiresAt,
      refreshToken: opts.refreshToken,
    });

    this._state = 'idle';
    this._wanted = false;
    this._epoch = 0; // bumped by connect/disconnect: late async results of an older epoch are dropped
    this._ws = null;
    this._attempt = 0;
    this._openedAt = 0;
    this._connectedAt = 0;
    this._lastHeardAt = 0;
    this._skewMs = 0; // server clock − local clock, from CONNECTED
    this._ended = null; // SESSION_ENDED reason
    this._authRetryUsed = false;
    this._authPending = false;
    this._refreshing = null;
    this._retryTimer = null;
    this._retryAt = null;
    this._notBefore = 0;
    this._lastRenewAt = 0;
    this._pingTimer = null;
    this._renewTimer = null;
    this._endedTimer = null;
    this._listening = false;

    this._onOnline = () => {
      this.retryNow();
      if (this.isConnected) this.send({ type: 'PING' });
    };
    this._onVisibility = () => {
      if (this._document?.visibilityState === 'hidden') return;
      this.retryNow();
      if (this.isConnected) {
        // Timers of hidden pages are throttled: a renewal may be overdue.
        this._scheduleRenewal();
        this.send({ type: 'PING' });
      }
    };
  }

  // --- read-only state -----------------------------------------------

  get state() {
    return this._state;
  }

  get sessionId() {
    return this._auth?.sessionId ?? null;
  }

  get hasAuth() {
    return this._auth !== null;
  }

  get isOpen() {
    return this._ws?.readyState === WS_OPEN;
  }

  get isConnected() {
    return this.isOpen && this._connectedAt > 0;
  }

  get tokenExpiresAt() {
    return this._auth?.expiresAt ?? null;
  }

  get retryAt() {
    return this._retryAt;
  }

  get attempt() {
    return this._attempt;
  }

  // --- public API ------------------------------------------------------

  /** (Re)arm the auth state; fields left out keep their value. */
  setAuth({ sessionId, token, tokenExpiresAt, refreshToken } = {}) {
    const prev = this._auth ?? { sessionId: null, token: null, expiresAt: null, sessionExpiresAt: null, obtainedAt: 0, refresh: null, stale: false };
    const next = { ...prev };
    if (sessionId !== undefined && sessionId !== prev.sessionId) {
      // Another session: nothing held for the old one applies.
      Object.assign(next, { sessionId, token: null, expiresAt: null, sessionExpiresAt: null, obtainedAt: 0, stale: false });
    }
    if (refreshToken !== undefined) next.refresh = refreshToken ?? null;
    if (token !== undefined) {
      next.token = token || null;
      next.expiresAt = token ? toMs(tokenExpiresAt) ?? jwtExpiry(token) : null;
      next.obtainedAt = this._clock.now();
      next.stale = false;
    }
    if (typeof next.sessionId !== 'string' || !next.sessionId) {
      throw new TypeError('ControlClient: sessionId is required');
    }
    if (next.refresh !== null && typeof next.refresh !== 'function') {
      throw new TypeError('ControlClient: refreshToken must be a function');
    }
    this._auth = next;
  }

  connect() {
    if (!this._auth) {
      throw new Error('ControlClient: no auth state (forceDisconnect() cleared it); call setAuth() first');
    }
    if (this._wanted && this._state !== 'stopped') return; // already on it
    if (this._state === 'stopped') {
      // An explicit connect after giving up: a fresh start.
      this._authRetryUsed = false;
      this._ended = null;
      this._backoff.reset();
    }
    this._wanted = true;
    this._epoch += 1;
    this._listen(true);
    this._begin();
  }

  disconnect() {
    this._epoch += 1;
    this._wanted = false;
    this._cancelRetry();
    this._closeSocket(1000, 'client disconnect');
    this._listen(false);
    this._setState('idle');
  }

  forceDisconnect() {
    this.disconnect();
    this._auth = null;
    this._refreshing = null;
    this._lastRenewAt = 0;
    this._authRetryUsed = false;
    this._ended = null;
    this._backoff.reset();
  }

  updateAuthToken(token, expiresAt) {
    if (!this._auth) throw new Error('ControlClient: no auth state; call setAuth() first');
    if (typeof token !== 'string' || !token) throw new TypeError('ControlClient: token must be a non-empty string');
    this.setAuth({ token, tokenExpiresAt: expiresAt });
    this._emit('token', { expiresAt: this._auth.expiresAt, sessionExpiresAt: null, reason: 'update' });
    if (this.isConnected) this._sendAuth();
  }

  refreshAuth(reason = 'manual') {
    if (!this._auth) return Promise.reject(new Error('ControlClient: no auth state'));
    if (!this._auth.refresh) return Promise.reject(Object.assign(new Error('ControlClient: no refresh callback'), { final: true }));
    if (this._refreshing) return this._refreshing;
    const auth = this._auth;
    const run = (async () => {
      try {
        const raw = await auth.refresh({ sessionId: auth.sessionId, reason });
        const { token, expiresAt, sessionExpiresAt } = normalizeTokenResult(raw);
        if (this._auth !== auth) throw new Error('ControlClient: auth state was cleared during the refresh');
        auth.token = token;
        auth.expiresAt = expiresAt;
        if (sessionExpiresAt !== null) auth.sessionExpiresAt = sessionExpiresAt;
        auth.obtainedAt = this._clock.now();
        auth.stale = false;
        this._emit('token', { expiresAt, sessionExpiresAt, reason });
        if (this.isConnected) this._sendAuth();
        return { token, expiresAt };
      } finally {
        if (this._refreshing === run) this._refreshing = null;
      }
    })();
    this._refreshing = run;
    return run;
  }

  async ensureToken(minValidityMs = MIN_TOKEN_VALIDITY_MS) {
    if (this._auth && this._tokenGoodFor(minValidityMs)) return { token: this._auth.token, expiresAt: this._auth.expiresAt };
    return this.refreshAuth('connect');
  }

  retryNow() {
    if (this._state !== 'waiting' || !this._wanted) return;
    const now = this._clock.now();
    this._cancelRetry();
    if (this._notBefore > now) {
      // The server named a time (4009): skip our backoff, not its wait.
      this._scheduleRetry(this._notBefore - now);
      return;
    }
    this._begin();
  }

  send(message) {
    if (!this.isOpen) return false;
    this._ws.send(JSON.stringify(message));
    return true;
  }

  // --- connection attempts ----------------------------------------------

  /** One attempt: refresh the token if needed, then open a socket. */
  _begin() {
    this._cancelRetry();
    const epoch = this._epoch;
    if (this._tokenUsable()) {
      this._open();
      return;
    }
    this._setState('authenticating');
    const reason = this._pendingRefreshReason ?? 'connect';
    this._pendingRefreshReason = null;
    this.refreshAuth(reason).then(
      () => {
        if (epoch === this._epoch && this._wanted) this._open();
      },
      (err) => {
        if (epoch !== this._epoch || !this._wanted) return;
        this._onRefreshFailed(err, reason);
      },
    );
  }

  _onRefreshFailed(err, reason) {
    const status = typeof err?.status === 'number' ? err.status : 0;
    const errorCode = err?.code ?? null;
    const message = err?.message ?? String(err);
    const final = err?.final === true || FINAL_HTTP_STATUSES.has(status) || !this._auth;
    let retryInMs = null;
    if (!final) {
      const serverWait = Math.max(0, Number(err?.retryAfterMs) || 0);
      retryInMs = Math.max(this._backoff.next(), serverWait);
      this._notBefore = this._clock.now() + serverWait;
      if (reason !== 'connect') this._pendingRefreshReason = reason;
    }
    this._emit('refresherror', { message, status, code: errorCode, final, retryInMs });
    if (final) {
      this._stop({ source: 'refresh', code: null, reason: '', status, errorCode, message });
    } else {
      this._scheduleRetry(retryInMs);
    }
  }

  _open() {
    this._attempt += 1;
    this._setState('connecting');
    this._emit('connecting', { attempt: this._attempt });
    let ws;
    try {
      ws = new this._WebSocket(this._socketUrl());
    } catch (err) {
      // A bad URL or a blocked scheme: nothing a retry would change.
      this._stop({ source: 'close', code: null, reason: '', status: 0, errorCode: null, message: `cannot open the control socket: ${err?.message ?? err}` });
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._openedAt = this._clock.now();
      this._lastHeardAt = this._openedAt;
      this._startHeartbeat();
      this._emit('open', {});
    };
    ws.onmessage = (ev) => {
      if (ws !== this._ws) return;
      this._lastHeardAt = this._clock.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not ours to act on
      }
      if (!msg || typeof msg.type !== 'string') return;
      this._onMessage(msg);
      this._emit('message', msg);
    };
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason ?? '', ev.wasClean ?? false);
    // 'error' is always followed by 'close', which carries the useful part.
  }

  _onMessage(msg) {
    switch (msg.type) {
      case 'CONNECTED': {
        this._connectedAt = this._clock.now();
        const serverTime = Date.parse(msg.server_time);
        if (!Number.isNaN(serverTime)) this._skewMs = serverTime - this._clock.now();
        const sessionEnd = toMs(msg.expires_at);
        if (this._auth && sessionEnd !== null) this._auth.sessionExpiresAt = sessionEnd;
        this._setState('connected');
        this._scheduleRenewal();
        break;
      }
      case 'AUTH_OK': {
        this._authPending = false;
        const at = toMs(msg.expires_at);
        if (this._auth && at !== null) this._auth.expiresAt = at;
        // The server took a token from the refresh callback: it works.
        this._authRetryUsed = false;
        this._emit('authrenewed', { expiresAt: at });
        this._scheduleRenewal();
        break;
      }
      case 'ERROR':
        if (this._authPending && /^AUTH\b/.test(msg.message ?? '')) {
          this._authPending = false;
          // The old token still applies; if it ends, the 4003 path follows.
          this._emit('autherror', { message: msg.message, status: null, code: null });
        }
        break;
      case 'SESSION_ENDED':
        this._ended = msg.reason ?? 'ended';
        this._clock.clearTimeout(this._endedTimer);
        this._endedTimer = this._clock.setTimeout(() => {
          const ws = this._ws;
          if (!ws) return;
          this._onClose(ws, ENDED_CODE[this._ended] ?? 1000, `session ${this._ended}`, false);
          try {
            ws.close(1000, 'session ended');
          } catch {
            // already closing
          }
        }, this._opts.endedCloseGraceMs);
        break;
      default:
        break;
    }
  }

  _onClose(ws, code, reason, wasClean) {
    if (ws !== this._ws) return; // a socket we already gave up on
    detach(ws);
    this._ws = null;
    this._stopSocketTimers();
    const now = this._clock.now();
    const lived = this._openedAt ? now - this._openedAt : 0;
    if (this._connectedAt && now - this._connectedAt >= this._opts.stableMs) this._authRetryUsed = false;
    this._openedAt = 0;
    this._connectedAt = 0;
    this._authPending = false;

    if (!this._wanted) {
      this._emit('close', { code, reason, wasClean, final: false, refresh: false, retryInMs: null });
      return;
    }
    if (this._ended) {
      const endedCode = code === 4007 || code === 4008 ? code : ENDED_CODE[this._ended] ?? code;
      this._emit('close', { code, reason, wasClean, final: true, refresh: false, retryInMs: null });
      this._stop({ source: 'ended', code: endedCode, reason: reason || `session ${this._ended}`, status: null, errorCode: null, message: `session ${this._ended}` });
      return;
    }
    const next = action(code);
    if (next === 'stop') {
      this._emit('close', { code, reason, wasClean, final: true, refresh: false, retryInMs: null });
      this._stop({ source: 'close', code, reason, status: null, errorCode: null, message: reason || `closed with ${code}` });
      return;
    }
    if (next === 'refresh') {
      if (this._authRetryUsed || !this._auth?.refresh) {
        // Refused again right after a refresh: the refresh does not help.
        this._emit('close', { code, reason, wasClean, final: true, refresh: false, retryInMs: null });
        this._stop({ source: 'close', code, reason, status: null, errorCode: null, message: reason || `closed with ${code}` });
        return;
      }
      this._authRetryUsed = true;
      this._auth.stale = true; // whatever we hold, the server did not take it
      this._pendingRefreshReason = code === 4003 ? 'expired' : 'auth-required';
      this._emit('close', { code, reason, wasClean, final: false, refresh: true, retryInMs: 0 });
      this._begin();
      return;
    }
    // After an auth retry, a 4002 is handled above ("stop"); anything else is
    // an ordinary failure and gets the backoff.
    this._backoff.connectionLasted(lived);
    const serverWait = retryAfterMs(code, reason);
    const retryInMs = Math.max(this._backoff.next(), serverWait);
    this._notBefore = now + serverWait;
    this._emit('close', { code, reason, wasClean, final: false, refresh: false, retryInMs });
    this._scheduleRetry(retryInMs);
  }

  _stop(info) {
    this._wanted = false;
    this._epoch += 1;
    this._cancelRetry();
    this._closeSocket(1000, 'client stopped');
    this._listen(false);
    this._setState('stopped');
    this._emit('stopped', info);
  }

  _scheduleRetry(delayMs) {
    this._cancelRetry();
    this._retryAt = this._clock.now() + delayMs;
    this._setState('waiting');
    const epoch = this._epoch;
    this._retryTimer = this._clock.setTimeout(() => {
      this._retryTimer = null;
      this._retryAt = null;
      if (epoch === this._epoch && this._wanted) this._begin();
    }, delayMs);
  }

  _cancelRetry() {
    if (this._retryTimer !== null) this._clock.clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._retryAt = null;
  }

  _closeSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._stopSocketTimers();
    this._openedAt = 0;
    this._connectedAt = 0;
    this._authPending = false;
    if (!ws) return;
    detach(ws);
    if (ws.readyState === WS_CONNECTING || ws.readyState === WS_OPEN) {
      try {
        ws.close(code, reason);
      } catch {
        // closing anyway
      }
    }
  }

  // --- tokens -------------------------------------------------------------

  /** Whether the held token is worth opening a socket with. */
  _tokenUsable() {
    const auth = this._auth;
    if (!auth?.token || auth.stale) return false;
    if (auth.expiresAt === null) return true; // unknown lifetime: the server will say
    return this._tokenGoodFor(Math.max(MIN_TOKEN_VALIDITY_MS, this._renewLead()));
  }

  _tokenGoodFor(ms) {
    const auth = this._auth;
    if (!auth?.token || auth.stale) return false;
    if (auth.expiresAt === null) return true;
    return this._localExpiry() - this._clock.now() > ms;
  }

  /** When the held token ends, on the local clock, with a safety margin. */
  _localExpiry() {
    return this._auth.expiresAt - this._skewMs - EXPIRY_SAFETY_MS;
  }

  /** How long before its end a token is renewed: a minute, or half its life if shorter. */
  _renewLead() {
    const lifetime = this._localExpiry() - this._auth.obtainedAt;
    return Math.max(0, Math.min(this._opts.renewBeforeMs, lifetime / 2));
  }

  _scheduleRenewal() {
    this._clock.clearTimeout(this._renewTimer);
    this._renewTimer = null;
    const auth = this._auth;
    if (!this.isConnected || !auth?.refresh || auth.expiresAt === null) return;
    // A token that ends with the session cannot be renewed past it: the
    // session's end (SESSION_ENDED, 4007) closes the connection then.
    if (auth.sessionExpiresAt !== null && auth.expiresAt >= auth.sessionExpiresAt - EXPIRY_SAFETY_MS) return;
    const now = this._clock.now();
    let delay = Math.max(0, this._localExpiry() - this._renewLead() - now);
    // Never renew more often than this, however short the tokens.
    if (this._lastRenewAt) delay = Math.max(delay, this._lastRenewAt + MIN_RENEW_INTERVAL_MS - now);
    const epoch = this._epoch;
    this._renewTimer = this._clock.setTimeout(() => {
      this._renewTimer = null;
      if (epoch === this._epoch) this._renew();
    }, delay);
  }

  _renew() {
    if (!this.isConnected) return;
    this._lastRenewAt = this._clock.now();
    const epoch = this._epoch;
    // refreshAuth sends AUTH itself when connected; AUTH_OK reschedules.
    this.refreshAuth('renew').catch((err) => {
      if (epoch !== this._epoch || !this.isConnected) return;
      const status = typeof err?.status === 'number' ? err.status : null;
      this._emit('autherror', { message: err?.message ?? String(err), status, code: err?.code ?? null });
      const final = err?.final === true || FINAL_HTTP_STATUSES.has(status);
      if (final) return; // the server closes with 4003 at the token's end; that path decides
      const left = this._localExpiry() - this._clock.now();
      if (left <= 0) return;
      const wait = Math.max(Math.min(RENEW_RETRY_MAX_MS, Math.max(250, left / 3)), Number(err?.retryAfterMs) || 0);
      if (wait >= left) return; // too late: the 4003 path takes over
      this._renewTimer = this._clock.setTimeout(() => {
        this._renewTimer = null;
        if (epoch === this._epoch) this._renew();
      }, wait);
    });
  }

  _sendAuth() {
    if (!this._auth?.token) return;
    if (this.send({ type: 'AUTH', token: this._auth.token })) this._authPending = true;
  }

  // --- heartbeat ------------------------------------------------------------

  _startHeartbeat() {
    this._clock.clearInterval(this._pingTimer);
    this._pingTimer = this._clock.setInterval(() => {
      const ws = this._ws;
      if (!ws) return;
      if (this._clock.now() - this._lastHeardAt > this._opts.silenceLimitMs) {
        // Treat the silent socket as closed now rather than waiting minutes
        // for TCP to notice; its late close event is ignored.
        this._onClose(ws, CLIENT_HEARTBEAT_LOST, 'no PONG from server', false);
        try {
          ws.close(CLIENT_HEARTBEAT_LOST, 'heartbeat lost');
        } catch {
          // already closed
        }
        return;
      }
      this.send({ type: 'PING' });
    }, this._opts.pingIntervalMs);
  }

  _stopSocketTimers() {
    this._clock.clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._clock.clearTimeout(this._renewTimer);
    this._renewTimer = null;
    this._clock.clearTimeout(this._endedTimer);
    this._endedTimer = null;
  }

  // --- plumbing --------------------------------------------------------------

  _socketUrl() {
    const id = this._auth.sessionId;
    let url;
    if (typeof this._url === 'function') url = this._url(id);
    else if (typeof this._url === 'string') url = this._url;
    else url = defaultControlUrl(id);
    if (this._query) url = withQuery(url, this._query());
    if (/[?&]token=/i.test(url)) throw new Error('ControlClient: tokens never go into WebSocket URLs');
    return url;
  }

  _listen(on) {
    if (on === this._listening) return;
    this._listening = on;
    const method = on ? 'addEventListener' : 'removeEventListener';
    this._window?.[method]?.('online', this._onOnline);
    this._document?.[method]?.('visibilitychange', this._onVisibility);
  }

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit('state', { state, previous });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** Same-origin control channel URL for a session (no token: the cookie authenticates). */
export function defaultControlUrl(sessionId, loc = globalThis.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/api/sessions/${encodeURIComponent(sessionId)}/control`;
}

/**
 * `url` with the entries of `params` added as query parameters; entries whose
 * value is null, undefined or '' are left out. A `token` entry is refused:
 * tokens never go into WebSocket URLs.
 */
export function withQuery(url, params) {
  if (params === null || params === undefined) return url;
  if (typeof params !== 'object') throw new TypeError('ControlClient: query() must return an object');
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === '') continue;
    if (key.toLowerCase() === 'token') throw new Error('ControlClient: tokens never go into WebSocket URLs');
    search.append(key, String(value));
  }
  const extra = search.toString();
  if (!extra) return url;
  const hash = url.indexOf('#');
  const base = hash === -1 ? url : url.slice(0, hash);
  const sep = base.includes('?') ? (base.endsWith('?') || base.endsWith('&') ? '' : '&') : '?';
  return base + sep + extra;
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

/** Whether a close code is an auth refusal (4001, 4002, 4003). */
export function isAuthClose(code) {
  return AUTH_CLOSE_CODES.has(code);
}

function normalizeTokenResult(raw) {
  const result = typeof raw === 'string' ? { token: raw } : raw ?? {};
  const token = result.token;
  if (typeof token !== 'string' || !token) throw Object.assign(new Error('the token refresh callback gave no token'), { final: true });
  const expiresAt = toMs(result.expiresAt ?? result.expires_at) ?? jwtExpiry(token);
  const sessionExpiresAt = toMs(result.sessionExpiresAt ?? result.session_expires_at);
  return { token, expiresAt, sessionExpiresAt };
}

/** ms since the epoch from a number, a Date or an RFC 3339 string; null otherwise. */
function toMs(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.getTime();
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms;
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
}
