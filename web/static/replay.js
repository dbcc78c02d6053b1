// The replay page, /replay/{id}: plays a session's screen recording
// (docs/recordings.md) in the real noVNC client.
//
// The recording is the gzip file GET /api/sessions/{id}/recording serves as it is
// on disk. It is decompressed here, chunk by chunk, with DecompressionStream:
// the server does no work per viewer, the download is the compact file, and a
// recording still being written (which ends at its last flush, without a gzip
// trailer) decodes up to there. While the recording is live, the page asks for
// what was added (HEAD, then `Range: bytes=N-` with If-Range) and feeds it to
// the same decompressor, so the stream continues where it stopped.
//
// Each segment of the recording is one RFB connection as the server received
// it; it is played by a new noVNC RFB whose "WebSocket" is a ReplayChannel
// that delivers the recorded bytes at their times (and drops what noVNC sends).
// Seeking starts the segment that holds the position again and fast-forwards
// to it. Gaps longer than IDLE_SKIP_MS (nothing changed on the screen, or the
// desktop was hibernated) are skipped.
//
// Access: the session's own access token, kept fresh at the token endpoint
// with the refresh cookie (a viewer of the session has it), or a `#token=`
// handed over in the link: a session's refresh token (exchanged once, as the
// viewer does) or the operator's admin token (sent as a bearer).

import RFB from '/vendor/novnc/core/rfb.js';
import { takeFragmentToken } from '/static/session.js';
import { jwtExpiry, requestToken, TokenRefreshError } from '/static/tokens.js';
import { withReadableBackbuffer } from '/static/vnc.js';

const MAGIC = [0x4c, 0x53, 0x52, 0x45, 0x43]; // "LSREC"
const VERSION = 1;
const HEADER_LEN = 16;
const RECORD_HEADER_LEN = 13;
const KIND_SEGMENT = 1;
const KIND_DATA = 2;
const KIND_END = 3;

/** A gap between two records longer than this is skipped in playback. */
const IDLE_SKIP_MS = 3_000;
/** How often a live recording is asked for what was added. */
const FOLLOW_EVERY_MS = 2_000;
/** Fast-forwarding waits while noVNC has more than this many bytes queued. */
const MAX_QUEUED_BYTES = 8 << 20;
/** An access token is renewed this long before it expires. */
const TOKEN_MARGIN_MS = 60_000;

// ------------------------------------------------------------------ the page

const $ = (id) => document.getElementById(id);

function sessionIdFromPath(pathname = location.pathname) {
  const segments = pathname.split('/').filter(Boolean);
  if (segments.length !== 2 || segments[0] !== 'replay') return null;
  try {
    return decodeURIComponent(segments[1]);
  } catch {
    return null;
  }
}

function formatTime(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $('status').textContent = text;
}

function fail(message) {
  setState('failed', message);
  document.body.dataset.screen = 'off';
  $('overlay-text').textContent = message;
}

// ------------------------------------------------------------------ access

class AccessError extends Error {}

/** The credentials of the recording's requests. */
class Access {
  constructor(sessionId, fragmentToken) {
    this.sessionId = sessionId;
    // Our session tokens are JWTs; the admin token is not.
    this.admin = fragmentToken && jwtExpiry(fragmentToken) === null ? fragmentToken : null;
    this.pendingRefresh = this.admin ? null : fragmentToken;
    this.token = null;
    this.expiresAt = 0;
  }

  async headers() {
    if (this.admin) return { Authorization: `Bearer ${this.admin}` };
    if (!this.token || this.expiresAt - Date.now() < TOKEN_MARGIN_MS) await this.renew();
    return { Authorization: `Bearer ${this.token}` };
  }

