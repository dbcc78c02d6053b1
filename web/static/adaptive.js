// Adaptive picture quality: the viewer measures what it really gets (frames
// drawn, bytes received) and moves noVNC's JPEG quality (qualityLevel 0-9)
// and zlib level (compressionLevel 0-9) so a slow link keeps a fluid picture
// and a fast one full quality. noVNC sends a new SetEncodings whenever either
// changes; Xvnc applies it to the next update.
//
// Two parts:
// - QualityController: pure logic, no browser (unit tests in e2e/adaptive.test.js).
//   Fed one sample per second, it answers the levels to use.
// - LinkMeter / attachAdaptive: the browser side. Bytes are counted on the
//   WebSocket vnc.js opens itself; frames are counted on the visible canvas
//   (noVNC draws its back buffer onto it once per FramebufferUpdate, in
//   Display.flip), by wrapping that one canvas context's drawImage: no
//   private noVNC field is touched and nothing is read back from the canvas.
//
// When to lower: frames come slower than lowFps while the screen changes a
// lot (large frames), or while the link is saturated. Measured with the link
// emulator (bench/link/): at 20 Mbit/s and 80 ms the link carried only ~11
// Mbit/s at 8 fps, limited by the round trip (Xvnc's congestion control waits
// for its fences), not by the rate, so saturation alone misses it.
// How "the link is the limit" is told apart from "the screen is quiet": while
// the link is saturated, data arrives nearly all the time (a frame's bytes
// trickle in at the link's rate); when it has room, a frame arrives in a burst
// and the link then sits idle. The meter reports the share of the second in
// which bytes were arriving (`busy`). Low frames with a busy link: lower the
// quality; a step down that did not raise the frame rate by 15 % is undone
// (the limit is elsewhere: CPU, the page). Plenty of frames, or an idle link: raise it again, but only after
// a hold that doubles each time a raise had to be taken back (hysteresis), so
// the levels do not flap between two steps.

/** The levels noVNC starts with (and web/static/vnc.js sets): full quality. */
export const DEFAULT_QUALITY = 6;
export const DEFAULT_COMPRESSION = 2;

const DEFAULTS = {
  // Below this many frames a second while the link is busy, the picture is
  // not fluid: step the quality down.
  lowFps: 18,
  // A link delivering bytes for at least this share of the time is the limit.
  busyShare: 0.6,
  // A frame this large is a big area changing (scrolling, video), where a
  // lower JPEG quality pays.
  bigFrameBytes: 48 * 1024,
  // Below this rate the screen is quiet and nothing is learned about the link.
  minBytesPerSecond: 64 * 1024,
  // Seconds of good samples before a step up; doubles after each step up that
  // had to be taken back (up to maxHold), halves back after a long good run.
  hold: 3,
  maxHold: 48,
  // The best and worst levels the controller uses.
  maxQuality: DEFAULT_QUALITY,
  minQuality: 0,
};

/**
 * The quality each compression level goes with: at low JPEG quality the
 * remaining non-JPEG rectangles (text, solid areas) are worth a stronger zlib
 * level; at full quality noVNC's own level 2 keeps Xvnc's CPU low.
 */
export function compressionFor(quality) {
  if (quality >= DEFAULT_QUALITY) return DEFAULT_COMPRESSION;
  if (quality >= 3) return 4;
  return 6;
}

export class QualityController {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.quality = this.options.maxQuality;
    this.goodFor = 0; // consecutive good samples
    this.hold = this.options.hold;
    this.raisedFrom = null; // the level a recent step up came from
    this.lowered = null; // {from, fps}: the last step down, to see whether it helped
    this.noLowerFor = 0; // samples to wait after a step down that did not help
  }

  get compression() {
    return compressionFor(this.quality);
  }

  /**
   * One measurement over `seconds` (about one): frames drawn, bytes received
   * and the share of the time the link was delivering. Returns
   * `{quality, compression, changed, reason}`.
   */
  sample({ frames, bytes, busy, seconds = 1 }) {
    const o = this.options;
    const fps = frames / seconds;
    const rate = bytes / seconds;
    // Big frames that come too slowly: smaller ones come faster, whether the
    // link's rate is the limit (busy) or its round trip (Xvnc waits for its
    // fences to come back before sending more).
    const bigFrames = frames > 0 && bytes / frames >= o.bigFrameBytes;
    const congested = rate >= o.minBytesPerSecond && fps < o.lowFps && (busy >= o.busyShare || bigFrames);
    const before = this.quality;
    let reason = 'steady';
    if (this.noLowerFor > 0) this.noLowerFor -= 1;
    if (congested && this.lowered && fps < this.lowered.fps * 1.15) {
      // The last step down did not raise the frame rate: the link is not the
      // limit (the machine's CPU, the page itself). Undo it, and do not try
      // again for a while (the hold doubles each time).
      this.quality = this.lowered.from;
      this.lowered = null;
      this.noLowerFor = this.hold;
      this.hold = Math.min(this.hold * 2, o.maxHold);
      this.goodFor = 0;
      reason = 'no gain';
    } else if (congested && this.noLowerFor === 0 && this.quality > o.minQuality) {
      this.goodFor = 0;
      if (this.raisedFrom !== null && this.quality > this.raisedFrom) {
        // The last step up did not fit: go back and wait twice as long.
        this.hold = Math.min(this.hold * 2, o.maxHold);
      }
      this.raisedFrom = null;
      // Far below the goal: two steps at once, so a slow link is fluid soon.
      const step = fps < o.lowFps / 2 ? 2 : 1;
      this.lowered = { from: this.quality, fps };
      this.quality = Math.max(o.minQuality, this.quality - step);
      reason = 'congested';
    } else if (congested) {
      this.goodFor = 0;
      this.lowered = null;
    } else {
      this.lowered = null;
      this.goodFor += 1;
      if (this.goodFor >= this.hold && this.quality < o.maxQuality) {
        this.raisedFrom = this.quality;
        this.quality += 1;
        this.goodFor = 0;
        reason = 'room';
      } else if (this.goodFor >= o.maxHold && this.raisedFrom !== null) {
        // A long good run at a raised level: the raise held; forget it.
        this.raisedFrom = null;
        this.hold = Math.max(o.hold, Math.floor(this.hold / 2));
      }
    }
    return { quality: this.quality, compression: this.compression, changed: this.quality !== before, reason };
  }
}

