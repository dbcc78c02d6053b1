// The control channel client library (web/static/control.js) and its token
// provider (web/static/tokens.js), in Node: a fake WebSocket, a fake clock and
// fake page events, so every reconnect decision is pinned down exactly.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { CLIENT_HEARTBEAT_LOST, ControlClient } from '../web/static/control.js';
import { TokenRefreshError, jwtExpiry, requestToken, sessionTokenProvider } from '../web/static/tokens.js';

const T0 = Date.parse('2026-11-21T12:00:00Z');
const MIN = 60_000;

/** Timers that run only when the test advances time. */
class FakeClock {
  constructor(start = T0) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => this.add(fn, ms, null);
    this.setInterval = (fn, ms) => this.add(fn, ms, ms);
    this.clearTimeout = (id) => this.timers.delete(id);
    this.clearInterval = (id) => this.timers.delete(id);
  }

  add(fn, ms, every) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms || 0), fn, every });
    return id;
  }

  /** Run every timer due within `ms`, in order, letting promises settle between them. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      const [id, timer] = next;
      this.t = Math.max(this.t, timer.at);
      if (timer.every) timer.at += timer.every;
      else this.timers.delete(id);
      timer.fn();
    }
    this.t = end;
    await settle();
  }
}

async function settle() {
  for (let i = 0; i < 3; i += 1) await new Promise((r) => setImmediate(r));
}

/** A WebSocket the test drives: open(), receive(), serverClose(). */
class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedByClient = null;
    this.autoPong = true;
  }

  send(data) {
    assert.equal(this.readyState, 1, 'send only on an open socket');
    const msg = JSON.parse(data);
    this.sent.push(msg);
    // A live server answers every PING; tests of silence turn this off.
    if (msg.type === 'PING' && this.autoPong) this.receive({ type: 'PONG' });
  }

  close(code, reason) {
    this.closedByClient = { code, reason };
    const wasOpen = this.readyState < 2;
    this.readyState = 3;
    // Browsers report the close later; the client has usually detached by then.
    if (wasOpen) queueMicrotask(() => this.onclose?.({ code: 1005, reason: '', wasClean: true }));
  }

  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  receive(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }

  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  sentOf(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

/**
 * A client wired to fakes. `ttlMs`: lifetime of the tokens the default
 * refresh callback hands out; `refresh` replaces that callback.
 */
function harness({ ttlMs = 15 * MIN, refresh = null, random = () => 0.999999, ...opts } = {}) {
  const clock = new FakeClock();
  const sockets = [];
  class WS extends FakeWebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  const refreshCalls = [];
  let issued = 0;
  const defaultRefresh = async ({ reason }) => {
    issued += 1;
    return { token: `token-${issued}`, expiresAt: clock.now() + ttlMs };
  };
  const refreshImpl = refresh ?? defaultRefresh;
  const client = new ControlClient({
    sessionId: 's1',
    refreshToken: async (arg) => {
      refreshCalls.push(arg.reason);
      assert.equal(arg.sessionId, 's1');
      return refreshImpl(arg, clock);
    },
    url: 'ws://127.0.0.1:9/api/sessions/s1/control',
    WebSocket: WS,
    clock,
    random,
    window: win,
    document: doc,
    ...opts,
  });
  const events = [];
  for (const type of ['state', 'connecting', 'open', 'message', 'close', 'token', 'authrenewed', 'autherror', 'refresherror', 'stopped']) {
    client.addEventListener(type, (ev) => events.push({ type, ...ev.detail }));
  }
  const h = {
    clock,
    sockets,
    client,
    refreshCalls,
    win,
    doc,
    events,
    last: () => sockets.at(-1),
    of: (type) => events.filter((e) => e.type === type),
    /** Let the pending refresh finish, then play the server's side of a good connection. */
    async establish() {
      await clock.advance(0);
      const ws = h.last();
      assert.ok(ws, 'a socket was opened');
      ws.open();
      ws.receive({ type: 'CONNECTED', session_id: 's1', expires_at: new Date(clock.now() + 24 * 60 * MIN).toISOString(), server_time: new Date(clock.now()).toISOString() });
      assert.equal(client.state, 'connected');
      return ws;
    },
    /** Nothing at all happens for `ms`: no socket, no refresh. */
    async assertQuietFor(ms) {
      const s = sockets.length;
      const r = refreshCalls.length;
      await clock.advance(ms);
      assert.equal(sockets.length, s, `no new socket within ${ms} ms`);
      assert.equal(refreshCalls.length, r, `no refresh within ${ms} ms`);
    },
  };
  return h;
}

const httpError = (status, code = null) => new TokenRefreshError(`HTTP ${status}`, { status, code });

describe('ControlClient: connecting', () => {
  test('gets a token from the provider first, then opens a socket whose URL carries no token', async () => {
    const h = harness();
    h.client.connect();
    assert.equal(h.client.state, 'authenticating');
    const ws = await h.establish();
    assert.deepEqual(h.refreshCalls, ['connect']);
    assert.equal(h.sockets.length, 1);
    assert.equal(ws.url, 'ws://127.0.0.1:9/api/sessions/s1/control');
    assert.ok(h.client.isConnected);
    assert.equal(h.client.tokenExpiresAt, T0 + 15 * MIN);
  });

  test('a URL with a token in it is refused', async () => {
    const h = harness({ url: 'ws://127.0.0.1:9/api/sessions/s1/control?token=abc' });
    h.client.connect();
    await h.clock.advance(0);
    assert.equal(h.sockets.length, 0);
    assert.equal(h.client.state, 'stopped');
    assert.match(h.of('stopped')[0].message, /never go into WebSocket URLs/);
  });

  test('an initial token that is still good is used without a refresh', async () => {
    const h = harness({ token: 'given', tokenExpiresAt: T0 + 10 * MIN });
    h.client.connect();
    assert.equal(h.sockets.length, 1, 'connects at once');
    assert.deepEqual(h.refreshCalls, []);
  });

  test('the expiry of a token without expiresAt comes from its JWT exp', () => {
    const payload = Buffer.from(JSON.stringify({ sid: 's1', exp: 1_900_000_000 })).toString('base64url');
    assert.equal(jwtExpiry(`xx.${payload}.yy`), 1_900_000_000_000);
    assert.equal(jwtExpiry('not a jwt'), null);
    const h = harness({ token: `xx.${payload}.yy` });
    assert.equal(h.client.tokenExpiresAt, 1_900_000_000_000);
  });
});

describe('ControlClient: disconnect and forceDisconnect', () => {
  test('disconnect() closes but keeps the auth state; connect() resumes without a new token', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    h.client.disconnect();
    assert.equal(ws.closedByClient?.code, 1000);
    assert.equal(h.client.state, 'idle');
    assert.equal(h.client.hasAuth, true);
    assert.equal(h.client.sessionId, 's1');
    await h.assertQuietFor(10 * MIN); // no reconnect of its own

    h.client.connect();
    assert.equal(h.sockets.length, 2, 'reconnected at once with the token it kept');
    assert.deepEqual(h.refreshCalls, ['connect'], 'the kept token was good enough: no refresh');
    const again = await h.establish();
    assert.ok(again !== ws);
  });

  test('disconnect() keeps the refresh callback: a resumed connection still refreshes', async () => {
    const h = harness({ ttlMs: 2 * MIN });
    h.client.connect();
    await h.establish();
    h.client.disconnect();
    await h.clock.advance(5 * MIN); // the token ended meanwhile
    h.client.connect();
    assert.equal(h.client.state, 'authenticating');
    await h.establish();
    assert.deepEqual(h.refreshCalls, ['connect', 'connect']);
  });

  test('forceDisconnect() clears the auth state: no reconnect, connect() refuses', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    h.client.forceDisconnect();
    assert.equal(ws.closedByClient?.code, 1000);
    assert.equal(h.client.hasAuth, false);
    assert.equal(h.client.sessionId, null);
    assert.equal(h.client.tokenExpiresAt, null);
    assert.throws(() => h.client.connect(), /no auth state/);
    assert.throws(() => h.client.updateAuthToken('x'), /no auth state/);
    await h.assertQuietFor(30 * MIN);
    assert.equal(h.clock.timers.size, 0, 'no timer left behind');

    // setAuth() arms it again.
    h.client.setAuth({ sessionId: 's1', refreshToken: async () => ({ token: 'again', expiresAt: h.clock.now() + 15 * MIN }) });
    h.client.connect();
    await h.establish();
  });

  test('a refresh still running at forceDisconnect() is dropped', async () => {
    let release;
    const h = harness({ refresh: () => new Promise((r) => (release = r)) });
    h.client.connect();
    await h.clock.advance(0);
    h.client.forceDisconnect();
    release({ token: 'late', expiresAt: h.clock.now() + 15 * MIN });
    await h.assertQuietFor(MIN);
    assert.equal(h.sockets.length, 0);
    assert.equal(h.client.state, 'idle');
  });

  test('a refresh still running at disconnect() does not open a socket', async () => {
    let release;
    const h = harness({ refresh: () => new Promise((r) => (release = r)) });
    h.client.connect();
    await h.clock.advance(0);
    h.client.disconnect();
    release({ token: 'late', expiresAt: h.clock.now() + 15 * MIN });
    await h.clock.advance(MIN);
    assert.equal(h.sockets.length, 0);
    assert.equal(h.client.hasAuth, true);
  });
});

