// Fast checks of the viewer's browser-independent modules (web/static/*.js),
// run in Node: the reconnect policy is easier to pin down here than through a
// browser and a server.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Backoff } from '../web/static/backoff.js';
import { CLOSE_CODES, action, describe as describeCode, isFinal } from '../web/static/closecodes.js';
import { retryAfterMs } from '../web/static/control.js';
import { formatDuration } from '../web/static/ui.js';
import { formatPrice, minorUnitDigits } from '../web/static/price.js';
import { checkoutSessionIdFromSearch, claimOnce, errorRetryDelayMs, interpretClaim, retryAfterHeaderMs, safeViewerUrl } from '../web/static/claim.js';

describe('Backoff', () => {
  test('ceilings double from 3 s to a 30 s cap', () => {
    const b = new Backoff({ random: () => 0.5 });
    const ceilings = [];
    for (let i = 0; i < 7; i += 1) {
      ceilings.push(b.ceiling());
      b.next();
    }
    assert.deepEqual(ceilings, [3_000, 6_000, 12_000, 24_000, 30_000, 30_000, 30_000]);
  });

  test('full jitter: delays cover [0, ceiling)', () => {
    const low = new Backoff({ random: () => 0 });
    const high = new Backoff({ random: () => 0.999999 });
    assert.equal(low.next(), 0);
    assert.equal(high.next(), 2_999);
    for (let i = 0; i < 10; i += 1) high.next();
    assert.equal(high.next(), 29_999);
  });

  test('random delays stay within the ceiling', () => {
    const b = new Backoff();
    for (let i = 0; i < 200; i += 1) {
      const ceiling = b.ceiling();
      const d = b.next();
      assert.ok(d >= 0 && d < ceiling, `${d} in [0, ${ceiling})`);
    }
  });

  test('a connection that stayed up 30 s resets; a shorter one does not', () => {
    const b = new Backoff({ random: () => 0.5 });
    b.next();
    b.next();
    b.connectionLasted(29_999);
    assert.equal(b.ceiling(), 12_000);
    b.connectionLasted(30_000);
    assert.equal(b.ceiling(), 3_000);
  });

  test('long outages never overflow', () => {
    const b = new Backoff({ random: () => 0.5 });
    for (let i = 0; i < 5_000; i += 1) b.next();
    assert.equal(b.ceiling(), 30_000);
    assert.equal(b.next(), 15_000);
  });
});

describe('close codes', () => {
  test('4002, 4004, 4005, 4007, 4008 and 4012 stop; 4001 and 4003 refresh the token once; the rest retry', () => {
    const final = Object.keys(CLOSE_CODES).map(Number).filter(isFinal);
    assert.deepEqual(final, [4002, 4004, 4005, 4007, 4008, 4012]);
    for (const code of [1000, 1001, 1006, 1011, 4006, 4009, 4010, 4011, 4900]) {
      assert.equal(isFinal(code), false, `${code} is retried`);
      assert.equal(action(code), 'retry', `${code} is retried with backoff`);
    }
    assert.equal(action(4001), 'refresh');
    assert.equal(action(4003), 'refresh');
    for (const code of final) assert.equal(action(code), 'stop');
  });

  test('every code has a label', () => {
    for (let code = 4001; code <= 4012; code += 1) assert.ok(CLOSE_CODES[code]?.label, `${code}`);
    assert.equal(describeCode(4008), 'session revoked');
    assert.equal(describeCode(1234), 'code 1234');
  });
});

test('a rate-limited close is not retried before the time it names', () => {
  assert.equal(retryAfterMs(4009, 'too many attempts; retry in 5 s'), 5_000);
  assert.equal(retryAfterMs(4009, 'retry in 2.5s'), 2_500);
  assert.equal(retryAfterMs(4009, 'slow down'), 0);
  assert.equal(retryAfterMs(4010, 'retry in 5 s'), 0, 'only 4009 carries a retry time');
  assert.equal(retryAfterMs(4009, 'retry in 99999 s'), 600_000, 'capped at 10 min');
});

test('formatDuration', () => {
  assert.equal(formatDuration(30_000), 'less than a minute');
  assert.equal(formatDuration(5 * 60_000), '5 min');
  assert.equal(formatDuration(24 * 3_600_000 - 60_000), '23 h 59 min');
});

describe('prices', () => {
  test('amounts are in the currency\'s smallest unit, as Stripe counts it', () => {
    assert.equal(formatPrice(100, 'usd', 'en-US'), '$1.00');
    assert.equal(formatPrice(250, 'eur', 'en-US'), '€2.50');
    assert.equal(formatPrice(1999, 'USD', 'en-US'), '$19.99');
    assert.equal(formatPrice(500, 'jpy', 'en-US'), '¥500');
    assert.match(formatPrice(1500, 'kwd', 'en-US'), /^KWD\s1\.500$/);
    assert.equal(minorUnitDigits('isk'), 2, 'ISK is sent in hundredths');
  });

  test('the browser\'s locale decides the format', () => {
    assert.match(formatPrice(100, 'eur', 'de-DE'), /^1,00\s€$/);
  });

  test('an unknown currency code still shows the amount', () => {
    assert.equal(formatPrice(100, 'not a currency', 'en-US'), '1.00 NOT A CURRENCY');
  });
});

