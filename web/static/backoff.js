// Reconnect delays: exponential backoff with "full jitter".
//
// Attempt n (counting from 0) waits a random time in [0, min(cap, base * 2^n)).
// Full jitter spreads the reconnect storm after a server restart: every viewer
// that lost its connection at the same instant picks a different moment to
// come back. A connection that stayed up for `stableMs` proves the server is
// healthy again, so the next failure starts over from `base`.

export const DEFAULTS = Object.freeze({
  baseMs: 3_000,
  capMs: 30_000,
  stableMs: 30_000,
});

export class Backoff {
  /**
   * @param {object} [opts]
   * @param {number} [opts.baseMs] first ceiling (3 s)
   * @param {number} [opts.capMs] largest ceiling (30 s)
   * @param {number} [opts.stableMs] uptime after which the sequence resets (30 s)
   * @param {() => number} [opts.random] source of [0, 1) numbers, replaceable in tests
   */
  constructor(opts = {}) {
    this.baseMs = opts.baseMs ?? DEFAULTS.baseMs;
    this.capMs = opts.capMs ?? DEFAULTS.capMs;
    this.stableMs = opts.stableMs ?? DEFAULTS.stableMs;
    this.random = opts.random ?? Math.random;
    this.attempt = 0;
  }

  /** The ceiling for the current attempt, before jitter. */
  ceiling() {
    // Clamp the exponent so 2^n never overflows into Infinity on long outages.
    const exp = Math.min(this.attempt, 20);
    return Math.min(this.capMs, this.baseMs * 2 ** exp);
  }

  /** Delay before the next attempt; advances the sequence. */
  next() {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return delay;
  }

  /** Start over from `baseMs`. */
  reset() {
    this.attempt = 0;
  }

  /**
   * Tell the backoff how long the connection that just closed had been up;
   * resets the sequence if that was long enough to call it a success.
   */
  connectionLasted(ms) {
    if (ms >= this.stableMs) this.reset();
  }
}
