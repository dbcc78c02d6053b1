-- The goal a customer wrote at checkout: the agent task that starts once the payment is
-- confirmed. Only pending checkouts carry one; it is kept for the record.
ALTER TABLE sessions ADD COLUMN goal TEXT;
