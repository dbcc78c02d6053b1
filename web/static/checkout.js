// The page Stripe sends a buyer back to: /checkout/success?session_id=cs_…
//
// The payment is confirmed to the server by Stripe's webhook, which can arrive
// before or after the buyer does. So the page asks the server (POST
// /api/checkout/claim) about once a second until the session is ready, then
// goes to the viewer; the claim answer gives this browser the session's
// HttpOnly cookie. A paid session opens in one browser only: a second browser
// with the same link is told so.
//
// <body data-state> is one of confirming | claimed | already-claimed | ended |
// error, for tests and scripts; data-reason says more for "error".

import { GIVE_UP_AFTER_MS, POLL_INTERVAL_MS, checkoutSessionIdFromSearch, claimOnce, errorRetryDelayMs } from './claim.js';

const log = (...args) => console.info('[livesession]', ...args);
const $ = (id) => document.getElementById(id);

function setState(state, reason) {
  document.body.dataset.state = state;
  if (reason) document.body.dataset.reason = reason;
  else delete document.body.dataset.reason;
  // The spinner turns only while something is still on its way.
  document.body.classList.toggle('busy', state === 'confirming' || state === 'claimed' || reason === 'retrying');
}

function headline(text) {
  $('headline-text').textContent = text;
}

function detail(text) {
  const el = $('detail');
  el.textContent = text ?? '';
  el.hidden = !text;
}

function showError(text, hint) {
  const el = $('claim-error');
  el.textContent = text ?? '';
  el.hidden = !text;
  const h = $('claim-hint');
  h.textContent = hint ?? '';
  h.hidden = !hint;
}

function showActions({ checkAgain }) {
  $('actions').hidden = false;
  $('check-again').hidden = !checkAgain;
}

function hideActions() {
  $('actions').hidden = true;
}

/** A server message as a sentence: capital first letter, closing full stop. */
function sentence(text) {
  if (!text) return null;
  const s = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?…]$/.test(s) ? s : `${s}.`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Ask until the session is claimed, a final answer comes, or GIVE_UP_AFTER_MS
 * passes. Returns when the page has nothing more to do by itself.
 */
async function poll(csId) {
  const deadline = Date.now() + GIVE_UP_AFTER_MS;
  let errorsInARow = 0;
  let answers = 0;
  for (;;) {
    const result = await claimOnce(csId);
    answers += 1;
    let wait = POLL_INTERVAL_MS;
    switch (result.kind) {
      case 'pending':
        errorsInARow = 0;
        if (answers === 1) log('payment not confirmed yet; waiting for it');
        setState('confirming');
        headline('Confirming your payment…');
        showError(null);
        break;

      case 'claimed':
        log('payment confirmed; opening the session');
        setState('claimed');
        headline('Payment confirmed. Opening your session…');
        detail(null);
        showError(null);
        // replace(): Back from the viewer goes to where the buyer came from,
        // not to this page, which has done its job.
        location.replace(result.viewerUrl);
        return;

      case 'already-claimed':
        log('this payment’s session was already claimed');
        setState('already-claimed');
        headline('This session is open in another browser');
        detail(null);
        showError(
          'This payment’s session was already opened in another browser. A paid session opens in one browser only.',
          'Go back to the browser (or device) where you first opened it. If that was not you, contact the operator of this site with the payment reference below.',
        );
        showActions({ checkAgain: false });
        return;

      case 'ended':
        log('the session for this payment has ended');
        setState('ended');
        headline('This session has ended');
        detail(null);
        showError('The session for this payment has ended: it was refunded, revoked or has expired.', sentence(result.message));
        showActions({ checkAgain: false });
        return;

      default:
        errorsInARow += 1;
        wait = Math.max(result.retryAfterMs ?? 0, errorRetryDelayMs(errorsInARow));
        console.warn(`[livesession] claim failed (${result.code ?? 'error'}): ${result.message}; asking again in ${Math.round(wait / 1000)} s`);
        setState('error', 'retrying');
        headline('Confirming your payment…');
        showError(sentence(result.message), `Trying again in ${Math.round(wait / 1000)} s.`);
        break;
    }
    if (Date.now() + wait > deadline) {
      log(`no confirmation after ${GIVE_UP_AFTER_MS / 1000} s; stopped asking`);
      setState('error', 'not-confirmed');
      headline('Your payment has not been confirmed yet');
      detail('Stripe has not told this server about the payment yet; for some payment methods this takes a few minutes. If you were charged, your session is waiting for you: check again in a moment.');
      if (result.kind === 'error') showError(sentence(result.message), null);
      showActions({ checkAgain: true });
      return;
    }
    await sleep(wait);
  }
}

function main() {
  const csId = checkoutSessionIdFromSearch(location.search);
  if (!csId) {
    setState('error', 'no-reference');
    headline('No payment to confirm');
    detail(null);
    showError('This address has no payment reference: open the link Stripe sent you back with, or start again from the home page.');
    showActions({ checkAgain: false });
    return;
  }
  const ref = $('reference');
  ref.textContent = `Payment reference: ${csId}`;
  ref.hidden = false;

  let running = false;
  const run = async () => {
    if (running) return;
    running = true;
    hideActions();
    setState('confirming');
    headline('Confirming your payment…');
    detail('This usually takes a few seconds. Keep this page open: your session opens here as soon as the payment is confirmed.');
    showError(null);
    try {
      await poll(csId);
    } finally {
      running = false;
    }
  };
  $('check-again').addEventListener('click', run);
  run();
}

main();
