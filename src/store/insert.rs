//! Requests into the store, each with its ticket, identities, first history entry and
//! acknowledgement mail. Two ways in, over one statement sequence ([`Store::insert_batch`]):
//!
//! - a list, whole or not at all ([`Store::insert_requests`]: a CSV exit list);
//! - one ticket ([`Store::insert_request`]), committed together with the tickets other
//!   callers of this process hand in at the same moment (group commit): on SQLite every
//!   commit is an fsync under the one write lock, so concurrent callers queued on that
//!   lock, each sleeping in SQLite's busy handler (its sleeps are 1 to 100 ms), and one
//!   transaction per ticket bounded the intake. A committer task takes whatever is
//!   queued, stores it in one transaction and answers each caller; a ticket whose
//!   external id names another ticket fails alone.
//!
//! The same external id with the same ticket is the same request (`Inserted::Existing`),
//! whether it was stored long ago, a moment ago by another process, or earlier in the
//! same batch.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{BeginWrite, Inserted, NewRequest, Store, outbox};
use crate::error::{Code, Error, Result};
use crate::policy::RequestKind;

/// How a batch treats a ticket whose external id already names a different ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// Nothing of the batch is stored.
    Whole,
    /// That ticket is refused; the others are stored.
    Each,
}

/// What one ticket of a batch came to.
#[derive(Debug)]
enum Outcome {
    Stored(Inserted),
    /// The external id names request `id`, made from a different ticket.
    Taken {
        external_id: String,
        id: String,
    },
}

impl Outcome {
    fn into_result(self) -> Result<Inserted> {
        match self {
            Outcome::Stored(i) => Ok(i),
            Outcome::Taken { external_id, id } => Err(Error::new(
                Code::Conflict,
                format!(
                    "external_id {external_id:?} already names request {id}, with a different ticket; \
                     send the same ticket again or use a new external_id"
                ),
            )),
        }
    }
}

/// Most tickets one grouped transaction holds.
const GROUP_MOST: usize = 256;

/// A ticket waiting for the committer, and where its answer goes.
struct Job {
    request: NewRequest,
    answer: oneshot::Sender<Result<Inserted>>,
}

/// The queue of this process's grouped inserts: started by the first one, on the runtime
/// that makes it (and again if that runtime has gone).
#[derive(Debug, Default)]
pub(crate) struct Grouped {
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("request", &self.request.id)
            .finish()
    }
}

impl Store {
    /// Insert requests in one transaction: all of them or none. An external id that
    /// names a different ticket is a conflict, and nothing is stored. An error says
    /// which of `rs` it is about, where it is about one.
    pub async fn insert_requests(
        &self,
        rs: &[&NewRequest],
    ) -> std::result::Result<Vec<Inserted>, (Option<usize>, Error)> {
        let outcomes = self
            .insert_batch(rs, Batch::Whole)
            .await
            .map_err(|e| (None, Error::from(e)))?;
        let mut out = Vec::with_capacity(outcomes.len());
        for (i, o) in outcomes.into_iter().enumerate() {
            out.push(o.into_result().map_err(|e| (Some(i), e))?);
        }
        Ok(out)
    }