  async renew() {
    const bearer = this.pendingRefresh;
    try {
      const fresh = await requestToken(this.sessionId, bearer ? { bearer } : {});
      this.pendingRefresh = null;
      this.token = fresh.token;
      this.expiresAt = fresh.expiresAt ?? Date.now() + 5 * 60_000;
    } catch (err) {
      if (bearer && err instanceof TokenRefreshError && err.code === 'refresh_required') {
        // The link carried an access token: use it as it is, until it expires.
        this.pendingRefresh = null;
        this.token = bearer;
        this.expiresAt = jwtExpiry(bearer) ?? 0;
        return;
      }
      if (err instanceof TokenRefreshError) {
        if (err.status === 410) throw new AccessError('The session has ended: only the operator can replay its recording now.');
        if (err.status === 401 || err.status === 403) {
          throw new AccessError('No access to this recording: open it from the session\'s viewer, or with a link that carries a token.');
        }
        if (err.status === 404) throw new AccessError('There is no such session.');
      }
      throw err;
    }
  }
}

// ------------------------------------------------------------------ the recording

/** The recording as decoded so far: segments of timed chunks. */
class Recording extends EventTarget {
  constructor() {
    super();
    this.reset();
  }

  reset() {
    this.generation = (this.generation ?? 0) + 1;
    this.header = null;
    this.segments = []; // {t0, chunks: [{t, bytes}]}
    this.ended = null; // the END record's reason
    this.lastT = 0;
    this.pending = new Uint8Array(0);
  }

  /** Where the timeline starts: the first segment (the recorder may wait for a desktop). */
  get origin() {
    return this.segments.length ? this.segments[0].t0 : 0;
  }

  get end() {
    return Math.max(this.lastT, this.origin);
  }

  push(bytes) {
    const joined = new Uint8Array(this.pending.length + bytes.length);
    joined.set(this.pending);
    joined.set(bytes, this.pending.length);
    let at = 0;
    const view = new DataView(joined.buffer);
    if (!this.header) {
      if (joined.length < HEADER_LEN) {
        this.pending = joined;
        return;
      }
      if (!MAGIC.every((b, i) => joined[i] === b)) throw new Error('this file is not a livesession recording');
      if (joined[5] !== VERSION) throw new Error(`recording version ${joined[5]} is not supported`);
      this.header = { startedAt: Number(view.getBigUint64(8)) };
      at = HEADER_LEN;
    }
    let added = false;
    while (joined.length - at >= RECORD_HEADER_LEN) {
      const kind = joined[at];
      const t = Number(view.getBigUint64(at + 1));
      const len = view.getUint32(at + 9);
      if (joined.length - at - RECORD_HEADER_LEN < len) break;
      const payload = joined.slice(at + RECORD_HEADER_LEN, at + RECORD_HEADER_LEN + len);
      at += RECORD_HEADER_LEN + len;
      this.lastT = Math.max(this.lastT, t);
      if (kind === KIND_SEGMENT) {
        this.segments.push({ t0: t, chunks: [] });
      } else if (kind === KIND_DATA && this.segments.length && len > 0) {
        this.segments[this.segments.length - 1].chunks.push({ t, bytes: payload });
      } else if (kind === KIND_END) {
        this.ended = new TextDecoder().decode(payload) || 'the recording ended';
      }
      added = true;
    }
    this.pending = joined.slice(at);
    if (added) this.dispatchEvent(new Event('change'));
  }
}

/**
 * Loads the recording into `recording` and, while it is live, follows it. The
 * compressed bytes are kept for the download button.
 */
class Feed extends EventTarget {
  constructor(sessionId, access, recording) {
    super();
    this.url = `/api/sessions/${encodeURIComponent(sessionId)}/recording`;
    this.access = access;
    this.recording = recording;
    this.compressed = [];
    this.received = 0;
    this.etag = null;
    this.live = false;
    this.finished = false;
    this.writer = null;
    this.decoding = null;
  }

  async request(init = {}) {
    const headers = { ...(await this.access.headers()), ...(init.headers ?? {}) };
    return fetch(this.url, { ...init, headers, credentials: 'same-origin', cache: 'no-store' });
  }

  async start() {
    const res = await this.request();
    if (res.status === 404) throw new AccessError('This session has no recording.');
    if (!res.ok) throw new AccessError(`The recording could not be loaded (HTTP ${res.status}).`);
    await this.take(res, true);
    this.follow();
  }

