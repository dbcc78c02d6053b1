// Landing page: asks the server how it runs and shows what a visitor can do
// there: buy a session (Stripe Checkout), start one for free (free mode), both,
// or neither (sessions come from the operator).

import { formatPrice } from './price.js';
import { goalProblem, wireStartForm } from './start.js';

async function loadInfo() {
  const res = await fetch('/api/info', { headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(`GET /api/info answered ${res.status}`);
  return res.json();
}

function show(id) {
  document.getElementById(id).hidden = false;
}

/** Fill in the checkout offer; false if the server's price is unusable. */
function showCheckout(price) {
  if (!price || !Number.isFinite(Number(price.amount_cents)) || typeof price.currency !== 'string') {
    console.warn('[livesession] checkout is on but the server sent no usable price:', price);
    return false;
  }
  const text = formatPrice(price.amount_cents, price.currency);
  document.getElementById('price').textContent = text;
  document.getElementById('product-name').textContent = price.product || 'Live browser session';
  document.getElementById('buy').textContent = `Buy a session — ${text}`;
  show('checkout');
  return true;
}

async function main() {
  // Stripe sends the buyer back here with ?checkout=cancelled from its page.
  const params = new URLSearchParams(location.search);
  if (params.get('checkout') === 'cancelled') show('checkout-cancelled');

  try {
    const info = await loadInfo();
    const paid = info.checkout === true && showCheckout(info.price);
    const free = info.free_mode === true;
    if (free) show('free-mode');
    // Without a built-in agent (no model configured), a goal waits for an external
    // agent worker: say so where the goal is written.
    if (info.agent === false) {
      for (const id of ['checkout-goal-hint', 'start-goal-hint']) {
        document.getElementById(id).textContent =
          'This server has no built-in agent: your goal is queued until an agent worker takes it. You can use the session yourself meanwhile.';
      }
    }
    if (!paid && !free) show('operator-mode');
    if (info.name && info.version) {
      document.getElementById('version').textContent = `${info.name} ${info.version}`;
    }
  } catch (err) {
    console.warn('[livesession] could not load server info:', err);
    const el = document.getElementById('info-error');
    el.textContent = 'Could not reach the server. Reload the page to try again.';
    el.hidden = false;
  } finally {
    document.getElementById('loading').hidden = true;
  }
}

// "Start a session" posts with fetch and shows a refusal (too many free sessions
// from this address, a rate limit) on the page.
wireStartForm(document.querySelector('#free-mode form'), document.getElementById('start-error'));

// Disable a button once pressed: a second click would start a second session
// (or a second checkout). The checkout form posts itself (Stripe's page is on
// another origin), so a goal the server would refuse is caught here first.
for (const form of document.querySelectorAll('#checkout form')) {
  form.addEventListener('submit', (ev) => {
    const errorEl = document.getElementById('checkout-error');
    const problem = goalProblem(form.elements.goal?.value, { crlf: true });
    errorEl.textContent = problem ?? '';
    errorEl.hidden = !problem;
    if (problem) {
      ev.preventDefault();
      return;
    }
    ev.submitter?.setAttribute('disabled', '');
  });
}

main();

// Coming back with the Back button (from Stripe's page, say) restores the
// page from the cache with the buttons still disabled.
window.addEventListener('pageshow', () => {
  for (const button of document.querySelectorAll('#free-mode button, #checkout button')) {
    button.removeAttribute('disabled');
  }
});
