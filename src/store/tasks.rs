//! Tasks and backups in the state store.
//!
//! A task is leased by one worker at a time: the lease is taken with a conditional UPDATE
//! (PostgreSQL: over rows picked `FOR UPDATE SKIP LOCKED`), renewed while it runs, and
//! taken over by another worker once it expires. Every state change of a task is
//! conditional on the lease, so a worker that lost its lease changes nothing.

use super::BeginWrite as _;
use chrono::{DateTime, Utc};

use super::BackupRow;
use super::history::{apply_event_in, history_in, work_done_in};
use super::{Pool, Store};

/// The PostgreSQL advisory lock that serialises leases (see [`Store::lease`]); the log
/// has its own (6962).
const LEASE_LOCK: i64 = 6963;
use crate::error::{Code, Error, Result};
use crate::lifecycle::state::{Event, State};

/// What a task carries out.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TaskKind {
    /// Close the accounts of a leaver (on the exit date).
    Disable,
    /// Erase, anonymise and hand over; captures the keys of the rows kept for later.
    Apply,
    /// Act on rows kept under a retention rule once it ends.
    Followup,
    /// A system with no connector: its owner acts and confirms.
    Manual,
    /// The retention sweep of one table (no request).
    Sweep,
    /// An access request's (or a leaver's) copy of their data.
    Export,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Disable => "disable",
            TaskKind::Apply => "apply",
            TaskKind::Followup => "followup",
            TaskKind::Manual => "manual",
            TaskKind::Sweep => "sweep",
            TaskKind::Export => "export",
        }
    }

    /// Whether the task answers its request (a request completes when all of these are
    /// done); retention follow-ups act later and are proven on their own.
    pub fn answers_request(self) -> bool {
        match self {
            TaskKind::Disable
            | TaskKind::Apply
            | TaskKind::Manual
            | TaskKind::Export
            | TaskKind::Sweep => true,
            TaskKind::Followup => false,
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a task is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum TaskState {
    /// A follow-up waiting for its apply task to capture the keys of the rows it will act
    /// on (not runnable before that).
    WaitingKeys,
    /// Runnable; no backup yet.
    Pending,
    /// Its backup is written, read back and recorded; runnable.
    BackedUp,
    /// A manual task waiting for its system's owner.
    WaitingConfirmation,
    Done,
    /// Cancelled (a restore, a cancelled request): it will not run.
    Cancelled,
    /// The retry budget is spent.
    NeedsAttention,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::WaitingKeys => "waiting_keys",
            TaskState::Pending => "pending",
            TaskState::BackedUp => "backed_up",
            TaskState::WaitingConfirmation => "waiting_confirmation",
            TaskState::Done => "done",
            TaskState::Cancelled => "cancelled",
            TaskState::NeedsAttention => "needs_attention",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A task as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct TaskRow {
    pub id: String,
    pub request_id: Option<String>,
    pub system: String,
    pub kind: TaskKind,
    pub body: String,
    pub due_at: DateTime<Utc>,
    pub windowed: bool,
    pub state: TaskState,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub backup_id: Option<String>,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub(crate) const TASK_COLUMNS: &str = "id, request_id, system, kind, body, due_at, windowed, state, attempts, next_attempt_at, \
     lease_owner, lease_expires_at, backup_id, result, last_error, created_at, completed_at";

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub request_id: Option<String>,
    pub system: String,
    pub kind: TaskKind,
    pub body: String,
    pub due_at: DateTime<Utc>,
    pub windowed: bool,
    pub state: TaskState,
    /// Manual tasks: SHA-256 of the token of the owner's confirmation link.
    pub confirm_token_sha256: Option<String>,
}

impl Store {
    /// Create a request's tasks (and their messages) and move it from `approved` to
    /// `scheduled`, in one transaction. A request none of whose tasks answers it (nothing
    /// to change anywhere) completes in the same transaction, with its receipt due; the
    /// answer says whether it did.
    pub async fn schedule(
        &self,
        request_id: &str,
        tasks: &[NewTask],
        mails: &[super::outbox::NewMail],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let from = State::Approved;
        let Some(to) = Event::Schedule.target(from) else {
            return Err(Error::new(
                Code::Internal,
                "approved requests cannot be scheduled",
            ));
        };
        let nothing_to_do = !tasks.iter().any(|t| t.kind.answers_request());
        let moved: u64 = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let n = sqlx::query("UPDATE requests SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2")
                    .bind(request_id).bind(from).bind(to).bind(now)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    for t in tasks {
                        insert_task(&mut tx, t, now).await?;
                    }
                    for m in mails {
                        super::outbox::enqueue_in(&mut tx, m, now).await?;
                    }
                    let why = format!("{} task(s) scheduled", tasks.len());
                    history_in(&mut tx, request_id, now, actor, from, to, Some(&why)).await?;
                    if nothing_to_do {
                        work_done_in(&mut tx, request_id, now, to).await?;
                    }
                }
                tx.commit().await?;
                Ok::<u64, sqlx::Error>(n)
            }.await?
        });
        if moved == 1 {
            Ok(nothing_to_do)
        } else {
            Err(Error::new(
                Code::IllegalTransition,
                format!("request {request_id} is no longer {from}"),
            ))
        }
    }

    /// Create tasks that belong to no request (retention sweeps).
    pub async fn insert_tasks(&self, tasks: &[NewTask], now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for t in tasks {
                insert_task(&mut tx, t, now).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Lease up to `limit` tasks that are due, runnable and not leased (or whose lease
    /// expired). A request's export (a leaver's copy of their data) runs before anything
    /// of that request changes a row; and no two tasks of one request run on one system at
    /// once (a task whose sibling there holds a lease waits; a batch holds at most one per
    /// request and system, the first). `windowed`: whether tasks that wait for the
    /// execution window may be taken.
    pub async fn lease(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        windowed: bool,
    ) -> Result<Vec<TaskRow>> {
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        let window = if windowed { "" } else { " AND windowed = $5" };
        let sql = format!(
            "UPDATE tasks SET lease_owner = $1, lease_expires_at = $3, updated_at = $2 WHERE id IN ( \
               SELECT id FROM tasks WHERE state IN ('{pending}', '{backed_up}') AND due_at <= $2 AND next_attempt_at <= $2 \
               AND (lease_expires_at IS NULL OR lease_expires_at < $2){window} \
               AND (kind = '{export}' OR request_id IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM tasks e WHERE e.request_id = tasks.request_id AND e.kind = '{export}' AND e.state <> '{done}' {probe})) \
               AND (request_id IS NULL OR EXISTS (SELECT 1 FROM requests r WHERE r.id = tasks.request_id \
                   AND r.state IN ('{scheduled}', '{running}', '{failed}', '{needs_attention}', '{completed}') {probe})) \
               AND (request_id IS NULL OR NOT EXISTS (SELECT 1 FROM tasks o WHERE o.request_id = tasks.request_id \
                   AND o.system = tasks.system AND o.id <> tasks.id AND o.lease_expires_at >= $2 {probe})) \
               ORDER BY due_at, CASE WHEN kind = '{disable}' THEN 0 ELSE 1 END, id LIMIT $4{lock}) \
             RETURNING {TASK_COLUMNS}",
            pending = TaskState::Pending,
            backed_up = TaskState::BackedUp,
            // Each due task's request and siblings are looked up by index. Without the
            // fence PostgreSQL may turn an EXISTS under OR into a hash of every request
            // in those states (and of every task): 270 ms a lease with 100 000 requests
            // in the store, for one due task (issue 8, the growth benchmark).
            probe = "LIMIT 1 OFFSET 0",
            export = TaskKind::Export,
            done = TaskState::Done,
            // A leaver's login closes before the long changes of the same day.
            disable = TaskKind::Disable,
            // A request's work runs only while the request is being carried out (or, for
            // follow-ups, once it completed): never on hold, cancelled, back in review,
            // restored or refused.
            scheduled = State::Scheduled,
            running = State::Running,
            failed = State::Failed,
            needs_attention = State::NeedsAttention,
            completed = State::Completed,
        );
        let rows: Vec<TaskRow> = match &self.pool {
            // Leases are taken one worker at a time (an advisory lock for the transaction):
            // under READ COMMITTED each worker's statement then sees the leases the others
            // committed, so two workers never take siblings of one request and system
            // between them (each seeing the other's not yet leased).
            Pool::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(LEASE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(worker)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit);
                if !windowed {
                    q = q.bind(false);
                }
                let rows = q.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows
            }
            // One statement: SQLite runs writes one at a time.
            Pool::Sqlite(pool) => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(worker)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit);
                if !windowed {
                    q = q.bind(false);
                }
                q.fetch_all(pool).await?
            }
        };
        // Two siblings leased in one batch: the later one goes back.
        let mut taken = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(rows.len());
        for t in rows {
            let sibling = t
                .request_id
                .as_ref()
                .is_some_and(|r| !taken.insert((r.clone(), t.system.clone())));
            if sibling {
                self.release_lease(&t.id, worker).await?;
            } else {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Whether `worker` still holds the lease of task `id`, and the task is still to be
    /// carried out (`pending` or `backed_up`).
    pub async fn holds_lease(&self, id: &str, worker: &str) -> Result<bool> {
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id FROM tasks WHERE id = $1 AND lease_owner = $2 AND state IN ($3, $4)")
                .bind(id).bind(worker).bind(TaskState::Pending).bind(TaskState::BackedUp)
                .fetch_optional(pool).await?
        });
        Ok(row.is_some())
    }

    /// How far the apply of task `id` came (see [`Store::record_apply_progress`]).
    pub async fn apply_progress(&self, id: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT apply_progress FROM tasks WHERE id = $1")
                .bind(id).fetch_optional(pool).await?
        });
        Ok(row.and_then(|(p,)| p))
    }

    /// Record how far the apply of task `id` came, after a batch committed, under the
    /// worker's lease (and keep the lease alive); false when the lease was lost.
    pub async fn record_apply_progress(
        &self,
        id: &str,
        worker: &str,
        progress: &str,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET apply_progress = $3, lease_expires_at = $4 WHERE id = $1 AND lease_owner = $2")
                .bind(id).bind(worker).bind(progress).bind(until).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Keep a lease alive; false when it was lost.
    pub async fn renew_lease(&self, id: &str, worker: &str, until: DateTime<Utc>) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET lease_expires_at = $3 WHERE id = $1 AND lease_owner = $2")
                .bind(id).bind(worker).bind(until).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Give a lease back unfinished (graceful shutdown).
    pub async fn release_lease(&self, id: &str, worker: &str) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2")
                .bind(id).bind(worker).execute(pool).await?;
        });
        Ok(())
    }

    /// Record a verified backup and move the task to `backed_up`, under the lease.
    pub async fn task_backed_up(
        &self,
        task_id: &str,
        worker: &str,
        b: &BackupRow,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let n: u64 = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let n = sqlx::query("UPDATE tasks SET state = $5, backup_id = $3, updated_at = $4 WHERE id = $1 AND lease_owner = $2 AND state = $6")
                    .bind(task_id).bind(worker).bind(&b.id).bind(now).bind(TaskState::BackedUp).bind(TaskState::Pending)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    sqlx::query("INSERT INTO backups (id, request_id, task_id, path, sha256, size, rows, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                        .bind(&b.id).bind(&b.request_id).bind(&b.task_id).bind(&b.path).bind(&b.sha256)
                        .bind(b.size).bind(b.rows).bind(b.created_at).bind(b.expires_at)
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok::<u64, sqlx::Error>(n)
            }.await?
        });
        lease_held(n, task_id)
    }

    /// Put a task back to `pending` (a fresh backup is needed) and count the attempt;
    /// past `max_attempts` it needs attention instead. Returns whether it gave up.
    pub async fn task_rebackup(
        &self,
        task_id: &str,
        worker: &str,
        why: &str,
        now: DateTime<Utc>,
        max_attempts: i64,
    ) -> Result<bool> {
        let attempts: Option<(i64,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT attempts FROM tasks WHERE id = $1 AND lease_owner = $2").bind(task_id).bind(worker).fetch_optional(pool).await?
        });
        let Some((attempts,)) = attempts else {
            return lease_held(0, task_id).map(|()| false);
        };
        if attempts + 1 >= max_attempts {
            return self
                .task_failed(task_id, worker, why, now, max_attempts)
                .await;
        }
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET state = $5, backup_id = NULL, attempts = attempts + 1, last_error = $3, updated_at = $4, \
                         lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2")
                .bind(task_id).bind(worker).bind(why).bind(now).bind(TaskState::Pending).execute(pool).await?.rows_affected()
        });
        lease_held(n, task_id).map(|()| false)
    }

    /// Take a task waiting for a person's confirmation, as that person (then `task_done`).
    pub async fn take_for_confirmation(&self, task_id: &str, actor: &str) -> Result<()> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET lease_owner = $2 WHERE id = $1 AND state = $3")
                .bind(task_id).bind(actor).bind(TaskState::WaitingConfirmation).execute(pool).await?.rows_affected()
        });
        if n == 1 {
            Ok(())
        } else {
            Err(Error::new(
                Code::IllegalTransition,
                format!("task {task_id} is not waiting for a confirmation"),
            ))
        }
    }

    /// How many tasks of `kind` on `system` are not finished.
    pub async fn open_tasks(&self, kind: TaskKind, system: &str) -> Result<i64> {
        let n: (i64,) = on_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE kind = $1 AND system = $2 AND state IN ($3, $4)")
                .bind(kind).bind(system).bind(TaskState::Pending).bind(TaskState::BackedUp).fetch_one(pool).await?
        });
        Ok(n.0)
    }

    /// Give a task that needs attention a fresh retry budget, and its request back to
    /// `failed` (retrying), with who asked in the history. Returns the request id.
    pub async fn task_retry(
        &self,
        task_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let rid: Option<Option<String>> = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE tasks SET state = CASE WHEN backup_id IS NULL THEN $3 ELSE $4 END, \
                     attempts = 0, next_attempt_at = $2, updated_at = $2 WHERE id = $1 AND state = $5",
                )
                .bind(task_id).bind(now).bind(TaskState::Pending).bind(TaskState::BackedUp).bind(TaskState::NeedsAttention)
                .execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    tx.commit().await?;
                    return Ok::<Option<Option<String>>, sqlx::Error>(None);
                }
                let (rid,): (Option<String>,) = sqlx::query_as("SELECT request_id FROM tasks WHERE id = $1").bind(task_id).fetch_one(&mut *tx).await?;
                if let Some(rid) = &rid {
                    let why = format!("task {task_id} retried with a fresh budget");
                    apply_event_in(&mut tx, rid, now, actor, Event::Retry, &why).await?;
                }
                self.commit_work(tx, true).await?;
                Ok(Some(rid))
            }.await?
        });
        match rid {
            Some(r) => Ok(r),
            None => Err(Error::new(
                Code::IllegalTransition,
                format!("task {task_id} does not need attention"),
            )),
        }
    }

    /// The manual task a confirmation link's token names.
    pub async fn task_by_confirm_token(&self, sha256: &str) -> Result<Option<TaskRow>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE confirm_token_sha256 = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(sha256).fetch_optional(pool).await?),
        )
    }

    /// How many tasks are due and runnable now.
    pub async fn count_due(&self, now: DateTime<Utc>) -> Result<i64> {
        let n: (i64,) = on_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE state IN ($2, $3) AND due_at <= $1 AND next_attempt_at <= $1")
                .bind(now).bind(TaskState::Pending).bind(TaskState::BackedUp).fetch_one(pool).await?
        });
        Ok(n.0)
    }

    /// Finish a task with its result; returns whether its request's work is done with it:
    /// every task that answers the request, and every follow-up already due, is done. The
    /// request's completion receipt is then due (in the same transaction); the request
    /// itself completes when that receipt is issued.
    pub async fn task_done(
        &self,
        task_id: &str,
        worker: &str,
        result: &str,
        mails: &[super::outbox::NewMail],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // Two tasks of one request finishing at once on PostgreSQL: the request row is
        // locked first, so the second sees the first done and completes the request (no
        // request stays `running` for ever). SQLite serialises writers anyway.
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE",
            Pool::Sqlite(_) => "",
        };
        let lock_sql = format!(
            "SELECT r.id FROM requests r JOIN tasks t ON t.request_id = r.id WHERE t.id = $1{lock}"
        );
        let (n, completed): (u64, bool) = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let req: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(lock_sql.clone())).bind(task_id).fetch_optional(&mut *tx).await?;
                let n = sqlx::query("UPDATE tasks SET state = $5, result = $3, completed_at = $4, updated_at = $4, lease_owner = NULL, lease_expires_at = NULL, last_error = NULL WHERE id = $1 AND lease_owner = $2")
                    .bind(task_id).bind(worker).bind(result).bind(now).bind(TaskState::Done)
                    .execute(&mut *tx).await?.rows_affected();
                let mut completed = false;
                if n == 1 {
                    for m in mails {
                        super::outbox::enqueue_in(&mut tx, m, now).await?;
                    }
                    if let Some((rid,)) = req {
                        let open: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE request_id = $1 AND state <> $2 AND state <> $3 AND (kind <> $4 OR due_at <= $5)")
                            .bind(&rid).bind(TaskState::Done).bind(TaskState::Cancelled).bind(TaskKind::Followup).bind(now)
                            .fetch_one(&mut *tx).await?;
                        if open.0 == 0 {
                            let state: Option<(State,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(&rid).fetch_optional(&mut *tx).await?;
                            if let Some((from,)) = state {
                                completed = work_done_in(&mut tx, &rid, now, from).await?;
                            }
                        }
                    }
                }
                // A request whose work is done has its receipt due (a manual task confirmed
                // outside the worker: the worker issues it now).
                self.commit_work(tx, completed || (n == 1 && !mails.is_empty())).await?;
                Ok::<(u64, bool), sqlx::Error>((n, completed))
            }.await?
        });
        lease_held(n, task_id)?;
        Ok(completed)
    }

    /// Record a failure: retry later with exponential backoff, or, past `max_attempts`,
    /// mark the task and its request `needs_attention`. Returns whether it gave up.
    pub async fn task_failed(
        &self,
        task_id: &str,
        worker: &str,
        error: &str,
        now: DateTime<Utc>,
        max_attempts: i64,
    ) -> Result<bool> {
        let gave_up: bool = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let row: Option<(i64, Option<String>, TaskState)> = sqlx::query_as("SELECT attempts, request_id, state FROM tasks WHERE id = $1 AND lease_owner = $2")
                    .bind(task_id).bind(worker).fetch_optional(&mut *tx).await?;
                let Some((attempts, rid, state)) = row else {
                    tx.commit().await?;
                    return Ok::<bool, sqlx::Error>(false);
                };
                let attempts = attempts + 1;
                let give_up = attempts >= max_attempts;
                let backoff = chrono::Duration::seconds(30 * (1_i64 << attempts.clamp(0, 10)));
                let state = if give_up { TaskState::NeedsAttention } else { state };
                sqlx::query("UPDATE tasks SET attempts = $3, last_error = $4, next_attempt_at = $5, updated_at = $6, lease_owner = NULL, lease_expires_at = NULL, \
                             state = $7 WHERE id = $1 AND lease_owner = $2")
                    .bind(task_id).bind(worker).bind(attempts).bind(error).bind(now + backoff).bind(now).bind(state)
                    .execute(&mut *tx).await?;
                if let Some(rid) = rid {
                    let event = if give_up { Event::GiveUp } else { Event::TaskFailed };
                    let why = format!("task {task_id} failed (attempt {attempts}): {error}");
                    apply_event_in(&mut tx, &rid, now, "quietus", event, &why).await?;
                }
                tx.commit().await?;
                Ok(give_up)
            }.await?
        });
        Ok(gave_up)
    }

    /// Move a request to `running` when its first task starts (no-op otherwise; a
    /// `failed` request stays failed, retrying, until every task due is done).
    pub async fn request_running(&self, request_id: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            apply_event_in(&mut tx, request_id, now, "quietus", Event::Start, "").await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn tasks_of(&self, request_id: &str) -> Result<Vec<TaskRow>> {
        let sql =
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE request_id = $1 ORDER BY due_at, id");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(request_id).fetch_all(pool).await?),
        )
    }

    pub async fn task(&self, id: &str) -> Result<TaskRow> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        let row: Option<TaskRow> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(id).fetch_optional(pool).await?);
        row.ok_or_else(|| Error::new(Code::NotFound, format!("no task {id}")))
    }

    /// Follow-ups (id, body) learn the keys of the rows they will act on, and become
    /// runnable: all of them or none.
    pub async fn set_followup_keys(
        &self,
        followups: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if followups.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for (id, body) in followups {
                sqlx::query("UPDATE tasks SET body = $2, updated_at = $3, state = CASE WHEN state = $4 THEN $5 ELSE state END WHERE id = $1")
                    .bind(id).bind(body).bind(now).bind(TaskState::WaitingKeys).bind(TaskState::Pending).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Change a task's state when it is in `from` (manual confirmations, cancellations).
    pub async fn set_task_state(
        &self,
        id: &str,
        from: TaskState,
        to: TaskState,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2")
                .bind(id).bind(from).bind(to).bind(now).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }
}

async fn insert_task<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    t: &NewTask,
    now: DateTime<Utc>,
) -> std::result::Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> TaskKind: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> TaskState: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query(
        "INSERT INTO tasks (id, request_id, system, kind, body, due_at, windowed, state, attempts, next_attempt_at, created_at, updated_at, \
         confirm_token_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $6, $9, $9, $10)",
    )
    .bind(t.id.clone())
    .bind(t.request_id.clone())
    .bind(t.system.clone())
    .bind(t.kind)
    .bind(t.body.clone())
    .bind(t.due_at)
    .bind(t.windowed)
    .bind(t.state)
    .bind(now)
    .bind(t.confirm_token_sha256.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn lease_held(n: u64, task_id: &str) -> Result<()> {
    if n == 1 {
        Ok(())
    } else {
        Err(Error::new(
            Code::IllegalTransition,
            format!("task {task_id}: the lease was lost (another worker took it over)"),
        ))
    }
}