describe('ControlClient: token expiry and auth closes', () => {
  test('4003: exactly one refresh and one reconnect; a second 4003 stops for good', async () => {
    const h = harness();
    h.client.connect();
    const first = await h.establish();
    first.serverClose(4003, 'access token expired');
    assert.equal(h.of('close').at(-1).refresh, true);
    await h.clock.advance(0); // no backoff wait: refresh, then reconnect
    assert.deepEqual(h.refreshCalls, ['connect', 'expired']);
    assert.equal(h.sockets.length, 2);

    const second = h.last();
    second.open();
    second.serverClose(4003, 'access token expired');
    assert.equal(h.client.state, 'stopped');
    const stopped = h.of('stopped');
    assert.equal(stopped.length, 1);
    assert.equal(stopped[0].source, 'close');
    assert.equal(stopped[0].code, 4003);
    assert.equal(h.of('close').at(-1).final, true);
    await h.assertQuietFor(60 * MIN);
    assert.equal(h.sockets.length, 2, 'two connections in all: no loop');
    assert.deepEqual(h.refreshCalls, ['connect', 'expired']);
  });

  for (const code of [4001, 4002]) {
    test(`4003, refresh, then ${code} on the reconnect: stop`, async () => {
      const h = harness();
      h.client.connect();
      (await h.establish()).serverClose(4003, 'access token expired');
      await h.clock.advance(0);
      h.last().open();
      h.last().serverClose(code, 'refused');
      assert.equal(h.client.state, 'stopped');
      await h.assertQuietFor(60 * MIN);
      assert.equal(h.sockets.length, 2);
    });
  }

  test('4001: one refresh, then a reconnect that works', async () => {
    const h = harness({ token: 'held', tokenExpiresAt: T0 + 10 * MIN });
    h.client.connect();
    h.last().open();
    h.last().serverClose(4001, 'an access token is required');
    await h.clock.advance(0);
    assert.deepEqual(h.refreshCalls, ['auth-required']);
    assert.equal(h.sockets.length, 2);
    h.last().open();
    h.last().receive({ type: 'CONNECTED', session_id: 's1', expires_at: new Date(T0 + 60 * MIN).toISOString(), server_time: new Date(h.clock.now()).toISOString() });
    assert.equal(h.client.state, 'connected');
  });

  test('4001 twice in a row: stop after the one retry', async () => {
    const h = harness({ token: 'held', tokenExpiresAt: T0 + 10 * MIN });
    h.client.connect();
    h.last().open();
    h.last().serverClose(4001);
    await h.clock.advance(0);
    h.last().open();
    h.last().serverClose(4001);
    assert.equal(h.client.state, 'stopped');
    await h.assertQuietFor(30 * MIN);
    assert.equal(h.sockets.length, 2);
  });

  for (const [status, code] of [
    [401, 'token_invalid'],
    [410, 'session_ended'],
  ]) {
    test(`4003, then the refresh answers ${status}: stop without reconnecting`, async () => {
      let n = 0;
      const h = harness({
        refresh: async (_arg, clock) => {
          n += 1;
          if (n === 1) return { token: 't1', expiresAt: clock.now() + 15 * MIN };
          throw httpError(status, code);
        },
      });
      h.client.connect();
      (await h.establish()).serverClose(4003, 'access token expired');
      await h.clock.advance(0);
      assert.equal(h.client.state, 'stopped');
      const [stopped] = h.of('stopped');
      assert.equal(stopped.source, 'refresh');
      assert.equal(stopped.status, status);
      assert.equal(stopped.errorCode, code);
      await h.assertQuietFor(60 * MIN);
      assert.equal(h.sockets.length, 1, 'no reconnect after a refused refresh');
    });
  }

  test('a refused first refresh (no refresh cookie) stops before any socket', async () => {
    const h = harness({ refresh: async () => { throw httpError(401, 'auth_required'); } });
    h.client.connect();
    await h.clock.advance(0);
    assert.equal(h.client.state, 'stopped');
    assert.equal(h.sockets.length, 0);
    await h.assertQuietFor(60 * MIN);
  });

  test('the one retry is re-armed once a connection proved its token (AUTH_OK)', async () => {
    const h = harness();
    h.client.connect();
    (await h.establish()).serverClose(4003);
    await h.clock.advance(0);
    const ws = h.last();
    ws.open();
    ws.receive({ type: 'CONNECTED', session_id: 's1', expires_at: new Date(T0 + 24 * 60 * MIN).toISOString(), server_time: new Date(h.clock.now()).toISOString() });
    await h.clock.advance(14 * MIN + 1); // proactive renewal
    const auth = ws.sentOf('AUTH').at(-1);
    assert.ok(auth, 'AUTH sent');
    ws.receive({ type: 'AUTH_OK', expires_at: new Date(h.clock.now() + 15 * MIN).toISOString() });
    ws.serverClose(4003); // e.g. a hidden tab renewed too late
    await h.clock.advance(0);
    assert.equal(h.client.state, 'connecting', 'a fresh refresh-and-reconnect, not a stop');
    assert.equal(h.sockets.length, 3);
  });
});

