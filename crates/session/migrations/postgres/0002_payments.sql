-- Every Stripe event id we processed, once.
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY NOT NULL,
    type         TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);

-- Payments refunded in full. A refund can reach us before the payment's own completion
-- event (Stripe does not order deliveries); activation checks this table so a refunded
-- payment never starts a session.
CREATE TABLE refunded_payments (
    payment_intent  TEXT PRIMARY KEY NOT NULL,
    refunded_at     BIGINT NOT NULL
);