/**
 * Share of [start, end] (ms) in which data was arriving, from the arrival
 * times of messages: a gap shorter than `gapMs` between two messages counts
 * as busy. Pure; exported for tests.
 */
export function busyShare(arrivals, start, end, gapMs = 12) {
  const span = end - start;
  if (span <= 0 || arrivals.length < 2) return 0;
  let busy = 0;
  for (let i = 1; i < arrivals.length; i += 1) {
    const gap = arrivals[i] - arrivals[i - 1];
    if (gap < gapMs) busy += gap;
  }
  return Math.min(1, busy / span);
}

/** Counts bytes on a WebSocket and frames drawn on a canvas. Browser only. */
export class LinkMeter {
  constructor(now = () => performance.now()) {
    this.now = now;
    this.bytes = 0;
    this.frames = 0;
    this.arrivals = [];
    this.windowStart = now();
    this.totals = { bytes: 0, frames: 0 };
  }

  /** Counts every message of `ws` (noVNC sets binaryType "arraybuffer"). */
  watchSocket(ws) {
    ws.addEventListener('message', (ev) => {
      const n = ev.data?.byteLength ?? ev.data?.size ?? ev.data?.length ?? 0;
      this.bytes += n;
      this.totals.bytes += n;
      this.arrivals.push(this.now());
    });
  }

  /**
   * Counts flips onto the visible canvas: wraps that context's drawImage
   * (its own property, shadowing the prototype's; nothing else changes).
   * Returns false when there is no canvas yet.
   */
  watchCanvas(canvas) {
    const ctx = canvas?.getContext?.('2d');
    if (!ctx || ctx.drawImage.livesessionCounted) return Boolean(ctx);
    const draw = ctx.drawImage;
    const meter = this;
    const counted = function (...args) {
      meter.frames += 1;
      meter.totals.frames += 1;
      return draw.apply(this, args);
    };
    counted.livesessionCounted = true;
    ctx.drawImage = counted;
    return true;
  }

  /** What the window since the last take measured; starts a new window. */
  take() {
    const end = this.now();
    const seconds = Math.max(0.001, (end - this.windowStart) / 1000);
    const sample = {
      frames: this.frames,
      bytes: this.bytes,
      busy: busyShare(this.arrivals, this.windowStart, end),
      seconds,
    };
    this.frames = 0;
    this.bytes = 0;
    this.arrivals = this.arrivals.length ? [this.arrivals[this.arrivals.length - 1]] : [];
    this.windowStart = end;
    return sample;
  }
}

/**
 * Adapts `rfb`'s levels to what `ws` and the canvas in `container` measure,
 * once a second until `stop()`. The latest figures are on
 * `document.body.dataset` (vncQuality, vncCompression, vncFps, vncKbps) for
 * people debugging a slow link and for tests.
 */
export function attachAdaptive({ rfb, ws, container, interval = 1000, log = () => {} }) {
  const meter = new LinkMeter();
  const controller = new QualityController();
  meter.watchSocket(ws);
  const show = (fps, kbps) => {
    const d = document.body?.dataset;
    if (!d) return;
    d.vncQuality = String(controller.quality);
    d.vncCompression = String(controller.compression);
    if (fps !== undefined) {
      d.vncFps = fps.toFixed(1);
      d.vncKbps = String(Math.round(kbps));
    }
  };
  rfb.qualityLevel = controller.quality;
  rfb.compressionLevel = controller.compression;
  show();
  let canvasSeen = false;
  const timer = setInterval(() => {
    if (!canvasSeen) canvasSeen = meter.watchCanvas(container.querySelector('canvas'));
    const s = meter.take();
    const result = controller.sample(s);
    if (result.changed) {
      rfb.qualityLevel = result.quality;
      rfb.compressionLevel = result.compression;
      log(`vnc: quality ${result.quality}, compression ${result.compression} (${result.reason}: ${(s.frames / s.seconds).toFixed(1)} fps, ${Math.round((s.bytes * 8) / s.seconds / 1000)} kbit/s, link busy ${Math.round(s.busy * 100)} %)`);
    }
    show(s.frames / s.seconds, (s.bytes * 8) / s.seconds / 1000);
  }, interval);
  return {
    meter,
    controller,
    stop: () => clearInterval(timer),
  };
}
