-- Reminders the assistant sends before a booking (additive: the release before this one keeps
-- working beside it).
CREATE TABLE IF NOT EXISTS booking_reminders (
    id bigserial PRIMARY KEY,
    booking_id bigint NOT NULL,
    company_id bigint NOT NULL,
    remind_at timestamptz NOT NULL,
    sent_at timestamptz
);
CREATE INDEX IF NOT EXISTS booking_reminders_due ON booking_reminders (remind_at) WHERE sent_at IS NULL;
