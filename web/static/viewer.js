// The session viewer: ties the control channel (what the desktop is doing,
// why connections end) to the noVNC connection (the screen itself).
//
// Auth: a `#token=…` link is taken out of the address bar at once and
// exchanged at POST /api/sessions/{id}/token (Authorization: Bearer), which
// gives this browser the session's HttpOnly cookies; from then on the token
// endpoint is called with the refresh cookie, and both WebSockets
// authenticate with the access cookie: no token is ever put into a URL. A
// reload resumes the same session with the cookies.
//
// Flow: ControlClient (control.js) gets a token, opens the control channel,
// keeps it up (PING, proactive AUTH before the token ends, backoff) → the
// server starts the desktop and reports DESKTOP_STATUS steps → on "ready"
// open RFB. While every desktop is in use the session waits in line
// ("queued", shown as "waiting for a desktop: you are 2nd in line"); a desktop
// that hibernated while nobody watched reports "resuming" instead of "starting". Either socket can drop; the control channel reconnects with
// backoff and, once it reports "ready" again, RFB is reopened if it is not
// connected. RFB has its own backoff while the control channel is up and the
// desktop ready; a 4003/4001 on RFB refreshes the token (the endpoint renews
// the cookie) and reconnects once. A final close code (revoked, expired, …),
// SESSION_ENDED, or a refused refresh stops everything for good.
//
// Agents (docs/agents.md): CONTROL says who drives the browser. While an
// agent does, the server drops this page's input: the banner says so, noVNC
// stops sending input, and an interactive viewer is offered "Take control"
// (TAKE_CONTROL); while the person holds it, "Hand back to the agent"
// (RELEASE_CONTROL). An agent asking for a person (CONTROL `reason`) gets its
// reason shown in the banner's alert region.
//
// Tasks (task-panel.js): the session's tasks, listed at GET
// /api/sessions/{id}/tasks on every CONNECTED and followed live through
// TASK_UPDATE. The control channel reconnects with `?tasks_after=<the last
// cursor seen>`, so an update is neither repeated nor lost across reconnects
// (the panel also drops any it has seen). A task waiting for the person offers
// the banner's own "Take control".
//
// Files (files-panel.js): the session's files (the remote browser's downloads
// and uploads), listed at GET /api/sessions/{id}/files on every CONNECTED and
// followed live through FILE_ADDED; interactive viewers upload (the panel's
// picker, or files dropped on the page) into the remote browser's Downloads.

import { Backoff } from './backoff.js';
import { describe, hint, isFinal } from './closecodes.js';
import { ClipboardPanel } from './clipboard.js';
import { ControlClient, isAuthClose, retryAfterMs } from './control.js';
import { FilesApi, FilesPanel } from './files-panel.js';
import { HandoverUi } from './handover.js';
import { TaskPanel } from './task-panel.js';
import { TaskApi } from './tasks.js';
import { channelUrl, sessionIdFromPath, takeFragmentToken } from './session.js';
import { sessionTokenProvider } from './tokens.js';
import { ViewerUi, queueText } from './ui.js';
import { VncConnection } from './vnc.js';

const STEP_LABELS = { xvnc: 'Xvnc', openbox: 'openbox', chromium: 'Chromium' };
// An RFB connection that lasted this long resets the RFB backoff.
const VNC_STABLE_MS = 30_000;
// The access cookie must be good for at least this long when RFB connects.
const VNC_MIN_TOKEN_MS = 2_000;

const log = (...args) => console.info('[livesession]', ...args);