describe('ControlClient: proactive renewal', () => {
  test('about 60 s before the token ends: refresh, then AUTH on the open connection', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    // Ends at T0+15 min (minus 1 s for whole-second JWT exp): renew at 13:58.
    await h.clock.advance(13 * MIN + 57_000);
    assert.deepEqual(h.refreshCalls, ['connect'], 'not yet');
    assert.equal(ws.sentOf('AUTH').length, 0);
    await h.clock.advance(2_000);
    assert.deepEqual(h.refreshCalls, ['connect', 'renew']);
    assert.deepEqual(ws.sentOf('AUTH'), [{ type: 'AUTH', token: 'token-2' }]);
    const newExpiry = h.clock.now() + 15 * MIN;
    ws.receive({ type: 'AUTH_OK', expires_at: new Date(newExpiry).toISOString() });
    assert.equal(h.of('authrenewed').length, 1);
    assert.equal(h.client.tokenExpiresAt, newExpiry);
    assert.equal(ws.closedByClient, null, 'the connection stayed up');
    assert.equal(h.sockets.length, 1);

    // And again a minute before the new end, on the same socket.
    await h.clock.advance(13 * MIN + 58_000);
    assert.equal(ws.sentOf('AUTH').length, 1, 'not yet');
    await h.clock.advance(2_000);
    assert.equal(ws.sentOf('AUTH').length, 2);
    assert.equal(h.sockets.length, 1);
  });

  test('short tokens (5 s) are renewed at half their life, each one before it ends', async () => {
    const h = harness({ ttlMs: 5_000 });
    h.client.connect();
    const ws = await h.establish();
    let expiry = h.client.tokenExpiresAt;
    for (let i = 0; i < 6; i += 1) {
      const before = ws.sentOf('AUTH').length;
      await h.clock.advance(2_100);
      assert.equal(ws.sentOf('AUTH').length, before + 1, `renewal ${i + 1}`);
      assert.ok(h.clock.now() < expiry - 1_000, 'renewed before the token ended');
      expiry = h.clock.now() + 5_000;
      ws.receive({ type: 'AUTH_OK', expires_at: new Date(expiry).toISOString() });
    }
    assert.equal(h.sockets.length, 1);
  });

  test('a token that ends with the session is not renewed again (no refresh storm at the end)', async () => {
    const sessionEnd = T0 + 20 * MIN;
    const h = harness({
      refresh: async (_arg, clock) => ({ token: 't', expiresAt: Math.min(clock.now() + 15 * MIN, sessionEnd), sessionExpiresAt: sessionEnd }),
    });
    h.client.connect();
    await h.clock.advance(0);
    const ws = h.last();
    ws.open();
    ws.receive({ type: 'CONNECTED', session_id: 's1', expires_at: new Date(sessionEnd).toISOString(), server_time: new Date(h.clock.now()).toISOString() });
    await h.clock.advance(14 * MIN);
    assert.deepEqual(h.refreshCalls, ['connect', 'renew']);
    ws.receive({ type: 'AUTH_OK', expires_at: new Date(sessionEnd).toISOString() });
    await h.clock.advance(6 * MIN - 1);
    assert.deepEqual(h.refreshCalls, ['connect', 'renew'], 'the last token lives as long as the session');
  });

  test('however short the tokens, renewals are at least 1 s apart', async () => {
    const h = harness({ ttlMs: 300 });
    h.client.connect();
    const ws = await h.establish();
    const answer = () => ws.receive({ type: 'AUTH_OK', expires_at: new Date(h.clock.now() + 300).toISOString() });
    for (let i = 0; i < 10; i += 1) {
      await h.clock.advance(500);
      answer();
    }
    const renewals = h.refreshCalls.filter((r) => r === 'renew').length;
    assert.ok(renewals >= 3 && renewals <= 6, `${renewals} renewals in 5 s`);
  });

  test('a failed renewal (network) is retried before the token ends; a refused one waits for the server', async () => {
    let mode = 'ok';
    let n = 0;
    const h = harness({
      refresh: async (_arg, clock) => {
        n += 1;
        if (mode === 'down') throw new TokenRefreshError('unreachable', { status: 0 });
        if (mode === 'refused') throw httpError(401, 'token_invalid');
        return { token: `t${n}`, expiresAt: clock.now() + 15 * MIN };
      },
    });
    h.client.connect();
    const ws = await h.establish();
    mode = 'down';
    await h.clock.advance(13 * MIN + 59_000);
    assert.equal(h.of('autherror').length, 1);
    mode = 'ok';
    await h.clock.advance(5_000);
    assert.equal(ws.sentOf('AUTH').length, 1, 'retried within seconds');

    ws.receive({ type: 'AUTH_OK', expires_at: new Date(h.clock.now() + 15 * MIN).toISOString() });
    mode = 'refused';
    const calls = h.refreshCalls.length;
    await h.clock.advance(14 * MIN);
    assert.equal(h.refreshCalls.length, calls + 1, 'a refused renewal is not repeated');
    assert.equal(h.client.state, 'connected', 'the connection stays until the server closes it');
  });

  test('an AUTH answered with ERROR is reported; the connection goes on', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    await h.clock.advance(14 * MIN);
    ws.receive({ type: 'ERROR', message: 'AUTH: the token is invalid' });
    assert.equal(h.of('autherror').at(-1).message, 'AUTH: the token is invalid');
    assert.equal(h.client.state, 'connected');
  });

  test('updateAuthToken() sends AUTH when connected, and is used for the next connection', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    h.client.updateAuthToken('manual-token', h.clock.now() + 30 * MIN);
    assert.deepEqual(ws.sentOf('AUTH'), [{ type: 'AUTH', token: 'manual-token' }]);
    assert.equal(h.client.tokenExpiresAt, h.clock.now() + 30 * MIN);
    h.client.disconnect();
    h.client.updateAuthToken('another', h.clock.now() + 30 * MIN);
    assert.equal(ws.sentOf('AUTH').length, 1, 'nothing sent while disconnected');
    h.client.connect();
    assert.equal(h.sockets.length, 2);
    assert.deepEqual(h.refreshCalls, ['connect'], 'the given token was used');
  });
});

