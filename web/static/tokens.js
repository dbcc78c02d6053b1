// Access tokens for a session, from the same-origin token endpoint.
//
// `POST /api/sessions/{id}/token` answers {"token", "expires_at",
// "session_expires_at"} and renews the session's two HttpOnly cookies:
// `ls_<id>` (the access token, sent by the browser with the session's
// WebSocket upgrades) and `lsr_<id>` (the refresh token, sent only to this
// endpoint). So a page never has to put a token into a WebSocket URL: it asks
// here, and the cookie the browser sends with the next upgrade is fresh.
//
// Exports:
//   sessionTokenProvider(sessionId, {initialToken?, fetchFn?, base?})
//       → async () => {token, expiresAt, sessionExpiresAt}
//     The token refresh callback a ControlClient (control.js) takes. The
//     first call exchanges `initialToken` (a `#token=` link: the session's
//     refresh token, as POST /api/sessions answers it) with
//     `Authorization: Bearer`, which sets the cookies; once exchanged that
//     token is forgotten and every later call uses the refresh cookie. If the
//     initial token is refused with 401 (an old link, or an access token,
//     which cannot renew itself: `refresh_required`), the refresh cookie is
//     tried at once, and if this browser has none either, the link's refusal
//     is what is thrown; after a network error, 429 or 5xx it is kept for
//     the next call.
//   requestToken(sessionId, {bearer?, fetchFn?, base?})  one request, same result
//   TokenRefreshError  what both throw: .status (HTTP status, 0 for a network
//     error), .code (the API's error code), .retryAfterMs, .final (retrying
//     cannot help: 400/401/403/404/409/410)
//   jwtExpiry(token) → ms since the epoch from the JWT's `exp`, or null

/** HTTP answers from the token endpoint after which asking again cannot help. */
const FINAL_STATUSES = new Set([400, 401, 403, 404, 409, 410]);

export class TokenRefreshError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string|null, retryAfterMs?: number, cause?: unknown}} [info]
   */
  constructor(message, { status = 0, code = null, retryAfterMs = 0, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'TokenRefreshError';
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.final = FINAL_STATUSES.has(status);
  }
}

/** The path of a session's token endpoint. */
export function tokenPath(sessionId) {
  return `/api/sessions/${encodeURIComponent(sessionId)}/token`;
}

/**
 * One request to the token endpoint. With `bearer` the request authenticates
 * with that refresh token (the answer sets the cookies); without it, with the
 * refresh cookie the browser sends by itself.
 *
 * @returns {Promise<{token: string, expiresAt: number, sessionExpiresAt: number|null}>}
 * @throws {TokenRefreshError}
 */
export async function requestToken(sessionId, { bearer = null, fetchFn = globalThis.fetch, base = '' } = {}) {
  const headers = { Accept: 'application/json' };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let res;
  try {
    res = await fetchFn(base + tokenPath(sessionId), {
      method: 'POST',
      credentials: 'same-origin',
      cache: 'no-store',
      headers,
    });
  } catch (err) {
    throw new TokenRefreshError('the token endpoint could not be reached', { status: 0, cause: err });
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) {
    const code = body?.error?.code ?? null;
    const message = body?.error?.message ?? `the token endpoint answered ${res.status}`;
    throw new TokenRefreshError(message, { status: res.status, code, retryAfterMs: retryAfterHeader(res.headers?.get?.('Retry-After')) });
  }
  if (!body || typeof body.token !== 'string' || !body.token) {
    throw new TokenRefreshError('the token endpoint answered without a token', { status: res.status });
  }
  const expiresAt = Date.parse(body.expires_at);
  const sessionExpiresAt = Date.parse(body.session_expires_at);
  return {
    token: body.token,
    expiresAt: Number.isNaN(expiresAt) ? jwtExpiry(body.token) : expiresAt,
    sessionExpiresAt: Number.isNaN(sessionExpiresAt) ? null : sessionExpiresAt,
  };
}

/**
 * The token refresh callback for a page on the server's own origin.
 *
 * @param {string} sessionId
 * @param {{initialToken?: string|null, fetchFn?: typeof fetch, base?: string}} [opts]
 */
export function sessionTokenProvider(sessionId, { initialToken = null, fetchFn = globalThis.fetch, base = '' } = {}) {
  let pending = initialToken;
  return async function refreshSessionToken() {
    if (pending) {
      try {
        const result = await requestToken(sessionId, { bearer: pending, fetchFn, base });
        pending = null; // exchanged: the cookies are set, and used from here on
        return result;
      } catch (err) {
        // A network error, 429 or 5xx: keep the link's token for the next try.
        if (!(err instanceof TokenRefreshError) || !err.final) throw err;
        // Refused for good (an old link): forget it; this browser may still
        // hold the session's cookies.
        pending = null;
        if (err.status !== 401) throw err;
        try {
          return await requestToken(sessionId, { fetchFn, base });
        } catch (cookieErr) {
          // No cookie either: why the link was refused says more than "no
          // refresh cookie".
          if (cookieErr instanceof TokenRefreshError && cookieErr.code === 'auth_required') throw err;
          throw cookieErr;
        }
      }
    }
    return requestToken(sessionId, { fetchFn, base });
  };
}

/** The `exp` of a JWT in ms since the epoch, or null. Does not verify anything. */
export function jwtExpiry(token) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    const exp = JSON.parse(json)?.exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** `Retry-After` in seconds → ms (0 if absent or a date). */
function retryAfterHeader(value) {
  if (!value || !/^\d+$/.test(value.trim())) return 0;
  return Math.min(Number(value.trim()) * 1000, 10 * 60_000);
}
