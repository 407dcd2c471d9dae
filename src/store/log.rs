//! The transparency log, its checkpoints and the receipts, in the state store.
//!
//! Appends are serialised by the log lock (PostgreSQL: an advisory lock for the
//! transaction; SQLite: an immediate transaction, one writer at a time), and a batch of
//! entries, its checkpoint and the receipts that cite them commit in one transaction.
//! Receipt work is claimed first, as tasks are leased; the transaction commits only while
//! the claims are still its worker's, so a receipt is issued once across instances.

use super::BeginWrite as _;
use chrono::{DateTime, Utc};

use super::outbox::NewMail;
use super::{Pool, Store};
use crate::error::{Code, Error, Result};
use crate::lifecycle::state::{Event, State};

/// What a log entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum LogKind {
    /// A signed receipt's body.
    Receipt,
}

impl LogKind {
    /// The kind's text in the store (as `sqlx` writes it).
    pub const fn as_str(self) -> &'static str {
        match self {
            LogKind::Receipt => "receipt",
        }
    }

    /// The kind a stored text names; `None` for a text no kind has.
    pub fn parse(text: &str) -> Option<LogKind> {
        [LogKind::Receipt].into_iter().find(|k| k.as_str() == text)
    }
}

/// One log entry, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogEntry {
    pub idx: i64,
    /// The kind's text as stored (see [`LogKind::parse`]): `log verify` names an entry
    /// whose kind is no kind, rather than failing to read the log.
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

/// Where an append starts, as read under the log lock: the latest checkpoint that has a
/// frontier (size 0 and no frontier when none has), and the leaf hashes of the entries
/// after it (none, once every checkpoint has its frontier).
#[derive(Debug, Clone)]
pub struct LogTip {
    pub from: i64,
    /// The frontier of the tree of `from` entries: hex hashes, concatenated.
    pub frontier: String,
    /// Leaf hashes (hex) of entries `from`, `from + 1`, …, in order.
    pub tail: Vec<String>,
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub kind: LogKind,
    pub request_id: Option<String>,
    pub leaf_hash: String,
    pub body: String,
}

/// The checkpoint of a batch.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    pub size: i64,
    pub root: String,
    pub note: String,
    pub frontier: String,
}

/// A receipt to record with the batch whose entry it cites.
#[derive(Debug, Clone)]
pub struct NewReceipt {
    pub id: String,
    pub request_id: Option<String>,
    /// The request's completion receipt (at most one per request; its claim on the request
    /// must still hold, and its due flag is cleared). Otherwise each task it covers must be
    /// claimed by the appending worker.
    pub completion: bool,
    pub log_idx: i64,
    pub document: String,
    pub task_ids: Vec<String>,
    /// Messages queued with it (the completion email).
    pub mails: Vec<NewMail>,
}

/// What a batch writes besides its entries: made, under the log lock, from the log's tip
/// and the index of the batch's first entry.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub checkpoint: NewCheckpoint,
    pub receipts: Vec<NewReceipt>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendStats {
    /// The index of the batch's first entry.
    pub first: i64,
    /// How many leaf hashes it read (the entries after the latest frontier: none, except
    /// once on a log whose checkpoints predate frontiers).
    pub leaves_read: usize,
}

/// A transaction that holds the log lock.
trait LogLock {
    type Db: sqlx::Database;
    async fn begin_locked(&self) -> Result<sqlx::Transaction<'static, Self::Db>>;
}

impl LogLock for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_locked(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.begin_write().await?)
    }
}