describe('ControlClient: backoff', () => {
  test('retryable closes wait 3 s doubling to a 30 s cap (full jitter ceilings)', async () => {
    const h = harness();
    h.client.connect();
    await h.clock.advance(0);
    const waits = [];
    for (let i = 0; i < 7; i += 1) {
      const n = h.sockets.length;
      h.last().serverClose(1006);
      const { retryInMs } = h.of('close').at(-1);
      waits.push(retryInMs);
      assert.equal(h.client.state, 'waiting');
      await h.clock.advance(retryInMs - 1);
      assert.equal(h.sockets.length, n, 'not before the wait is over');
      await h.clock.advance(1);
      assert.equal(h.sockets.length, n + 1, 'right after it');
    }
    assert.deepEqual(waits, [2_999, 5_999, 11_999, 23_999, 29_999, 29_999, 29_999]);
  });

  test('delays stay within [0, ceiling) with real randomness', async () => {
    const h = harness({ random: Math.random });
    h.client.connect();
    await h.clock.advance(0);
    const ceilings = [3_000, 6_000, 12_000, 24_000, 30_000, 30_000, 30_000, 30_000];
    for (const ceiling of ceilings) {
      h.last().serverClose(1006);
      const { retryInMs } = h.of('close').at(-1);
      assert.ok(retryInMs >= 0 && retryInMs < ceiling, `${retryInMs} in [0, ${ceiling})`);
      await h.clock.advance(retryInMs);
    }
  });

  test('a connection that lived 30 s resets the sequence; a shorter one does not', async () => {
    const h = harness();
    h.client.connect();
    await h.clock.advance(0);
    for (const expected of [2_999, 5_999, 11_999]) {
      h.last().serverClose(1006);
      assert.equal(h.of('close').at(-1).retryInMs, expected);
      await h.clock.advance(expected);
    }
    let ws = await h.establish();
    await h.clock.advance(29_000);
    ws.serverClose(4011, 'server shutting down');
    assert.equal(h.of('close').at(-1).retryInMs, 23_999, 'lived 29 s: no reset');
    await h.clock.advance(23_999);
    ws = await h.establish();
    await h.clock.advance(30_000);
    ws.serverClose(4011, 'server shutting down');
    assert.equal(h.of('close').at(-1).retryInMs, 2_999, 'lived 30 s: back to 3 s');
  });

  for (const code of [1006, 4006, 4010, 4011, 1011]) {
    test(`${code} is retried with backoff`, async () => {
      const h = harness();
      h.client.connect();
      (await h.establish()).serverClose(code, 'x');
      assert.equal(h.client.state, 'waiting');
      assert.equal(h.of('close').at(-1).final, false);
      await h.clock.advance(3_000);
      assert.equal(h.sockets.length, 2);
      assert.deepEqual(h.refreshCalls, ['connect'], 'the token was still good');
    });
  }

  test('4009 waits at least the "retry in N s" of its reason', async () => {
    const h = harness({ random: () => 0 });
    h.client.connect();
    (await h.establish()).serverClose(4009, 'too many connections to this session (limit 20); retry in 30 s');
    assert.equal(h.of('close').at(-1).retryInMs, 30_000);
    // Coming back online does not skip the server's wait.
    h.win.dispatchEvent(new Event('online'));
    await h.clock.advance(29_999);
    assert.equal(h.sockets.length, 1);
    await h.clock.advance(1);
    assert.equal(h.sockets.length, 2);
  });

  test('network errors of the refresh are retried with the same backoff', async () => {
    let n = 0;
    const h = harness({
      refresh: async (_arg, clock) => {
        n += 1;
        if (n <= 2) throw new TypeError('fetch failed');
        return { token: 't', expiresAt: clock.now() + 15 * MIN };
      },
    });
    h.client.connect();
    await h.clock.advance(0);
    assert.equal(h.of('refresherror').length, 1);
    assert.equal(h.of('refresherror')[0].retryInMs, 2_999);
    assert.equal(h.client.state, 'waiting');
    await h.clock.advance(2_999);
    assert.equal(h.of('refresherror')[1].retryInMs, 5_999);
    await h.clock.advance(5_999);
    assert.equal(h.sockets.length, 1);
    await h.establish();
  });

  test('a refresh answered 429 waits for its Retry-After', async () => {
    let n = 0;
    const h = harness({
      random: () => 0,
      refresh: async (_arg, clock) => {
        n += 1;
        if (n === 1) throw new TokenRefreshError('slow down', { status: 429, retryAfterMs: 7_000 });
        return { token: 't', expiresAt: clock.now() + 15 * MIN };
      },
    });
    h.client.connect();
    await h.clock.advance(6_999);
    assert.equal(h.sockets.length, 0);
    await h.clock.advance(1);
    assert.equal(h.sockets.length, 1);
  });
});

