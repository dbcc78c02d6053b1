/**
 * @module files-panel
 *
 * The viewer's Files panel: the session's files (docs/api.md, "Session
 * files") — what the remote browser downloads and what the person uploads —
 * each with a link that fetches it (GET /api/sessions/{id}/files/{name}, with
 * the session's cookie), and, for interactive viewers, an "Upload…" button
 * and dropping files anywhere on the viewer. An upload lands in the remote
 * browser's Downloads folder, where a page's file chooser opens. View-only
 * viewers list and download only.
 *
 * The viewer (viewer.js) wires it to the control channel:
 *
 * ```js
 * const files = new FilesPanel({ sessionId, api: new FilesApi(sessionId, { auth }) });
 * // CONNECTED → files.setRole(role); files.refresh()
 * // FILE_ADDED → files.added(msg)
 * // the session ended → files.end()
 * ```
 *
 * The panel opens from the bar's "Files" button (which counts the files, and
 * marks ones that arrived while the panel was closed) and lies over the right
 * of the screen without resizing it. An upload shows its progress until the
 * server has it; a refused one says why in the server's words (a bad name,
 * a name the session has, too many files, too large).
 *
 * Mirrors for tests and scripts: `<body data-files="<count>">`, each file's
 * `<li data-name>` with its `<a class="files-link">`, and each upload in
 * progress as `<li class="files-upload" data-name>`.
 */

const log = (...args) => console.info('[livesession]', ...args);

/** The most one file may have (the server's limit, docs/api.md). */
export const MAX_FILE_BYTES = 100 * 1024 * 1024;

export class FilesApiError extends Error {
  constructor(message, { status = 0, code = null } = {}) {
    super(message);
    this.name = 'FilesApiError';
    this.status = status;
    this.code = code;
  }
}

/** What an error answer says, or a fallback naming the status. */
function errorOf(status, body) {
  const code = body?.error?.code ?? null;
  const message = body?.error?.message ?? `the server answered ${status}`;
  return new FilesApiError(message, { status, code });
}

/**
 * The files endpoints under `/api/sessions/{id}/files`, with the session's
 * cookie. `auth.ensure()` (before each call) and `auth.renew()` (after a 401,
 * then one more try) keep that cookie fresh, as for the task API.
 */
export class FilesApi {
  constructor(sessionId, { fetchImpl = (...a) => globalThis.fetch(...a), XHR = globalThis.XMLHttpRequest, auth = null } = {}) {
    this.base = `/api/sessions/${encodeURIComponent(sessionId)}/files`;
    this.fetch = fetchImpl;
    this.XHR = XHR;
    this.auth = auth;
  }

  /** Where a file is fetched (one percent-encoded path segment). */
  fileUrl(name) {
    return `${this.base}/${encodeURIComponent(name)}`;
  }

  async ensure() {
    if (!this.auth?.ensure) return;
    try {
      await this.auth.ensure();
    } catch {
      // The request says what is wrong, if anything.
    }
  }

  /** After a 401: renew once; whether to try again. */
  async renewed(attempt) {
    if (attempt > 0 || !this.auth?.renew) return false;
    try {
      await this.auth.renew();
      return true;
    } catch {
      return false;
    }
  }

  /** `[{name, size, modified}]`, by name. */
  async list() {
    for (let attempt = 0; ; attempt += 1) {
      await this.ensure();
      let res;
      try {
        res = await this.fetch(this.base, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
      } catch (err) {
        throw new FilesApiError(`the server is unreachable (${err?.message ?? err})`);
      }
      const body = await res.json().catch(() => null);
      if (res.ok) return Array.isArray(body?.files) ? body.files : [];
      if (res.status === 401 && (await this.renewed(attempt))) continue;
      throw errorOf(res.status, body);
    }
  }

  /**
   * Uploads `file` under its own name; `onProgress(sent, total)` as it goes.
   * Resolves to the server's entry `{name, size, modified}`.
   */
  async upload(file, { onProgress = null } = {}) {
    for (let attempt = 0; ; attempt += 1) {
      await this.ensure();
      const { status, body } = await this._post(file, onProgress);
      if (status >= 200 && status < 300 && body?.name) return body;
      if (status === 401 && (await this.renewed(attempt))) continue;
      throw errorOf(status, body);
    }
  }

  /** One POST through XMLHttpRequest (fetch cannot report an upload's progress). */
  _post(file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new this.XHR();
      xhr.open('POST', `${this.base}?name=${encodeURIComponent(file.name)}`);
      xhr.withCredentials = true;
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.responseType = 'text';
      if (onProgress && xhr.upload) {
        xhr.upload.addEventListener('progress', (ev) => onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size));
      }
      xhr.addEventListener('load', () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // not JSON: the status says it
        }
        resolve({ status: xhr.status, body });
      });
      xhr.addEventListener('error', () => reject(new FilesApiError('the upload was interrupted (the server is unreachable)')));
      xhr.addEventListener('abort', () => reject(new FilesApiError('the upload was cancelled')));
      xhr.send(file);
    });
  }
}

