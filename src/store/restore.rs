//! A restore's state change in the store: the request moves to `restored` and its work
//! that has not run is cancelled, in one transaction, or nothing changes while a worker
//! holds one of its tasks.

use super::BeginWrite as _;
use chrono::{DateTime, Utc};

use super::Store;
use super::history::history_in;
use super::tasks::TaskState;
use crate::error::{Code, Error, Result};
use crate::lifecycle::state::{Event, State};

impl Store {
    /// A restore undoes a request: move it to `restored` (the lifecycle's rule), cancel
    /// every task of it that has not run, and queue its messages, in one transaction.
    /// Refused while a worker holds a live lease on one of its tasks. Returns whether the
    /// request moved (false when it was restored already: a restore run again).
    pub async fn restore_request(
        &self,
        request_id: &str,
        actor: &str,
        reason: &str,
        mails: &[super::outbox::NewMail],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        enum Outcome {
            Moved,
            Again,
            Busy(String),
            Refused(State),
        }
        let outcome: Outcome = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let (from,): (State,) = sqlx::query_as("SELECT state FROM requests WHERE id = $1")
                    .bind(request_id).fetch_one(&mut *tx).await?;
                let to = match (from, Event::Restore.target(from)) {
                    (State::Restored, _) => {
                        tx.commit().await?;
                        return Ok::<_, sqlx::Error>(Outcome::Again);
                    }
                    (_, Some(to)) => to,
                    (from, None) => {
                        tx.rollback().await?;
                        return Ok(Outcome::Refused(from));
                    }
                };
                // Cancel first, then look for a live lease: on PostgreSQL the UPDATE locks
                // the rows, so a worker leasing one now waits and then finds it cancelled,
                // and a lease taken just before is seen below (and nothing is changed).
                let cancelled = sqlx::query(
                    "UPDATE tasks SET state = $2, updated_at = $3, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE request_id = $1 AND state IN ($4, $5, $6, $7, $8) AND (lease_expires_at IS NULL OR lease_expires_at < $3)",
                )
                .bind(request_id).bind(TaskState::Cancelled).bind(now)
                .bind(TaskState::WaitingKeys).bind(TaskState::Pending).bind(TaskState::BackedUp)
                .bind(TaskState::WaitingConfirmation).bind(TaskState::NeedsAttention)
                .execute(&mut *tx).await?.rows_affected();
                let busy: Option<(String,)> = sqlx::query_as(
                    "SELECT id FROM tasks WHERE request_id = $1 AND state IN ($2, $3) AND lease_expires_at >= $4 LIMIT 1",
                )
                .bind(request_id).bind(TaskState::Pending).bind(TaskState::BackedUp).bind(now)
                .fetch_optional(&mut *tx).await?;
                if let Some((task,)) = busy {
                    tx.rollback().await?;
                    return Ok(Outcome::Busy(task));
                }
                // No completion receipt (nor email) follows a restore: the work done is
                // proven by a receipt of its own, and the subject is told of the restore.
                sqlx::query("UPDATE requests SET state = $2, updated_at = $3, receipt_due = $4 WHERE id = $1")
                    .bind(request_id).bind(to).bind(now).bind(false).execute(&mut *tx).await?;
                let why = format!("{reason} ({cancelled} pending task(s) cancelled)");
                history_in(&mut tx, request_id, now, actor, from, to, Some(&why)).await?;
                for m in mails {
                    super::outbox::enqueue_in(&mut tx, m, now).await?;
                }
                self.commit_work(tx, !mails.is_empty()).await?;
                Ok(Outcome::Moved)
            }.await?
        });
        match outcome {
            Outcome::Moved => Ok(true),
            Outcome::Again => Ok(false),
            Outcome::Busy(task) => Err(Error::new(
                Code::IllegalTransition,
                format!(
                    "request {request_id}: task {task} is running (a worker holds its lease); nothing was restored; restore once it stops"
                ),
            )),
            Outcome::Refused(from) => Err(Error::new(
                Code::IllegalTransition,
                format!(
                    "request {request_id} is {from}: nothing of it ran, so nothing can be restored"
                ),
            )),
        }
    }
}