describe('ControlClient: final closes', () => {
  for (const code of [4002, 4004, 4005, 4007, 4008]) {
    test(`${code} stops for good`, async () => {
      const h = harness();
      h.client.connect();
      (await h.establish()).serverClose(code, 'final');
      assert.equal(h.client.state, 'stopped');
      const [stopped] = h.of('stopped');
      assert.equal(stopped.code, code);
      assert.equal(h.of('close').at(-1).final, true);
      assert.equal(h.of('close').at(-1).retryInMs, null);
      h.win.dispatchEvent(new Event('online'));
      h.doc.dispatchEvent(new Event('visibilitychange'));
      await h.assertQuietFor(60 * MIN);
      assert.equal(h.sockets.length, 1);
    });
  }

  test('SESSION_ENDED stops even if the server closes with a retryable code', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    ws.receive({ type: 'SESSION_ENDED', reason: 'revoked' });
    ws.serverClose(1006);
    assert.equal(h.client.state, 'stopped');
    assert.equal(h.of('stopped')[0].code, 4008);
    await h.assertQuietFor(60 * MIN);
  });

  test('SESSION_ENDED without a close: the client closes after a grace period and stops', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    ws.receive({ type: 'SESSION_ENDED', reason: 'expired' });
    await h.clock.advance(5_000);
    assert.ok(ws.closedByClient);
    assert.equal(h.client.state, 'stopped');
    assert.equal(h.of('stopped')[0].code, 4007);
    await h.assertQuietFor(60 * MIN);
  });

  test('an explicit connect() after a stop starts over', async () => {
    const h = harness();
    h.client.connect();
    (await h.establish()).serverClose(4005, 'session not found');
    assert.equal(h.client.state, 'stopped');
    h.client.connect();
    assert.equal(h.sockets.length, 2);
  });
});

