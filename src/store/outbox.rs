//! The mail outbox in the state store.
//!
//! A message is written with [`enqueue_in`] inside the transaction of the state change that
//! causes it (or alone with [`Store::enqueue`]), so a change is never committed without its
//! message, nor a message without its change. A sender leases pending messages with the
//! same conditional-UPDATE pattern as tasks (`FOR UPDATE SKIP LOCKED` on PostgreSQL), and
//! marks each `sent`, or counts a failed attempt and retries it later with exponential
//! backoff; past the attempt budget the message is `failed`. Every change is conditional on
//! the lease, so a sender that lost its lease changes nothing.

use super::BeginWrite as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Pool, Store};
use crate::error::{Code, Error, Result};

/// A file attached to a message (the receipt of a completion, as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAttachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// How an attachment is kept in the `attachments` column (a JSON list).
#[derive(Serialize, Deserialize)]
struct StoredAttachment {
    filename: String,
    content_type: String,
    /// Standard base64.
    content: String,
}

/// Attachments as the `attachments` column keeps them: `None` for none.
pub fn attachments_to_json(list: &[MailAttachment]) -> Result<Option<String>> {
    if list.is_empty() {
        return Ok(None);
    }
    let stored: Vec<StoredAttachment> = list
        .iter()
        .map(|a| StoredAttachment {
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            content: BASE64.encode(&a.content),
        })
        .collect();
    Ok(Some(serde_json::to_string(&stored)?))
}

