/**
 * @module clipboard
 *
 * The clipboard between the person and the remote desktop (docs/protocol.md,
 * "The clipboard in the viewer").
 *
 * Remote → person: noVNC's RFB emits `clipboard` ({text}) when the desktop's
 * clipboard changes (a copy in the remote browser); vnc.js passes it on as
 * the VncConnection's own `clipboard` event. The text is written to the
 * person's clipboard with the async Clipboard API where the browser allows it
 * (a secure context, the page focused), and is always kept in the Clipboard
 * panel, with "Copy".
 *
 * Person → remote: Ctrl+V (or Cmd+V) on the screen is taken before noVNC sees
 * it; the browser's own paste that follows (its `paste` event, which needs no
 * permission) carries the person's clipboard, which goes to the desktop
 * (`rfb.clipboardPasteFrom`) before the key itself is sent on, so the remote
 * page's paste gets it. Where the browser fires no paste event, the text is
 * read with `navigator.clipboard.readText()` if the browser lets it; if not,
 * the key goes on alone and the panel says how to paste instead. The panel's
 * "Send to remote" gives the desktop the text in its box (and the person's
 * clipboard too, so Ctrl+V on the screen then pastes it).
 *
 * The person's clipboard is not sent when it is what the remote has already,
 * or when it has not changed since and the remote copied something newer
 * (which the browser did not let this page write locally): a copy and paste
 * inside the remote browser keeps its own text.
 *
 * Limits: Xvnc ignores a clipboard text over its MaxCutText (262144 bytes,
 * counted as noVNC sends it: UTF-8, CR LF line ends and a final NUL), so such
 * a text is refused here, with a message, and the key is not sent on.
 * View-only viewers get nothing (the server withholds the desktop's
 * clipboard, and noVNC drops clipboard messages in view-only mode) and have
 * no "Send to remote"; while an agent drives, the viewer sends no input and
 * passes no clipboard either way.
 *
 * The viewer (viewer.js) wires it:
 *
 * ```js
 * const clipboard = new ClipboardPanel({ vnc });
 * // CONNECTED → clipboard.setRole(role)
 * // the session ended → clipboard.end()
 * ```
 *
 * Mirrors for tests and scripts: `<body data-clipboard="<texts received from
 * the desktop>">`; `<aside id="clipboard" data-written="true|false">`
 * (whether the last one reached the person's clipboard) and
 * `data-sent="<texts given to the desktop>"`.
 */

const log = (...args) => console.info('[livesession]', ...args);

/** Xvnc's MaxCutText: the most clipboard bytes the desktop accepts from a viewer. */
export const MAX_CLIPBOARD_BYTES = 262144;

const XK_CONTROL_L = 0xffe3;
const XK_V = 0x0056;
const XK_v = 0x0076;

/**
 * The bytes Xvnc counts for `text` from noVNC: UTF-8 with every line end as
 * CR LF, and a final NUL.
 */
export function clipboardBytes(text) {
  return new TextEncoder().encode(String(text).replace(/\r\n|\r|\n/g, '\r\n')).length + 1;
}

/** Why `text` cannot go to the desktop (the message shown), or null. */
export function clipboardRefusal(text) {
  const bytes = clipboardBytes(text);
  if (bytes <= MAX_CLIPBOARD_BYTES) return null;
  return `Not sent: this text is ${bytes} bytes; the remote desktop accepts at most ${MAX_CLIPBOARD_BYTES} bytes (256 KiB) from the clipboard.`;
}

/** Whether a keydown is the paste shortcut: Ctrl+V, or Cmd+V (Shift allowed, no Alt). */
export function isPasteKey(ev) {
  if (ev.altKey || ev.ctrlKey === ev.metaKey) return false;
  return ev.key === 'v' || ev.key === 'V' || ev.keyCode === 86;
}

function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k in node && !k.startsWith('aria') && k !== 'role') node[k] = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

