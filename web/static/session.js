// Where this viewer's session lives: its id, its credentials and its URLs.

const TOKEN_KEY_PREFIX = 'livesession.token.';

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
 * The access token for `id`, if this tab has one.
 *
 * An operator hands out links like `/s/{id}#token=…`. The fragment never
 * reaches the server, so it is safe to carry the token, but it should not stay
 * in the address bar where it is shown, bookmarked and copied along with the
 * link: move it to sessionStorage (this tab only, gone when the tab closes)
 * and strip the fragment. Without a token the viewer relies on the HttpOnly
 * cookie set by the free-mode start form, which the browser sends by itself.
 */
export function takeToken(id) {
  const key = TOKEN_KEY_PREFIX + id;
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fromHash = fragment.get('token');
  if (fromHash) {
    try {
      sessionStorage.setItem(key, fromHash);
    } catch {
      // Storage can be disabled; the token then lives only in this page.
    }
    fragment.delete('token');
    const rest = fragment.toString();
    history.replaceState(history.state, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    return fromHash;
  }
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

/** Same-origin WebSocket URL for one of the session's channels ("control", "vnc"). */
export function channelUrl(id, channel, token) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let url = `${scheme}//${location.host}/api/sessions/${encodeURIComponent(id)}/${channel}`;
  if (token) url += '?token=' + encodeURIComponent(token);
  return url;
}