    /// Insert one request, committed with whatever other requests this process is
    /// inserting at the same moment (see the module's documentation). Its answer is its
    /// own: a conflict of another ticket is not this one's.
    pub async fn insert_request(&self, request: NewRequest) -> Result<Inserted> {
        let (answer, answered) = oneshot::channel();
        let mut job = Job { request, answer };
        {
            let mut queue = self
                .grouped
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                if let Some(q) = queue.as_ref() {
                    match q.send(job) {
                        Ok(()) => break,
                        // The committer's runtime has gone: start another on this one.
                        Err(mpsc::error::SendError(back)) => job = back,
                    }
                }
                let (q, rx) = mpsc::unbounded_channel();
                tokio::spawn(self.committer().commit_grouped(rx));
                *queue = Some(q);
            }
        }
        answered.await.map_err(|_| {
            Error::new(
                Code::Store,
                "the request may not have been stored: the store's committer stopped",
            )
        })?
    }

    /// The store as the committer holds it: the same pool, without the queue (so that
    /// the committer ends when the last caller's store is dropped).
    fn committer(&self) -> Store {
        Store {
            pool: self.pool.clone(),
            archive_ids_asked: self.archive_ids_asked.clone(),
            wake: self.wake.clone(),
            grouped: Arc::default(),
        }
    }

    async fn commit_grouped(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut jobs = Vec::with_capacity(GROUP_MOST);
        while rx.recv_many(&mut jobs, GROUP_MOST).await > 0 {
            let rs: Vec<&NewRequest> = jobs.iter().map(|j| &j.request).collect();
            let result = self.insert_batch(&rs, Batch::Each).await;
            match result {
                Ok(outcomes) => {
                    for (job, o) in jobs.drain(..).zip(outcomes) {
                        // A caller that has gone away finds its request stored when it asks again.
                        let _ = job.answer.send(o.into_result());
                    }
                }
                Err(e) => {
                    let e = Error::from(e);
                    if jobs.len() > 1 && !e.store_unreachable() {
                        // Something about one ticket failed the whole transaction: each
                        // alone, so that only that one's caller hears of it.
                        for job in jobs.drain(..) {
                            let one = self.insert_one(&job.request).await;
                            let _ = job.answer.send(one);
                        }
                    } else {
                        for job in jobs.drain(..) {
                            let _ = job.answer.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    async fn insert_one(&self, r: &NewRequest) -> Result<Inserted> {
        self.insert_batch(&[r], Batch::Each)
            .await?
            .pop()
            .ok_or_else(|| Error::new(Code::Internal, "a batch of one stored nothing"))?
            .into_result()
    }

    /// The statements of a batch, in one transaction. Under [`Batch::Whole`] the first
    /// taken external id rolls the transaction back and ends the list of outcomes.
    async fn insert_batch(
        &self,
        rs: &[&NewRequest],
        batch: Batch,
    ) -> std::result::Result<Vec<Outcome>, sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut out = Vec::with_capacity(rs.len());
            let mut mails = false;
            for r in rs {
                // A taken external id inserts nothing (and waits, on PostgreSQL, for a
                // transaction that is inserting it to end), then finds who has it.
                let inserted = sqlx::query(
                    "INSERT INTO requests (id, kind, external_id, ticket_digest, state, jurisdiction, locale, source, \
                     requested_by, exit_date, received_at, verified_at, clock_start, due_date, original_due_date, \
                     verify_token_sha256, updated_at, wants_copy) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15, $11, $16) \
                     ON CONFLICT (external_id) DO NOTHING",
                )
                .bind(&r.id).bind(r.kind).bind(&r.external_id).bind(&r.ticket_digest).bind(r.state)
                .bind(r.jurisdiction).bind(&r.locale).bind(&r.source).bind(&r.requested_by).bind(r.exit_date)
                .bind(r.received_at).bind(r.verified_at).bind(r.clock_start).bind(r.due_date)
                .bind(&r.verify_token_sha256).bind(r.wants_copy)
                .execute(&mut *tx).await?
                .rows_affected();
                if inserted == 0 {
                    let (id, kind, digest): (String, RequestKind, String) =
                        sqlx::query_as("SELECT id, kind, ticket_digest FROM requests WHERE external_id = $1")
                            .bind(&r.external_id).fetch_one(&mut *tx).await?;
                    if kind == r.kind && digest == r.ticket_digest {
                        out.push(Outcome::Stored(Inserted::Existing(id)));
                        continue;
                    }
                    out.push(Outcome::Taken {
                        external_id: r.external_id.clone().unwrap_or_default(),
                        id,
                    });
                    if batch == Batch::Whole {
                        tx.rollback().await?;
                        return Ok(out);
                    }
                    continue;
                }
                sqlx::query("INSERT INTO tickets (request_id, body, received_at) VALUES ($1, $2, $3)")
                    .bind(&r.id).bind(&r.ticket_body).bind(r.received_at)
                    .execute(&mut *tx).await?;
                for i in &r.identities {
                    sqlx::query("INSERT INTO identities (request_id, role, kind, value) VALUES ($1, $2, $3, $4)")
                        .bind(&r.id).bind(i.role).bind(i.kind).bind(&i.value)
                        .execute(&mut *tx).await?;
                }
                sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, $3, NULL, $4, 'received')")
                    .bind(&r.id).bind(r.received_at).bind(&r.actor).bind(r.state)
                    .execute(&mut *tx).await?;
                for m in &r.mails {
                    outbox::enqueue_in(&mut tx, m, r.received_at).await?;
                }
                mails |= !r.mails.is_empty();
                out.push(Outcome::Stored(Inserted::Created(r.id.clone())));
            }
            self.commit_work(tx, mails).await?;
            Ok(out)
        })
    }
}
