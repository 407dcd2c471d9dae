-- Archives a worker is about to write, recorded before the first byte: one that is never
-- recorded as a backup (its worker died, or lost its lease) is found and crypto-shredded.
CREATE TABLE archive_intents (
    id          TEXT PRIMARY KEY NOT NULL,
    task_id     TEXT NOT NULL,
    request_id  TEXT,
    worker      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    shredded_at TIMESTAMPTZ
);
CREATE INDEX archive_intents_open ON archive_intents (shredded_at);