export class ClipboardPanel extends EventTarget {
  /**
   * @param {{vnc: import('./vnc.js').VncConnection, doc?: Document}} opts
   */
  constructor({ vnc, doc = document }) {
    super();
    this.vnc = vnc;
    this.doc = doc;
    this.win = doc.defaultView ?? globalThis;
    this.role = 'interactive';
    this.ended = false;
    this.open = false;
    this.received = 0;
    this.sent = 0;
    // What this page knows of the two clipboards (undefined: unknown).
    this.local = undefined; // the person's, as last seen in a paste or written here
    this.remote = undefined; // the desktop's, as last received or given
    this.remoteFromUs = false; // `remote` was given by this page (Xvnc holds it for this connection)
    this.pending = null; // a paste key taken from noVNC, waiting for the paste event
    this.ctrlDown = false;
    this.readHintShown = false;

    this.toggleBtn = doc.getElementById('clipboard-toggle');
    this.root = doc.getElementById('clipboard');
    this._build();
    this.toggleBtn.addEventListener('click', () => this.setOpen(!this.open));
    this.root.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        this.setOpen(false);
        this.toggleBtn.focus();
      }
    });

    vnc.addEventListener('clipboard', (ev) => this._fromRemote(ev.detail.text));
    // A new connection: Xvnc dropped what the last one gave it.
    vnc.addEventListener('connect', () => {
      if (this.remoteFromUs) this.remote = undefined;
    });
    const screen = vnc.container;
    // Capture: before noVNC's own listeners on its canvas inside the screen.
    screen.addEventListener('keydown', (ev) => this._onKey(ev), true);
    screen.addEventListener('keyup', (ev) => {
      this.ctrlDown = ev.ctrlKey;
    }, true);
    screen.addEventListener('paste', (ev) => this._onPaste(ev), true);
    this._render();
  }

  /** The connection's role (CONNECTED): view-only viewers cannot send. */
  setRole(role) {
    this.role = role ?? 'interactive';
    this._render();
  }

  /** The session ended: nothing more to send. */
  end() {
    this.ended = true;
    this.pending = null;
    this._render();
  }

  get canSend() {
    return this.role !== 'view' && !this.ended;
  }

  /** Whether input reaches the desktop now (not a view link, no agent driving). */
  get inputOn() {
    return this.canSend && this.vnc.connected && !this.vnc.viewOnly && Boolean(this.vnc.rfb);
  }

  /**
   * `focus`: move the focus into the panel (not when it opens by itself from a
   * key on the screen: noVNC would miss that key's release).
   */
  setOpen(open, { focus = true } = {}) {
    this.open = Boolean(open);
    this.root.hidden = !this.open;
    this.toggleBtn.setAttribute('aria-expanded', String(this.open));
    if (this.open) {
      this.toggleBtn.dataset.unseen = '0';
      if (focus) this.textEl.focus();
    }
  }

  // --- remote → person ---------------------------------------------------

  _fromRemote(text) {
    if (typeof text !== 'string') return;
    this.received += 1;
    this.doc.body.dataset.clipboard = String(this.received);
    this.remote = text;
    this.remoteFromUs = false;
    this.textEl.value = text;
    this._error('');
    if (!this.open) this.toggleBtn.dataset.unseen = '1';
    const n = [...text].length;
    this._status(`Copied in the remote browser: ${n} character${n === 1 ? '' : 's'}.`);
    this._writeLocal(text).then((ok) => {
      this.root.dataset.written = String(ok);
      if (ok) {
        this.local = text;
        this._status(`Copied in the remote browser: ${n} character${n === 1 ? '' : 's'}, also in your clipboard.`);
      }
    });
  }

  /** Writes the person's clipboard where the browser allows it; whether it did. */
  async _writeLocal(text) {
    const clip = this.win.navigator?.clipboard;
    if (!this.win.isSecureContext || !clip?.writeText) return false;
    try {
      await clip.writeText(text);
      return true;
    } catch {
      // Not allowed (no focus, no permission): the panel has the text.
      return false;
    }
  }

  // --- person → remote ---------------------------------------------------

  _onKey(ev) {
    this.ctrlDown = ev.ctrlKey;
    if (!isPasteKey(ev) || !this.inputOn) return;
    // noVNC never sees this key: the browser's paste runs (no preventDefault),
    // and the key is sent on once the desktop has the text.
    ev.stopPropagation();
    const pending = { keysym: ev.key === 'V' ? XK_V : XK_v, ctrl: ev.ctrlKey };
    this.pending = pending;
    // The paste event, if the browser fires one, comes before this.
    setTimeout(() => {
      if (this.pending === pending) {
        this.pending = null;
        this._pasteWithoutEvent(pending);
      }
    }, 0);
  }

  _onPaste(ev) {
    const pending = this.pending;
    this.pending = null;
    if (!this.inputOn) return;
    ev.preventDefault();
    ev.stopPropagation();
    const text = ev.clipboardData?.getData('text/plain') ?? '';
    // Without a key (a menu's Paste), the remote gets the whole Ctrl+V.
    this._pasteLocal(text, pending ?? { keysym: XK_v, ctrl: true, chord: true });
  }

  /** No paste event: read the clipboard where the browser allows it. */
  async _pasteWithoutEvent(pending) {
    const clip = this.win.navigator?.clipboard;
    let text = null;
    if (this.win.isSecureContext && clip?.readText) {
      try {
        text = await clip.readText();
      } catch {
        // Refused: the panel says how to paste instead.
        text = null;
      }
    }
    if (!this.inputOn) return;
    // Ctrl let go meanwhile: the remote gets the whole chord.
    const chord = pending.ctrl && !this.ctrlDown;
    if (text === null) {
      this._status('Your browser did not let this page read your clipboard: paste your text into the box above, then press "Send to remote".');
      if (!this.readHintShown && !this.open) this.setOpen(true, { focus: false });
      this.readHintShown = true;
      this._sendKey(pending.keysym, chord);
      return;
    }
    this._pasteLocal(text, { ...pending, chord });
  }

  /** The person's clipboard `text` for the desktop, then the paste key. */
  _pasteLocal(text, { keysym, chord = false }) {
    // Unchanged since this page last knew it: the desktop has it already, or
    // copied something newer that the browser did not let this page write here.
    const unchanged = this.local !== undefined && text === this.local && this.remote !== undefined;
    if (text !== '' && !unchanged && !this._send(text)) return;
    this.local = text;
    this._sendKey(keysym, chord);
  }

  /** Gives the desktop `text`; false (with the reason shown) if it cannot. */
  _send(text) {
    const refusal = clipboardRefusal(text);
    if (refusal) {
      log(`clipboard: refused ${clipboardBytes(text)} bytes (over ${MAX_CLIPBOARD_BYTES})`);
      this._error(refusal);
      this._status('');
      if (!this.open) this.setOpen(true, { focus: false });
      return false;
    }
    if (!this.inputOn) {
      this._error(this.canSend ? 'Not sent: your input is paused while an agent drives (take control first), or the screen is not connected.' : 'Not sent: this is a view-only link.');
      return false;
    }
    this.vnc.rfb.clipboardPasteFrom(text);
    this.sent += 1;
    this.root.dataset.sent = String(this.sent);
    this.remote = text;
    this.remoteFromUs = true;
    this._error('');
    return true;
  }

  _sendKey(keysym, chord) {
    const rfb = this.vnc.rfb;
    if (!rfb || !this.inputOn) return;
    if (chord) rfb.sendKey(XK_CONTROL_L, 'ControlLeft', true);
    rfb.sendKey(keysym, 'KeyV');
    if (chord) rfb.sendKey(XK_CONTROL_L, 'ControlLeft', false);
  }

  async _sendFromPanel() {
    const text = this.textEl.value;
    if (text === '') {
      this._error('Nothing to send: the box is empty.');
      return;
    }
    if (!this._send(text)) return;
    log(`clipboard: sent ${clipboardBytes(text)} bytes from the panel`);
    // The person's clipboard gets it too, so Ctrl+V on the screen pastes it.
    if ((await this._writeLocal(text)) || this._execCopy()) this.local = text;
    this._status('Sent to the remote browser: press Ctrl+V on the screen to paste it.');
  }

  async _copyFromPanel() {
    const text = this.textEl.value;
    const ok = (await this._writeLocal(text)) || this._execCopy();
    if (ok) this.local = text;
    this._status(ok ? 'Copied to your clipboard.' : 'Your browser did not allow copying: select the text and press Ctrl+C.');
  }

  /** The older way to copy, within a click, where the async API is missing. */
  _execCopy() {
    try {
      this.textEl.select();
      return this.doc.execCommand('copy');
    } catch {
      return false;
    }
  }

  // --- rendering -------------------------------------------------------

  _build() {
    const doc = this.doc;
    this.textEl = el(doc, 'textarea', {
      id: 'clipboard-text',
      class: 'clipboard-text',
      rows: 6,
      spellcheck: false,
      'aria-label': 'Clipboard text',
    });
    this.copyBtn = el(doc, 'button', { type: 'button', class: 'small clipboard-copy', text: 'Copy' });
    this.sendBtn = el(doc, 'button', { type: 'button', class: 'small clipboard-send', text: 'Send to remote' });
    const closeBtn = el(doc, 'button', { type: 'button', class: 'small clipboard-close', text: 'Close', 'aria-label': 'Close the clipboard panel' });
    this.hintEl = el(doc, 'p', { class: 'clipboard-hint muted' });
    this.errorEl = el(doc, 'p', { class: 'clipboard-error error', role: 'alert', hidden: true });
    this.statusEl = el(doc, 'p', { class: 'clipboard-status muted', role: 'status', 'aria-live': 'polite' });
    this.root.setAttribute('aria-labelledby', 'clipboard-heading');
    this.root.replaceChildren(
      el(doc, 'div', { class: 'clipboard-head' }, [el(doc, 'h2', { id: 'clipboard-heading', text: 'Clipboard' }), closeBtn]),
      this.hintEl,
      this.textEl,
      el(doc, 'div', { class: 'clipboard-actions' }, [this.copyBtn, this.sendBtn]),
      this.errorEl,
      this.statusEl,
    );
    this.copyBtn.addEventListener('click', () => this._copyFromPanel());
    this.sendBtn.addEventListener('click', () => this._sendFromPanel());
    closeBtn.addEventListener('click', () => {
      this.setOpen(false);
      this.vnc.focus();
    });
  }

  _render() {
    this.sendBtn.hidden = !this.canSend;
    this.copyBtn.hidden = this.role === 'view';
    this.textEl.readOnly = !this.canSend;
    this.hintEl.textContent = this.ended
      ? 'The session has ended.'
      : this.role === 'view'
        ? "View only: the remote browser's clipboard is not shared with this link, and nothing can be pasted into it."
        : `Text copied in the remote browser appears here (and in your clipboard where your browser allows it). Ctrl+V on the screen pastes your clipboard into the remote browser; or put text here and press "Send to remote". At most 256 KiB.`;
    this.doc.body.dataset.clipboard = String(this.received);
    this.toggleBtn.dataset.unseen ??= '0';
  }

  _error(text) {
    this.errorEl.textContent = text;
    this.errorEl.hidden = !text;
  }

  _status(text) {
    this.statusEl.textContent = text;
  }
}