describe('ControlClient: page events', () => {
  test('the page becoming visible reconnects at once, skipping the backoff wait', async () => {
    const h = harness();
    h.client.connect();
    (await h.establish()).serverClose(1006);
    assert.equal(h.client.state, 'waiting');
    h.doc.visibilityState = 'hidden';
    h.doc.dispatchEvent(new Event('visibilitychange'));
    assert.equal(h.sockets.length, 1, 'hidden: keep waiting');
    h.doc.visibilityState = 'visible';
    h.doc.dispatchEvent(new Event('visibilitychange'));
    assert.equal(h.sockets.length, 2, 'visible: reconnected without advancing time');
    await h.clock.advance(0);
    assert.equal(h.clock.timers.size, 0, 'the old backoff timer is gone');
  });

  test('the network coming back reconnects at once', async () => {
    const h = harness();
    h.client.connect();
    (await h.establish()).serverClose(1006);
    h.last();
    h.win.dispatchEvent(new Event('online'));
    assert.equal(h.sockets.length, 2);
  });

  test('visible again with an overdue renewal (throttled timers): renew at once', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    // Pretend the timer did not fire: move the clock without running timers.
    h.clock.t += 14 * MIN + 30_000;
    h.doc.dispatchEvent(new Event('visibilitychange'));
    await h.clock.advance(0);
    assert.equal(ws.sentOf('AUTH').length, 1);
    assert.ok(ws.sentOf('PING').length >= 1, 'and a PING to check the socket');
  });

  test('no page listeners after disconnect()', async () => {
    const h = harness();
    h.client.connect();
    (await h.establish()).serverClose(1006);
    h.client.disconnect();
    h.win.dispatchEvent(new Event('online'));
    h.doc.dispatchEvent(new Event('visibilitychange'));
    assert.equal(h.sockets.length, 1);
  });
});