  /** Starts a new decompressor: the whole file follows. */
  restart() {
    const generation = (this.generation = (this.generation ?? 0) + 1);
    this.writer?.abort().catch(() => {});
    this.recording.reset();
    this.compressed = [];
    this.received = 0;
    const stream = new DecompressionStream('gzip');
    this.writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    this.decoding = (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done || generation !== this.generation) break;
          this.recording.push(value);
        }
      } catch (err) {
        // A decompressor replaced by a newer one; or a file that ends without its
        // gzip trailer (the server stopped while recording): what was decoded
        // before stays.
        if (generation === this.generation && !(err instanceof TypeError)) {
          this.dispatchEvent(new CustomEvent('error', { detail: err }));
        }
      }
    })();
  }

  /** Feeds a response's body (the whole file, or a range of it) to the decompressor. */
  async take(res, whole) {
    if (whole) this.restart();
    this.etag = res.headers.get('ETag');
    this.live = res.headers.get('x-recording-live') === '1';
    const reader = res.body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      this.compressed.push(value);
      this.received += value.length;
      await this.writer.write(value);
    }
    this.dispatchEvent(new Event('progress'));
  }

  async follow() {
    while (!this.finished) {
      if (this.recording.ended) break;
      await new Promise((r) => setTimeout(r, FOLLOW_EVERY_MS));
      try {
        const head = await this.request({ method: 'HEAD' });
        if (!head.ok) break;
        const length = Number(head.headers.get('Content-Length'));
        const live = head.headers.get('x-recording-live') === '1';
        if (head.headers.get('ETag') !== this.etag) {
          // A new version of the file (the recording was resumed after a restart).
          await this.take(await this.request(), true);
        } else if (length > this.received) {
          const res = await this.request({ headers: { Range: `bytes=${this.received}-`, 'If-Range': this.etag } });
          if (res.status === 206) await this.take(res, false);
          else if (res.ok) await this.take(res, true);
          else break;
        } else if (!live) {
          break;
        }
        this.live = live;
      } catch (err) {
        if (err instanceof AccessError) break;
        // A network hiccup: ask again at the next turn.
      }
    }
    this.live = false;
    this.finished = true;
    // Done: a complete stream closes cleanly, a truncated one ends its decoding.
    this.writer.close().catch(() => {});
    await this.decoding;
    this.dispatchEvent(new Event('progress'));
  }

  download(filename) {
    const blob = new Blob(this.compressed, { type: 'application/gzip' });
    const a = Object.assign(document.createElement('a'), { href: URL.createObjectURL(blob), download: filename });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }
}

// ------------------------------------------------------------------ playback

/**
 * What noVNC reads and writes instead of a WebSocket (its RFB constructor takes
 * any object with a WebSocket's shape): recorded bytes come out as messages;
 * what noVNC sends is dropped, since a recording cannot be driven.
 */
class ReplayChannel {
  constructor() {
    this.readyState = 'connecting';
    this.binaryType = 'arraybuffer';
    this.protocol = '';
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
  }

  send() {}

  close() {
    if (this.readyState === 'closed') return;
    this.readyState = 'closed';
    // After the caller's own state change, as a socket's close event would come.
    queueMicrotask(() => this.onclose?.({ code: 1000, reason: '', wasClean: true }));
  }

  open() {
    this.readyState = 'open';
    this.onopen?.();
  }

  deliver(bytes) {
    if (this.readyState !== 'open') return;
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
}

/** Bytes noVNC has received but not processed yet (it waits for images to decode). */
function queuedIn(rfb) {
  const sock = rfb?._sock;
  return typeof sock?._rQlen === 'number' ? sock._rQlen - sock._rQi : 0;
}

class Player {
  constructor(screen, recording) {
    this.screen = screen;
    this.recording = recording;
    this.rfb = null;
    this.channel = null;
    this.segment = -1;
    this.next = 0; // index of the next chunk of the segment to deliver
    this.clock = 0; // the position, in recording time (ms)
    this.playing = false;
    this.speed = 1;
    this.busy = false; // a seek is fast-forwarding
    this.lastFrame = 0;
    this.onupdate = () => {};
    this.loop = this.loop.bind(this);
  }

