//! What a worker that stopped leaves behind, in the state store: the archives it meant to
//! write (recorded before their first byte, so that one never recorded as a backup is
//! found and crypto-shredded), and its leases (released once it is known to be gone).

use super::BeginWrite as _;
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::Store;
use crate::error::Result;

/// An archive a worker is writing, or wrote and never recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArchiveIntent {
    pub id: String,
    pub task_id: String,
    pub request_id: Option<String>,
    pub worker: String,
}

/// A due task that waits on another worker's lease.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct LeaseWait {
    #[sqlx(rename = "id")]
    pub task: String,
    pub kind: super::tasks::TaskKind,
    pub system: String,
    pub request_id: Option<String>,
    #[sqlx(rename = "lease_owner")]
    pub worker: String,
    #[sqlx(rename = "lease_expires_at")]
    pub until: DateTime<Utc>,
}

impl Store {
    /// Record that `worker` is about to write archive `id` for a task (before any file),
    /// if and only if the task is still `pending` under its lease: false (nothing
    /// recorded) when it was cancelled or taken over, so that no archive is begun for work
    /// that will not be done.
    pub async fn archive_intent(
        &self,
        id: &str,
        task_id: &str,
        request_id: Option<&str>,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("INSERT INTO archive_intents (id, task_id, request_id, worker, created_at) \
                         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.id = $2 AND t.state = $6 AND t.lease_owner = $4)")
                .bind(id).bind(task_id).bind(request_id).bind(worker).bind(now).bind(super::tasks::TaskState::Pending)
                .execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Archives never recorded as a backup whose writer can no longer record them: its
    /// task is gone, no longer `pending`, or not leased by that writer any more.
    pub async fn abandoned_archives(&self) -> Result<Vec<ArchiveIntent>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT i.id, i.task_id, i.request_id, i.worker FROM archive_intents i LEFT JOIN tasks t ON t.id = i.task_id \
                 WHERE i.shredded_at IS NULL AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.id = i.id) \
                 AND (t.id IS NULL OR t.state <> $1 OR t.lease_owner IS NULL OR t.lease_owner <> i.worker) \
                 ORDER BY i.created_at, i.id",
            )
            .bind(super::tasks::TaskState::Pending)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Which of `ids` name archives that may be on disk: backups not shredded, and
    /// archives being written. Anything else in the backup folders belongs to no one.
    /// Asked by primary key, 500 ids a query.
    pub async fn live_archive_ids_among(&self, ids: &[String]) -> Result<BTreeSet<String>> {
        let mut live = BTreeSet::new();
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let marks = marks.join(", ");
            let sql = format!(
                "SELECT id FROM backups WHERE shredded_at IS NULL AND id IN ({marks}) UNION \
                 SELECT i.id FROM archive_intents i WHERE i.shredded_at IS NULL AND i.id IN ({marks}) \
                 AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.id = i.id)"
            );
            let rows: Vec<(String,)> = on_pool!(self, pool => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(pool).await?
            });
            self.archive_ids_asked.fetch_add(
                u64::try_from(chunk.len()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            live.extend(rows.into_iter().map(|r| r.0));
        }
        Ok(live)
    }

    /// How many archive ids this store (and its clones) was asked about by
    /// [`Store::live_archive_ids_among`]: the cost of the unrecorded-archive check, for
    /// the test that shows what a round of it asks.
    pub fn archive_ids_asked(&self) -> u64 {
        self.archive_ids_asked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record that an unrecorded archive was crypto-shredded, in its request's history too.
    pub async fn archive_shredded(&self, a: &ArchiveIntent, now: DateTime<Utc>) -> Result<()> {
        let reason = format!(
            "archive {} of task {}, written by a worker that stopped (or lost its lease) before it was recorded, \
             was never recorded nor used: crypto-shredded",
            a.id, a.task_id
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query("UPDATE archive_intents SET shredded_at = $2 WHERE id = $1 AND shredded_at IS NULL")
                .bind(&a.id).bind(now).execute(&mut *tx).await?.rows_affected();
            if n == 1 && let Some(rid) = &a.request_id {
                let state: Option<(crate::lifecycle::State,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1")
                    .bind(rid).fetch_optional(&mut *tx).await?;
                if let Some((state,)) = state {
                    super::history::history_in(&mut tx, rid, now, "quietus", state, state, Some(&reason)).await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Release every lease of a worker that is gone (tasks and messages); returns how
    /// many tasks and messages it held.
    pub async fn release_leases_of(&self, worker: &str) -> Result<(u64, u64)> {
        Ok(on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let t = sqlx::query("UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1")
                .bind(worker).execute(&mut *tx).await?.rows_affected();
            let m = sqlx::query("UPDATE outbox SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1")
                .bind(worker).execute(&mut *tx).await?.rows_affected();
            // Its receipt claims too: a request whose work is done waits for no one's
            // receipt that will never come.
            sqlx::query("UPDATE requests SET receipt_claimed_by = NULL, receipt_claim_until = NULL WHERE receipt_claimed_by = $1")
                .bind(worker).execute(&mut *tx).await?;
            sqlx::query("UPDATE tasks SET receipt_claimed_by = NULL, receipt_claim_until = NULL WHERE receipt_claimed_by = $1")
                .bind(worker).execute(&mut *tx).await?;
            tx.commit().await?;
            (t, m)
        }))
    }

    /// Due, runnable tasks that another worker's live lease holds back, soonest first.
    pub async fn waiting_on_leases(&self, now: DateTime<Utc>) -> Result<Vec<LeaseWait>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, kind, system, request_id, lease_owner, lease_expires_at FROM tasks \
                 WHERE state IN ($2, $3) AND due_at <= $1 AND lease_owner IS NOT NULL \
                 AND lease_expires_at >= $1 ORDER BY lease_expires_at, id",
            )
            .bind(now)
            .bind(super::tasks::TaskState::Pending)
            .bind(super::tasks::TaskState::BackedUp)
            .fetch_all(pool)
            .await?
        }))
    }
}
