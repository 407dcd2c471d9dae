-- Tasks (executable units of approved plans), backups, and schedule ticks.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY NOT NULL,
    request_id       TEXT REFERENCES requests (id) ON DELETE CASCADE,
    system           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    body             TEXT NOT NULL,
    due_at           TEXT NOT NULL,
    windowed         INTEGER NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    backup_id        TEXT,
    result           TEXT,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    completed_at     TEXT
);
CREATE INDEX tasks_request ON tasks (request_id);
CREATE INDEX tasks_runnable ON tasks (state, next_attempt_at);

CREATE TABLE backups (
    id          TEXT PRIMARY KEY NOT NULL,
    request_id  TEXT REFERENCES requests (id) ON DELETE CASCADE,
    task_id     TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    rows        INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    shredded_at TEXT
);
CREATE INDEX backups_request ON backups (request_id);
CREATE INDEX backups_task ON backups (task_id);
CREATE INDEX backups_expiry ON backups (shredded_at, expires_at);

CREATE TABLE schedule_ticks (
    name     TEXT NOT NULL,
    tick_at  TEXT NOT NULL,
    fired_by TEXT NOT NULL,
    PRIMARY KEY (name, tick_at)
);
