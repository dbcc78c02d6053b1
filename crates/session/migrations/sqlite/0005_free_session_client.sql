-- Free-mode sessions record the address that started them (as the server determined it,
-- after trusted proxies; IPv6 by its /64), so a cap on live free sessions per address
-- survives restarts. NULL for sessions from the admin API and checkout.
ALTER TABLE sessions ADD COLUMN client_addr TEXT;
CREATE INDEX sessions_active_client_addr ON sessions (client_addr)
    WHERE state = 'active' AND client_addr IS NOT NULL;
