// WebSocket close codes the server sends on the control and VNC sockets.
//
// `final` codes mean retrying can never help (the session is gone, or this
// page may never have it): the viewer stops and says why. Every other code —
// including the browser's own 1006 "abnormal closure" — is retried with backoff.

export const CLOSE_CODES = Object.freeze({
  4001: { label: 'authentication required', final: false },
  4002: { label: 'token invalid', final: true },
  4003: { label: 'token expired', final: false },
  4004: { label: 'origin forbidden', final: true },
  4005: { label: 'session not found', final: true },
  4006: { label: 'heartbeat timeout', final: false },
  4007: { label: 'session expired', final: true },
  4008: { label: 'session revoked', final: true },
  4009: { label: 'rate limited', final: false },
  4010: { label: 'desktop unavailable', final: false },
  4011: { label: 'server shutting down', final: false },
});

const BROWSER_CODES = Object.freeze({
  1000: 'normal closure',
  1001: 'going away',
  1005: 'no status',
  1006: 'connection failed or lost (no close frame)',
  1011: 'server error',
  1012: 'server restarting',
  1013: 'try again later',
});

/** Whether a close with this code must not be retried. */
export function isFinal(code) {
  return CLOSE_CODES[code]?.final === true;
}

/** A short human label for a close code, e.g. "session revoked". */
export function describe(code) {
  return CLOSE_CODES[code]?.label ?? BROWSER_CODES[code] ?? `code ${code}`;
}