function main() {
  const ui = new ViewerUi();
  const id = sessionIdFromPath();
  if (!id) {
    ui.setState('failed', 'no session id in this address');
    return;
  }
  // A link's token leaves the address bar before anything else happens. It
  // is never logged, stored or put into a URL.
  const linkToken = takeFragmentToken(id);
  log(`viewer for session ${id}; auth by ${linkToken ? 'link token, exchanged for cookies' : 'cookie'}`);

  // Created before the control client, whose URL asks for the task updates
  // after the last one the panel saw; its API calls renew the access cookie
  // through the control client.
  let control = null;
  const tasks = new TaskPanel({
    sessionId: id,
    api: new TaskApi(id, {
      auth: {
        ensure: () => control.ensureToken(),
        renew: () => control.refreshAuth('expired'),
      },
    }),
  });
  control = new ControlClient({
    sessionId: id,
    refreshToken: sessionTokenProvider(id, { initialToken: linkToken }),
    url: () => channelUrl(id, 'control'),
    query: () => ({ tasks_after: tasks.lastCursor > 0 ? tasks.lastCursor : null }),
  });
  // The session's files (files-panel.js): listed on CONNECTED, then FILE_ADDED.
  const files = new FilesPanel({
    sessionId: id,
    api: new FilesApi(id, { auth: { ensure: () => control.ensureToken(), renew: () => control.refreshAuth('expired') } }),
  });
  const vnc = new VncConnection(document.getElementById('screen'));
  // The clipboard both ways (clipboard.js): Ctrl+V on the screen, the desktop's copies.
  const clipboard = new ClipboardPanel({ vnc });
  const handover = new HandoverUi();
  handover.addEventListener('change', (ev) => tasks.setControl(ev.detail));
  tasks.addEventListener('take', () => handover.take());
  tasks.addEventListener('release', () => handover.release());
  let role = 'interactive'; // of this page's token, from CONNECTED
  let tookControl = false; // this page asked for control: focus the screen once it has it
  const vncBackoff = new Backoff();
  let vncRetryTimer = null;
  let vncConnectedAt = 0;
  let vncAuthRetried = false; // one refresh-then-reconnect per refusal
  let vncPreparing = false; // fetching a fresh cookie before connecting
  let desktop = null; // last DESKTOP_STATUS status
  let desktopError = null; // text of the last "failed" status, until the next start
  let ended = false;

  document.body.dataset.control = control.state;
  control.addEventListener('state', (ev) => {
    document.body.dataset.control = ev.detail.state;
    handover.setConnected(ev.detail.state === 'connected');
  });

  const connectVnc = async ({ refresh = false } = {}) => {
    clearTimeout(vncRetryTimer);
    vncRetryTimer = null;
    // Without an open control channel reporting "ready" there is nothing to
    // connect to yet; the next "ready" calls this again.
    if (ended || vnc.busy || vncPreparing || !control.isConnected || desktop !== 'ready') return;
    vncPreparing = true;
    try {
      // The upgrade authenticates with the access cookie: make sure it is
      // fresh (the token endpoint renews it).
      if (refresh) await control.refreshAuth('expired');
      else await control.ensureToken(VNC_MIN_TOKEN_MS);
    } catch (err) {
      vncPreparing = false;
      log(`vnc: could not renew access: ${err.message}`);
      if (ended) return;
      // Refused for good: the control channel meets the same refusal when its
      // token ends and stops the page; asking again here would not help.
      if (err.final) ui.setState('failed', `screen: access refused (${err.message})`);
      else scheduleVnc(`screen: ${err.message}`);
      return;
    }
    vncPreparing = false;
    if (ended || vnc.busy || !control.isConnected || desktop !== 'ready') return;
    log('vnc: connecting');
    ui.setState('connecting', 'connecting to the desktop');
    vnc.connect(channelUrl(id, 'vnc'));
  };

  const scheduleVnc = (what, code = null, reason = '') => {
    const delay = Math.max(vncBackoff.next(), retryAfterMs(code, reason));
    log(`vnc: reconnecting in ${delay} ms`);
    ui.reconnecting(delay, what);
    vncRetryTimer = setTimeout(() => connectVnc(), delay);
  };

  /**
   * Stop for good and say why: `code` is the final close code behind it.
   * `leaveControl`: the control client stops by itself (after SESSION_ENDED
   * the server closes it with the reason code, which is then shown).
   */
  const end = (code, text = code ? describe(code) : 'session ended', notice = hint(code), { leaveControl = false } = {}) => {
    if (ended) return;
    ended = true;
    log(`ended: ${text}`);
    clearTimeout(vncRetryTimer);
    ui.setState('ended', text);
    ui.notice(notice);
    ui.stopExpiry();
    handover.clear();
    tasks.end();
    files.end();
    clipboard.end();
    // The session is over for this page: drop the auth state too.
    if (!leaveControl && control.state !== 'stopped') control.forceDisconnect();
    vnc.disconnect();
  };

  // --- control channel -------------------------------------------------

  control.addEventListener('connecting', (ev) => {
    log(`control: connecting (attempt ${ev.detail.attempt})`);
    if (ended) return;
    if (desktopError) ui.setState('failed', `${desktopError}; retrying…`);
    else if (!vnc.connected) ui.setState('connecting', 'connecting');
  });

  control.addEventListener('open', () => {
    log('control: open');
  });

  control.addEventListener('token', (ev) => {
    const at = ev.detail.expiresAt ? new Date(ev.detail.expiresAt).toISOString() : 'unknown';
    log(`access renewed (${ev.detail.reason}); token ends at ${at}`);
  });

  control.addEventListener('autherror', (ev) => {
    console.warn('[livesession] control: renewing access failed:', ev.detail.message);
  });

  control.addEventListener('message', (ev) => {
    const msg = ev.detail;
    switch (msg.type) {
      case 'CONNECTED':
        log(`control: connected as ${msg.role ?? 'interactive'}; session expires at ${msg.expires_at}`);
        ui.expiry(msg.expires_at, msg.server_time);
        // A view link's role: no input from this page (the server drops it anyway).
        role = msg.role ?? 'interactive';
        ui.setViewOnly(role === 'view');
        handover.setRole(role);
        tasks.setRole(role);
        tasks.connected(msg.server_time);
        applyInputMode();
        // The list on every (re)connect: tasks and states while this page was away.
        tasks.refresh();
        files.setRole(role);
        clipboard.setRole(role);
        files.refresh();
        break;
      case 'CONTROL':
        onControl(msg);
        break;
      case 'DESKTOP_STATUS':
        onDesktopStatus(msg);
        break;
      case 'TASK_UPDATE':
        tasks.update(msg);
        break;
      case 'FILE_ADDED':
        files.added(msg);
        break;
      case 'PONG':
        break;
      case 'AUTH_OK':
        log(`control: access renewed until ${msg.expires_at}`);
        break;
      case 'SESSION_EXPIRING':
        log(`control: session ends in ${msg.seconds_left} s`);
        if (!ended) ui.notice(`This session ends in ${Math.max(1, Math.round(msg.seconds_left / 60))} min.`);
        break;
      case 'SESSION_ENDED':
        log(`control: session ended (${msg.reason})`);
        if (LOGIN_ENDS[msg.reason]) {
          endLogin(LOGIN_ENDS[msg.reason], { leaveControl: true });
          break;
        }
        {
          const code = { expired: 4007, revoked: 4008 }[msg.reason] ?? null;
          end(code, code ? describe(code) : 'session ended', hint(code), { leaveControl: true });
        }
        break;
      case 'ERROR':
        console.warn('[livesession] control: server error:', msg.message);
        // A refused TAKE_CONTROL/RELEASE_CONTROL: the buttons need not wait.
        if (handover.busy) handover.pending(false);
        if (!/^AUTH\b/.test(msg.message ?? '')) ui.notice(`Server: ${msg.message}`);
        break;
      default:
        log(`control: ignoring message type ${msg.type}`);
    }
  });

  /** Input goes to the desktop unless this is a view link or an agent drives. */
  const applyInputMode = () => {
    vnc.viewOnly = role === 'view' || handover.view.inputPaused;
  };

  const onControl = (msg) => {
    log(`control: held by ${msg.holder} since ${msg.since}${msg.reason ? ` (the agent asks: ${msg.reason})` : ''}`);
    if (ended) return;
    handover.setState(msg);
    applyInputMode();
    if (msg.holder === 'person' && tookControl) vnc.focus();
    tookControl = false;
  };

  handover.addEventListener('take', () => {
    log('taking control');
    tookControl = true;
    if (!control.send({ type: 'TAKE_CONTROL' })) {
      tookControl = false;
      handover.pending(false);
    }
  });

  handover.addEventListener('release', () => {
    log('handing control back');
    if (!control.send({ type: 'RELEASE_CONTROL' })) handover.pending(false);
  });

  const onDesktopStatus = (msg) => {
    desktop = msg.status;
    log(`control: desktop ${msg.status}${msg.step ? ` (${msg.step})` : ''}`);
    if (ended) return;
    switch (msg.status) {
      case 'queued':
        // Every desktop is in use: this session waits in line (the place moves up).
        desktopError = null;
        if (!vnc.connected) ui.setState('starting', queueText(msg.position));
        ui.notice('');
        break;
      case 'starting':
      case 'resuming': {
        // "resuming": the desktop hibernated while idle and starts again from its saved state.
        desktopError = null;
        const step = STEP_LABELS[msg.step] ?? msg.step;
        const what = msg.status === 'resuming' ? 'resuming desktop' : 'starting desktop';
        if (!vnc.connected) ui.setState('starting', step ? `${what}: ${step}…` : `${what}…`);
        ui.notice('');
        break;
      }
      case 'restarting':
        // The browser exited (a crash, its last window closed) and starts again inside
        // the same desktop: the picture stays; the state says why it is empty meanwhile.
        desktopError = null;
        ui.setState('starting', 'the browser is starting again…');
        break;
      case 'hibernating':
      case 'hibernated':
        // Saved while nobody watched; it resumes for this page next.
        if (!vnc.connected) ui.setState('starting', 'resuming desktop…');
        break;
      case 'ready':
        desktopError = null;
        vncAuthRetried = false;
        ui.notice('');
        if (vnc.connected) ui.setState('connected', 'connected');
        else connectVnc();
        break;
      case 'failed':
        clearTimeout(vncRetryTimer);
        desktopError = `desktop failed${msg.error ? `: ${msg.error}` : ''}`;
        ui.setState('failed', desktopError);
        break;
      case 'stopped':
        clearTimeout(vncRetryTimer);
        if (!vnc.connected) ui.setState('connecting', 'desktop stopped; waiting for it to start');
        break;
      default:
        break;
    }
  };

  control.addEventListener('close', (ev) => {
    const { code, reason, final, refresh, retryInMs } = ev.detail;
    log(`control: closed ${code} ${reason || describe(code)}${refresh ? '; renewing access, then reconnecting once' : ''}`);
    ui.lastClose('control', code, reason);
    // What the desktop does now is unknown until the next DESKTOP_STATUS.
    desktop = null;
    clearTimeout(vncRetryTimer);
    vncRetryTimer = null;
    if (ended || final) return; // "stopped" follows for final closes
    if (refresh) {
      if (!vnc.connected) ui.setState('connecting', 'renewing access');
    } else if (retryInMs !== null) {
      log(`control: reconnecting in ${retryInMs} ms`);
      if (desktopError) {
        // The server closes after a failed start; reconnecting starts a new
        // desktop. Until one is ready, the failure is the news.
        ui.reconnecting(retryInMs, desktopError, 'failed');
      } else {
        // While the screen stays live, say that only the control channel is
        // being reconnected.
        ui.reconnecting(retryInMs, () => (vnc.connected ? 'control channel lost' : ''));
      }
    }
  });

  control.addEventListener('refresherror', (ev) => {
    const { message, status, final, retryInMs } = ev.detail;
    log(`control: getting access failed (${status || 'network'}): ${message}`);
    if (ended || final) return;
    ui.reconnecting(retryInMs, status ? `server answered ${status}` : 'server unreachable');
  });

  control.addEventListener('stopped', (ev) => {
    const { source, code, reason, status, errorCode, message } = ev.detail;
    log(`control: stopped (${source}${code ? ` ${code}` : ''}${status ? ` HTTP ${status}` : ''})`);
    if (ended) return;
    if (source === 'refresh') {
      endAfterRefusedRefresh(status, errorCode, message);
    } else if (loginEndOf(code, reason)) {
      endLogin(loginEndOf(code, reason));
    } else if (isLinkRevoked(code, reason)) {
      endLinkRevoked();
    } else if (code !== null && isAuthClose(code)) {
      end(code, `access refused: ${reason || describe(code)}`);
    } else {
      end(isFinal(code) ? code : null, code ? describe(code) : message);
    }
  });

  /**
   * A login-capture session's end (docs/profiles.md, "Login capture"): the
   * SESSION_ENDED reasons, and the 4008 close reasons that carry the same news
   * (a connection that meets the end before or after the message).
   */
  const LOGIN_ENDS = {
    login_captured: {
      closeReason: 'login captured',
      text: 'Login saved',
      notice: 'Your login was saved. You can close this page.',
    },
    login_not_saved: {
      closeReason: 'login not saved',
      text: 'Login not saved',
      notice: 'You logged in, but the login could not be saved. Ask for a new link to try again.',
    },
  };
  const loginEndOf = (code, reason) =>
    code === 4008 ? Object.values(LOGIN_ENDS).find((e) => e.closeReason === reason) : undefined;
  const endLogin = (login, options) => {
    document.body.dataset.login = login.closeReason.replaceAll(' ', '-');
    end(4008, login.text, login.notice, options);
  };

  /** A viewer link's revocation: 4008 with its own reason; the session goes on without us. */
  const isLinkRevoked = (code, reason) => code === 4008 && reason === 'viewer link revoked';
  const endLinkRevoked = () =>
    end(4008, 'viewer link revoked', 'The link you opened this session with was revoked. Ask the person who shared it for a new one.');

  /** The token endpoint refused: say what that means for this page. */
  const endAfterRefusedRefresh = (status, errorCode, message) => {
    if (errorCode === 'link_revoked') {
      endLinkRevoked();
    } else if (status === 410) {
      const code = /revoked/i.test(message) ? 4008 : /expired/i.test(message) ? 4007 : null;
      end(code, code ? describe(code) : 'session ended');
    } else if (status === 404) {
      end(4005);
    } else if (status === 401) {
      end(null, `access refused: ${message}`, hint(errorCode === 'token_expired' ? 4003 : 4001));
    } else if (status === 403) {
      end(4004, `access refused: ${message}`);
    } else {
      end(null, `access refused: ${message}`, '');
    }
  };

  // --- VNC -----------------------------------------------------------

  vnc.addEventListener('connect', () => {
    log('vnc: connected');
    vncConnectedAt = Date.now();
    vncAuthRetried = false;
    ui.setScreenLive(true);
    ui.setState('connected', 'connected');
    vnc.focus();
  });

  vnc.addEventListener('disconnect', (ev) => {
    const { clean, code, reason, byUs } = ev.detail;
    log(`vnc: disconnected (clean: ${clean}, code: ${code ?? 'none'})`);
    ui.setScreenLive(false);
    if (byUs || ended) {
      if (code !== null) ui.lastClose('vnc', code, reason);
      return;
    }
    ui.lastClose('vnc', code, reason);
    if (loginEndOf(code, reason)) {
      endLogin(loginEndOf(code, reason));
      return;
    }
    if (isLinkRevoked(code, reason)) {
      endLinkRevoked();
      return;
    }
    if (code !== null && isFinal(code)) {
      end(code);
      return;
    }
    if (vncConnectedAt && Date.now() - vncConnectedAt >= VNC_STABLE_MS) vncBackoff.reset();
    vncConnectedAt = 0;
    if (code !== null && isAuthClose(code)) {
      if (vncAuthRetried) {
        // Refused again with a fresh cookie: stop trying the screen; the
        // control channel, which meets the same refusal, decides the rest.
        ui.setState('failed', `screen: access refused (${code} ${reason || describe(code)})`);
        return;
      }
      vncAuthRetried = true;
      log('vnc: access refused; renewing it, then reconnecting once');
      connectVnc({ refresh: true });
      return;
    }
    if (control.isConnected && desktop === 'ready') {
      // Only the screen dropped: retry it on its own backoff.
      scheduleVnc('screen disconnected', code, reason);
    } else if (ui.state === 'connected' || ui.state === 'connecting') {
      // The control channel is down or the desktop not ready: it drives the
      // reconnect and reopens RFB when the desktop reports "ready" again.
      ui.setState('connecting', 'waiting for the desktop');
    }
  });

  vnc.addEventListener('securityfailure', (ev) => {
    const { status, reason } = ev.detail;
    console.warn('[livesession] vnc: security failure', status, reason);
    ui.notice(`VNC security negotiation failed${reason ? `: ${reason}` : ''}`);
  });

  vnc.addEventListener('desktopname', (ev) => {
    document.title = `${ev.detail.name} — livesession`;
  });

  // --- user controls and page events ----------------------------------

  const retryVncNow = () => {
    if (vncRetryTimer !== null) connectVnc();
  };

  document.getElementById('retry-now').addEventListener('click', () => {
    retryVncNow();
    control.retryNow();
  });

  // The control client reconnects by itself on these; the screen too.
  window.addEventListener('online', () => {
    log('browser is online again');
    retryVncNow();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') retryVncNow();
  });

  ui.setState('connecting', 'connecting');
  control.connect();
}

main();