/** A byte count for people: "512 B", "1.5 KB", "12.3 MB". */
export function formatSize(bytes) {
  const n = Number(bytes) || 0;
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/** Why a file is refused before it is sent (the server's own words). */
export function refusalBeforeSending(file) {
  if (file.size > MAX_FILE_BYTES) return `the file is larger than ${MAX_FILE_BYTES} bytes, the most a file may have`;
  return null;
}

function el(doc, tag, props = {}, children = []) {
  const node = doc.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k in node && !k.startsWith('aria') && k !== 'role') node[k] = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

/** Whether a drag carries files (not text or a link dragged around the page). */
function carriesFiles(ev) {
  return Array.from(ev.dataTransfer?.types ?? []).includes('Files');
}

export class FilesPanel extends EventTarget {
  /**
   * @param {{sessionId: string, api: FilesApi, doc?: Document}} opts
   */
  constructor({ sessionId, api, doc = document }) {
    super();
    this.sessionId = sessionId;
    this.api = api;
    this.doc = doc;
    /** @type {Map<string, {name: string, size: number, modified: string}>} */
    this.files = new Map();
    this.role = 'interactive';
    this.open = false;
    this.unseen = 0;
    this.ended = false;
    this.loading = null;
    this.queue = Promise.resolve(); // uploads, one at a time
    this.dragDepth = 0;
    this.errors = [];

    this.toggleBtn = doc.getElementById('files-toggle');
    this.root = doc.getElementById('files');
    this._build();
    this.toggleBtn.addEventListener('click', () => this.setOpen(!this.open));
    this.root.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        this.setOpen(false);
        this.toggleBtn.focus();
      }
    });
    this._listenForDrops();
    this._render();
  }

  get canUpload() {
    return this.role !== 'view' && !this.ended;
  }

  /** The connection's role (CONNECTED): view-only viewers cannot upload. */
  setRole(role) {
    this.role = role ?? 'interactive';
    this._render();
  }

  setOpen(open) {
    this.open = Boolean(open);
    this.root.hidden = !this.open;
    this.toggleBtn.setAttribute('aria-expanded', String(this.open));
    if (this.open) {
      this.unseen = 0;
      this.headingEl.focus();
    }
    this._renderToggle();
  }

  /** The list, asked for on every CONNECTED: what arrived while the page was away. */
  refresh() {
    if (this.ended) return Promise.resolve();
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        const list = await this.api.list();
        for (const entry of list) this.files.set(entry.name, entry);
        this.listError = null;
      } catch (err) {
        log(`files: listing failed: ${err.message}`);
        this.listError = `Could not list the session's files: ${err.message}`;
      } finally {
        this.loading = null;
        this._render();
      }
    })();
    return this.loading;
  }

  /** FILE_ADDED (or an upload's answer): a file the session now has. */
  added(entry, { announce = true } = {}) {
    if (!entry?.name || this.ended) return;
    const isNew = !this.files.has(entry.name);
    this.files.set(entry.name, { name: entry.name, size: entry.size, modified: entry.modified });
    if (isNew) {
      if (!this.open) this.unseen += 1;
      if (announce) this._announce(`New file: ${entry.name} (${formatSize(entry.size)})`);
    }
    this._render();
  }

  /** The session ended: its files are gone with it (the server removes them). */
  end() {
    this.ended = true;
    this.files.clear();
    this.unseen = 0;
    this._render();
  }

  /** Uploads files (from the picker or a drop), one after another. */
  upload(fileList) {
    const files = Array.from(fileList ?? []);
    if (files.length === 0) return this.queue;
    if (!this.canUpload) {
      this._error(this.ended ? 'The session has ended: nothing can be uploaded.' : 'This is a view-only link: files can be downloaded but not uploaded.');
      return this.queue;
    }
    this.errors = [];
    this._renderErrors();
    if (!this.open) this.setOpen(true);
    for (const file of files) {
      const row = this._uploadRow(file);
      this.queue = this.queue.then(() => this._uploadOne(file, row));
    }
    return this.queue;
  }

  async _uploadOne(file, row) {
    const refusal = refusalBeforeSending(file);
    if (refusal) {
      row.remove();
      this._error(`Could not upload "${file.name}": ${refusal}.`);
      return;
    }
    row.dataset.state = 'uploading';
    log(`files: uploading ${file.size} bytes`);
    try {
      const entry = await this.api.upload(file, {
        onProgress: (sent, total) => {
          const share = total > 0 ? Math.min(1, sent / total) : 0;
          row.progress.value = Math.round(share * 100);
          row.status.textContent = `${formatSize(sent)} of ${formatSize(total)}`;
        },
      });
      row.remove();
      this.added(entry, { announce: false });
      this._announce(`Uploaded ${entry.name}: it is in the remote browser's Downloads folder.`);
    } catch (err) {
      row.remove();
      log(`files: upload refused (${err.status || 'network'} ${err.code ?? ''})`);
      this._error(`Could not upload "${file.name}": ${err.message}.`);
    }
  }

  // --- rendering -------------------------------------------------------

  _build() {
    const doc = this.doc;
    this.headingEl = el(doc, 'h2', { id: 'files-heading', text: 'Files', tabIndex: -1 });
    this.uploadBtn = el(doc, 'button', { type: 'button', class: 'small files-upload-button', text: 'Upload…' });
    this.input = el(doc, 'input', { type: 'file', id: 'files-input', class: 'visually-hidden', multiple: true, tabIndex: -1, 'aria-label': 'Files to upload' });
    const closeBtn = el(doc, 'button', { type: 'button', class: 'small files-close', text: 'Close', 'aria-label': 'Close the files panel' });
    this.hintEl = el(doc, 'p', { class: 'files-hint muted' });
    this.errorEl = el(doc, 'div', { class: 'files-error error', role: 'alert' });
    this.uploadsEl = el(doc, 'ul', { class: 'files-uploads' });
    this.listEl = el(doc, 'ul', { class: 'files-list', id: 'files-list' });
    this.emptyEl = el(doc, 'p', { class: 'files-empty muted', text: 'No files yet.' });
    this.announceEl = el(doc, 'p', { class: 'visually-hidden', role: 'status', 'aria-live': 'polite' });
    this.root.setAttribute('aria-labelledby', 'files-heading');
    this.root.replaceChildren(
      el(doc, 'div', { class: 'files-head' }, [this.headingEl, this.uploadBtn, closeBtn]),
      this.input,
      this.hintEl,
      this.errorEl,
      this.uploadsEl,
      this.listEl,
      this.emptyEl,
      this.announceEl,
    );
    this.uploadBtn.addEventListener('click', () => this.input.click());
    this.input.addEventListener('change', () => {
      const files = Array.from(this.input.files ?? []);
      this.input.value = '';
      this.upload(files);
    });
    closeBtn.addEventListener('click', () => {
      this.setOpen(false);
      this.toggleBtn.focus();
    });
    this.countEl = el(doc, 'span', { class: 'files-count' });
    this.toggleBtn.append(' ', this.countEl);
    this.dropEl = el(doc, 'div', { class: 'files-drop', hidden: true }, [
      el(doc, 'p', { text: "Drop files here to upload them to the remote browser's Downloads folder" }),
    ]);
    (doc.querySelector('.workspace') ?? doc.body).append(this.dropEl);
  }

  _uploadRow(file) {
    const doc = this.doc;
    const progress = el(doc, 'progress', { max: 100, value: 0, 'aria-label': `Uploading ${file.name}` });
    const status = el(doc, 'span', { class: 'files-upload-status muted', text: 'waiting' });
    const row = el(doc, 'li', { class: 'files-upload', dataset: { name: file.name, state: 'waiting' } }, [
      el(doc, 'span', { class: 'files-name', text: file.name }),
      progress,
      status,
    ]);
    row.progress = progress;
    row.status = status;
    this.uploadsEl.append(row);
    return row;
  }

  _render() {
    const doc = this.doc;
    const names = [...this.files.keys()].sort();
    const rows = names.map((name) => {
      const f = this.files.get(name);
      const link = el(doc, 'a', { class: 'files-link', href: this.api.fileUrl(name), download: name, text: name });
      link.addEventListener('click', (ev) => this._fetchFresh(ev, link));
      const when = new Date(f.modified);
      const meta = el(doc, 'span', {
        class: 'files-meta muted',
        text: `${formatSize(f.size)}${Number.isNaN(when.getTime()) ? '' : ` · ${when.toLocaleString()}`}`,
        title: f.modified,
      });
      return el(doc, 'li', { class: 'files-item', dataset: { name } }, [link, meta]);
    });
    this.listEl.replaceChildren(...rows);
    this.emptyEl.hidden = names.length > 0 || Boolean(this.listError);
    this.uploadBtn.hidden = !this.canUpload;
    this.input.disabled = !this.canUpload;
    this.hintEl.textContent = this.ended
      ? 'The session has ended; its files are gone with it.'
      : this.role === 'view'
        ? 'View only: you can download these files, not upload.'
        : "What the remote browser downloads appears here. Uploads (or files dropped on the viewer) go to its Downloads folder, where a page's file chooser finds them.";
    this.doc.body.dataset.files = String(names.length);
    this._renderErrors();
    this._renderToggle();
  }

  _renderToggle() {
    const n = this.files.size;
    this.countEl.textContent = this.unseen > 0 ? `${n} (${this.unseen} new)` : String(n);
    this.toggleBtn.dataset.unseen = String(this.unseen);
    this.toggleBtn.setAttribute('aria-label', `Files: ${n}${this.unseen > 0 ? `, ${this.unseen} new` : ''}`);
  }

  _renderErrors() {
    const lines = [...(this.listError ? [this.listError] : []), ...this.errors];
    this.errorEl.replaceChildren(...lines.map((text) => el(this.doc, 'p', { text })));
    this.errorEl.hidden = lines.length === 0;
  }

  _error(text) {
    this.errors.push(text);
    if (!this.open) this.setOpen(true);
    this._renderErrors();
  }

  _announce(text) {
    this.announceEl.textContent = text;
  }

  /**
   * A click on a file's link: the access cookie is renewed first if it is
   * about to end (the link itself is a plain same-origin download).
   */
  _fetchFresh(ev, link) {
    if (link.dataset.fresh === '1' || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    this.api.ensure().finally(() => {
      link.dataset.fresh = '1';
      link.click();
      delete link.dataset.fresh;
    });
  }

  // --- dropping files on the viewer --------------------------------------

  _listenForDrops() {
    const win = this.doc.defaultView ?? globalThis;
    // Every drag of files over the page is taken here: the browser's default
    // (opening the file in place of the viewer) would end the page.
    win.addEventListener('dragenter', (ev) => {
      if (!carriesFiles(ev)) return;
      ev.preventDefault();
      this.dragDepth += 1;
      this.dropEl.hidden = false;
      this.dropEl.dataset.allowed = String(this.canUpload);
      this.dropEl.firstChild.textContent = this.canUpload
        ? "Drop files here to upload them to the remote browser's Downloads folder"
        : 'View only: files cannot be uploaded from this link';
    });
    win.addEventListener('dragover', (ev) => {
      if (!carriesFiles(ev)) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = this.canUpload ? 'copy' : 'none';
    });
    win.addEventListener('dragleave', (ev) => {
      if (!carriesFiles(ev)) return;
      this.dragDepth = Math.max(0, this.dragDepth - 1);
      if (this.dragDepth === 0) this.dropEl.hidden = true;
    });
    win.addEventListener('drop', (ev) => {
      if (!carriesFiles(ev)) return;
      ev.preventDefault();
      this.dragDepth = 0;
      this.dropEl.hidden = true;
      this.upload(ev.dataTransfer.files);
    });
  }
}
