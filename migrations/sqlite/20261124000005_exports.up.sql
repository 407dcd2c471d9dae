-- Encrypted exports for access requests, downloadable by a token until they expire.
CREATE TABLE exports (
    id           TEXT PRIMARY KEY NOT NULL,
    request_id   TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    task_id      TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    deleted_at   TEXT
);
CREATE INDEX exports_request ON exports (request_id);
CREATE INDEX exports_task ON exports (task_id);
CREATE INDEX exports_expiry ON exports (deleted_at, expires_at);

-- An exit whose leaver asked for a copy of their own data.
ALTER TABLE requests ADD COLUMN wants_copy INTEGER NOT NULL DEFAULT 0;

-- Manual tasks: the token of the confirmation link sent to the system's owner.
ALTER TABLE tasks ADD COLUMN confirm_token_sha256 TEXT;
CREATE UNIQUE INDEX tasks_confirm_token ON tasks (confirm_token_sha256);
