// End to end: payments. The real server sells sessions through Stripe
// Checkout, here a local fake (fake-stripe.js) that checks every field of the
// server's Checkout request; webhooks are signed by Stripe's own library.
// Paid sessions open in the real viewer on real desktops.

import assert from 'node:assert/strict';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  checkoutSessionObject,
  deliverWebhook,
  makeEvent,
  newCheckoutSessionId,
  newEventId,
  newPaymentIntentId,
  refundedChargeObject,
  signatureHeader,
  startFakeStripe,
  stripeId,
} from './fake-stripe.js';
import { assertLoopback, launchBrowser, recordConsole, startServer, startTestPageServer, waitFor, withDiagnostics } from './helpers.js';

const SECRET_KEY = 'sk_test_123';
const WEBHOOK_SECRET = 'whsec_test_456';
const PRODUCT = 'Live browser session (24 hours)';
const PRICE_TEXT = '$1.00';

const stripeEnv = (fake) => ({
  LIVESESSION_STRIPE_SECRET_KEY: SECRET_KEY,
  LIVESESSION_STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
  LIVESESSION_STRIPE_API_BASE: fake.url,
});

// A paid session's viewer reaches "connected" once its desktop has started.
const CONNECT_TIMEOUT_MS = 60_000;

describe('payments', { timeout: 900_000 }, () => {
  let pages;
  let fake;
  let server;
  let browser;

  before(async () => {
    pages = await startTestPageServer();
    fake = await startFakeStripe({ secretKey: SECRET_KEY, webhookSecret: WEBHOOK_SECRET });
    // The claim page asks once a second; the tests below run its clock faster than real
    // time, so the checkout class (claims included) gets more than its default 2/s.
    server = await startServer({ startUrl: pages.url, env: { ...stripeEnv(fake), LIVESESSION_CHECKOUT_RATE: '20' } });
    fake.setServer({ baseUrl: server.baseUrl });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    const status = await server?.stop();
    await fake?.close();
    await pages?.close();
    if (status && status.code !== 0 && status.signal === null) {
      console.error(`[e2e] server exited with ${JSON.stringify(status)} after SIGTERM; tail:\n${server.tail(40)}`);
    }
  });

  // ---- helpers ----------------------------------------------------------

  /** The sessions the admin API lists for a Checkout Session id. */
  async function sessionsFor(csId) {
    const res = await server.admin(`/api/sessions?checkout_session_id=${encodeURIComponent(csId)}`);
    const text = await res.text();
    assert.equal(res.status, 200, `GET /api/sessions?checkout_session_id=${csId}: ${res.status} ${text}`);
    const { sessions } = JSON.parse(text);
    assert.ok(Array.isArray(sessions), `"sessions" is an array: ${text}`);
    for (const s of sessions) {
      assert.equal(s.checkout_session_id, csId, `the lookup by checkout_session_id returned another checkout's session: ${text}`);
    }
    return sessions;
  }

  /** The one active session for `csId` (waits a little for it). */
  async function activeSessionFor(csId, timeoutMs = 5_000) {
    let last = [];
    await waitFor(
      async () => {
        last = await sessionsFor(csId);
        return last.length === 1 && last[0].state === 'active';
      },
      { timeoutMs, what: () => `one active session for ${csId} (have ${JSON.stringify(last)})` },
    );
    const [session] = last;
    assert.equal(session.source, 'checkout', `source of a paid session: ${JSON.stringify(session)}`);
    return session;
  }

  const assertNoActiveSession = async (csId) => {
    const sessions = await sessionsFor(csId);
    const active = sessions.filter((s) => s.state === 'active');
    assert.deepEqual(active, [], `no active session for ${csId}`);
    return sessions;
  };

  /**
   * Buy as a non-browser client would post the landing page's form: the
   * server creates a Checkout Session at the fake and answers 303 to its URL.
   */
  async function createCheckout() {
    const before = fake.creates.length;
    const res = await server.request('/api/checkout', {
      method: 'POST',
      headers: { Origin: server.baseUrl, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: '',
    });
    const text = await res.text();
    assert.equal(res.status, 303, `POST /api/checkout: ${res.status} ${text}`);
    const location = res.headers.get('location');
    const creates = fake.creates.slice(before);
    assert.equal(creates.length, 1, `one Checkout Session created per POST /api/checkout (got ${creates.length})`);
    const [record] = creates;
    assert.deepEqual(record.failures, [], `the Checkout request passes every check:\n${record.failures.join('\n')}\nform: ${JSON.stringify(record.form, null, 2)}`);
    const session = fake.sessions.get(record.sessionId);
    assert.ok(session, 'the fake created a session');
    assert.equal(location, session.url, 'POST /api/checkout redirects to the Checkout Session url');
    return session;
  }

  /** Sign `event` (or a raw payload string) with Stripe's library and POST it. */
  async function sendEvent(event, { secret = WEBHOOK_SECRET, timestamp } = {}) {
    const payload = typeof event === 'string' ? event : JSON.stringify(event);
    return deliverWebhook(server.baseUrl, payload, { signature: signatureHeader(payload, { secret, timestamp }) });
  }

  const assertReceived = (delivery, what) => {
    assert.equal(delivery.status, 200, `${what}: ${delivery.status} ${delivery.text}`);
    assert.deepEqual(delivery.json, { received: true }, `${what}: body ${delivery.text}`);
  };

  /** checkout.session.completed (paid) for a session created through the server. */
  function paidEvent(session, { type = 'checkout.session.completed', paymentIntent = newPaymentIntentId(), eventId } = {}) {
    const object = checkoutSessionObject({
      id: session.id,
      clientReferenceId: session.client_reference_id,
      metadata: session.metadata,
      paymentStatus: 'paid',
      paymentIntent,
      successUrl: session.success_url,
      cancelUrl: session.cancel_url,
    });
    return makeEvent(type, object, eventId ? { id: eventId } : {});
  }

  const successUrl = (csId) => `${server.baseUrl}/checkout/success?session_id=${encodeURIComponent(csId)}`;

  /** Revoke every session of these checkouts when the test ends (stops their desktops). */
  function revokeLater(t, ...csIds) {
    t.after(async () => {
      for (const csId of csIds) {
        const sessions = await sessionsFor(csId).catch(() => []);
        for (const s of sessions) {
          if (s.state === 'active' || s.state === 'pending') await server.admin(`/api/sessions/${encodeURIComponent(s.id)}`, { method: 'DELETE' }).catch(() => {});
        }
      }
    });
  }

  /** A fresh browser context (en-US, so the price reads "$1.00") and a failure dump. */
  async function openPage(t) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US' });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const diagnostics = async () => {
      const shot = path.join(os.tmpdir(), `livesession-e2e-${process.pid}-${Date.now()}.png`);
      await page.screenshot({ path: shot }).catch(() => {});
      const body = await page.evaluate(() => ({ ...document.body.dataset, text: document.body.innerText.slice(0, 800) })).catch(() => null);
      const fakeFailures = fake.failures.length ? `\n[e2e] fake Stripe failures:\n${fake.failures.join('\n')}` : '';
      return `[e2e] page ${page.url()}\n[e2e] page state: ${JSON.stringify(body)}\n[e2e] screenshot: ${shot}${fakeFailures}\n[e2e] ---- browser console (tail) ----\n${consoleTail()}`;
    };
    return { context, page, diagnostics };
  }

  const waitForState = (page, state, timeout) => page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 100 });

  /** The viewer page at /s/<id>: returns the id once the desktop is connected. */
  async function expectViewerConnected(page, context) {
    await page.waitForURL(/\/s\/[^/?#]+$/, { timeout: 30_000 });
    const id = new URL(page.url()).pathname.split('/').pop();
    // All of this fresh context's cookies: the server scopes them to the session's paths.
    const cookies = await context.cookies();
    assert.ok(cookies.length > 0, 'the claim set a cookie');
    assert.ok(cookies.every((c) => c.httpOnly), `cookies are HttpOnly: ${cookies.map((c) => c.name).join(', ')}`);
    await waitForState(page, 'connected', CONNECT_TIMEOUT_MS);
    return id;
  }

  // ---- landing page -----------------------------------------------------

  test('landing page in paid mode: price, "Buy a session", a 303 to Stripe Checkout with every field checked, and back', { timeout: 60_000 }, async (t) => {
    const { page, diagnostics } = await openPage(t);
    await withDiagnostics(
      server,
      async () => {
        const info = await (await server.request('/api/info')).json();
        assert.equal(info.checkout, true, `/api/info checkout: ${JSON.stringify(info)}`);
        assert.equal(info.free_mode, false, 'a secret key turns free mode off by default');
        assert.deepEqual(info.price, { amount_cents: 100, currency: 'usd', product: PRODUCT });

        const posts = [];
        page.on('response', (r) => {
          if (r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/checkout') {
            posts.push({ status: r.status(), location: r.headers().location });
          }
        });

        await page.goto(`${server.baseUrl}/`);
        const buy = page.getByRole('button', { name: /^Buy a session/ });
        await buy.waitFor({ state: 'visible', timeout: 10_000 });
        assert.equal(await page.locator('#price').textContent(), PRICE_TEXT);
        assert.match(await buy.textContent(), new RegExp(`^Buy a session.*${PRICE_TEXT.replace('$', '\\$')}`));
        await page.getByText(PRODUCT, { exact: true }).waitFor({ state: 'visible' });
        assert.equal(await page.locator('#free-mode').isVisible(), false, 'no free-mode form');
        assert.equal(await page.locator('#operator-mode').isVisible(), false, 'no operator-only note');
        assert.equal(await page.locator('#checkout-cancelled').isVisible(), false, 'no cancellation note');

        const before = fake.creates.length;
        await buy.click();
        await page.waitForURL((u) => u.href.startsWith(`${fake.url}/pay/`), { timeout: 15_000 });

        assert.equal(posts.length, 1, `one POST /api/checkout: ${JSON.stringify(posts)}`);
        assert.equal(posts[0].status, 303, 'POST /api/checkout answers 303');
        const creates = fake.creates.slice(before);
        assert.equal(creates.length, 1, 'one Checkout Session created');
        assert.deepEqual(creates[0].failures, [], `the Checkout request passes every check:\n${creates[0].failures.join('\n')}`);
        const session = fake.sessions.get(creates[0].sessionId);
        assert.equal(posts[0].location, session.url, 'the 303 goes to the Checkout Session url');
        assert.equal(page.url(), session.url, 'the browser is on the (fake) Stripe Checkout page');
        assert.equal(await page.locator('#product').textContent(), PRODUCT);
        await assertNoActiveSession(session.id);

        // Stripe's "Back" link goes to cancel_url: the landing page says so
        // and offers the button again.
        await page.locator('#back').click();
        await page.waitForURL(`${server.baseUrl}/?checkout=cancelled`, { timeout: 10_000 });
        await page.locator('#checkout-cancelled').waitFor({ state: 'visible', timeout: 10_000 });
        assert.match(await page.locator('#checkout-cancelled').textContent(), /cancelled/i);
        await buy.waitFor({ state: 'visible' });
        assert.equal(await buy.isEnabled(), true, 'the Buy button works again');
        assert.deepEqual(fake.failures, [], 'fake Stripe saw nothing wrong');
      },
      diagnostics,
    );
  });

  test('the whole purchase: Buy, pay on Stripe, the session opens here; another browser is told it was already claimed', { timeout: 180_000 }, async (t) => {
    const { page, context, diagnostics } = await openPage(t);
    let csId = null;
    t.after(async () => {
      if (csId) {
        for (const s of await sessionsFor(csId).catch(() => [])) await server.admin(`/api/sessions/${s.id}`, { method: 'DELETE' }).catch(() => {});
      }
    });
    await withDiagnostics(
      server,
      async () => {
        await page.goto(`${server.baseUrl}/`);
        await page.getByRole('button', { name: /^Buy a session/ }).click();
        await page.waitForURL((u) => u.href.startsWith(`${fake.url}/pay/`), { timeout: 15_000 });
        csId = await page.evaluate(() => document.body.dataset.checkoutSession);

        // "Pay": the fake delivers the signed checkout.session.completed, then
        // sends the browser to success_url, whose page claims the session.
        await page.locator('#pay').click();
        await page.waitForURL((u) => u.pathname === '/checkout/success' || u.pathname.startsWith('/s/'), { timeout: 15_000 });
        const delivery = fake.deliveries.find((d) => d.event.data.object.id === csId);
        assert.ok(delivery, 'the fake delivered the webhook');
        assert.equal(delivery.status, 200, `webhook answer: ${delivery.text}`);

        const viewerId = await expectViewerConnected(page, context);
        const session = await activeSessionFor(csId);
        assert.equal(session.id, viewerId, 'the viewer shows the paid session');
        assert.equal(await page.locator('#status').textContent(), 'connected');

        // The same success link in another browser: the session is not handed out twice.
        const other = await openPage(t);
        await withDiagnostics(
          server,
          async () => {
            await other.page.goto(successUrl(csId));
            await waitForState(other.page, 'already-claimed', 15_000);
            const message = await other.page.locator('#claim-error').textContent();
            assert.match(message, /already opened in another browser/i);
            assert.equal(new URL(other.page.url()).pathname, '/checkout/success', 'the second browser stays on the success page');
            assert.deepEqual(await other.context.cookies(), [], 'the second browser got no session cookie');
          },
          other.diagnostics,
        );

        // The first browser is still watching.
        assert.equal(await page.evaluate(() => document.body.dataset.state), 'connected');
        assert.deepEqual(fake.failures, [], 'fake Stripe saw nothing wrong');
      },
      diagnostics,
    );
  });

  test('the buyer\'s own browser opening the success link again goes back to its session', { timeout: 60_000 }, async (t) => {
    const { page, context, diagnostics } = await openPage(t);
    const session = await createCheckout();
    revokeLater(t, session.id);
    await withDiagnostics(
      server,
      async () => {
        assertReceived(await sendEvent(paidEvent(session)), 'checkout.session.completed');
        const active = await activeSessionFor(session.id);
        await page.goto(successUrl(session.id));
        await page.waitForURL(`${server.baseUrl}/s/${active.id}`, { timeout: 15_000 });

        // A bookmark, a reload, the link from Stripe's receipt: same browser, same session.
        const again = await context.newPage();
        await again.goto(successUrl(session.id));
        await again.waitForURL(`${server.baseUrl}/s/${active.id}`, { timeout: 15_000 }).catch(async (err) => {
          const shown = await again.evaluate(() => ({ ...document.body.dataset, text: document.body.innerText.slice(0, 200) })).catch(() => null);
          const cookies = (await context.cookies()).map((c) => `${c.name} (Path=${c.path})`);
          throw new Error(`reopening the success link in the browser that claimed the session did not return to /s/${active.id}: page ${JSON.stringify(shown)}; cookies ${JSON.stringify(cookies)} (${err.message.split('\n')[0]})`);
        });
      },
      diagnostics,
    );
  });

  // ---- webhook ----------------------------------------------------------

  test('a signed checkout.session.completed (paid) activates exactly one session; a redelivery changes nothing', { timeout: 30_000 }, async (t) => {
    await withDiagnostics(server, async () => {
      const session = await createCheckout();
      revokeLater(t, session.id);
      const before = await sessionsFor(session.id);
      assert.ok(before.every((s) => s.state !== 'active'), `nothing active before payment: ${JSON.stringify(before)}`);

      const event = paidEvent(session);
      assertReceived(await sendEvent(event), 'checkout.session.completed');
      const active = await activeSessionFor(session.id);
      assert.equal(active.checkout_session_id, session.id);

      // Stripe retries deliveries it thinks failed: same event, newly signed.
      await sleep(1_100);
      assertReceived(await sendEvent(event), 'the same event delivered again');
      const after = await sessionsFor(session.id);
      assert.equal(after.length, 1, `still one session: ${JSON.stringify(after)}`);
      assert.equal(after[0].id, active.id, 'the same session');
      assert.equal(after[0].state, 'active');
    });
  });

  test('bad signatures are refused with 400 invalid_signature and store nothing', { timeout: 30_000 }, async () => {
    await withDiagnostics(server, async () => {
      const now = Math.floor(Date.now() / 1000);
      const cases = [
        {
          name: 'tampered body',
          build: (event) => {
            const payload = JSON.stringify(event);
            const signature = signatureHeader(payload, { secret: WEBHOOK_SECRET });
            // Signed for one body, sent with another: the amount changed.
            return { payload: payload.replace('"amount_total":100', '"amount_total":1'), signature };
          },
        },
        {
          name: 'wrong secret',
          build: (event) => {
            const payload = JSON.stringify(event);
            return { payload, signature: signatureHeader(payload, { secret: 'whsec_not_the_right_one' }) };
          },
        },
        {
          name: 'timestamp older than 300 s',
          build: (event) => {
            const payload = JSON.stringify(event);
            return { payload, signature: signatureHeader(payload, { secret: WEBHOOK_SECRET, timestamp: now - 360 }) };
          },
        },
        { name: 'missing Stripe-Signature header', build: (event) => ({ payload: JSON.stringify(event), signature: null }) },
        {
          name: 'only a v0 signature (test-mode scheme Stripe no longer accepts)',
          build: (event) => {
            const payload = JSON.stringify(event);
            return { payload, signature: signatureHeader(payload, { secret: WEBHOOK_SECRET }).replace(',v1=', ',v0=') };
          },
        },
        { name: 'garbage header', build: (event) => ({ payload: JSON.stringify(event), signature: 'not a signature' }) },
      ];
      for (const c of cases) {
        const object = checkoutSessionObject({ paymentStatus: 'paid' });
        fake.register(object);
        const { payload, signature } = c.build(makeEvent('checkout.session.completed', object));
        const res = await deliverWebhook(server.baseUrl, payload, { signature });
        assert.equal(res.status, 400, `${c.name}: expected 400, got ${res.status} ${res.text}`);
        assert.equal(res.json?.error?.code, 'invalid_signature', `${c.name}: error code in ${res.text}`);
        assert.deepEqual(await sessionsFor(object.id), [], `${c.name}: no session stored`);
      }
    });
  });

  test('signatures Stripe accepts are accepted: several v1 values, a timestamp within the tolerance', { timeout: 30_000 }, async (t) => {
    await withDiagnostics(server, async () => {
      // During a secret roll Stripe signs with both secrets: one v1 matches.
      const a = checkoutSessionObject({ paymentStatus: 'paid' });
      fake.register(a);
      revokeLater(t, a.id);
      const payload = JSON.stringify(makeEvent('checkout.session.completed', a));
      const good = signatureHeader(payload, { secret: WEBHOOK_SECRET });
      const other = signatureHeader(payload, { secret: 'whsec_the_old_secret' });
      const t0 = good.match(/^t=(\d+)/)[1];
      const goodV1 = good.split(',v1=')[1];
      const otherV1 = other.split(',v1=')[1];
      assertReceived(await deliverWebhook(server.baseUrl, payload, { signature: `t=${t0},v1=${otherV1},v1=${goodV1}` }), 'two v1 signatures, the second valid');
      await activeSessionFor(a.id);

      // 4 minutes old: inside the 300 s tolerance.
      const b = checkoutSessionObject({ paymentStatus: 'paid' });
      fake.register(b);
      revokeLater(t, b.id);
      assertReceived(await sendEvent(makeEvent('checkout.session.completed', b), { timestamp: Math.floor(Date.now() / 1000) - 240 }), 'a 240 s old signature');
      await activeSessionFor(b.id);
    });
  });

  test('50 concurrent deliveries for one checkout (retries and distinct events, completed and async_payment_succeeded) make exactly one session', { timeout: 60_000 }, async (t) => {
    await withDiagnostics(server, async () => {
      const session = await createCheckout();
      revokeLater(t, session.id);
      const paymentIntent = newPaymentIntentId();
      const retried = paidEvent(session, { paymentIntent, eventId: newEventId() });
      const events = [];
      for (let i = 0; i < 50; i += 1) {
        if (i % 3 === 0) events.push(retried); // the same event id, delivered again and again
        else if (i % 3 === 1) events.push(paidEvent(session, { paymentIntent }));
        else events.push(paidEvent(session, { paymentIntent, type: 'checkout.session.async_payment_succeeded' }));
      }
      const results = await Promise.all(events.map((e) => sendEvent(e)));
      const bad = results.map((r, i) => ({ i, type: events[i].type, id: events[i].id, status: r.status, text: r.text })).filter((r) => r.status < 200 || r.status >= 300);
      assert.deepEqual(bad, [], 'every delivery answered 2xx');

      const sessions = await sessionsFor(session.id);
      assert.equal(sessions.length, 1, `exactly one session: ${JSON.stringify(sessions)}`);
      assert.equal(sessions[0].state, 'active');
      assert.equal(sessions[0].source, 'checkout');

      // And not a second one hiding from the filter.
      const res = await server.admin('/api/sessions?limit=1000');
      const all = (await res.json()).sessions;
      assert.equal(all.filter((s) => s.checkout_session_id === session.id).length, 1, 'one session with this checkout_session_id in the full list');
    });
  });

  test('checkout.session.completed with payment_status "unpaid" does not activate; async_payment_succeeded later does', { timeout: 30_000 }, async (t) => {
    await withDiagnostics(server, async () => {
      const session = await createCheckout();
      revokeLater(t, session.id);
      const object = checkoutSessionObject({
        id: session.id,
        clientReferenceId: session.client_reference_id,
        metadata: session.metadata,
        paymentStatus: 'unpaid',
        status: 'complete', // a delayed payment method: the checkout is done, the money is not
        paymentIntent: newPaymentIntentId(),
      });
      assertReceived(await sendEvent(makeEvent('checkout.session.completed', object)), 'checkout.session.completed (unpaid)');
      await sleep(500);
      await assertNoActiveSession(session.id);

      // The success page keeps waiting meanwhile.
      const claim = await server.request('/api/checkout/claim', {
        method: 'POST',
        headers: { Origin: server.baseUrl, 'Content-Type': 'application/json' },
        body: JSON.stringify({ checkout_session_id: session.id }),
      });
      const claimText = await claim.text();
      assert.equal(claim.status, 202, `claim before payment: ${claim.status} ${claimText}`);
      assert.equal(JSON.parse(claimText).status, 'pending');

      const paid = makeEvent('checkout.session.async_payment_succeeded', { ...object, payment_status: 'paid' });
      assertReceived(await sendEvent(paid), 'checkout.session.async_payment_succeeded');
      await activeSessionFor(session.id);
    });
  });

  test('other event types are acknowledged and ignored', { timeout: 30_000 }, async () => {
    await withDiagnostics(server, async () => {
      const count = async () => (await (await server.admin('/api/sessions?limit=1000')).json()).sessions.length;
      const before = await count();
      const pi = newPaymentIntentId();
      const others = [
        makeEvent('payment_intent.succeeded', { id: pi, object: 'payment_intent', amount: 100, currency: 'usd', status: 'succeeded', metadata: {} }),
        makeEvent('checkout.session.expired', checkoutSessionObject({ status: 'expired' })),
        makeEvent('customer.created', { id: stripeId('cus_'), object: 'customer', email: 'buyer@example.com', metadata: {} }),
      ];
      for (const event of others) assertReceived(await sendEvent(event), event.type);
      assert.equal(await count(), before, 'no session created');
    });
  });

  // ---- claim ------------------------------------------------------------

  test('the success page waits for a webhook that arrives 3 s later, then opens the session', { timeout: 120_000 }, async (t) => {
    const { page, context, diagnostics } = await openPage(t);
    const session = await createCheckout();
    revokeLater(t, session.id);
    const claims = [];
    page.on('response', (r) => {
      if (new URL(r.url()).pathname === '/api/checkout/claim') claims.push(r.status());
    });
    await withDiagnostics(
      server,
      async () => {
        await page.goto(successUrl(session.id));
        await page.getByText('Confirming your payment…').waitFor({ state: 'visible', timeout: 5_000 });
        assert.equal(await page.evaluate(() => document.body.dataset.state), 'confirming');
        await sleep(3_000);
        assert.equal(new URL(page.url()).pathname, '/checkout/success', 'still waiting on the success page');
        assert.equal(await page.evaluate(() => document.body.dataset.state), 'confirming');
        assert.ok(claims.length >= 2, `the page asked more than once (${JSON.stringify(claims)})`);
        assert.ok(claims.every((s) => s === 202), `every answer so far was 202 pending: ${JSON.stringify(claims)}`);

        assertReceived(await sendEvent(paidEvent(session)), 'checkout.session.completed');
        const viewerId = await expectViewerConnected(page, context);
        assert.equal((await activeSessionFor(session.id)).id, viewerId);
        assert.equal(claims.at(-1), 200, `the last claim answered 200: ${JSON.stringify(claims)}`);
      },
      diagnostics,
    );
  });

  test('the success page stops asking after 2 minutes and offers "Check again", which picks up a late payment', { timeout: 90_000 }, async (t) => {
    const { page, diagnostics } = await openPage(t);
    // A Payment Link checkout the server hears about only after the page gave up.
    const object = fake.register(checkoutSessionObject({ paymentStatus: 'paid', paymentLink: stripeId('plink_') }));
    revokeLater(t, object.id);
    let claims = 0;
    page.on('request', (r) => {
      if (new URL(r.url()).pathname === '/api/checkout/claim') claims += 1;
    });
    await withDiagnostics(
      server,
      async () => {
        // The page's clock is ours: two minutes pass in a few seconds.
        await page.clock.install();
        await page.goto(successUrl(object.id));
        await waitForState(page, 'confirming', 5_000);
        for (let i = 0; i < 200; i += 1) {
          await page.clock.runFor(1_000);
          // Each page second is one claim, counted in the checkout budget
          // (raised to 20/s for this suite): stay well under it.
          await sleep(150);
          if (await page.evaluate(() => document.body.dataset.state !== 'confirming')) break;
        }
        const shown = await page.evaluate(() => ({ ...document.body.dataset, text: document.body.innerText }));
        assert.equal(shown.state, 'error', `state after two minutes: ${JSON.stringify(shown)}`);
        assert.equal(shown.reason, 'not-confirmed');
        assert.match(shown.text, /not been confirmed yet/i);
        assert.ok(claims >= 100 && claims <= 125, `about one claim a second for two minutes (${claims})`);

        // Nothing more is asked until the buyer says so.
        const asked = claims;
        await page.clock.runFor(30_000);
        await sleep(200);
        assert.equal(claims, asked, 'no claims after giving up');

        assertReceived(await sendEvent(makeEvent('checkout.session.completed', object)), 'checkout.session.completed');
        const session = await activeSessionFor(object.id);
        await page.getByRole('button', { name: 'Check again' }).click();
        await page.waitForURL(`${server.baseUrl}/s/${session.id}`, { timeout: 10_000 });
      },
      diagnostics,
    );
  });

  test('a Payment Link checkout (not created by this server) paid by webhook gets one session, claimable with its id', { timeout: 120_000 }, async (t) => {
    const { page, context, diagnostics } = await openPage(t);
    const object = fake.register(
      checkoutSessionObject({
        paymentStatus: 'paid',
        paymentLink: stripeId('plink_'),
        clientReferenceId: null,
        metadata: {},
        successUrl: `${server.baseUrl}/checkout/success?session_id={CHECKOUT_SESSION_ID}`,
      }),
    );
    revokeLater(t, object.id);
    await withDiagnostics(
      server,
      async () => {
        assertReceived(await sendEvent(makeEvent('checkout.session.completed', object)), 'checkout.session.completed (Payment Link)');
        const session = await activeSessionFor(object.id);
        await page.goto(successUrl(object.id));
        const viewerId = await expectViewerConnected(page, context);
        assert.equal(viewerId, session.id);
      },
      diagnostics,
    );
  });

  test('charge.refunded revokes the session: the admin API says revoked, the open viewer ends with 4008', { timeout: 120_000 }, async (t) => {
    const { page, context, diagnostics } = await openPage(t);
    const session = await createCheckout();
    revokeLater(t, session.id);
    const paymentIntent = newPaymentIntentId();
    await withDiagnostics(
      server,
      async () => {
        assertReceived(await sendEvent(paidEvent(session, { paymentIntent })), 'checkout.session.completed');
        const active = await activeSessionFor(session.id);
        await page.goto(successUrl(session.id));
        assert.equal(await expectViewerConnected(page, context), active.id);

        assertReceived(await sendEvent(makeEvent('charge.refunded', refundedChargeObject({ paymentIntent }))), 'charge.refunded');
        let last = [];
        await waitFor(
          async () => {
            last = await sessionsFor(session.id);
            return last.length === 1 && last[0].state === 'revoked';
          },
          { timeoutMs: 10_000, what: () => `the session to be revoked (have ${JSON.stringify(last)})` },
        );

        await waitForState(page, 'ended', 15_000);
        await page.waitForFunction(() => document.body.dataset.lastCloseCode === '4008', null, { timeout: 5_000 }).catch(() => {});
        assert.equal(await page.evaluate(() => document.body.dataset.lastCloseCode), '4008', 'the viewer was closed with 4008 session revoked');

        // The success link now says the session is over.
        const other = await openPage(t);
        await withDiagnostics(
          server,
          async () => {
            await other.page.goto(successUrl(session.id));
            await waitForState(other.page, 'ended', 15_000);
            assert.match(await other.page.locator('#claim-error').textContent(), /ended/i);
          },
          other.diagnostics,
        );
      },
      diagnostics,
    );
  });

  test('the server logged no errors and no secrets', { timeout: 10_000 }, () => {
    const lines = server.output().split('\n');
    const errors = lines.filter((line) => {
      try {
        return JSON.parse(line.replace(/^\[err\] /, '')).level === 'ERROR';
      } catch {
        return false;
      }
    });
    assert.deepEqual(errors, [], 'no ERROR lines in the server log');
    for (const secret of [SECRET_KEY, WEBHOOK_SECRET]) {
      assert.ok(!server.output().includes(secret), `${secret.slice(0, 6)}… does not appear in the server log`);
    }
  });

  test('the success page without a Checkout Session id says so and asks nothing', { timeout: 30_000 }, async (t) => {
    const { page, diagnostics } = await openPage(t);
    let claims = 0;
    page.on('request', (r) => {
      if (new URL(r.url()).pathname === '/api/checkout/claim') claims += 1;
    });
    await withDiagnostics(
      server,
      async () => {
        await page.goto(`${server.baseUrl}/checkout/success`);
        await waitForState(page, 'error', 5_000);
        assert.match(await page.locator('#claim-error').textContent(), /no payment reference/i);
        await sleep(1_500);
        assert.equal(claims, 0, 'no claim request');
      },
      diagnostics,
    );
  });
});

