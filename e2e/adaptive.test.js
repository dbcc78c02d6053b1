// web/static/adaptive.js in Node: the quality controller's decisions from
// measurements (no browser), and the link meter's busy share.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { DEFAULT_COMPRESSION, DEFAULT_QUALITY, LinkMeter, QualityController, busyShare, compressionFor } from '../web/static/adaptive.js';

const MB = 1024 * 1024;
// A saturated link: frames trickle in, bytes arrive all the time.
const slow = { frames: 4, bytes: 0.6 * MB, busy: 0.95 };
// A fast link scrolling at full rate: many frames, the link idle in between.
const fast = { frames: 55, bytes: 9 * MB, busy: 0.3 };
// A 0.6 MB/s link: the frame rate follows the frame size, which follows the quality.
const slowAt = (q) => ({ frames: 600 / (20 * (q + 1)), bytes: 0.6 * MB, busy: 0.95 });
// A quiet screen: a blinking caret.
const quiet = { frames: 2, bytes: 4_000, busy: 0.01 };

describe('QualityController', () => {
  test('starts at full quality with noVNC\'s levels', () => {
    const c = new QualityController();
    assert.equal(c.quality, DEFAULT_QUALITY);
    assert.equal(c.compression, DEFAULT_COMPRESSION);
  });

  test('a fast link keeps full quality', () => {
    const c = new QualityController();
    for (let i = 0; i < 30; i += 1) assert.equal(c.sample(fast).changed, false);
    assert.equal(c.quality, DEFAULT_QUALITY);
  });

  test('a quiet screen on any link changes nothing', () => {
    const c = new QualityController();
    for (let i = 0; i < 30; i += 1) c.sample(quiet);
    assert.equal(c.quality, DEFAULT_QUALITY);
  });

  test('few small frames on an idle link (the page itself is slow) do not lower the quality', () => {
    const c = new QualityController();
    for (let i = 0; i < 10; i += 1) c.sample({ frames: 8, bytes: 200_000, busy: 0.1 });
    assert.equal(c.quality, DEFAULT_QUALITY);
  });

  test('a saturated link lowers quality fast (two steps when far below), down to 0 and no further', () => {
    const c = new QualityController();
    const r = c.sample(slow);
    assert.deepEqual([r.quality, r.changed, r.reason], [DEFAULT_QUALITY - 2, true, 'congested']);
    assert.ok(r.compression > DEFAULT_COMPRESSION, 'stronger zlib at low quality');
    c.sample({ frames: 12, bytes: 0.6 * MB, busy: 0.9 }); // below the goal, not far: one step
    assert.equal(c.quality, DEFAULT_QUALITY - 3);
    for (let i = 0; i < 10; i += 1) c.sample(slowAt(c.quality));
    assert.equal(c.quality, 0);
    assert.equal(c.compression, compressionFor(0));
  });

  test('large frames that come slowly lower quality on an unsaturated link (round-trip bound)', () => {
    const c = new QualityController();
    const r = c.sample({ frames: 8, bytes: 1.3 * MB, busy: 0.2 });
    assert.deepEqual([r.quality, r.reason], [DEFAULT_QUALITY - 2, 'congested']);
  });

  test('a step down that does not raise the frame rate (CPU-bound, fast link) is undone', () => {
    const c = new QualityController({ hold: 3 });
    const cpuBound = { frames: 11, bytes: 2 * MB, busy: 0.2 };
    const levels = [];
    for (let i = 0; i < 60; i += 1) levels.push(c.sample(cpuBound).quality);
    assert.equal(levels[0], DEFAULT_QUALITY - 1, 'tries one step down');
    assert.equal(levels[1], DEFAULT_QUALITY, 'undoes it');
    const below = levels.filter((q) => q < DEFAULT_QUALITY).length;
    assert.ok(below <= 8, `below full quality for ${below} of 60 s`);
    assert.ok(levels.every((q) => q >= DEFAULT_QUALITY - 1), 'never further than one step');
  });

  test('raises again once the link has room, one step per hold', () => {
    const c = new QualityController({ hold: 3 });
    for (let i = 0; i < 4; i += 1) c.sample(slowAt(c.quality));
    assert.equal(c.quality, 0);
    const levels = [];
    for (let i = 0; i < 30; i += 1) levels.push(c.sample(fast).quality);
    assert.equal(levels[1], 0, 'not before the hold');
    assert.equal(levels[2], 1, 'after 3 good seconds');
    assert.equal(levels.at(-1), DEFAULT_QUALITY, 'back to full quality');
  });

  test('hysteresis: a raise that does not fit doubles the hold, so the level does not flap', () => {
    // A link that carries level 2 fluidly but not level 3.
    const link = (q) => (q <= 2 ? { frames: 22, bytes: 2 * MB, busy: 0.7 } : { frames: 14, bytes: 2.4 * MB, busy: 0.9 });
    const c = new QualityController({ hold: 2, maxHold: 64 });
    for (let i = 0; i < 6; i += 1) c.sample(slowAt(c.quality));
    let changes = 0;
    let at3 = 0;
    for (let i = 0; i < 120; i += 1) {
      const r = c.sample(link(c.quality));
      if (r.changed) changes += 1;
      if (c.quality >= 3) at3 += 1;
    }
    // Without the growing hold it would change every 2-3 s (≈ 80 changes).
    assert.ok(changes <= 14, `levels changed ${changes} times in 120 s`);
    assert.ok(at3 <= 8, `spent ${at3} s above what the link carries`);
    assert.ok(c.quality >= 2, 'stays at the level the link carries');
  });

  test('compression follows quality', () => {
    assert.equal(compressionFor(9), DEFAULT_COMPRESSION);
    assert.equal(compressionFor(6), DEFAULT_COMPRESSION);
    assert.equal(compressionFor(4), 4);
    assert.equal(compressionFor(0), 6);
  });
});

describe('link meter', () => {
  test('busyShare counts short gaps as busy', () => {
    // Every 5 ms for a second: saturated.
    const steady = Array.from({ length: 201 }, (_, i) => i * 5);
    assert.ok(busyShare(steady, 0, 1000) > 0.95);
    // Bursts of 10 messages 1 ms apart every 100 ms: mostly idle.
    const bursts = [];
    for (let b = 0; b < 10; b += 1) for (let i = 0; i < 10; i += 1) bursts.push(b * 100 + i);
    assert.ok(busyShare(bursts, 0, 1000) < 0.15);
    assert.equal(busyShare([], 0, 1000), 0);
  });

  test('counts bytes and frames per window', () => {
    let t = 0;
    const meter = new LinkMeter(() => t);
    const listeners = [];
    meter.watchSocket({ addEventListener: (type, fn) => listeners.push(fn) });
    const drawn = [];
    const ctx = { drawImage: (...args) => drawn.push(args) };
    assert.equal(meter.watchCanvas({ getContext: () => ctx }), true);
    meter.watchCanvas({ getContext: () => ctx }); // a second watch does not count twice
    for (let i = 0; i < 100; i += 1) {
      t = i * 10;
      listeners.forEach((fn) => fn({ data: new ArrayBuffer(1000) }));
      if (i % 4 === 0) ctx.drawImage('img', 0, 0);
    }
    t = 1000;
    const s = meter.take();
    assert.deepEqual([s.bytes, s.frames, s.seconds], [100_000, 25, 1]);
    assert.equal(drawn.length, 25, 'drawing still happens');
    assert.ok(s.busy > 0.9);
    t = 2000;
    assert.deepEqual([meter.take().bytes, meter.totals.frames], [0, 25]);
  });
});
