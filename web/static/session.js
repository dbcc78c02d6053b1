// Where this viewer's session lives: its id, a token handed over in a link,
// and its WebSocket URLs.

// Earlier viewers kept a link's token in sessionStorage under this prefix.
const LEGACY_TOKEN_KEY_PREFIX = 'livesession.token.';

/** The session id: the last non-empty segment of `/s/{id}`. */
export function sessionIdFromPath(pathname = location.pathname) {
  const segments = pathname.split('/').filter(Boolean);
  if (segments.length < 2 || segments[0] !== 's') return null;
  try {
    return decodeURIComponent(segments[segments.length - 1]);
  } catch {
    return null; // malformed percent-encoding: not an id we could have issued
  }
}

/**
 * The token of a `/s/{id}#token=…` link (the session's refresh token, as
 * POST /api/sessions answers it), removed from the address bar
 * at once (where it would be shown, bookmarked and copied along with the
 * link). The fragment never reaches the server. The caller exchanges the
 * token once at the token endpoint, which gives this browser the session's
 * cookies; the token is not stored anywhere, so a reload (which has no
 * fragment any more) resumes with the cookies.
 */
export function takeFragmentToken(id) {
  try {
    sessionStorage.removeItem(LEGACY_TOKEN_KEY_PREFIX + id);
  } catch {
    // Storage can be disabled; then nothing was stored either.
  }
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ''));
  const token = fragment.get('token');
  if (!token) return null;
  fragment.delete('token');
  const rest = fragment.toString();
  history.replaceState(history.state, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  return token;
}

/**
 * Same-origin WebSocket URL for one of the session's channels ("control",
 * "vnc"). It never carries a token: the browser sends the session's
 * `ls_<id>` cookie with the upgrade.
 */
export function channelUrl(id, channel) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/api/sessions/${encodeURIComponent(id)}/${channel}`;
}