  get position() {
    return this.clock;
  }

  /** Starts segment `index` afresh: a new noVNC client on a new channel. */
  async openSegment(index) {
    if (this.rfb) {
      this.rfb.disconnect();
      // Lets the channel's close arrive, so the old client is gone first.
      await null;
    }
    this.segment = index;
    this.next = 0;
    const channel = new ReplayChannel();
    const rfb = withReadableBackbuffer(() => new RFB(this.screen, channel, { shared: true }));
    rfb.viewOnly = true;
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.showDotCursor = false;
    rfb.focusOnClick = false;
    rfb.addEventListener('connect', () => {
      if (this.rfb === rfb) document.body.dataset.screen = 'live';
    });
    rfb.addEventListener('disconnect', (ev) => {
      if (this.rfb === rfb && !ev.detail.clean) fail('The recording could not be played: its data is damaged.');
    });
    this.rfb = rfb;
    this.channel = channel;
    channel.open();
  }

  /** Delivers the current segment's chunks up to `t`; moves to later segments that began by then. */
  deliverUntil(t) {
    const segments = this.recording.segments;
    for (;;) {
      const seg = segments[this.segment];
      if (!seg) return;
      while (this.next < seg.chunks.length && seg.chunks[this.next].t <= t) {
        this.channel.deliver(seg.chunks[this.next].bytes);
        this.next += 1;
      }
      const following = segments[this.segment + 1];
      if (this.next < seg.chunks.length || !following || following.t0 > t) return;
      // The next segment began: a new connection, so a new client (asynchronously).
      this.switchTo(this.segment + 1);
      return;
    }
  }

  async switchTo(index) {
    if (this.busy) return;
    this.busy = true;
    try {
      await this.openSegment(index);
    } finally {
      this.busy = false;
    }
  }

  /** The time of the next record to play, or null at the end of what is loaded. */
  nextTime() {
    const seg = this.recording.segments[this.segment];
    if (seg && this.next < seg.chunks.length) return seg.chunks[this.next].t;
    const following = this.recording.segments[this.segment + 1];
    return following ? following.t0 : null;
  }

  /** Moves to `t`: the segment that holds it starts again and is fast-forwarded. */
  async seek(t) {
    const segments = this.recording.segments;
    if (!segments.length) return;
    t = Math.min(Math.max(t, this.recording.origin), this.recording.end);
    let index = 0;
    while (index + 1 < segments.length && segments[index + 1].t0 <= t) index += 1;
    this.busy = true;
    try {
      await this.openSegment(index);
      const seg = segments[index];
      let sinceYield = 0;
      while (this.next < seg.chunks.length && seg.chunks[this.next].t <= t) {
        const { bytes } = seg.chunks[this.next];
        this.channel.deliver(bytes);
        this.next += 1;
        sinceYield += bytes.length;
        // noVNC stops reading while a JPEG rectangle decodes; do not pile up
        // more than it can hold (noVNC has no public way to say it is full).
        if (sinceYield > 1 << 20 || queuedIn(this.rfb) > MAX_QUEUED_BYTES) {
          sinceYield = 0;
          do {
            await new Promise((r) => setTimeout(r, 5));
          } while (queuedIn(this.rfb) > MAX_QUEUED_BYTES);
        }
      }
      this.clock = t;
    } finally {
      this.busy = false;
    }
    this.onupdate();
  }

  play() {
    if (this.playing) return;
    if (this.recording.ended && this.clock >= this.recording.end) {
      // At the end of a complete recording: from the start again.
      this.seek(this.recording.origin).then(() => this.play());
      return;
    }
    this.playing = true;
    this.lastFrame = performance.now();
    requestAnimationFrame(this.loop);
    this.onupdate();
  }

  pause() {
    this.playing = false;
    this.onupdate();
  }

