-- Requests, the tickets as received, identities, state history and plan snapshots.
CREATE TABLE requests (
    id                  TEXT PRIMARY KEY NOT NULL,
    kind                TEXT NOT NULL,
    external_id         TEXT UNIQUE,
    ticket_digest       TEXT NOT NULL,
    state               TEXT NOT NULL,
    held_from           TEXT,
    jurisdiction        TEXT NOT NULL,
    locale              TEXT NOT NULL,
    source              TEXT NOT NULL,
    requested_by        TEXT,
    exit_date           TEXT,
    received_at         TEXT NOT NULL,
    verified_at         TEXT,
    clock_start         TEXT,
    due_date            TEXT,
    original_due_date   TEXT,
    extended_at         TEXT,
    extension_reason    TEXT,
    verify_token_sha256 TEXT UNIQUE,
    updated_at          TEXT NOT NULL
);
CREATE INDEX requests_state_due ON requests (state, due_date);

CREATE TABLE tickets (
    request_id  TEXT PRIMARY KEY NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    body        TEXT NOT NULL,
    received_at TEXT NOT NULL
);

CREATE TABLE identities (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL
);
CREATE INDEX identities_request ON identities (request_id);
CREATE INDEX identities_value ON identities (kind, value);

CREATE TABLE history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX history_request ON history (request_id, id);

CREATE TABLE plans (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id    TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL,
    policy_digest TEXT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX plans_request ON plans (request_id, id);
