// One noVNC RFB connection to the session's desktop, plus the WebSocket close
// code noVNC keeps to itself.
//
// We open the WebSocket ourselves and hand it to RFB (a documented form of its
// second argument) instead of passing the URL: that way we can listen for the
// socket's CloseEvent and learn *why* the server closed it (4008 revoked,
// 4010 desktop unavailable, …) — noVNC only reports "clean" or not. The URL
// carries no token: the browser sends the session's access cookie with the
// upgrade (the viewer renews it at the token endpoint first).
//
// Events (CustomEvent, payload in `detail`):
//   connect     {}
//   disconnect  {clean, code, reason, byUs}   RFB and its socket are both done
//   securityfailure  {status, reason}
//   desktopname {name}
//   clipboard   {text}   the desktop's clipboard changed (clipboard.js)

import RFB from '/vendor/novnc/core/rfb.js';
import { attachAdaptive } from './adaptive.js';

// When RFB gives up first (protocol error), its socket's close event follows;
// wait this long for it before reporting the disconnect without a code.
const CLOSE_EVENT_WAIT_MS = 2_000;

export class VncConnection extends EventTarget {
  /** @param {HTMLElement} container element the noVNC canvas is put into */
  constructor(container) {
    super();
    this.container = container;
    this.rfb = null;
    this.state = 'idle'; // idle | connecting | connected
    this.generation = 0;
    this._viewOnly = false;
  }

  /**
   * Send no keyboard or mouse input (a view-only link). For the user's sake
   * only: the server enforces the role on its side.
   */
  set viewOnly(on) {
    this._viewOnly = Boolean(on);
    if (this.rfb) this.rfb.viewOnly = this._viewOnly;
  }

  get viewOnly() {
    return this._viewOnly;
  }

  get busy() {
    return this.state !== 'idle';
  }

  get connected() {
    return this.state === 'connected';
  }

  connect(url) {
    if (this.busy) return;
    const generation = ++this.generation;
    const ws = new WebSocket(url, ['binary']);
    const closed = { seen: false, code: 0, reason: '', wasClean: false };
    let rfbDone = null; // {clean} once RFB has disconnected
    let waitTimer = null;
    let reported = false;

    const report = () => {
      if (reported || generation !== this.generation) return;
      reported = true;
      clearTimeout(waitTimer);
      const byUs = this.byUs === generation;
      this.rfb = null;
      this.state = 'idle';
      this.emit('disconnect', {
        clean: rfbDone?.clean ?? closed.wasClean,
        code: closed.seen ? closed.code : null,
        reason: closed.reason,
        byUs,
      });
    };

    // Registered before RFB attaches its own `onclose`, so it runs first and
    // the code is known by the time RFB announces the disconnect.
    ws.addEventListener('close', (ev) => {
      Object.assign(closed, { seen: true, code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      if (rfbDone) report();
    });

    this.state = 'connecting';
    const rfb = withReadableBackbuffer(() => new RFB(this.container, ws));
    this.rfb = rfb;
    // Fit the remote screen into the window, and ask the server to resize
    // the desktop to the window where it supports that.
    rfb.scaleViewport = true;
    rfb.resizeSession = true;
    // Show a small dot when the remote cursor is invisible, so the user
    // always sees where the pointer is.
    rfb.showDotCursor = true;
    rfb.focusOnClick = true;
    rfb.viewOnly = this._viewOnly;
    // noVNC asks for Tight first (then ZRLE, …, Raw last). JPEG quality 6 of 9 and zlib
    // level 2 keep a scrolling page sharp and cheap for Xvnc's CPU; measured with
    // `livesession bench scroll` (docs/performance.md). Set here, not left to defaults.
    rfb.qualityLevel = 6;
    rfb.compressionLevel = 2;
    // From there, adaptive.js moves both with the frame rate and bandwidth this
    // viewer measures (lower on a saturated link, back up when it has room).
    const adaptive = attachAdaptive({ rfb, ws, container: this.container, log: (line) => console.info('[livesession]', line) });

    rfb.addEventListener('connect', () => {
      if (generation !== this.generation) return;
      this.state = 'connected';
      this.emit('connect', {});
    });
    rfb.addEventListener('disconnect', (ev) => {
      adaptive.stop();
      rfbDone = { clean: ev.detail.clean };
      if (closed.seen || ws.readyState === WebSocket.CLOSED) report();
      else waitTimer = setTimeout(report, CLOSE_EVENT_WAIT_MS);
    });
    rfb.addEventListener('securityfailure', (ev) => {
      this.emit('securityfailure', { status: ev.detail.status, reason: ev.detail.reason });
    });
    rfb.addEventListener('desktopname', (ev) => {
      this.emit('desktopname', { name: ev.detail.name });
    });
    rfb.addEventListener('clipboard', (ev) => {
      if (generation === this.generation) this.emit('clipboard', { text: ev.detail.text });
    });
    rfb.addEventListener('credentialsrequired', () => {
      // The server proxies to a desktop without VNC passwords; being asked
      // for one means something is misconfigured, not that the user can help.
      console.warn('[livesession] vnc: server asked for VNC credentials; disconnecting');
      rfb.disconnect();
    });
  }

  /** Close the connection on purpose; the disconnect event has byUs = true. */
  disconnect() {
    if (!this.rfb) return;
    this.byUs = this.generation;
    this.rfb.disconnect();
  }

  focus() {
    this.rfb?.focus();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * Runs `create` (which makes an RFB) with 2D contexts of canvases outside the
 * document created with `willReadFrequently`. noVNC draws into an off-screen
 * backbuffer and reads it back whole on every resize of the remote screen
 * (Display.resize keeps its pixels across the size change); without the hint,
 * Chromium logs a "Multiple readback operations" warning on the second resize,
 * and a person who resizes the window often pays a GPU readback each time.
 * noVNC has no option for it (novnc/noVNC#1761), so the hint is added while
 * RFB builds its Display; the visible canvas is already in the document then
 * and keeps the default.
 */
export function withReadableBackbuffer(create) {
  const proto = HTMLCanvasElement.prototype;
  const getContext = proto.getContext;
  proto.getContext = function (type, options) {
    if (type === '2d' && !this.isConnected) {
      return getContext.call(this, type, { ...options, willReadFrequently: true });
    }
    return getContext.call(this, type, options);
  };
  try {
    return create();
  } finally {
    proto.getContext = getContext;
  }
}
