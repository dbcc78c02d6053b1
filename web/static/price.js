// Prices as the server reports them (Stripe's convention: an integer amount in
// the currency's smallest unit) turned into text for people.

// Stripe's zero-decimal and three-decimal currencies
// (https://docs.stripe.com/currencies#zero-decimal). Every other currency's
// amount is in hundredths, including ISK, HUF and TWD, which Stripe's API
// still counts in hundredths although they are shown without decimals.
const ZERO_DECIMAL = new Set(['bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx', 'vnd', 'vuv', 'xaf', 'xof', 'xpf']);
const THREE_DECIMAL = new Set(['bhd', 'jod', 'kwd', 'omr', 'tnd']);

/** How many decimal places Stripe's smallest unit of `currency` stands for. */
export function minorUnitDigits(currency) {
  const c = String(currency).toLowerCase();
  if (ZERO_DECIMAL.has(c)) return 0;
  if (THREE_DECIMAL.has(c)) return 3;
  return 2;
}

/**
 * "$1.00" for (100, "usd"), "¥500" for (500, "jpy"), in `locale` (the
 * browser's by default). Falls back to "1.00 XYZ" for a currency code the
 * browser's Intl does not know.
 */
export function formatPrice(amount, currency, locale = undefined) {
  const code = String(currency).toUpperCase();
  const value = Number(amount) / 10 ** minorUnitDigits(currency);
  try {
    return new Intl.NumberFormat(locale, { style: 'currency', currency: code }).format(value);
  } catch {
    return `${value.toFixed(minorUnitDigits(currency))} ${code}`;
  }
}
