-- The mail outbox: messages written in the same transaction as the state change that
-- causes them, then sent (with retries and backoff) by a leased sender.
CREATE TABLE outbox (
    id               TEXT PRIMARY KEY NOT NULL,
    request_id       TEXT REFERENCES requests (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    locale           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body_text        TEXT NOT NULL,
    body_html        TEXT NOT NULL,
    attachments      TEXT,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    sent_at          TIMESTAMPTZ
);
CREATE INDEX outbox_request ON outbox (request_id);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
