// A local stand-in for the parts of Stripe livesession talks to, for the
// payment tests. Everything listens on and talks to 127.0.0.1 only.
//
// - The API: `POST /v1/checkout/sessions` checks every documented form field
//   the server must send (and the headers), answers like Stripe (the Checkout
//   Session object, or Stripe's error shape), and records each request and
//   every failed check so a test can assert there were none.
//   `GET /v1/checkout/sessions/{id}` returns what it knows.
// - The hosted checkout page: `GET /pay/{id}` is the `url` of each created
//   session: a small HTML page with a "Pay" button and a "Back" link (to the
//   session's cancel_url). "Pay" marks the session paid, delivers a signed
//   `checkout.session.completed` webhook to the server, then redirects the
//   browser to the success_url with {CHECKOUT_SESSION_ID} filled in, as
//   Stripe does.
// - Events: builders for the webhook events the server handles, signed with
//   Stripe's own library (`stripe.webhooks.generateTestHeaderString`), so the
//   server's signature check is held against Stripe's code, not against
//   itself.

import { randomBytes } from 'node:crypto';
import http from 'node:http';

import Stripe from 'stripe';

export const API_VERSION = Stripe.API_VERSION;

// Every top-level parameter `POST /v1/checkout/sessions` accepts (from the
// stripe package's SessionCreateParams); Stripe answers anything else with
// 400 parameter_unknown.
const CREATE_PARAMS = new Set(
  `adaptive_pricing after_expiration allow_promotion_codes allowed_payment_method_types automatic_tax
  billing_address_collection branding_settings cancel_url client_reference_id consent_collection currency
  custom_fields custom_text customer customer_account customer_creation customer_email customer_update
  discounts excluded_payment_method_types expand expires_at integration_identifier invoice_creation
  line_items locale managed_payments metadata mode name_collection optional_items origin_context
  payment_intent_data payment_method_collection payment_method_configuration payment_method_data
  payment_method_options permissions phone_number_collection redirect_on_completion return_url
  saved_payment_method_options setup_intent_data shipping_address_collection shipping_options
  submit_type subscription_data success_url tax_id_collection ui_mode wallet_options`.split(/\s+/),
);

const ALPHANUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** A Stripe-looking id: `prefix` + `n` random letters and digits. */
export function stripeId(prefix, n = 24) {
  const bytes = randomBytes(n);
  let s = '';
  for (const b of bytes) s += ALPHANUM[b % ALPHANUM.length];
  return prefix + s;
}

export const newCheckoutSessionId = () => stripeId('cs_test_', 56);
export const newPaymentIntentId = () => stripeId('pi_');
export const newEventId = () => stripeId('evt_');

const now = () => Math.floor(Date.now() / 1000);

/**
 * A Checkout Session object as Stripe sends it in events and API answers.
 * `paid` sets status "complete", payment_status "paid" and a payment intent.
 */
export function checkoutSessionObject({
  id = newCheckoutSessionId(),
  amount = 100,
  currency = 'usd',
  clientReferenceId = null,
  metadata = {},
  paymentStatus = 'unpaid',
  status = paymentStatus === 'paid' ? 'complete' : 'open',
  paymentIntent = paymentStatus === 'paid' ? newPaymentIntentId() : null,
  paymentLink = null,
  successUrl = null,
  cancelUrl = null,
  url = null,
} = {}) {
  const created = now();
  return {
    id,
    object: 'checkout.session',
    amount_subtotal: amount,
    amount_total: amount,
    cancel_url: cancelUrl,
    client_reference_id: clientReferenceId,
    created,
    currency,
    customer: null,
    customer_details: status === 'complete' ? { email: 'buyer@example.com', name: null, phone: null, tax_exempt: 'none' } : null,
    customer_email: null,
    expires_at: created + 24 * 3600,
    livemode: false,
    metadata,
    mode: 'payment',
    payment_intent: paymentIntent,
    payment_link: paymentLink,
    payment_method_types: ['card'],
    payment_status: paymentStatus,
    status,
    submit_type: null,
    success_url: successUrl,
    ui_mode: 'hosted',
    url: status === 'open' ? url : null,
  };
}

/** A Charge object after a full refund, as in `charge.refunded`. */
export function refundedChargeObject({ paymentIntent, amount = 100, currency = 'usd' }) {
  return {
    id: stripeId('ch_'),
    object: 'charge',
    amount,
    amount_captured: amount,
    amount_refunded: amount,
    captured: true,
    created: now() - 60,
    currency,
    livemode: false,
    metadata: {},
    paid: true,
    payment_intent: paymentIntent,
    refunded: true,
    status: 'succeeded',
  };
}