  loop(now) {
    if (!this.playing) return;
    const elapsed = Math.max(0, now - this.lastFrame);
    this.lastFrame = now;
    if (!this.busy) {
      let clock = this.clock + elapsed * this.speed;
      const next = this.nextTime();
      // Nothing happened for a while (an unchanged screen, a hibernated desktop): skip.
      if (next !== null && next - clock > IDLE_SKIP_MS) clock = next;
      // Never past what is loaded: a live recording continues from there.
      this.clock = Math.min(clock, this.recording.end);
      this.deliverUntil(this.clock);
      if (this.clock >= this.recording.end && this.nextTime() === null && this.recording.ended) {
        this.playing = false;
      }
    }
    this.onupdate();
    if (this.playing) requestAnimationFrame(this.loop);
  }
}

// ------------------------------------------------------------------ wiring

async function main() {
  const sessionId = sessionIdFromPath();
  if (!sessionId) {
    fail('This address names no session.');
    return;
  }
  const access = new Access(sessionId, takeFragmentToken(sessionId));
  const recording = new Recording();
  const feed = new Feed(sessionId, access, recording);
  const player = new Player($('screen'), recording);
  const play = $('play');
  const seek = $('seek');
  const time = $('time');
  const speed = $('speed');
  let dragging = false;

  let started = false;
  const render = () => {
    const origin = recording.origin;
    const position = player.position - origin;
    const duration = recording.end - origin;
    time.textContent = `${formatTime(position)} / ${formatTime(duration)}`;
    time.dataset.positionMs = String(Math.round(position));
    time.dataset.durationMs = String(Math.round(duration));
    seek.max = String(Math.max(0, duration));
    if (!dragging) seek.value = String(Math.max(0, position));
    play.textContent = player.playing ? 'Pause' : 'Play';
    if (document.body.dataset.state === 'failed' || !started) return;
    if (player.playing) {
      const atEnd = player.nextTime() === null && player.position >= recording.end;
      if (atEnd) setState('waiting', 'live: waiting for the screen to change');
      else setState('playing', feed.live ? 'playing (the session is still recorded)' : 'playing');
    } else if (recording.ended && player.position >= recording.end) {
      setState('ended', `end of the recording (${recording.ended})`);
    } else {
      setState('paused', feed.live ? 'paused (the session is still recorded)' : 'paused');
    }
  };
  player.onupdate = render;

  play.addEventListener('click', () => (player.playing ? player.pause() : player.play()));
  seek.addEventListener('input', () => {
    dragging = true;
    time.textContent = `${formatTime(Number(seek.value))} / ${formatTime(recording.end - recording.origin)}`;
  });
  seek.addEventListener('change', () => {
    dragging = false;
    player.seek(recording.origin + Number(seek.value));
  });
  speed.addEventListener('change', () => {
    player.speed = Number(speed.value) || 1;
  });
  $('download').addEventListener('click', (ev) => {
    ev.preventDefault();
    feed.download(`${sessionId}.lsrec.gz`);
  });
  // The file was replaced (a recording resumed after a restart of the server is
  // rewritten): once it is loaded again, the player starts over where it was.
  let loadedGeneration = recording.generation;
  const startWhenPlayable = () => {
    if (started && recording.generation !== loadedGeneration && recording.segments.some((s) => s.chunks.length)) {
      loadedGeneration = recording.generation;
      const wasPlaying = player.playing;
      player.pause();
      player.seek(player.position).then(() => wasPlaying && player.play());
    }
    if (!started && recording.segments.some((s) => s.chunks.length)) {
      loadedGeneration = recording.generation;
      started = true;
      play.disabled = false;
      seek.disabled = false;
      player.seek(recording.origin).then(() => player.play());
    }
    render();
  };
  recording.addEventListener('change', startWhenPlayable);
  feed.addEventListener('progress', () => {
    $('download').hidden = feed.received === 0;
    if (!started && feed.finished) {
      $('overlay-text').textContent = 'Nothing was recorded yet: the session\'s desktop has not run since recording began.';
      setState('paused', 'nothing recorded yet');
    }
    render();
  });
  feed.addEventListener('error', () => fail('The recording could not be decompressed.'));

  try {
    await feed.start();
  } catch (err) {
    fail(err instanceof AccessError ? err.message : `The recording could not be loaded: ${err.message ?? err}`);
  }
}

main();
