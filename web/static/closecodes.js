// WebSocket close codes the server sends on the control and VNC sockets
// (docs/protocol.md, "Close codes"), and what a client does about each:
//
//   action "stop"    retrying can never help (the session is gone, or this
//                    page may never have it): stop and say why.
//   action "refresh" the access token is missing or expired: get a fresh one
//                    from the token refresh callback, then reconnect once.
//                    If that connection is refused for auth again, stop.
//   action "retry"   everything else — including the browser's own 1006
//                    "abnormal closure" — is retried with backoff.

export const CLOSE_CODES = Object.freeze({
  4001: { label: 'authentication required', final: false, auth: true, hint: 'This page has no access to the session: open the full link you were given, or start a session from the home page.' },
  4002: { label: 'token invalid', final: true, hint: 'The link or token is not valid for this session.' },
  4003: { label: 'token expired', final: false, auth: true, hint: 'The access token for this session expired and could not be renewed: open the link you were given again, or ask for a new one.' },
  4004: { label: 'origin forbidden', final: true, hint: 'The server does not accept connections from this page’s address.' },
  4005: { label: 'session not found', final: true, hint: 'There is no such session on this server.' },
  4006: { label: 'heartbeat timeout', final: false },
  4007: { label: 'session expired', final: true, hint: 'This session has ended: its time ran out.' },
  4008: { label: 'session revoked', final: true, hint: 'This session has ended: it was revoked.' },
  4009: { label: 'rate limited', final: false },
  4010: { label: 'desktop unavailable', final: false },
  4011: { label: 'server shutting down', final: false },
  4012: { label: 'malformed RFB', final: true, hint: 'The viewer sent data the server could not accept (a viewer bug). Reloading will not help until the viewer is fixed.' },
});

const BROWSER_CODES = Object.freeze({
  1000: 'normal closure',
  1001: 'going away',
  1005: 'no status',
  1006: 'connection failed or lost (no close frame)',
  1011: 'server error',
  1012: 'server restarting',
  1013: 'try again later',
  // Not sent by the server: the viewer closes a control socket with this
  // when PONGs stop arriving (see control.js).
  4900: 'no reply to PING; connection presumed dead',
});

/** Whether a close with this code must not be retried. */
export function isFinal(code) {
  return CLOSE_CODES[code]?.final === true;
}

/** Whether this code asks for a fresh token (then one reconnect): 4001, 4003. */
export function isAuthRetry(code) {
  return CLOSE_CODES[code]?.auth === true;
}

/** What a client does after a close with this code: "stop", "refresh" or "retry". */
export function action(code) {
  if (isFinal(code)) return 'stop';
  if (isAuthRetry(code)) return 'refresh';
  return 'retry';
}

/** What a person can make of a final close, e.g. "This session has ended: …". */
export function hint(code) {
  return CLOSE_CODES[code]?.hint ?? 'This session has ended.';
}

/** A short human label for a close code, e.g. "session revoked". */
export function describe(code) {
  return CLOSE_CODES[code]?.label ?? BROWSER_CODES[code] ?? `code ${code}`;
}