describe('ControlClient: heartbeat', () => {
  test('PING every 30 s; PONGs keep the connection', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    for (let i = 1; i <= 4; i += 1) {
      await h.clock.advance(30_000);
      assert.equal(ws.sentOf('PING').length, i);
      ws.receive({ type: 'PONG' });
    }
    assert.equal(h.client.state, 'connected');
  });

  test('silence past the limit: the socket is declared dead (4900) and retried', async () => {
    const h = harness();
    h.client.connect();
    const ws = await h.establish();
    ws.autoPong = false;
    await h.clock.advance(90_000);
    assert.equal(ws.closedByClient?.code, CLIENT_HEARTBEAT_LOST);
    const close = h.of('close').at(-1);
    assert.equal(close.code, CLIENT_HEARTBEAT_LOST);
    assert.equal(close.final, false);
    assert.equal(close.retryInMs, 2_999);
    assert.equal(h.client.state, 'waiting');
    await h.clock.advance(2_999);
    assert.equal(h.sockets.length, 2, 'reconnected after the backoff');
  });
});

describe('token provider (tokens.js)', () => {
  const ok = (token = 'fresh') =>
    new Response(JSON.stringify({ token, expires_at: '2026-11-21T12:15:00Z', session_expires_at: '2026-11-22T12:00:00Z' }), {
      status: 200,
      headers: { 'Content-Type': 'application/json' },
    });
  const err = (status, code, headers = {}) =>
    new Response(JSON.stringify({ error: { code, message: `${code} message` } }), { status, headers: { 'Content-Type': 'application/json', ...headers } });

  test('a link token is exchanged once with Bearer; then the refresh cookie is used', async () => {
    const seen = [];
    const fetchFn = async (url, init) => {
      seen.push({ url, ...init });
      return ok();
    };
    const provider = sessionTokenProvider('abc', { initialToken: 'link-token', fetchFn });
    const first = await provider();
    assert.deepEqual(first, { token: 'fresh', expiresAt: Date.parse('2026-11-21T12:15:00Z'), sessionExpiresAt: Date.parse('2026-11-22T12:00:00Z') });
    await provider();
    assert.equal(seen.length, 2);
    for (const req of seen) {
      assert.equal(req.url, '/api/sessions/abc/token');
      assert.equal(req.method, 'POST');
      assert.equal(req.credentials, 'same-origin');
    }
    assert.equal(seen[0].headers.Authorization, 'Bearer link-token');
    assert.equal(seen[1].headers.Authorization, undefined, 'cookies only after the exchange');
  });

  test('an old link (401) falls back to the refresh cookie at once', async () => {
    const seen = [];
    const fetchFn = async (_url, init) => {
      seen.push(init.headers.Authorization ?? 'cookie');
      return init.headers.Authorization ? err(401, 'token_expired') : ok();
    };
    const provider = sessionTokenProvider('abc', { initialToken: 'old', fetchFn });
    assert.equal((await provider()).token, 'fresh');
    assert.deepEqual(seen, ['Bearer old', 'cookie']);
  });

  test('a link whose token is an access token (refresh_required) and no cookie: the link\'s refusal is thrown', async () => {
    const seen = [];
    const fetchFn = async (_url, init) => {
      seen.push(init.headers.Authorization ?? 'cookie');
      return init.headers.Authorization ? err(401, 'refresh_required') : err(401, 'auth_required');
    };
    const provider = sessionTokenProvider('abc', { initialToken: 'access', fetchFn });
    await assert.rejects(provider(), (e) => e instanceof TokenRefreshError && e.code === 'refresh_required' && e.final);
    assert.deepEqual(seen, ['Bearer access', 'cookie']);
    // Forgotten: the next call asks with the cookie only.
    await assert.rejects(provider(), (e) => e.code === 'auth_required');
    assert.deepEqual(seen, ['Bearer access', 'cookie', 'cookie']);
  });

  test('a network error during the exchange keeps the link token for the next try', async () => {
    const seen = [];
    let down = true;
    const fetchFn = async (_url, init) => {
      seen.push(init.headers.Authorization ?? 'cookie');
      if (down) throw new TypeError('fetch failed');
      return ok();
    };
    const provider = sessionTokenProvider('abc', { initialToken: 'link', fetchFn });
    await assert.rejects(provider(), (e) => e instanceof TokenRefreshError && e.status === 0 && !e.final);
    down = false;
    await provider();
    assert.deepEqual(seen, ['Bearer link', 'Bearer link']);
  });

  test('errors carry status, code, finality and Retry-After', async () => {
    const cases = [
      [err(401, 'auth_required'), 401, 'auth_required', true],
      [err(404, 'session_not_found'), 404, 'session_not_found', true],
      [err(410, 'session_ended'), 410, 'session_ended', true],
      [err(429, 'rate_limited', { 'Retry-After': '3' }), 429, 'rate_limited', false],
      [new Response('<h1>bad gateway</h1>', { status: 502 }), 502, null, false],
    ];
    for (const [res, status, code, final] of cases) {
      const e = await requestToken('abc', { fetchFn: async () => res }).catch((x) => x);
      assert.ok(e instanceof TokenRefreshError, `${status}`);
      assert.equal(e.status, status);
      assert.equal(e.code, code);
      assert.equal(e.final, final, `${status} final`);
      if (status === 429) assert.equal(e.retryAfterMs, 3_000);
    }
  });
});
