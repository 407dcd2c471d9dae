-- The transparency log (an append-only RFC 6962 Merkle log), its signed checkpoints, and
-- the receipts issued. The log has no foreign key to requests: it outlives case files and
-- holds no personal data.
CREATE TABLE log_entries (
    idx        BIGINT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL,
    request_id TEXT,
    leaf_hash  TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX log_entries_request ON log_entries (request_id);

CREATE TABLE checkpoints (
    size       BIGINT PRIMARY KEY NOT NULL,
    root       TEXT NOT NULL,
    note       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE receipts (
    id         TEXT PRIMARY KEY NOT NULL,
    request_id TEXT,
    log_idx    BIGINT NOT NULL,
    document   TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX receipts_request ON receipts (request_id);
CREATE INDEX receipts_log_idx ON receipts (log_idx);

-- The receipt that covers a finished task (NULL until it is issued).
ALTER TABLE tasks ADD COLUMN receipt_id TEXT;
CREATE INDEX tasks_receipt ON tasks (receipt_id);
