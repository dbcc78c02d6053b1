// Fast checks of the viewer's browser-independent modules (web/static/*.js),
// run in Node: the reconnect policy is easier to pin down here than through a
// browser and a server.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Backoff } from '../web/static/backoff.js';
import { CLOSE_CODES, describe as describeCode, isFinal } from '../web/static/closecodes.js';
import { retryAfterMs } from '../web/static/control.js';
import { formatDuration } from '../web/static/ui.js';

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
  // 4001 and 4003 are final until the viewer can refresh its token (no refresh endpoint yet).
  test('only 4001-4005, 4007 and 4008 are final', () => {
    const final = Object.keys(CLOSE_CODES).map(Number).filter(isFinal);
    assert.deepEqual(final, [4001, 4002, 4003, 4004, 4005, 4007, 4008]);
    for (const code of [1000, 1001, 1006, 1011, 4006, 4009, 4010, 4011]) {
      assert.equal(isFinal(code), false, `${code} is retried`);
    }
  });

  test('every code has a label', () => {
    for (let code = 4001; code <= 4011; code += 1) assert.ok(CLOSE_CODES[code]?.label, `${code}`);
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
