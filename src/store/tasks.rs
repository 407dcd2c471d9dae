//! Tasks and backups in the state store.
//!
//! A task is leased by one worker at a time: the lease is taken with a conditional UPDATE
//! (PostgreSQL: over rows picked `FOR UPDATE SKIP LOCKED`), renewed while it runs, and
//! taken over by another worker once it expires. Every state change of a task is
//! conditional on the lease, so a worker that lost its lease changes nothing.

use chrono::{DateTime, Utc};

use super::{Pool, Store};
use crate::error::{Code, Error, Result};

/// A task as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct TaskRow {
    pub id: String,
    pub request_id: Option<String>,
    pub system: String,
    pub kind: String,
    pub body: String,
    pub due_at: DateTime<Utc>,
    pub windowed: bool,
    pub state: String,
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
    pub kind: String,
    pub body: String,
    pub due_at: DateTime<Utc>,
    pub windowed: bool,
    pub state: String,
    /// Manual tasks: SHA-256 of the token of the owner's confirmation link.
    pub confirm_token_sha256: Option<String>,
}

/// A backup as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct BackupRow {
    pub id: String,
    pub request_id: Option<String>,
    pub task_id: String,
    pub path: String,
    pub sha256: String,
    pub size: i64,
    pub rows: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub shredded_at: Option<DateTime<Utc>>,
}

/// States a task can be leased in.
pub const RUNNABLE: [&str; 2] = ["pending", "backed_up"];

