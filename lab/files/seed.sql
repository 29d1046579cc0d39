-- Lab schema shaped like the production tables (BRIEF.md), with FAKE rows only.
-- Idempotent: safe to run again; it never duplicates rows.

CREATE TABLE IF NOT EXISTS companies (
    id          integer PRIMARY KEY,
    title       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS whatsapp_auth (
    company_id  integer PRIMARY KEY REFERENCES companies (id),
    creds       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS whatsapp_keys (
    company_id  integer NOT NULL REFERENCES companies (id),
    key_type    text NOT NULL,
    key_id      text NOT NULL,
    value       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (company_id, key_type, key_id)
);
-- No b-tree index may include the large JSONB column (index rows are limited to ~8 kB).
CREATE INDEX IF NOT EXISTS whatsapp_keys_expires_at_idx ON whatsapp_keys (expires_at);

CREATE TABLE IF NOT EXISTS clients (
    id          integer PRIMARY KEY,
    company_id  integer NOT NULL REFERENCES companies (id),
    name        text NOT NULL,
    phone       text NOT NULL
);

CREATE TABLE IF NOT EXISTS services (
    id          integer PRIMARY KEY,
    company_id  integer NOT NULL REFERENCES companies (id),
    title       text NOT NULL,
    price       numeric(10, 2) NOT NULL
);

CREATE TABLE IF NOT EXISTS staff (
    id          integer PRIMARY KEY,
    company_id  integer NOT NULL REFERENCES companies (id),
    name        text NOT NULL
);

CREATE TABLE IF NOT EXISTS staff_schedules (
    staff_id    integer NOT NULL REFERENCES staff (id),
    day         date NOT NULL,
    starts      time NOT NULL,
    ends        time NOT NULL,
    PRIMARY KEY (staff_id, day)
);

CREATE TABLE IF NOT EXISTS bookings (
    id          integer PRIMARY KEY,
    company_id  integer NOT NULL REFERENCES companies (id),
    client_id   integer NOT NULL REFERENCES clients (id),
    service_id  integer NOT NULL REFERENCES services (id),
    staff_id    integer NOT NULL REFERENCES staff (id),
    starts_at   timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'confirmed'
);

CREATE TABLE IF NOT EXISTS dialog_contexts (
    company_id  integer NOT NULL REFERENCES companies (id),
    phone       text NOT NULL,
    context     jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, phone)
);

CREATE TABLE IF NOT EXISTS messages (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    company_id  integer NOT NULL,
    phone       text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE IF NOT EXISTS messages_default PARTITION OF messages DEFAULT;

INSERT INTO companies (id, title) VALUES (1001, 'LAB FAKE salon')
ON CONFLICT (id) DO NOTHING;

INSERT INTO whatsapp_auth (company_id, creds)
VALUES (1001, '{"lab": "FAKE creds, not a real WhatsApp session"}')
ON CONFLICT (company_id) DO NOTHING;

INSERT INTO clients (id, company_id, name, phone)
SELECT g, 1001, 'Fake client ' || g, '+000' || lpad(g::text, 8, '0')
FROM generate_series(1, 1300) AS g
ON CONFLICT (id) DO NOTHING;

INSERT INTO services (id, company_id, title, price)
SELECT g, 1001, 'Fake service ' || g, 500 + g * 10
FROM generate_series(1, 63) AS g
ON CONFLICT (id) DO NOTHING;

INSERT INTO staff (id, company_id, name)
SELECT g, 1001, 'Fake master ' || g
FROM generate_series(1, 12) AS g
ON CONFLICT (id) DO NOTHING;

INSERT INTO staff_schedules (staff_id, day, starts, ends)
SELECT s, DATE '2026-01-05' + d, TIME '10:00', TIME '20:00'
FROM generate_series(1, 12) AS s, generate_series(0, 6) AS d
ON CONFLICT DO NOTHING;

INSERT INTO bookings (id, company_id, client_id, service_id, staff_id, starts_at)
SELECT g, 1001, 1 + (g * 7) % 1300, 1 + g % 63, 1 + g % 12,
       TIMESTAMPTZ '2026-01-05 10:00+03' + make_interval(hours => g)
FROM generate_series(1, 400) AS g
ON CONFLICT (id) DO NOTHING;

-- Signal keys: 40 fresh, 60 expired spread across the age buckets
-- (0-1 d, 1-7 d, 7-14 d, 14-30 d by expires_at; > 30 d by not being updated).
INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, created_at, updated_at, expires_at)
SELECT 1001, 'session', 'fresh-' || g, '{"fake": true}'::jsonb,
       now() - interval '1 day', now() - interval '1 hour', now() + interval '7 days'
FROM generate_series(1, 40) AS g
UNION ALL
SELECT 1001, 'pre-key', b.bucket || '-' || g, '{"fake": true}'::jsonb,
       now() - b.age - interval '1 day', now() - b.age, now() - b.age
FROM (VALUES ('0-1d', interval '6 hours', 10), ('1-7d', interval '3 days', 15),
             ('7-14d', interval '10 days', 10), ('14-30d', interval '20 days', 10))
     AS b (bucket, age, n),
     LATERAL generate_series(1, b.n) AS g
UNION ALL
SELECT 1001, 'sender-key', 'stale-' || g, '{"fake": true}'::jsonb,
       now() - interval '60 days', now() - interval '45 days', NULL
FROM generate_series(1, 15) AS g
ON CONFLICT (company_id, key_type, key_id) DO NOTHING;