describe('landing page offers', { timeout: 120_000 }, () => {
  let browser;
  let fake;
  before(async () => {
    fake = await startFakeStripe({ secretKey: SECRET_KEY, webhookSecret: WEBHOOK_SECRET });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fake?.close();
  });

  async function landing(t, env) {
    const server = await startServer({ startUrl: 'about:blank', env });
    t.after(() => server.stop());
    const context = await browser.newContext({ locale: 'en-US' });
    t.after(() => context.close());
    const page = await context.newPage();
    const consoleTail = recordConsole(page);
    const url = `${server.baseUrl}/`;
    assertLoopback(url);
    await page.goto(url);
    await page.locator('#loading').waitFor({ state: 'hidden', timeout: 10_000 });
    const info = await (await server.request('/api/info')).json();
    return { server, page, info, diagnostics: async () => `[e2e] ---- browser console ----\n${consoleTail()}` };
  }

  test('free mode and checkout both on: both offers', async (t) => {
    const { server, page, info, diagnostics } = await landing(t, { ...stripeEnv(fake), LIVESESSION_FREE_MODE: 'true' });
    await withDiagnostics(
      server,
      async () => {
        assert.equal(info.free_mode, true);
        assert.equal(info.checkout, true);
        await page.getByRole('button', { name: /^Buy a session/ }).waitFor({ state: 'visible' });
        await page.getByRole('button', { name: 'Start a session', exact: true }).waitFor({ state: 'visible' });
        assert.equal(await page.locator('#price').textContent(), PRICE_TEXT);
        assert.equal(await page.locator('#operator-mode').isVisible(), false);
      },
      diagnostics,
    );
  });

  test('a configured price, currency and product name', async (t) => {
    const env = { ...stripeEnv(fake), LIVESESSION_PRICE_CENTS: '250', LIVESESSION_CURRENCY: 'eur', LIVESESSION_PRODUCT_NAME: 'One day of browser' };
    const { server, page, info, diagnostics } = await landing(t, env);
    await withDiagnostics(
      server,
      async () => {
        assert.deepEqual(info.price, { amount_cents: 250, currency: 'eur', product: 'One day of browser' });
        const buy = page.getByRole('button', { name: /^Buy a session/ });
        await buy.waitFor({ state: 'visible' });
        assert.equal(await page.locator('#price').textContent(), '€2.50');
        assert.match(await buy.textContent(), /€2\.50/);
        await page.getByText('One day of browser', { exact: true }).waitFor({ state: 'visible' });
      },
      diagnostics,
    );
  });

  test('Stripe refusing the secret key: no redirect, an error answer, the key not logged', async (t) => {
    const wrongKey = 'sk_test_wrong_key_789';
    const server = await startServer({ startUrl: 'about:blank', env: { ...stripeEnv(fake), LIVESESSION_STRIPE_SECRET_KEY: wrongKey } });
    t.after(() => server.stop());
    await withDiagnostics(server, async () => {
      const before = fake.requests.length;
      const res = await server.request('/api/checkout', { method: 'POST', headers: { Origin: server.baseUrl } });
      const text = await res.text();
      assert.ok(res.status >= 500, `POST /api/checkout when Stripe answers 401: ${res.status} ${text}`);
      assert.equal(res.headers.get('location'), null, 'no redirect');
      assert.equal(typeof JSON.parse(text).error?.code, 'string', `error shape: ${text}`);
      const seen = fake.requests.slice(before);
      assert.equal(seen.length, 1, 'one request reached the fake');
      assert.equal(seen[0].status, 401, 'the fake refused the key');
      assert.ok(!server.output().includes(wrongKey), 'the secret key does not appear in the server log');
    });
  });

  test('no Stripe key: no checkout, free mode as before', async (t) => {
    const { server, page, info, diagnostics } = await landing(t, {});
    await withDiagnostics(
      server,
      async () => {
        assert.equal(info.checkout, false);
        assert.equal(info.price, null);
        assert.equal(info.free_mode, true);
        await page.getByRole('button', { name: 'Start a session', exact: true }).waitFor({ state: 'visible' });
        assert.equal(await page.getByRole('button', { name: /^Buy a session/ }).count(), 0);
        assert.equal(await page.locator('#checkout').isVisible(), false);
      },
      diagnostics,
    );
  });
});
