// The session viewer: ties the control channel (what the desktop is doing,
// why connections end) to the noVNC connection (the screen itself).
//
// Flow: open the control channel → the server starts the desktop and reports
// DESKTOP_STATUS steps → on "ready" open RFB. Either socket can drop; the
// control channel reconnects with backoff and, once it reports "ready" again,
// RFB is reopened if it is not connected. A final close code (revoked,
// expired, …) or SESSION_ENDED stops everything for good.

import { Backoff } from './backoff.js';
import { describe, hint, isFinal } from './closecodes.js';
import { ControlChannel, retryAfterMs } from './control.js';
import { channelUrl, sessionIdFromPath, takeToken } from './session.js';
import { ViewerUi } from './ui.js';
import { VncConnection } from './vnc.js';

const STEP_LABELS = { xvnc: 'Xvnc', openbox: 'openbox', chromium: 'Chromium' };
// SESSION_ENDED reasons and the close codes that carry the same news.
const ENDED_CODE = { expired: 4007, revoked: 4008 };
// An RFB connection that lasted this long resets the RFB backoff.
const VNC_STABLE_MS = 30_000;

const log = (...args) => console.info('[livesession]', ...args);

function main() {
  const ui = new ViewerUi();
  const id = sessionIdFromPath();
  if (!id) {
    ui.setState('failed', 'no session id in this address');
    return;
  }
  // The token (if any) stays in this closure and in sessionStorage; it is
  // never logged and never put back into the address bar.
  const token = takeToken(id);
  log(`viewer for session ${id}; auth by ${token ? 'token' : 'cookie'}`);

  const control = new ControlChannel(() => channelUrl(id, 'control', token));
  const vnc = new VncConnection(document.getElementById('screen'));
  const vncBackoff = new Backoff();
  let vncRetryTimer = null;
  let vncConnectedAt = 0;
  let desktop = null; // last DESKTOP_STATUS status
  let desktopError = null; // text of the last "failed" status, until the next start
  let ended = false;

  const connectVnc = () => {
    clearTimeout(vncRetryTimer);
    vncRetryTimer = null;
    // Without an open control channel reporting "ready" there is nothing to
    // connect to yet; the next "ready" calls this again.
    if (ended || vnc.busy || !control.isOpen || desktop !== 'ready') return;
    log('vnc: connecting');
    ui.setState('connecting', 'connecting to the desktop');
    vnc.connect(channelUrl(id, 'vnc', token));
  };

  /** Stop for good and say why: `code` is the final close code behind it. */
  const end = (code, text = code ? describe(code) : 'session ended') => {
    if (ended) return;
    ended = true;
    log(`ended: ${text}`);
    clearTimeout(vncRetryTimer);
    ui.setState('ended', text);
    ui.notice(hint(code));
    ui.stopExpiry();
    // Leave the control socket to the server, which closes it with the
    // reason code; ControlChannel will not reconnect after a final code or
    // SESSION_ENDED, and closes it itself if the server does not.
    if (!control.ended) control.stop();
    vnc.disconnect();
  };

  // --- control channel -------------------------------------------------

  control.addEventListener('connecting', (ev) => {
    log(`control: connecting (attempt ${ev.detail.attempt})`);
    if (desktopError) ui.setState('failed', `${desktopError}; retrying…`);
    else if (!vnc.connected) ui.setState('connecting', 'connecting');
  });

  control.addEventListener('open', () => {
    log('control: open');
  });

  control.addEventListener('message', (ev) => {
    const msg = ev.detail;
    switch (msg.type) {
      case 'CONNECTED':
        log(`control: connected; session expires at ${msg.expires_at}`);
        ui.expiry(msg.expires_at, msg.server_time);
        break;
      case 'DESKTOP_STATUS':
        onDesktopStatus(msg);
        break;
      case 'PONG':
        break;
      case 'SESSION_ENDED':
        log(`control: session ended (${msg.reason})`);
        end(ENDED_CODE[msg.reason] ?? null);
        break;
      case 'ERROR':
        console.warn('[livesession] control: server error:', msg.message);
        ui.notice(`Server: ${msg.message}`);
        break;
      default:
        log(`control: ignoring message type ${msg.type}`);
    }
  });

  const onDesktopStatus = (msg) => {
    desktop = msg.status;
    log(`control: desktop ${msg.status}${msg.step ? ` (${msg.step})` : ''}`);
    if (ended) return;
    switch (msg.status) {
      case 'starting': {
        desktopError = null;
        const step = STEP_LABELS[msg.step] ?? msg.step;
        if (!vnc.connected) ui.setState('starting', step ? `starting desktop: ${step}…` : 'starting desktop…');
        ui.notice('');
        break;
      }
      case 'ready':
        desktopError = null;
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
    const { code, reason, final, retryInMs } = ev.detail;
    log(`control: closed ${code} ${reason || describe(code)}`);
    ui.lastClose('control', code, reason);
    // What the desktop does now is unknown until the next DESKTOP_STATUS.
    desktop = null;
    clearTimeout(vncRetryTimer);
    vncRetryTimer = null;
    if (ended) return;
    if (final) {
      end(isFinal(code) ? code : null);
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

  // --- VNC -----------------------------------------------------------

  vnc.addEventListener('connect', () => {
    log('vnc: connected');
    vncConnectedAt = Date.now();
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
    if (code !== null && isFinal(code)) {
      end(code);
      return;
    }
    if (vncConnectedAt && Date.now() - vncConnectedAt >= VNC_STABLE_MS) vncBackoff.reset();
    vncConnectedAt = 0;
    if (control.isOpen && desktop === 'ready') {
      // Only the screen dropped: retry it on its own backoff.
      const delay = Math.max(vncBackoff.next(), retryAfterMs(code, reason));
      log(`vnc: reconnecting in ${delay} ms`);
      ui.reconnecting(delay, 'screen disconnected');
      vncRetryTimer = setTimeout(connectVnc, delay);
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

  // --- user controls ---------------------------------------------------

  document.getElementById('retry-now').addEventListener('click', () => {
    if (vncRetryTimer !== null) connectVnc();
    control.retryNow();
  });

  // Coming back online is the moment to retry, not whenever the timer fires.
  window.addEventListener('online', () => {
    log('browser is online again');
    control.retryNow();
  });

  ui.setState('connecting', 'connecting');
  control.start();
}

main();
