// The checkout success page's logic, without the page: which Checkout Session
// this is, what each answer of POST /api/checkout/claim means, and how long to
// wait before asking again. checkout.js puts it on the page; the Node tests in
// e2e/web-modules.test.js check it directly.

/** Ask again this long after a "pending" answer. */
export const POLL_INTERVAL_MS = 1_000;
/** Stop asking (and offer "Check again") after this long without an answer. */
export const GIVE_UP_AFTER_MS = 120_000;

// Stripe's ids are an object prefix, "_", then letters, digits and
// underscores ("cs_test_a1B2…", "cs_live_…").
const CHECKOUT_SESSION_ID = /^cs_[A-Za-z0-9_]{1,250}$/;

/** The Checkout Session id from `?session_id=cs_…`, or null. */
export function checkoutSessionIdFromSearch(search) {
  const id = new URLSearchParams(search).get('session_id');
  return id && CHECKOUT_SESSION_ID.test(id) ? id : null;
}

/**
 * Only a page on this server can be the viewer: a same-origin `/s/…` path.
 * Anything else in the answer is refused rather than followed.
 */
export function safeViewerUrl(viewerUrl, origin) {
  if (typeof viewerUrl !== 'string' || viewerUrl === '') return null;
  let url;
  try {
    url = new URL(viewerUrl, origin);
  } catch {
    return null;
  }
  if (url.origin !== origin || !url.pathname.startsWith('/s/')) return null;
  return url.pathname + url.search + url.hash;
}

/** Delay before retrying after the `attempt`-th error in a row (1, 2, …): 2 s doubling to 15 s. */
export function errorRetryDelayMs(attempt) {
  return Math.min(15_000, 2_000 * 2 ** Math.max(0, attempt - 1));
}

/** Seconds from a Retry-After header (delta-seconds form only), as ms, or 0. */
export function retryAfterHeaderMs(value) {
  const s = Number(value);
  return Number.isFinite(s) && s > 0 ? Math.min(s, 600) * 1_000 : 0;
}

/**
 * What one answer of POST /api/checkout/claim means.
 *
 * @returns {{kind: 'pending'|'claimed'|'already-claimed'|'ended'|'error', viewerUrl?: string, message?: string, code?: string}}
 *   "pending": ask again soon; "claimed": go to `viewerUrl`; "already-claimed"
 *   and "ended" are final; "error": show `message` and retry later.
 */
export function interpretClaim(status, body, origin) {
  const error = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
  const message = typeof error?.message === 'string' && error.message ? error.message : null;
  const code = typeof error?.code === 'string' ? error.code : undefined;

  if (status === 202) return { kind: 'pending' };
  if (status === 200 && body?.status === 'claimed') {
    const viewerUrl = safeViewerUrl(body.viewer_url, origin);
    if (viewerUrl) return { kind: 'claimed', viewerUrl };
    return { kind: 'error', message: 'The server confirmed the payment but sent no usable session address.' };
  }
  if (status === 200 && body?.status === 'pending') return { kind: 'pending' };
  if (status === 409 || code === 'already_claimed') return { kind: 'already-claimed', message, code };
  if (status === 410 || code === 'session_ended') return { kind: 'ended', message, code };
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
export async function claimOnce(csId, { fetchFn = fetch, origin = location.origin } = {}) {
  let res;
  try {
    res = await fetchFn('/api/checkout/claim', {
      method: 'POST',
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ checkout_session_id: csId }),
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
  return { ...interpretClaim(res.status, body, origin), retryAfterMs: retryAfterHeaderMs(res.headers.get('Retry-After')) };
}
