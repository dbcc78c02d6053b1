// The landing page's free-mode "Start a session" form, posted with fetch so that a
// refusal (the per-address cap on live free sessions, a rate limit, a goal the server
// refuses) is shown on the page instead of a bare JSON error. Without JavaScript the
// form still posts normally. The form's fields (the optional `goal`, an agent task
// started in the new session) go as `application/x-www-form-urlencoded`, as the
// browser itself would post them.

/** The server's limit on a goal (`docs/tasks.md`), in characters. */
export const MAX_GOAL_CHARS = 4000;

/**
 * What is wrong with a goal before it is sent, or null. The server counts Unicode
 * characters of the trimmed goal; a blank goal is none. `crlf`: the browser posts the
 * form itself and sends each line break as CR LF (two characters).
 */
export function goalProblem(value, { crlf = false } = {}) {
  let goal = String(value ?? '').replace(/\r\n?/g, '\n').trim();
  if (crlf) goal = goal.replace(/\n/g, '\r\n');
  const chars = [...goal].length;
  if (chars > MAX_GOAL_CHARS) {
    return `The goal is too long: ${chars} characters, at most ${MAX_GOAL_CHARS}.`;
  }
  return null;
}

/** A server message as a sentence: capital first letter, closing full stop. */
function sentence(text) {
  const t = String(text).trim();
  if (!t) return t;
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

/**
 * What to tell the visitor when `POST /start` answered `status` with `body` (the
 * parsed JSON, or null): the server's own message when it sent one.
 */
export function startErrorMessage(status, body) {
  const error = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
  const message = typeof error?.message === 'string' && error.message.trim() ? sentence(error.message) : null;
  if (error?.code === 'free_session_limit') {
    return message ?? 'This address already has as many free sessions running as it may; close one to start another.';
  }
  if (message) return `Could not start a session: ${message}`;
  return `Could not start a session (the server answered ${status}). Try again in a moment.`;
}

/**
 * Posts the form with fetch; on success goes to the viewer the server redirected to
 * (its cookies are set by then), otherwise shows the reason in `errorEl` and
 * re-enables the button.
 */
export function wireStartForm(form, errorEl, { fetchImpl = fetch, go = (url) => location.assign(url) } = {}) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const button = ev.submitter ?? form.querySelector('button');
    button?.setAttribute('disabled', '');
    errorEl.hidden = true;
    errorEl.textContent = '';
    let text;
    const body = new URLSearchParams(new FormData(form));
    const problem = goalProblem(body.get('goal'));
    if (problem) {
      errorEl.textContent = problem;
      errorEl.hidden = false;
      button?.removeAttribute('disabled');
      return;
    }
    try {
      // A URLSearchParams body goes as application/x-www-form-urlencoded.
      const res = await fetchImpl(form.action, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
        body,
      });
      if (res.ok && res.redirected && new URL(res.url).pathname.startsWith('/s/')) {
        go(res.url);
        return;
      }
      const answer = await res.json().catch(() => null);
      text = startErrorMessage(res.status, answer);
    } catch (err) {
      console.warn('[livesession] starting a session failed:', err);
      text = 'Could not reach the server. Try again in a moment.';
    }
    errorEl.textContent = text;
    errorEl.hidden = false;
    button?.removeAttribute('disabled');
  });
}
