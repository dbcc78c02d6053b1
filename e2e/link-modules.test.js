// The join page's logic (web/static/link.js) in Node: the secret from the
// fragment, leaving the address bar, and what each claim answer means.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { claimLinkOnce, interpretLinkClaim, secretFromHash, takeSecret } from '../web/static/link.js';

const SECRET = '0123456789abcdef'.repeat(4);
const ORIGIN = 'http://127.0.0.1:8080';

test('only a secret we could have issued is taken from the fragment', () => {
  assert.equal(secretFromHash(`#${SECRET}`), SECRET);
  assert.equal(secretFromHash(`#${SECRET.toUpperCase()}`), SECRET);
  assert.equal(secretFromHash(`# ${SECRET} `), SECRET);
  for (const bad of ['', '#', '#abc', `#${SECRET}0`, `#token=${SECRET}`, null, undefined]) {
    assert.equal(secretFromHash(bad), null, String(bad));
  }
});

test('the fragment leaves the address bar at once', () => {
  const calls = [];
  const hist = { state: { a: 1 }, replaceState: (...args) => calls.push(args) };
  const got = takeSecret({ hash: `#${SECRET}`, pathname: '/join', search: '?x=1' }, hist);
  assert.deepEqual(got, { secret: SECRET, hadFragment: true });
  assert.deepEqual(calls, [[{ a: 1 }, '', '/join?x=1']]);
  const none = takeSecret({ hash: '', pathname: '/join', search: '' }, { replaceState: () => assert.fail('nothing to remove') });
  assert.deepEqual(none, { secret: null, hadFragment: false });
});

test('each claim answer', () => {
  assert.deepEqual(interpretLinkClaim(200, { session_id: 'a', role: 'view', viewer_url: '/s/a' }, ORIGIN), { kind: 'joined', viewerUrl: '/s/a', role: 'view' });
  assert.equal(interpretLinkClaim(200, { role: 'interactive', viewer_url: '/s/a' }, ORIGIN).role, 'interactive');
  assert.equal(interpretLinkClaim(200, { viewer_url: 'https://evil.example/s/a' }, ORIGIN).kind, 'error');
  const err = (code) => ({ error: { code, message: 'm' } });
  assert.equal(interpretLinkClaim(410, err('link_revoked'), ORIGIN).kind, 'revoked');
  assert.equal(interpretLinkClaim(410, err('session_ended'), ORIGIN).kind, 'ended');
  assert.equal(interpretLinkClaim(404, err('link_not_found'), ORIGIN).kind, 'invalid');
  assert.equal(interpretLinkClaim(409, err('session_not_active'), ORIGIN).kind, 'not-ready');
  assert.equal(interpretLinkClaim(429, err('rate_limited'), ORIGIN).kind, 'error');
  assert.equal(interpretLinkClaim(502, null, ORIGIN).kind, 'error');
});

test('claimLinkOnce posts the secret as JSON with same-origin credentials, and never throws', async () => {
  let seen;
  const fetchFn = async (url, init) => {
    seen = { url, init };
    return { status: 429, headers: new Map([['Retry-After', '3']]), json: async () => ({ error: { code: 'rate_limited', message: 'slow down' } }) };
  };
  const result = await claimLinkOnce(SECRET, { fetchFn, origin: ORIGIN });
  assert.equal(seen.url, '/api/links/claim');
  assert.equal(seen.init.method, 'POST');
  assert.equal(seen.init.credentials, 'same-origin');
  assert.deepEqual(JSON.parse(seen.init.body), { secret: SECRET });
  assert.equal(result.kind, 'error');
  assert.equal(result.retryAfterMs, 3000);
  const offline = await claimLinkOnce(SECRET, { fetchFn: async () => { throw new Error('offline'); }, origin: ORIGIN });
  assert.equal(offline.kind, 'error');
});