/** An Event object wrapping `object`. */
export function makeEvent(type, object, { id = newEventId(), created = now() } = {}) {
  return {
    id,
    object: 'event',
    api_version: API_VERSION,
    created,
    data: { object },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
  };
}

/**
 * The `Stripe-Signature` header for `payload` (a string: the exact bytes to
 * send), made by Stripe's library. `timestamp` in seconds, default now.
 */
export function signatureHeader(payload, { secret, timestamp } = {}) {
  return Stripe.webhooks.generateTestHeaderString({ payload, secret, ...(timestamp === undefined ? {} : { timestamp }) });
}

/**
 * POST one webhook delivery to the server as Stripe does. `signature: null`
 * sends no Stripe-Signature header. Returns {status, text, json}.
 */
export async function deliverWebhook(baseUrl, payload, { signature }) {
  const headers = {
    'Content-Type': 'application/json; charset=utf-8',
    Accept: '*/*; q=0.5, application/xml',
    'User-Agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
    'Cache-Control': 'no-cache',
  };
  if (signature !== null && signature !== undefined) headers['Stripe-Signature'] = signature;
  const res = await fetch(new URL('/api/stripe/webhook', baseUrl), { method: 'POST', headers, body: payload, redirect: 'manual' });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: the test shows `text`
  }
  return { status: res.status, text, json };
}

