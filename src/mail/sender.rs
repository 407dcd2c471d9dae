//! The sender: leases due messages and hands them to the transport.
//!
//! # Sent once, even across crashes
//!
//! A message is written to the outbox in the same transaction as the state change that
//! causes it, so it is never lost. A sender leases it, hands it to the transport, and
//! marks it `sent` right after the transport accepted it. Two outcomes of a crash:
//!
//! - before the transport accepted it: nothing left; once the lease expires another
//!   sender (or this one, restarted) sends it;
//! - after the transport accepted it but before the mark: once the lease expires the
//!   message is handed over again. The **file transport** notices that `ID.eml` already
//!   exists and writes nothing: exactly once, by name. Over **SMTP** no client can make
//!   this window disappear (the relay's acceptance and our database cannot commit
//!   together): the relay gets a second copy with the *same* `Message-ID`
//!   (`<OUTBOX-ID@domain>`), which lets a receiving system or mail client drop the
//!   duplicate. The window is the time between the relay's `250 OK` and one `UPDATE`.
//!
//! A failed attempt (relay down, timeout) is retried after an exponential backoff; a
//! permanent failure (a 5xx answer, an address that cannot be used) and the last allowed
//! attempt mark the message `failed`, which the caller reports to the DPO.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::transport::{Delivery, Mailer};
use crate::error::Result;
use crate::failpoints::{Point, hit};
use crate::store::Store;

/// How long a sender holds a message it is sending. Longer than any SMTP timeout, so that
/// another sender takes it over only when this one is gone.
pub const LEASE: chrono::Duration = chrono::Duration::minutes(10);

/// What one pass of [`send_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SendSummary {
    /// Messages the transport accepted (or whose file was already there).
    pub sent: Vec<String>,
    /// Messages that failed and will be retried later.
    pub retrying: Vec<String>,
    /// Messages given up on (`failed`): the DPO should hear of them.
    pub failed: Vec<String>,
    /// Messages sent whose lease another sender had taken over meanwhile (they may be sent
    /// twice; the Message-ID lets the receiving side drop the copy).
    pub lease_lost: Vec<String>,
}

impl SendSummary {
    /// Whether nothing was due.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
            && self.retrying.is_empty()
            && self.failed.is_empty()
            && self.lease_lost.is_empty()
    }
}

/// How many messages a sender hands to the transport at once.
const AT_ONCE: i64 = 8;

/// Send every message that is due at `now`, as `worker`, up to [`AT_ONCE`] at a time
/// (delivered concurrently): lease them, hand them to the transport, mark each sent, or
/// count its failed attempt (retried after a backoff; after `max_attempts` attempts, or
/// at once when the failure is permanent, `failed`). Messages that fail are not retried
/// within the same pass.
pub async fn send_due(
    store: &Store,
    mailer: &Mailer,
    worker: &str,
    now: DateTime<Utc>,
    max_attempts: i64,
) -> Result<SendSummary> {
    let mut summary = SendSummary::default();
    let mut seen = std::collections::HashSet::new();
    loop {
        let leased = store.lease_mail(worker, now, now + LEASE, AT_ONCE).await?;
        if leased.is_empty() {
            break;
        }
        let full = leased.len() as i64 == AT_ONCE;
        let mut batch = Vec::with_capacity(leased.len());
        let mut again = false;
        for row in leased {
            if seen.insert(row.id.clone()) {
                batch.push(row);
            } else {
                // Handed back to us in the same pass (a lease lost and expired): leave it
                // to the next pass rather than loop.
                store.release_mail(&row.id, worker).await?;
                again = true;
            }
        }
        let outcomes =
            futures_util::future::join_all(batch.iter().map(|row| mailer.deliver(row, now))).await;
        let mut delivered = Vec::new();
        for (row, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Ok(delivery) => {
                    hit(Point::OutboxSend);
                    if delivery == Delivery::AlreadyThere {
                        tracing::info!(id = %row.id, kind = %row.kind, "mail: already delivered by an earlier attempt");
                    }
                    delivered.push(row);
                }
                Err(e) => not_sent(store, worker, now, max_attempts, row, e, &mut summary).await?,
            }
        }
        // What went out is marked sent in one transaction (it was all delivered before
        // any mark: one commit marks it as soon as one mark each would begin to).
        let ids: Vec<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
        let marked = store.mails_sent(&ids, worker, now).await?;
        for (row, held) in delivered.into_iter().zip(marked) {
            if held {
                tracing::info!(id = %row.id, kind = %row.kind, "mail sent");
                summary.sent.push(row.id);
            } else {
                tracing::warn!(id = %row.id, kind = %row.kind, "mail sent, but its lease had been taken over");
                summary.lease_lost.push(row.id);
            }
        }
        if again || !full {
            break;
        }
    }
    Ok(summary)
}

/// Record that the transport refused one message (or could not be reached).
async fn not_sent(
    store: &Store,
    worker: &str,
    now: DateTime<Utc>,
    max_attempts: i64,
    row: crate::store::outbox::OutboxRow,
    e: super::transport::DeliveryError,
    summary: &mut SendSummary,
) -> Result<()> {
    let budget = if e.permanent { 1 } else { max_attempts };
    let gave_up = store
        .mail_failed(&row.id, worker, &e.message, now, budget)
        .await?;
    if gave_up {
        tracing::error!(id = %row.id, kind = %row.kind, attempts = row.attempts + 1, error = %e, "mail failed; giving up");
        summary.failed.push(row.id);
    } else {
        tracing::warn!(id = %row.id, kind = %row.kind, attempts = row.attempts + 1, error = %e, "mail not sent; will retry");
        summary.retrying.push(row.id);
    }
    Ok(())
}