impl LogLock for sqlx::PgPool {
    type Db = sqlx::Postgres;
    async fn begin_locked(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(6962)")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Why an append wrote nothing.
enum Lost {
    /// A claim is no longer this worker's, or the work was done meanwhile.
    Claim,
}

impl Store {
    /// Append a batch of entries, its checkpoint and the receipts that cite them, in one
    /// transaction under the log lock. `seal` is given the log's tip and the first new
    /// index, and makes the checkpoint and the receipts. `worker` is whose claims the
    /// receipts carry out: when one of them no longer holds (or the request already has
    /// its completion receipt), nothing is written and the answer is `None`.
    pub async fn append_log<F>(
        &self,
        entries: &[NewEntry],
        worker: Option<&str>,
        now: DateTime<Utc>,
        seal: F,
    ) -> Result<Option<AppendStats>>
    where
        F: FnOnce(&LogTip, i64) -> Result<Sealed>,
    {
        let outcome: std::result::Result<AppendStats, Lost> = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_locked().await?;
                let latest: Option<(i64, String)> = sqlx::query_as(
                    "SELECT size, frontier FROM checkpoints WHERE frontier IS NOT NULL ORDER BY size DESC LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let (from, frontier) = latest.unwrap_or((0, String::new()));
                let rows: Vec<(i64, String)> = sqlx::query_as("SELECT idx, leaf_hash FROM log_entries WHERE idx >= $1 ORDER BY idx")
                    .bind(from)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut tail = Vec::with_capacity(rows.len());
                for (k, (idx, h)) in rows.into_iter().enumerate() {
                    if idx != from + k as i64 {
                        return Err(Error::new(Code::Store, format!("the log misses entry {}", from + k as i64)));
                    }
                    tail.push(h);
                }
                let leaves_read = tail.len();
                let first = from + tail.len() as i64;
                let tip = LogTip { from, frontier, tail };
                let sealed = seal(&tip, first)?;
                for (k, e) in entries.iter().enumerate() {
                    sqlx::query("INSERT INTO log_entries (idx, kind, request_id, leaf_hash, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(first + k as i64).bind(e.kind).bind(e.request_id.as_deref()).bind(&e.leaf_hash).bind(&e.body).bind(now)
                        .execute(&mut *tx).await?;
                }
                let c = &sealed.checkpoint;
                sqlx::query("INSERT INTO checkpoints (size, root, note, frontier, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(c.size).bind(&c.root).bind(&c.note).bind(&c.frontier).bind(now)
                    .execute(&mut *tx).await?;
                for r in &sealed.receipts {
                    if r.completion {
                        // The request completes here, with its receipt, and not before.
                        // The claim on it must still be this worker's, and the receipt
                        // still due (a restore, or another worker, may have settled it
                        // meanwhile).
                        let Some(rid) = r.request_id.as_deref() else {
                            return Err(Error::new(Code::Internal, format!("completion receipt {} names no request", r.id)));
                        };
                        let from: Option<(State,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1")
                            .bind(rid).fetch_optional(&mut *tx).await?;
                        // (A request that an older version completed before its receipt
                        // stays completed.)
                        let to = from.and_then(|(f,)| Event::Complete.target(f).or((f == State::Completed).then_some(f)));
                        let (Some((from,)), Some(to)) = (from, to) else {
                            tx.rollback().await?;
                            return Ok(Err(Lost::Claim));
                        };
                        let held = sqlx::query("UPDATE requests SET state = $5, updated_at = $6, receipt_due = $3, receipt_claimed_by = NULL, receipt_claim_until = NULL \
                                                WHERE id = $1 AND receipt_due = $4 AND receipt_claimed_by = $2 AND state = $7")
                            .bind(rid).bind(worker).bind(false).bind(true).bind(to).bind(now).bind(from)
                            .execute(&mut *tx).await?.rows_affected();
                        if held != 1 {
                            tx.rollback().await?;
                            return Ok(Err(Lost::Claim));
                        }
                        let why = if r.task_ids.is_empty() {
                            format!("nothing to change: no mapped system holds data of the subject; receipt {}", r.id)
                        } else {
                            format!("every task that answers the request is done; receipt {}", r.id)
                        };
                        if from != to {
                            super::history::history_in(&mut tx, rid, now, "quietus", from, to, Some(&why)).await?;
                        }
                    }
                    let inserted = sqlx::query("INSERT INTO receipts (id, request_id, log_idx, document, completion, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(&r.id).bind(r.request_id.as_deref()).bind(r.log_idx).bind(&r.document).bind(r.completion).bind(now)
                        .execute(&mut *tx).await;
                    match inserted {
                        Ok(_) => {}
                        // A second completion receipt of the request: the database refuses it.
                        Err(e) if super::is_unique_violation(&e) => {
                            tx.rollback().await?;
                            return Ok(Err(Lost::Claim));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    for t in &r.task_ids {
                        // A task is covered once; outside a completion receipt only by the
                        // worker that claimed it.
                        let n = sqlx::query("UPDATE tasks SET receipt_id = $2, receipt_claimed_by = NULL, receipt_claim_until = NULL \
                                             WHERE id = $1 AND receipt_id IS NULL AND ($3 OR receipt_claimed_by = $4)")
                            .bind(t).bind(&r.id).bind(r.completion).bind(worker)
                            .execute(&mut *tx).await?.rows_affected();
                        if n != 1 {
                            tx.rollback().await?;
                            return Ok(Err(Lost::Claim));
                        }
                    }
                    for m in &r.mails {
                        super::outbox::enqueue_in(&mut tx, m, now).await?;
                    }
                }
                tx.commit().await?;
                Ok::<_, Error>(Ok(AppendStats { first, leaves_read }))
            }.await?
        });
        match outcome {
            Ok(stats) => Ok(Some(stats)),
            Err(Lost::Claim) => Ok(None),
        }
    }

    pub async fn log_size(&self) -> Result<i64> {
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT COUNT(*) FROM log_entries").fetch_one(pool).await?);
        Ok(n)
    }

    /// Leaf hashes (hex) of the first `size` entries, in order (consistency proofs; an
    /// append never reads them).
    pub async fn log_leaf_hashes(&self, size: i64) -> Result<Vec<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT leaf_hash FROM log_entries WHERE idx < $1 ORDER BY idx").bind(size).fetch_all(pool).await?
        }))
    }

    /// Every entry, in order.
    pub async fn log_entries(&self) -> Result<Vec<LogEntry>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT idx, kind, request_id, leaf_hash, body FROM log_entries ORDER BY idx").fetch_all(pool).await?
        }))
    }

    /// The newest stored checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetch_optional(pool).await?
        }))
    }

    /// Every receipt: (id, request id), in log order.
    pub async fn receipt_ids(&self) -> Result<Vec<(String, Option<String>)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id FROM receipts ORDER BY log_idx").fetch_all(pool).await?
        }))
    }

    /// One receipt's document.
    pub async fn receipt_document(&self, id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT document FROM receipts WHERE id = $1").bind(id).fetch_optional(pool).await?
        }))
    }

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT size, root, note FROM checkpoints ORDER BY size").fetch_all(pool).await?
        }))
    }

    /// Claim the completion receipts of `ids` that are due and that no live claim of
    /// another worker holds, until `until`; returns the ids claimed.
    pub async fn claim_completion_receipts(
        &self,
        ids: &[String],
        worker: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        // All in one transaction (one commit, however many complete at once), the rows
        // taken in one order so that two workers claiming at once cannot deadlock.
        let mut ids: Vec<&String> = ids.iter().collect();
        ids.sort();
        ids.dedup();
        let claimed = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut claimed = Vec::new();
            for id in ids {
                let row: Option<(String,)> = sqlx::query_as("UPDATE requests SET receipt_claimed_by = $2, receipt_claim_until = $4 WHERE id = $1 AND receipt_due = $5 \
                                AND (receipt_claimed_by IS NULL OR receipt_claimed_by = $2 OR receipt_claim_until < $3) RETURNING id")
                    .bind(id).bind(worker).bind(now).bind(until).bind(true)
                    .fetch_optional(&mut *tx).await?;
                claimed.extend(row.map(|(id,)| id));
            }
            tx.commit().await?;
            claimed
        });
        Ok(claimed)
    }

    /// Claim up to `limit` finished tasks that no receipt covers and no completion receipt
    /// will (sweeps, and the work of a completed or restored request that finished after
    /// its completion receipt, or without one), oldest first, until `until`.
    pub async fn claim_unreceipted_tasks(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<super::TaskRow>> {
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE tasks SET receipt_claimed_by = $1, receipt_claim_until = $3 WHERE id IN ( \
               SELECT id FROM tasks WHERE receipt_id IS NULL AND state = '{done}' \
               AND (receipt_claimed_by IS NULL OR receipt_claimed_by = $1 OR receipt_claim_until < $2) \
               AND (request_id IS NULL OR EXISTS (SELECT 1 FROM requests r WHERE r.id = tasks.request_id \
                   AND r.state IN ('{completed}', '{restored}') AND r.receipt_due = $4)) \
               ORDER BY completed_at, id LIMIT $5{lock}) \
             RETURNING {cols}",
            done = super::tasks::TaskState::Done,
            completed = crate::lifecycle::State::Completed,
            restored = crate::lifecycle::State::Restored,
            cols = super::tasks::TASK_COLUMNS,
        );
        let mut rows: Vec<super::TaskRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(worker).bind(now).bind(until).bind(false).bind(limit).fetch_all(pool).await?
        });
        rows.sort_by(|a, b| (a.completed_at, &a.id).cmp(&(b.completed_at, &b.id)));
        Ok(rows)
    }

    /// Give receipt claims back unfinished (the receipt could not be built).
    pub async fn release_receipt_claims(
        &self,
        worker: &str,
        requests: &[String],
        tasks: &[String],
    ) -> Result<()> {
        on_pool!(self, pool => {
            for id in requests {
                sqlx::query("UPDATE requests SET receipt_claimed_by = NULL, receipt_claim_until = NULL WHERE id = $1 AND receipt_claimed_by = $2")
                    .bind(id).bind(worker).execute(pool).await?;
            }
            for id in tasks {
                sqlx::query("UPDATE tasks SET receipt_claimed_by = NULL, receipt_claim_until = NULL WHERE id = $1 AND receipt_claimed_by = $2")
                    .bind(id).bind(worker).execute(pool).await?;
            }
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

    /// The receipts of a request: (id, document), oldest first.
    pub async fn receipts_of(&self, request_id: &str) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, document FROM receipts WHERE request_id = $1 ORDER BY log_idx").bind(request_id).fetch_all(pool).await?
        }))
    }
}