function stripeError(res, status, type, message, extra = {}) {
  const body = JSON.stringify({ error: { type, message, ...extra } });
  res.writeHead(status, { 'Content-Type': 'application/json', 'Request-Id': stripeId('req_', 14) });
  res.end(body);
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/**
 * Start the fake. `expect` holds what the server's checkout requests must
 * carry; `publicUrl` (the server's) can be given later with `setServer`, since
 * the server is started after the fake (it needs the fake's URL).
 *
 * @param {{secretKey: string, webhookSecret: string, amount?: number, currency?: string, productName?: string}} opts
 */
export async function startFakeStripe({ secretKey, webhookSecret, amount = 100, currency = 'usd', productName = 'Live browser session (24 hours)' }) {
  /** Every API request: {method, path, headers, raw, form, failures, status}. */
  const requests = [];
  /** Every failed check, as "what: expected …, got …" lines. */
  const failures = [];
  /** Checkout Sessions by id (created here, or registered by a test). */
  const sessions = new Map();
  /** Idempotency-Key → {raw, status, body}. */
  const idempotency = new Map();
  /** Webhook deliveries made by the hosted page's "Pay" button. */
  const deliveries = [];
  let serverBaseUrl = null;
  let publicUrl = null;
  let baseUrl = null;

  function checkCreate(req, raw, form, record) {
    const fail = (what) => {
      record.failures.push(what);
      failures.push(`POST /v1/checkout/sessions: ${what}`);
    };
    const one = (key) => {
      const all = form.getAll(key);
      if (all.length > 1) fail(`field ${key} sent ${all.length} times`);
      return all.length ? all[0] : undefined;
    };
    const expectField = (key, expected) => {
      const got = one(key);
      if (got !== expected) fail(`field ${key}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
      return got;
    };

    const idemKey = req.headers['idempotency-key'];
    if (!idemKey || !idemKey.trim()) fail('header Idempotency-Key: expected a non-empty value, got none');
    else if (idemKey.length > 255) fail(`header Idempotency-Key: longer than Stripe's 255 characters (${idemKey.length})`);
    const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (contentType !== 'application/x-www-form-urlencoded') fail(`header Content-Type: expected application/x-www-form-urlencoded, got ${JSON.stringify(req.headers['content-type'])}`);

    let unknown = null;
    for (const key of new Set(form.keys())) {
      const top = key.split('[')[0];
      if (!CREATE_PARAMS.has(top)) {
        fail(`unknown parameter ${JSON.stringify(key)} (Stripe answers 400 parameter_unknown)`);
        unknown ??= key;
      }
    }

    expectField('mode', 'payment');
    expectField('line_items[0][quantity]', '1');
    expectField('line_items[0][price_data][currency]', currency);
    expectField('line_items[0][price_data][unit_amount]', String(amount));
    expectField('line_items[0][price_data][product_data][name]', productName);
    const lineItemKeys = [...new Set(form.keys())].filter((k) => k.startsWith('line_items[') && !k.startsWith('line_items[0]'));
    if (lineItemKeys.length) fail(`only one line item expected, got fields ${lineItemKeys.join(', ')}`);
    if (publicUrl) {
      expectField('success_url', `${publicUrl}/checkout/success?session_id={CHECKOUT_SESSION_ID}`);
      expectField('cancel_url', `${publicUrl}/?checkout=cancelled`);
    } else {
      fail('the test did not tell the fake the server URL (setServer) before a checkout was created');
    }
    // The placeholder goes to Stripe as text, URL-encoded: never
    // pre-substituted, never encoded twice.
    if (!raw.includes('%7BCHECKOUT_SESSION_ID%7D') && !raw.includes('{CHECKOUT_SESSION_ID}')) {
      fail('success_url: the {CHECKOUT_SESSION_ID} placeholder is missing from the form body');
    }
    const ref = one('client_reference_id');
    if (!ref) fail('field client_reference_id: expected a reference, got none');
    else if (!/^[A-Za-z0-9_-]{1,200}$/.test(ref)) fail(`field client_reference_id: Stripe allows up to 200 letters, digits, "-" and "_"; got ${JSON.stringify(ref)}`);
    const metaRef = one('metadata[livesession_ref]');
    if (metaRef !== ref) fail(`field metadata[livesession_ref]: expected the client_reference_id ${JSON.stringify(ref)}, got ${JSON.stringify(metaRef)}`);
    for (const key of form.keys()) {
      if (key.startsWith('metadata[') && form.get(key).length > 500) fail(`${key}: longer than Stripe's 500 characters`);
    }
    return { ref, idemKey, unknown };
  }

  function createSession(req, res, raw) {
    const record = { method: req.method, path: req.url, headers: { ...req.headers }, raw, form: null, failures: [], status: 0 };
    requests.push(record);
    const auth = req.headers.authorization;
    if (!auth) {
      record.status = 401;
      record.failures.push('no Authorization header');
      failures.push('POST /v1/checkout/sessions: no Authorization header');
      return stripeError(res, 401, 'invalid_request_error', 'You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. \'Authorization: Bearer YOUR_SECRET_KEY\').');
    }
    if (auth !== `Bearer ${secretKey}`) {
      record.status = 401;
      record.failures.push(`Authorization: expected "Bearer <the configured secret key>", got ${JSON.stringify(auth.replace(/(sk_\w{0,8})\w*/, '$1…'))}`);
      failures.push(`POST /v1/checkout/sessions: wrong Authorization header`);
      return stripeError(res, 401, 'invalid_request_error', 'Invalid API Key provided: ' + auth.replace(/^Bearer\s+/, '').slice(0, 8) + '***');
    }

    const form = new URLSearchParams(raw);
    record.form = Object.fromEntries(form);
    const { ref, idemKey, unknown } = checkCreate(req, raw, form, record);

    // Stripe replays the first answer for a repeated Idempotency-Key, and
    // refuses the key with different parameters.
    if (idemKey && idempotency.has(idemKey)) {
      const first = idempotency.get(idemKey);
      if (first.raw !== raw) {
        record.status = 400;
        record.failures.push('Idempotency-Key reused with different parameters');
        failures.push(`POST /v1/checkout/sessions: Idempotency-Key ${idemKey} reused with different parameters`);
        return stripeError(res, 400, 'idempotency_error', `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${idemKey}' if you meant to execute a different request.`);
      }
      record.status = first.status;
      res.writeHead(first.status, { 'Content-Type': 'application/json', 'Idempotent-Replayed': 'true', 'Request-Id': stripeId('req_', 14) });
      return res.end(first.body);
    }

    // Like Stripe, refuse unknown parameters; a wrong value of a known one
    // is only recorded (Stripe would take it and charge the wrong thing).
    if (unknown) {
      record.status = 400;
      return stripeError(res, 400, 'invalid_request_error', `Received unknown parameter: ${unknown}`, { code: 'parameter_unknown', param: unknown });
    }

    const id = newCheckoutSessionId();
    const metadata = {};
    for (const [key, value] of form) {
      const m = /^metadata\[(.+)\]$/.exec(key);
      if (m) metadata[m[1]] = value;
    }
    const session = checkoutSessionObject({
      id,
      amount,
      currency,
      clientReferenceId: ref,
      metadata,
      successUrl: form.get('success_url'),
      cancelUrl: form.get('cancel_url'),
      url: `${baseUrl}/pay/${id}`,
    });
    sessions.set(id, session);
    const body = JSON.stringify(session);
    record.status = 200;
    record.sessionId = id;
    if (idemKey) idempotency.set(idemKey, { raw, status: 200, body });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Request-Id': stripeId('req_', 14), 'Stripe-Version': req.headers['stripe-version'] ?? API_VERSION });
    res.end(body);
  }

  function payPage(res, session) {
    const price = new Intl.NumberFormat('en-US', { style: 'currency', currency: session.currency.toUpperCase() }).format(session.amount_total / 100);
    const done = session.status !== 'open';
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fake Stripe Checkout</title></head>
<body data-checkout-session="${escapeHtml(session.id)}">
<h1>Fake Stripe Checkout</h1>
<p id="product">${escapeHtml(productName)}</p>
<p id="amount">${escapeHtml(price)}</p>
${done ? '<p id="done">This checkout is complete.</p>' : `<form method="post" action="/pay/${escapeHtml(session.id)}"><button id="pay" type="submit">Pay ${escapeHtml(price)}</button></form>`}
<p><a id="back" href="${escapeHtml(session.cancel_url ?? '')}">Back</a></p>
</body></html>`);
  }

  async function pay(res, session) {
    session.status = 'complete';
    session.payment_status = 'paid';
    session.payment_intent = newPaymentIntentId();
    session.url = null;
    session.customer_details = { email: 'buyer@example.com', name: null, phone: null, tax_exempt: 'none' };
    const event = makeEvent('checkout.session.completed', { ...session });
    const payload = JSON.stringify(event);
    let delivery;
    try {
      if (!serverBaseUrl) throw new Error('the test did not tell the fake the server URL (setServer)');
      delivery = await deliverWebhook(serverBaseUrl, payload, { signature: signatureHeader(payload, { secret: webhookSecret }) });
    } catch (err) {
      delivery = { status: 0, text: String(err?.message ?? err), json: null };
    }
    deliveries.push({ event, ...delivery });
    if (delivery.status !== 200) {
      failures.push(`webhook delivery for ${session.id} answered ${delivery.status}: ${delivery.text}`);
      res.writeHead(502, { 'Content-Type': 'text/plain; charset=utf-8' });
      return res.end(`webhook delivery failed: ${delivery.status} ${delivery.text}`);
    }
    res.writeHead(303, { Location: session.success_url.replace('{CHECKOUT_SESSION_ID}', session.id) });
    res.end();
  }

  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url, 'http://127.0.0.1');
      const handle = async () => {
        if (req.method === 'POST' && url.pathname === '/v1/checkout/sessions') return createSession(req, res, raw);
        let m = /^\/v1\/checkout\/sessions\/([^/]+)$/.exec(url.pathname);
        if (req.method === 'GET' && m) {
          requests.push({ method: req.method, path: req.url, headers: { ...req.headers }, raw: '', form: null, failures: [], status: 0 });
          if (req.headers.authorization !== `Bearer ${secretKey}`) return stripeError(res, 401, 'invalid_request_error', 'Invalid API Key provided.');
          const session = sessions.get(decodeURIComponent(m[1]));
          if (!session) return stripeError(res, 404, 'invalid_request_error', `No such checkout.session: '${m[1]}'`, { code: 'resource_missing', param: 'session' });
          res.writeHead(200, { 'Content-Type': 'application/json' });
          return res.end(JSON.stringify(session));
        }
        m = /^\/pay\/([^/]+)$/.exec(url.pathname);
        if (m) {
          const session = sessions.get(decodeURIComponent(m[1]));
          if (!session) {
            res.writeHead(404, { 'Content-Type': 'text/plain' });
            return res.end('no such checkout session');
          }
          if (req.method === 'GET') return payPage(res, session);
          if (req.method === 'POST' && session.status === 'open') return pay(res, session);
          if (req.method === 'POST') return payPage(res, session);
        }
        if (url.pathname.startsWith('/v1/')) {
          failures.push(`unexpected API request ${req.method} ${url.pathname}`);
          return stripeError(res, 404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${url.pathname}).`);
        }
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found');
      };
      handle().catch((err) => {
        failures.push(`fake Stripe crashed on ${req.method} ${url.pathname}: ${err?.stack ?? err}`);
        if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ error: { type: 'api_error', message: 'fake crashed' } }));
      });
    });
  });

  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  const { port } = srv.address();
  baseUrl = `http://127.0.0.1:${port}`;

  return {
    url: baseUrl,
    port,
    secretKey,
    webhookSecret,
    requests,
    failures,
    sessions,
    deliveries,
    /** Checkout creation requests only. */
    get creates() {
      return requests.filter((r) => r.method === 'POST' && r.path.startsWith('/v1/checkout/sessions'));
    },
    /** Where webhooks go and which URLs the checkout requests must carry. */
    setServer({ baseUrl: serverUrl, publicUrl: pub = serverUrl }) {
      serverBaseUrl = serverUrl;
      publicUrl = pub.replace(/\/+$/, '');
    },
    /** Remember a session Stripe made elsewhere (a Payment Link's), so GET finds it. */
    register(session) {
      sessions.set(session.id, session);
      return session;
    },
    close() {
      return new Promise((resolve) => {
        srv.closeAllConnections?.();
        srv.close(() => resolve());
      });
    },
  };
}
