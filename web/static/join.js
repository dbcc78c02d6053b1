// The page a viewer link opens: /join#<secret>.
//
// The secret leaves the address bar before anything else happens, is sent
// once to POST /api/links/claim (which gives this browser the session's
// HttpOnly cookies, with the link's role), and the page then goes to the
// viewer. It is kept in no storage: a reload of this page has no secret any
// more and says so.
//
// <body data-state> is one of joining | joined | invalid | revoked | ended |
// not-ready | error | missing, for tests and scripts.

import { claimLinkOnce, takeSecret } from './link.js';

const $ = (id) => document.getElementById(id);
const log = (...args) => console.info('[livesession]', ...args);

function show(state, headline, detail = '', { retry = false } = {}) {
  document.body.dataset.state = state;
  document.body.classList.toggle('busy', state === 'joining' || state === 'joined');
  $('headline-text').textContent = headline;
  $('detail').textContent = detail;
  $('detail').hidden = !detail;
  $('actions').hidden = state === 'joining' || state === 'joined';
  $('try-again').hidden = !retry;
}

async function join(secret) {
  show('joining', 'Opening the session…');
  const result = await claimLinkOnce(secret);
  switch (result.kind) {
    case 'joined':
      log(`link accepted (${result.role}); opening the viewer`);
      show('joined', result.role === 'view' ? 'Opening the session (view only)…' : 'Opening the session…');
      // replace(): Back from the viewer does not come back to this page.
      location.replace(result.viewerUrl);
      return;
    case 'revoked':
      show('revoked', 'This link was revoked.', 'The person who shared it has withdrawn it. Ask them for a new link if you still need access.');
      return;
    case 'ended':
      show('ended', 'This session has ended.', 'The session this link opens is over: its time ran out or it was revoked.');
      return;
    case 'invalid':
      show('invalid', 'This link is not valid.', 'Check that you opened the whole link you were given, or ask for a new one.');
      return;
    case 'not-ready':
      show('not-ready', 'This session is not ready yet.', 'Try again in a minute.', { retry: true });
      break;
    default:
      show('error', 'The session could not be opened.', result.message ?? '', { retry: true });
      break;
  }
  const button = $('try-again');
  button.onclick = () => {
    button.onclick = null;
    join(secret);
  };
  if (result.retryAfterMs) {
    button.disabled = true;
    setTimeout(() => {
      button.disabled = false;
    }, result.retryAfterMs);
  }
}

function main() {
  const { secret, hadFragment } = takeSecret();
  if (secret) {
    join(secret);
  } else if (hadFragment) {
    show('invalid', 'This link is not valid.', 'Check that you opened the whole link you were given, or ask for a new one.');
  } else {
    show('missing', 'This page needs the whole link you were given.', 'A viewer link ends with “#” and a long key. Open it again from where you got it (the key is removed from the address bar once used, so a reload does not work).');
  }
}

main();
