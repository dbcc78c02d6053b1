// The join page's logic, without the page: the secret of a `/join#<secret>`
// viewer link, and what each answer of POST /api/links/claim means. join.js
// puts it on the page; e2e/link-modules.test.js checks it in Node.

import { retryAfterHeaderMs, safeViewerUrl } from './claim.js';

// What the server issues: 256 random bits, hex encoded.
const SECRET = /^[0-9a-f]{64}$/;

/**
 * The link's secret from `location.hash` ("#<secret>"), or null if there is
 * none or it cannot be one we issued. A secret pasted with spaces around it
 * or in capitals is forgiven.
 */
export function secretFromHash(hash) {
  if (typeof hash !== 'string') return null;
  const secret = hash.replace(/^#/, '').trim().toLowerCase();
  return SECRET.test(secret) ? secret : null;
}

/**
 * Takes the secret out of the address bar at once (where it would be shown,
 * bookmarked and copied along with the link) and returns it. The fragment
 * never reached the server; after this it is in no URL either.
 */
export function takeSecret(loc = location, hist = history) {
  const hash = loc.hash;
  if (hash) hist.replaceState(hist.state, '', loc.pathname + loc.search);
  return { secret: secretFromHash(hash), hadFragment: Boolean(hash && hash !== '#') };
}

/**
 * What one answer of POST /api/links/claim means.
 *
 * @returns {{kind: 'joined'|'invalid'|'revoked'|'ended'|'not-ready'|'error', viewerUrl?: string, role?: string, message?: string, code?: string}}
 *   "joined": go to `viewerUrl`; "invalid", "revoked" and "ended" are final;
 *   "not-ready" and "error" may be tried again.
 */
export function interpretLinkClaim(status, body, origin) {
  const error = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
  const code = typeof error?.code === 'string' ? error.code : undefined;
  const message = typeof error?.message === 'string' && error.message ? error.message : null;
  if (status === 200) {
    const viewerUrl = safeViewerUrl(body?.viewer_url, origin);
    if (viewerUrl) return { kind: 'joined', viewerUrl, role: body?.role === 'view' ? 'view' : 'interactive' };
    return { kind: 'error', message: 'The server accepted the link but sent no usable session address.' };
  }
  if (code === 'link_revoked') return { kind: 'revoked', code, message };
  if (code === 'session_ended') return { kind: 'ended', code, message };
  if (code === 'link_not_found' || status === 404) return { kind: 'invalid', code, message };
  if (code === 'session_not_active' || status === 409) return { kind: 'not-ready', code, message };
  return {
    kind: 'error',
    code,
    message: message ?? `The server answered ${status}${status >= 500 ? ' (a problem on its side)' : ''}.`,
  };
}

/**
 * One claim request. Never throws: a network failure or an unreadable body is
 * an "error" result. `retryAfterMs` is the server's Retry-After, if any.
 */
export async function claimLinkOnce(secret, { fetchFn = fetch, origin = location.origin } = {}) {
  let res;
  try {
    res = await fetchFn('/api/links/claim', {
      method: 'POST',
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ secret }),
    });
  } catch {
    return { kind: 'error', message: 'Could not reach the server.', retryAfterMs: 0 };
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    // An empty or non-JSON body: the status alone has to do.
  }
  return { ...interpretLinkClaim(res.status, body, origin), retryAfterMs: retryAfterHeaderMs(res.headers.get('Retry-After')) };
}
