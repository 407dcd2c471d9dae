//! The transparency log, its checkpoints and the receipts, in the state store.

use chrono::{DateTime, Utc};

use super::{Pool, Store};
use crate::error::Result;

/// One log entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogEntry {
    pub idx: i64,
    pub kind: String,
    pub request_id: Option<String>,
    pub leaf_hash: String,
    pub body: String,
}

/// A stored checkpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckpointRow {
    pub size: i64,
    pub root: String,
    pub note: String,
}

impl Store {
    /// Append an entry; returns its index. Appends are serialised (PostgreSQL: an advisory
    /// lock for the transaction; SQLite: one writer at a time).
    pub async fn log_append(
        &self,
        kind: &str,
        request_id: Option<&str>,
        leaf_hash: &str,
        body: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let idx: i64 = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                if matches!(self.pool, Pool::Postgres(_)) {
                    sqlx::query("SELECT pg_advisory_xact_lock(6962)").execute(&mut *tx).await?;
                }
                let (next,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_entries").fetch_one(&mut *tx).await?;
                sqlx::query("INSERT INTO log_entries (idx, kind, request_id, leaf_hash, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(next).bind(kind).bind(request_id).bind(leaf_hash).bind(body).bind(now)
                    .execute(&mut *tx).await?;
                tx.commit().await?;
                Ok::<i64, sqlx::Error>(next)
            }.await?
        });
        Ok(idx)
    }

    /// Leaf hashes (hex) of the first `size` entries, in order.
    pub async fn log_leaf_hashes(&self, size: i64) -> Result<Vec<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT leaf_hash FROM log_entries WHERE idx < $1 ORDER BY idx").bind(size).fetch_all(pool).await?
        }))
    }

    pub async fn log_size(&self) -> Result<i64> {
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT COUNT(*) FROM log_entries").fetch_one(pool).await?);
        Ok(n)
    }

    /// Every entry, in order.
    pub async fn log_entries(&self) -> Result<Vec<LogEntry>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT idx, kind, request_id, leaf_hash, body FROM log_entries ORDER BY idx").fetch_all(pool).await?
        }))
    }

    pub async fn save_checkpoint(
        &self,
        size: i64,
        root: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO checkpoints (size, root, note, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(size).bind(root).bind(note).bind(now).execute(pool).await?;
        });
        Ok(())
    }

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT size, root, note FROM checkpoints ORDER BY size").fetch_all(pool).await?
        }))
    }

    /// Record a receipt, mark the tasks it covers and queue its messages, in one
    /// transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn save_receipt(
        &self,
        id: &str,
        request_id: Option<&str>,
        log_idx: i64,
        document: &str,
        task_ids: &[String],
        mails: &[super::outbox::NewMail],
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO receipts (id, request_id, log_idx, document, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id).bind(request_id).bind(log_idx).bind(document).bind(now).execute(&mut *tx).await?;
            for t in task_ids {
                sqlx::query("UPDATE tasks SET receipt_id = $2 WHERE id = $1 AND receipt_id IS NULL")
                    .bind(t).bind(id).execute(&mut *tx).await?;
            }
            for m in mails {
                super::outbox::enqueue_in(&mut tx, m, now).await?;
            }
            if let Some(rid) = request_id {
                sqlx::query("UPDATE requests SET receipt_due = $2 WHERE id = $1").bind(rid).bind(false).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Requests whose completion receipt is due.
    pub async fn receipts_due(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id FROM requests WHERE receipt_due = $1 ORDER BY updated_at, id").bind(true).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// A request's finished tasks that no receipt covers yet.
    pub async fn unreceipted_tasks_of(&self, request_id: &str) -> Result<Vec<super::TaskRow>> {
        let sql = format!(
            "SELECT {} FROM tasks WHERE request_id = $1 AND state = $2 AND receipt_id IS NULL ORDER BY completed_at, id",
            super::tasks::TASK_COLUMNS
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(request_id).bind(super::tasks::TaskState::Done).fetch_all(pool).await?
        }))
    }

    /// Finished tasks that no receipt covers yet, oldest first.
    pub async fn unreceipted_tasks(&self) -> Result<Vec<super::TaskRow>> {
        let sql = format!(
            "SELECT {} FROM tasks WHERE state = $1 AND receipt_id IS NULL ORDER BY completed_at, id",
            super::tasks::TASK_COLUMNS
        );
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(super::tasks::TaskState::Done).fetch_all(pool).await?),
        )
    }

    /// The receipts of a request: (id, document), oldest first.
    pub async fn receipts_of(&self, request_id: &str) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, document FROM receipts WHERE request_id = $1 ORDER BY log_idx").bind(request_id).fetch_all(pool).await?
        }))
    }
}