describe('checkout success page', () => {
  const origin = 'http://127.0.0.1:8080';

  test('the Checkout Session id comes from ?session_id= and looks like one', () => {
    assert.equal(checkoutSessionIdFromSearch('?session_id=cs_test_a1B2c3'), 'cs_test_a1B2c3');
    assert.equal(checkoutSessionIdFromSearch('?session_id=cs_live_X'), 'cs_live_X');
    assert.equal(checkoutSessionIdFromSearch(''), null);
    assert.equal(checkoutSessionIdFromSearch('?session_id={CHECKOUT_SESSION_ID}'), null, 'an unfilled placeholder');
    assert.equal(checkoutSessionIdFromSearch('?session_id=pi_123'), null);
    assert.equal(checkoutSessionIdFromSearch('?session_id=cs_test_1%22%3E'), null);
  });

  test('only a same-origin /s/ page is followed', () => {
    assert.equal(safeViewerUrl('/s/abc', origin), '/s/abc');
    assert.equal(safeViewerUrl(`${origin}/s/abc`, origin), '/s/abc');
    assert.equal(safeViewerUrl('https://evil.example/s/abc', origin), null);
    assert.equal(safeViewerUrl('//evil.example/s/abc', origin), null);
    assert.equal(safeViewerUrl('javascript:alert(1)', origin), null);
    assert.equal(safeViewerUrl('/api/sessions', origin), null);
    assert.equal(safeViewerUrl(undefined, origin), null);
  });

  test('each claim answer', () => {
    assert.deepEqual(interpretClaim(202, { status: 'pending' }, origin), { kind: 'pending' });
    assert.deepEqual(interpretClaim(200, { status: 'claimed', session_id: 'abc', viewer_url: '/s/abc' }, origin), { kind: 'claimed', viewerUrl: '/s/abc' });
    assert.equal(interpretClaim(200, { status: 'claimed', viewer_url: 'https://evil.example/' }, origin).kind, 'error');
    const taken = interpretClaim(409, { error: { code: 'already_claimed', message: 'claimed elsewhere' } }, origin);
    assert.equal(taken.kind, 'already-claimed');
    assert.equal(taken.message, 'claimed elsewhere');
    assert.equal(interpretClaim(410, { error: { code: 'session_ended', message: 'revoked' } }, origin).kind, 'ended');
    const failed = interpretClaim(500, { error: { code: 'internal', message: 'something failed' } }, origin);
    assert.deepEqual(failed, { kind: 'error', code: 'internal', message: 'something failed' });
    assert.match(interpretClaim(502, null, origin).message, /502/);
  });

  test('retry delays after errors grow to 15 s; Retry-After is honoured', () => {
    assert.deepEqual([1, 2, 3, 4, 5, 10].map(errorRetryDelayMs), [2_000, 4_000, 8_000, 15_000, 15_000, 15_000]);
    assert.equal(retryAfterHeaderMs('3'), 3_000);
    assert.equal(retryAfterHeaderMs(null), 0);
    assert.equal(retryAfterHeaderMs('Wed, 21 Oct 2015 07:28:00 GMT'), 0);
  });

  test('claimOnce posts the id as JSON with same-origin credentials, and never throws', async () => {
    let seen;
    const fetchFn = async (url, init) => {
      seen = { url, ...init };
      return new Response(JSON.stringify({ status: 'pending' }), { status: 202, headers: { 'Content-Type': 'application/json' } });
    };
    assert.deepEqual(await claimOnce('cs_test_1', { fetchFn, origin }), { kind: 'pending', retryAfterMs: 0 });
    assert.equal(seen.url, '/api/checkout/claim');
    assert.equal(seen.method, 'POST');
    assert.equal(seen.credentials, 'same-origin');
    assert.equal(seen.headers['Content-Type'], 'application/json');
    assert.deepEqual(JSON.parse(seen.body), { checkout_session_id: 'cs_test_1' });

    const down = await claimOnce('cs_test_1', { fetchFn: async () => { throw new TypeError('fetch failed'); }, origin });
    assert.equal(down.kind, 'error');
    const html = await claimOnce('cs_test_1', { fetchFn: async () => new Response('<h1>Bad gateway</h1>', { status: 502, headers: { 'Retry-After': '5' } }), origin });
    assert.equal(html.kind, 'error');
    assert.equal(html.retryAfterMs, 5_000);
  });
});