impl Store {
    /// Create a request's tasks (and their messages) and move it from `from` to `to`, in
    /// one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn schedule(
        &self,
        request_id: &str,
        from: &str,
        to: &str,
        tasks: &[NewTask],
        mails: &[super::outbox::NewMail],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let moved: u64 = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
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
                    sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(request_id).bind(now).bind(actor).bind(from).bind(to)
                        .bind(format!("{} task(s) scheduled", tasks.len()))
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok::<u64, sqlx::Error>(n)
            }.await?
        });
        if moved == 1 {
            Ok(())
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
            let mut tx = pool.begin().await?;
            for t in tasks {
                insert_task(&mut tx, t, now).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Lease up to `limit` tasks that are due, runnable and not leased (or whose lease
    /// expired). A request's export (a leaver's copy of their data) runs before anything
    /// of that request changes a row. `windowed`: whether tasks that wait for the execution window may be taken.
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
               SELECT id FROM tasks WHERE state IN ('pending', 'backed_up') AND due_at <= $2 AND next_attempt_at <= $2 \
               AND (lease_expires_at IS NULL OR lease_expires_at < $2){window} \
               AND (kind = 'export' OR request_id IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM tasks e WHERE e.request_id = tasks.request_id AND e.kind = 'export' AND e.state <> 'done')) \
               ORDER BY due_at, id LIMIT $4{lock}) \
             RETURNING {TASK_COLUMNS}"
        );
        let rows: Vec<TaskRow> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(worker).bind(now).bind(lease_until).bind(limit);
            if !windowed {
                q = q.bind(false);
            }
            q.fetch_all(pool).await?
        });
        Ok(rows)
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
                let mut tx = pool.begin().await?;
                let n = sqlx::query("UPDATE tasks SET state = 'backed_up', backup_id = $3, updated_at = $4 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'")
                    .bind(task_id).bind(worker).bind(&b.id).bind(now)
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
            sqlx::query("UPDATE tasks SET state = 'pending', backup_id = NULL, attempts = attempts + 1, last_error = $3, updated_at = $4, \
                         lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2")
                .bind(task_id).bind(worker).bind(why).bind(now).execute(pool).await?.rows_affected()
        });
        lease_held(n, task_id).map(|()| false)
    }

    /// Take a task waiting for a person's confirmation, as that person (then `task_done`).
    pub async fn take_for_confirmation(&self, task_id: &str, actor: &str) -> Result<()> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET lease_owner = $2 WHERE id = $1 AND state = 'waiting_confirmation'")
                .bind(task_id).bind(actor).execute(pool).await?.rows_affected()
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
    pub async fn open_tasks(&self, kind: &str, system: &str) -> Result<i64> {
        let n: (i64,) = on_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE kind = $1 AND system = $2 AND state IN ('pending', 'backed_up')")
                .bind(kind).bind(system).fetch_one(pool).await?
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
                let mut tx = pool.begin().await?;
                let n = sqlx::query(
                    "UPDATE tasks SET state = CASE WHEN backup_id IS NULL THEN 'pending' ELSE 'backed_up' END, \
                     attempts = 0, next_attempt_at = $2, updated_at = $2 WHERE id = $1 AND state = 'needs_attention'",
                )
                .bind(task_id).bind(now).execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    tx.commit().await?;
                    return Ok::<Option<Option<String>>, sqlx::Error>(None);
                }
                let (rid,): (Option<String>,) = sqlx::query_as("SELECT request_id FROM tasks WHERE id = $1").bind(task_id).fetch_one(&mut *tx).await?;
                if let Some(rid) = &rid {
                    let n = sqlx::query("UPDATE requests SET state = 'failed', updated_at = $2 WHERE id = $1 AND state = 'needs_attention'")
                        .bind(rid).bind(now).execute(&mut *tx).await?.rows_affected();
                    if n == 1 {
                        sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, $3, 'needs_attention', 'failed', $4)")
                            .bind(rid).bind(now).bind(actor).bind(format!("task {task_id} retried with a fresh budget"))
                            .execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
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
            sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE state IN ('pending', 'backed_up') AND due_at <= $1 AND next_attempt_at <= $1")
                .bind(now).fetch_one(pool).await?
        });
        Ok(n.0)
    }

    /// Finish a task with its result; returns whether every task of its request that is
    /// due by `now` is done (the request is then moved to `completed`).
    pub async fn task_done(
        &self,
        task_id: &str,
        worker: &str,
        result: &str,
        mails: &[super::outbox::NewMail],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (n, completed): (u64, bool) = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let n = sqlx::query("UPDATE tasks SET state = 'done', result = $3, completed_at = $4, updated_at = $4, lease_owner = NULL, lease_expires_at = NULL, last_error = NULL WHERE id = $1 AND lease_owner = $2")
                    .bind(task_id).bind(worker).bind(result).bind(now)
                    .execute(&mut *tx).await?.rows_affected();
                let mut completed = false;
                if n == 1 {
                    for m in mails {
                        super::outbox::enqueue_in(&mut tx, m, now).await?;
                    }
                    let req: Option<(Option<String>,)> = sqlx::query_as("SELECT request_id FROM tasks WHERE id = $1").bind(task_id).fetch_optional(&mut *tx).await?;
                    if let Some((Some(rid),)) = req {
                        let open: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE request_id = $1 AND state <> 'done' AND state <> 'cancelled' AND due_at <= $2")
                            .bind(&rid).bind(now).fetch_one(&mut *tx).await?;
                        if open.0 == 0 {
                            let state: Option<(String,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(&rid).fetch_optional(&mut *tx).await?;
                            if let Some((from,)) = state && (from == "running" || from == "scheduled" || from == "failed") {
                                sqlx::query("UPDATE requests SET state = 'completed', updated_at = $2 WHERE id = $1").bind(&rid).bind(now).execute(&mut *tx).await?;
                                sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, 'quietus', $3, 'completed', 'every task due now is done')")
                                    .bind(&rid).bind(now).bind(&from).execute(&mut *tx).await?;
                                completed = true;
                            }
                        }
                    }
                }
                tx.commit().await?;
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
                let mut tx = pool.begin().await?;
                let row: Option<(i64, Option<String>)> = sqlx::query_as("SELECT attempts, request_id FROM tasks WHERE id = $1 AND lease_owner = $2")
                    .bind(task_id).bind(worker).fetch_optional(&mut *tx).await?;
                let Some((attempts, rid)) = row else {
                    tx.commit().await?;
                    return Ok::<bool, sqlx::Error>(false);
                };
                let attempts = attempts + 1;
                let give_up = attempts >= max_attempts;
                let backoff = chrono::Duration::seconds(30 * (1_i64 << attempts.clamp(0, 10)));
                let state = if give_up { "needs_attention" } else { "" };
                sqlx::query("UPDATE tasks SET attempts = $3, last_error = $4, next_attempt_at = $5, updated_at = $6, lease_owner = NULL, lease_expires_at = NULL, \
                             state = CASE WHEN $7 = '' THEN state ELSE $7 END WHERE id = $1 AND lease_owner = $2")
                    .bind(task_id).bind(worker).bind(attempts).bind(error).bind(now + backoff).bind(now).bind(state)
                    .execute(&mut *tx).await?;
                if let Some(rid) = rid {
                    let to = if give_up { "needs_attention" } else { "failed" };
                    let from: Option<(String,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(&rid).fetch_optional(&mut *tx).await?;
                    if let Some((from,)) = from && from != to && matches!(from.as_str(), "scheduled" | "running" | "failed") {
                        sqlx::query("UPDATE requests SET state = $2, updated_at = $3 WHERE id = $1").bind(&rid).bind(to).bind(now).execute(&mut *tx).await?;
                        sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, 'quietus', $3, $4, $5)")
                            .bind(&rid).bind(now).bind(&from).bind(to).bind(format!("task {task_id} failed (attempt {attempts}): {error}"))
                            .execute(&mut *tx).await?;
                    }
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
            let mut tx = pool.begin().await?;
            let from: Option<(String,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(request_id).fetch_optional(&mut *tx).await?;
            if let Some((from,)) = from && from == "scheduled" {
                sqlx::query("UPDATE requests SET state = 'running', updated_at = $2 WHERE id = $1 AND state = $3").bind(request_id).bind(now).bind(&from).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, 'quietus', $3, 'running', NULL)")
                    .bind(request_id).bind(now).bind(&from).execute(&mut *tx).await?;
            }
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

    /// Replace a task's body (a follow-up task learns the keys of the rows it will erase).
    pub async fn set_task_body(&self, id: &str, body: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET body = $2, updated_at = $3 WHERE id = $1").bind(id).bind(body).bind(now).execute(pool).await?;
        });
        Ok(())
    }

    /// Change a task's state when it is in `from` (manual confirmations, cancellations).
    pub async fn set_task_state(
        &self,
        id: &str,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE tasks SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2")
                .bind(id).bind(from).bind(to).bind(now).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn backups_of(&self, request_id: &str) -> Result<Vec<BackupRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id, task_id, path, sha256, size, rows, created_at, expires_at, shredded_at FROM backups WHERE request_id = $1 ORDER BY created_at, id")
                .bind(request_id).fetch_all(pool).await?
        }))
    }

    pub async fn backup(&self, id: &str) -> Result<Option<BackupRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id, task_id, path, sha256, size, rows, created_at, expires_at, shredded_at FROM backups WHERE id = $1")
                .bind(id).fetch_optional(pool).await?
        }))
    }

    pub async fn expired_backups(&self, now: DateTime<Utc>) -> Result<Vec<BackupRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id, task_id, path, sha256, size, rows, created_at, expires_at, shredded_at FROM backups WHERE shredded_at IS NULL AND expires_at <= $1 ORDER BY expires_at")
                .bind(now).fetch_all(pool).await?
        }))
    }

    /// Record that a backup's key and archive were destroyed, with a history line.
    pub async fn backup_shredded(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE backups SET shredded_at = $2 WHERE id = $1 AND shredded_at IS NULL").bind(id).bind(now).execute(&mut *tx).await?;
            let rid: Option<(Option<String>,)> = sqlx::query_as("SELECT request_id FROM backups WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
            if let Some((Some(rid),)) = rid {
                let state: (String,) = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(&rid).fetch_one(&mut *tx).await?;
                sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, 'quietus', $3, $3, $4)")
                    .bind(&rid).bind(now).bind(&state.0).bind(format!("backup {id} expired: its key was destroyed (crypto-shredded) and the archive removed"))
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Add a history line to a request without changing its state.
    pub async fn note(
        &self,
        request_id: &str,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let state: (String,) = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(request_id).fetch_one(&mut *tx).await?;
            sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $4, $5)")
                .bind(request_id).bind(now).bind(actor).bind(&state.0).bind(reason).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
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
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query(
        "INSERT INTO tasks (id, request_id, system, kind, body, due_at, windowed, state, attempts, next_attempt_at, created_at, updated_at, \
         confirm_token_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $6, $9, $9, $10)",
    )
    .bind(t.id.clone())
    .bind(t.request_id.clone())
    .bind(t.system.clone())
    .bind(t.kind.clone())
    .bind(t.body.clone())
    .bind(t.due_at)
    .bind(t.windowed)
    .bind(t.state.clone())
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