/// The attachments of an `attachments` column.
pub fn attachments_from_json(json: Option<&str>) -> Result<Vec<MailAttachment>> {
    let Some(json) = json.filter(|j| !j.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredAttachment> = serde_json::from_str(json)?;
    stored
        .into_iter()
        .map(|s| {
            let content = BASE64.decode(s.content.as_bytes()).map_err(|e| {
                Error::new(
                    Code::Internal,
                    format!("attachment {:?}: bad base64: {e}", s.filename),
                )
            })?;
            Ok(MailAttachment {
                filename: s.filename,
                content_type: s.content_type,
                content,
            })
        })
        .collect()
}

/// A message to put in the outbox: rendered, addressed, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// The outbox id; also the left-hand side of the `Message-ID`.
    pub id: String,
    pub request_id: Option<String>,
    pub kind: crate::mail::MessageKind,
    /// One address.
    pub recipient: String,
    pub locale: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub attachments: Vec<MailAttachment>,
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OutboxState {
    /// To be sent (retried with backoff).
    Pending,
    Sent,
    /// Given up after `mail.max_attempts`.
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for OutboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A message as stored.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct OutboxRow {
    pub id: String,
    pub request_id: Option<String>,
    pub kind: crate::mail::MessageKind,
    pub recipient: String,
    pub locale: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    /// JSON list of `{filename, content_type, content (base64)}`, or NULL.
    #[serde(skip)]
    pub attachments: Option<String>,
    pub state: OutboxState,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl OutboxRow {
    /// The decoded attachments.
    pub fn attachment_list(&self) -> Result<Vec<MailAttachment>> {
        attachments_from_json(self.attachments.as_deref())
    }
}

const OUTBOX_COLUMNS: &str = "id, request_id, kind, recipient, locale, subject, body_text, body_html, attachments, \
     state, attempts, next_attempt_at, lease_owner, lease_expires_at, last_error, created_at, sent_at";

/// The wait before the next attempt after `attempts` failed ones: 30 s × 2^attempts
/// (1, 2, 4, ... minutes), at most 2^10 × 30 s (about 8.5 hours).
pub fn backoff(attempts: i64) -> chrono::Duration {
    chrono::Duration::seconds(30 * (1_i64 << attempts.clamp(0, 10)))
}

/// Put a message in the outbox inside a transaction of the caller (on either database),
/// so that it is committed with the state change that causes it, or not at all. Returns
/// `sqlx::Error` (like the other statements of such a transaction), which converts into
/// the crate's error with `?`.
pub async fn enqueue_in<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    m: &NewMail,
    now: DateTime<Utc>,
) -> std::result::Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> crate::mail::MessageKind: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> OutboxState: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let attachments = attachments_to_json(&m.attachments)
        .map_err(|e| sqlx::Error::Encode(Box::new(std::io::Error::other(e.message))))?;
    sqlx::query(
        "INSERT INTO outbox (id, request_id, kind, recipient, locale, subject, body_text, body_html, attachments, \
         state, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11, 0, $10, $10)",
    )
    .bind(m.id.clone())
    .bind(m.request_id.clone())
    .bind(m.kind)
    .bind(m.recipient.clone())
    .bind(m.locale.clone())
    .bind(m.subject.clone())
    .bind(m.body_text.clone())
    .bind(m.body_html.clone())
    .bind(attachments)
    .bind(now)
    .bind(OutboxState::Pending)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Put a message in the outbox on its own (no state change goes with it).
    pub async fn enqueue(&self, m: &NewMail, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            enqueue_in(&mut tx, m, now).await?;
            self.commit_work(tx, true).await?;
        });
        Ok(())
    }

    /// Lease up to `limit` pending messages that are due (`next_attempt_at <= now`) and not
    /// leased, or whose lease expired, until `lease_until`.
    pub async fn lease_mail(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE outbox SET lease_owner = $1, lease_expires_at = $3 WHERE id IN ( \
               SELECT id FROM outbox WHERE state = '{pending}' AND next_attempt_at <= $2 \
               AND (lease_expires_at IS NULL OR lease_expires_at < $2) \
               ORDER BY next_attempt_at, created_at, id LIMIT $4{lock}) \
             RETURNING {OUTBOX_COLUMNS}",
            pending = OutboxState::Pending,
        );
        let mut rows: Vec<OutboxRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(worker).bind(now).bind(lease_until).bind(limit)
                .fetch_all(pool).await?
        });
        // RETURNING does not keep the order of the sub-select.
        rows.sort_by(|a, b| {
            (a.next_attempt_at, a.created_at, &a.id).cmp(&(b.next_attempt_at, b.created_at, &b.id))
        });
        Ok(rows)
    }

    /// Mark a leased message sent. False when the lease was lost (another sender took the
    /// message over after this one's lease expired).
    pub async fn mail_sent(&self, id: &str, worker: &str, now: DateTime<Utc>) -> Result<bool> {
        Ok(self.mails_sent(&[id], worker, now).await?.first() == Some(&true))
    }

    /// Mark leased messages sent, in one transaction; for each, whether it was still this
    /// worker's lease (see [`Store::mail_sent`]).
    pub async fn mails_sent(
        &self,
        ids: &[&str],
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let held = on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut held = Vec::with_capacity(ids.len());
            for id in ids {
                let n = sqlx::query("UPDATE outbox SET state = $4, sent_at = $3, last_error = NULL, lease_owner = NULL, lease_expires_at = NULL \
                             WHERE id = $1 AND lease_owner = $2 AND state = $5")
                    .bind(id).bind(worker).bind(now).bind(OutboxState::Sent).bind(OutboxState::Pending).execute(&mut *tx).await?.rows_affected();
                held.push(n == 1);
            }
            tx.commit().await?;
            held
        });
        Ok(held)
    }

    /// Count a failed attempt of a leased message: retry after [`backoff`], or, once
    /// `max_attempts` attempts failed, mark it `failed`. Returns whether it gave up.
    /// `error` must not carry personal data (transport errors name hosts and codes).
    pub async fn mail_failed(
        &self,
        id: &str,
        worker: &str,
        error: &str,
        now: DateTime<Utc>,
        max_attempts: i64,
    ) -> Result<bool> {
        let gave_up: bool = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                let row: Option<(i64,)> = sqlx::query_as("SELECT attempts FROM outbox WHERE id = $1 AND lease_owner = $2 AND state = $3")
                    .bind(id).bind(worker).bind(OutboxState::Pending).fetch_optional(&mut *tx).await?;
                let Some((attempts,)) = row else {
                    tx.commit().await?;
                    return Ok::<bool, sqlx::Error>(false);
                };
                let attempts = attempts + 1;
                let give_up = attempts >= max_attempts;
                let state = if give_up { OutboxState::Failed } else { OutboxState::Pending };
                sqlx::query("UPDATE outbox SET attempts = $3, last_error = $4, next_attempt_at = $5, state = $6, \
                             lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2")
                    .bind(id).bind(worker).bind(attempts).bind(error).bind(now + backoff(attempts)).bind(state)
                    .execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(give_up)
            }.await?
        });
        Ok(gave_up)
    }

    /// Give a lease back untried (shutdown).
    pub async fn release_mail(&self, id: &str, worker: &str) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE outbox SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2")
                .bind(id).bind(worker).execute(pool).await?;
        });
        Ok(())
    }

    /// The messages of a request, oldest first.
    pub async fn outbox_of(&self, request_id: &str) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE request_id = $1 ORDER BY created_at, id"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(request_id).fetch_all(pool).await?
        }))
    }

    /// One message by id.
    pub async fn outbox_mail(&self, id: &str) -> Result<OutboxRow> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1");
        let row: Option<OutboxRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(id).fetch_optional(pool).await?
        });
        row.ok_or_else(|| Error::new(Code::NotFound, format!("no message {id} in the outbox")))
    }

    /// How many messages are in each state (`pending`, `sent`, `failed`).
    pub async fn outbox_counts(&self) -> Result<Vec<(OutboxState, i64)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT state, COUNT(*) FROM outbox GROUP BY state ORDER BY state")
                .fetch_all(pool).await?
        }))
    }
}
