//! A round of work: schedule what was approved, then lanes that lease and run tasks,
//! an issuer that seals the receipts of the requests they complete, and a sender that
//! delivers the mail queued meanwhile; then expiry, the receipts left over, the mail.

use serde::Serialize;

use super::{Settings, execute, expire_backups, prove, recover, schedule_approved, task};
use crate::error::Result;
use crate::lifecycle::Context;

/// What one round of work did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub scheduled: usize,
    pub done: usize,
    pub retried: usize,
    pub failed: usize,
    pub completed_requests: Vec<String>,
    pub shredded_backups: usize,
    /// Receipt files issued.
    pub receipts: Vec<String>,
    /// Messages sent, and given up on.
    pub mail_sent: usize,
    pub mail_failed: usize,
    /// Leases released because the worker of this host that held them is gone.
    pub released_leases: u64,
    /// Archives crypto-shredded because no backup record names them (their writer
    /// stopped or lost its lease before recording them).
    pub shredded_unrecorded: usize,
    /// Due tasks left to other workers' live leases, and until when.
    pub waiting: Vec<crate::store::recovery::LeaseWait>,
}

impl RunSummary {
    /// Add what one task did to the round's summary.
    fn absorb(&mut self, part: RunSummary) {
        // Every field, by name: a new one cannot be forgotten here.
        let RunSummary {
            scheduled,
            done,
            retried,
            failed,
            completed_requests,
            shredded_backups,
            receipts,
            mail_sent,
            mail_failed,
            released_leases,
            shredded_unrecorded,
            waiting,
        } = part;
        self.scheduled += scheduled;
        self.done += done;
        self.retried += retried;
        self.failed += failed;
        self.completed_requests.extend(completed_requests);
        self.shredded_backups += shredded_backups;
        self.receipts.extend(receipts);
        self.mail_sent += mail_sent;
        self.mail_failed += mail_failed;
        self.released_leases += released_leases;
        self.shredded_unrecorded += shredded_unrecorded;
        self.waiting.extend(waiting);
    }
}

/// Run one leased task to its next recorded state. Returns the request it completed (its
/// last open task finished): that request's completion receipt is the caller's to issue
/// ([`run_due`] issues those of several lanes together; [`prove::issue_missing`] finds
/// any left).
pub async fn run_one(
    ctx: &Context,
    s: &Settings,
    task: &crate::store::TaskRow,
    summary: &mut RunSummary,
) -> Result<Option<String>> {
    let now = crate::clock::now();
    if let Some(rid) = &task.request_id {
        ctx.store.request_running(rid, now).await?;
    }
    // Keep the lease alive for as long as the task runs, whatever step it is in.
    let renewal = {
        let store = ctx.store.clone();
        let (id, worker, secs) = (task.id.clone(), s.worker.clone(), s.lease_seconds);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs((secs / 3).max(1))).await;
                let until = crate::clock::now()
                    + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(300));
                match store.renew_lease(&id, &worker, until).await {
                    Ok(true) => {}
                    _ => return,
                }
            }
        })
    };
    let outcome = execute::run(ctx, s, task, now).await;
    renewal.abort();
    match outcome {
        Ok(task::Step::Done(mut result)) => {
            let mails = std::mem::take(&mut result.mails);
            // Which worker finished it: the lease owner is cleared on `done`.
            let mut stored = serde_json::to_value(&result)?;
            if let Some(o) = stored.as_object_mut() {
                o.insert("worker".into(), s.worker.clone().into());
            }
            let completed = ctx
                .store
                .task_done(
                    &task.id,
                    &s.worker,
                    &serde_json::to_string(&stored)?,
                    &mails,
                    crate::clock::now(),
                )
                .await?;
            tracing::info!(task = %task.id, kind = %task.kind, "task done");
            summary.done += 1;
            if completed && let Some(rid) = &task.request_id {
                summary.completed_requests.push(rid.clone());
                return Ok(Some(rid.clone()));
            }
        }
        Ok(task::Step::Rebackup(why)) => {
            tracing::warn!(task = %task.id, "{why}; backing up again");
            if ctx
                .store
                .task_rebackup(
                    &task.id,
                    &s.worker,
                    &why,
                    crate::clock::now(),
                    s.max_attempts,
                )
                .await?
            {
                summary.failed += 1;
            } else {
                summary.retried += 1;
            }
        }
        Ok(task::Step::Stopped(_)) => summary.failed += 1,
        Ok(task::Step::Gone(why)) => {
            tracing::info!(task = %task.id, "{why}; nothing was begun");
        }
        // The state store does not answer: the task did not fail, and nothing of it could
        // be recorded anyway. No attempt is counted (the retry budget and its backoff are
        // for what goes wrong in the task); the round ends, the lease is given back, and
        // the task resumes from its last recorded step once the store answers.
        Err(e) if e.store_unreachable() => {
            tracing::warn!(task = %task.id, code = %e.code, "task stopped: {}; it resumes from its last recorded step once the store answers", e.message);
            return Err(e);
        }
        Err(e) => {
            tracing::warn!(task = %task.id, code = %e.code, "task failed: {}", e.message);
            let gave_up = ctx
                .store
                .task_failed(
                    &task.id,
                    &s.worker,
                    &e.message,
                    crate::clock::now(),
                    s.max_attempts,
                )
                .await?;
            if gave_up {
                tracing::error!(task = %task.id, "task needs attention: the retry budget is spent");
                summary.failed += 1;
                let alert = ctx.mail.to_dpo(
                    task.request_id.as_deref(),
                    crate::mail::vars::Message::FailureAlert(crate::mail::vars::FailureAlert {
                        request_id: task.request_id.clone(),
                        error: e.message.clone(),
                        task_id: Some(task.id.clone()),
                        system: Some(task.system.clone()),
                        attempts: Some(s.max_attempts),
                    }),
                )?;
                for m in &alert {
                    ctx.store.enqueue(m, crate::clock::now()).await?;
                }
            } else {
                summary.retried += 1;
            }
        }
    }
    Ok(None)
}

/// Everything due now: schedule approved requests, then lease and run tasks, up to
/// `jobs.parallel` at once, until none is due (or `stop` says so); each request's receipt
/// is issued as it completes. `on_task` is told of each task taken.
pub async fn run_due(
    ctx: &Context,
    s: &Settings,
    stop: &tokio::sync::watch::Receiver<bool>,
    on_task: &(dyn Fn(&crate::store::TaskRow) + Sync),
) -> Result<RunSummary> {
    // Taken before anything is scheduled: an approval committed from here on is seen.
    let mut made = ctx.store.work_made();
    give_back_leases(ctx, s).await?;
    // A worker of this host that died: its leases go now, and so does any archive that no
    // one can record any more.
    let (released_leases, shredded_unrecorded) = recover(ctx, s, crate::clock::now()).await?;
    let (scheduled, completed_requests) =
        schedule_approved(ctx, "quietus", crate::clock::now()).await?;
    let mut summary = RunSummary {
        released_leases,
        shredded_unrecorded,
        scheduled,
        completed_requests,
        ..RunSummary::default()
    };
    // `parallel` lanes, each running one task at a time, until none is due (or `stop`
    // says so); the lanes waiting for a task lease together ([`Dispatch`]). Each lane is
    // its own future, polled all the time: a lane never waits on the store while another
    // holds a store transaction that it cannot finish
    // (on SQLite that would hold the write lock until the busy timeout). A task that fails
    // the round has its lease given back at once (when the store does not answer then, at
    // the start of the next round), not left leased for the rest of its lease (its
    // effects so far are recorded, and resumed); the other lanes finish their
    // task, take no more, and the round ends with the error.
    //
    // Beside the lanes, an issuer seals the completion receipts of the requests that the
    // lanes complete: all those completed since its last append, in one append (one log
    // checkpoint, one transaction under the log lock, whatever their number). An append
    // is the one step that no two requests take at once, so while it runs the next
    // completions queue for the one after it: receipts keep up with the lanes, and a
    // lone request still has its receipt as soon as it completes.
    //
    // And a sender delivers what is queued: after each append (the completion mails),
    // after a task that queued mail without completing its request (a failure alert),
    // and once at the start (the approvals just scheduled).
    let lanes = s.parallel.max(1);
    let shared = Shared::new(lanes);
    let Shared {
        failed,
        mail_due,
        completions,
        dispatch,
    } = &shared;
    mail_due.notify_one();
    let (lanes_over, lanes_over_rx) = tokio::sync::watch::channel(false);
    let (issuer_over, issuer_over_rx) = tokio::sync::watch::channel(false);
    let lanes = async {
        let mut parts = Vec::new();
        let mut later = (0, Vec::new());
        loop {
            parts.extend(
                futures_util::future::join_all(
                    (0..lanes).map(|_| lane(ctx, s, stop, on_task, &shared)),
                )
                .await,
            );
            // Work made while the lanes ran (an approval committed meanwhile) is scheduled
            // now and the lanes go on, rather than after the round's closing work and the
            // next round's start.
            if *stop.borrow() || failed.load(std::sync::atomic::Ordering::SeqCst) || !made.take() {
                break;
            }
            match schedule_approved(ctx, "quietus", crate::clock::now()).await {
                Ok((0, _)) => break,
                Ok((n, done)) => {
                    later.0 += n;
                    for id in done {
                        completions.push(id.clone());
                        later.1.push(id);
                    }
                    dispatch.reset(lanes);
                }
                Err(e) => {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    parts.push((RunSummary::default(), Err(e)));
                    break;
                }
            }
        }
        dispatch.give_back(ctx, s).await;
        lanes_over.send_replace(true);
        (parts, later)
    };
    let issuer = async {
        let issued = issue_completions(ctx, s, completions, lanes_over_rx, mail_due).await;
        if issued.is_err() {
            failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        issuer_over.send_replace(true);
        issued
    };
    let sender = async {
        let mut sent = (0, 0);
        let mut over = issuer_over_rx;
        loop {
            // Mail made due (the last receipts' completion mails) goes before the sender
            // ends with the issuer, not after the round's closing work.
            tokio::select! {
                biased;
                () = mail_due.notified() => {}
                _ = over.wait_for(|o| *o) => return sent,
            }
            match crate::mail::send_due(
                &ctx.store,
                &s.mailer,
                &s.worker,
                crate::clock::now(),
                s.mail_attempts,
            )
            .await
            {
                Ok(d) => {
                    sent.0 += d.sent.len();
                    sent.1 += d.failed.len();
                }
                // Sent again at the end of the round, where an error is the round's.
                Err(e) => {
                    tracing::warn!(code = %e.code, "mail not sent during the round: {}", e.message)
                }
            }
        }
    };
    let ((parts, (scheduled_later, completed_later)), issued, (sent_early, failed_early)) =
        tokio::join!(lanes, issuer, sender);
    summary.scheduled += scheduled_later;
    summary.completed_requests.extend(completed_later);
    summary.mail_sent = sent_early;
    summary.mail_failed = failed_early;
    let mut failure = None;
    for (part, r) in parts {
        summary.absorb(part);
        if let Err(e) = r {
            failure.get_or_insert(e);
        }
    }
    match issued {
        Ok(files) => summary
            .receipts
            .extend(files.into_iter().map(|p| p.display().to_string())),
        Err(e) => {
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    summary.waiting = ctx.store.waiting_on_leases(crate::clock::now()).await?;
    let shredded = expire_backups(ctx, s, crate::clock::now()).await?;
    summary.shredded_backups = shredded.expired;
    summary.shredded_unrecorded += shredded.unrecorded;
    let missing = prove::issue_missing(ctx, s, &s.prover, crate::clock::now()).await?;
    summary
        .receipts
        .extend(missing.into_iter().map(|p| p.display().to_string()));
    let sent = crate::mail::send_due(
        &ctx.store,
        &s.mailer,
        &s.worker,
        crate::clock::now(),
        s.mail_attempts,
    )
    .await?;
    summary.mail_sent += sent.sent.len();
    summary.mail_failed += sent.failed.len();
    Ok(summary)
}

/// Give back the leases that a failed round could not (the store did not answer then),
/// before anything is leased: a task must not wait out the lease of a worker that no
/// longer runs it. (Only while this worker still holds it; the ids stay until given back.)
async fn give_back_leases(ctx: &Context, s: &Settings) -> Result<()> {
    let mut held = s.unreleased.lock().await;
    while let Some(id) = held.first().cloned() {
        ctx.store.release_lease(&id, &s.worker).await?;
        tracing::info!(task = %id, "the lease a failed round kept is given back");
        held.remove(&id);
    }
    Ok(())
}

/// The requests a round's lanes completed whose receipts are still to issue, and the
/// issuer's wake-up.
#[derive(Default)]
struct Completions {
    queued: std::sync::Mutex<Vec<String>>,
    due: tokio::sync::Notify,
}

impl Completions {
    fn push(&self, request_id: String) {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request_id);
        self.due.notify_one();
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .queued
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Issue the completion receipts of what the lanes complete, all those queued at once,
/// until the lanes are over and nothing is queued. An error ends it (what it could not
/// issue stays due in the store, for the next round).
async fn issue_completions(
    ctx: &Context,
    s: &Settings,
    completions: &Completions,
    mut lanes_over: tokio::sync::watch::Receiver<bool>,
    mail_due: &tokio::sync::Notify,
) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    loop {
        let over = tokio::select! {
            biased;
            () = completions.due.notified() => false,
            _ = lanes_over.wait_for(|o| *o) => true,
        };
        let batch = completions.take();
        if !batch.is_empty() {
            let issued = prove::issue_for_requests(ctx, s, &batch, crate::clock::now()).await?;
            tracing::debug!(
                requests = batch.len(),
                "completion receipts issued together"
            );
            files.extend(issued);
            mail_due.notify_one();
        }
        if over {
            return Ok(files);
        }
    }
}

/// What a round's lanes, issuer and sender share.
struct Shared {
    /// A lane or the issuer failed: the lanes take no more tasks.
    failed: std::sync::atomic::AtomicBool,
    /// Mail was queued: the sender's wake-up.
    mail_due: tokio::sync::Notify,
    completions: Completions,
    dispatch: Dispatch,
}

impl Shared {
    fn new(lanes: usize) -> Shared {
        Shared {
            failed: Default::default(),
            mail_due: Default::default(),
            completions: Default::default(),
            dispatch: Dispatch {
                idle: lanes.into(),
                ..Dispatch::default()
            },
        }
    }
}

/// The tasks of a round's lanes: leased for every lane waiting at once, in one statement
/// (one turn of the lease lock), the first for the lane that asked and the others handed
/// to the lanes waiting behind it. When a lease finds fewer tasks than lanes were
/// waiting, the lanes that have run nothing yet this round and were waiting then end:
/// nothing more was due when they asked. A lane back from a task always asks again: its
/// task may have made more due (a leaver's export done lets the changes of that request
/// go; a task done lets its sibling on the same system go).
#[derive(Default)]
struct Dispatch {
    /// Leased for waiting lanes and not taken yet.
    handed: std::sync::Mutex<std::collections::VecDeque<crate::store::TaskRow>>,
    /// One lane leases at a time.
    leasing: tokio::sync::Mutex<()>,
    /// Lanes that are not running a task and have not ended: those a lease is for.
    idle: std::sync::atomic::AtomicUsize,
    /// Counts the leases that found fewer tasks than lanes waiting.
    drained: std::sync::atomic::AtomicU64,
}

impl Dispatch {
    /// The next task for a lane, or `None` when nothing is due. `fresh`: the lane has run
    /// no task yet this round.
    async fn next(
        &self,
        ctx: &Context,
        s: &Settings,
        fresh: bool,
    ) -> Result<Option<crate::store::TaskRow>> {
        use std::sync::atomic::Ordering;
        let drained_before = fresh.then(|| self.drained.load(Ordering::SeqCst));
        let r = self.lease_or_take(ctx, s, drained_before).await;
        // A lane with a task runs it; one without ends.
        self.idle.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// A lane is back from its task.
    fn back(&self) {
        self.idle.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn lease_or_take(
        &self,
        ctx: &Context,
        s: &Settings,
        drained_before: Option<u64>,
    ) -> Result<Option<crate::store::TaskRow>> {
        use std::sync::atomic::Ordering;
        let _turn = self.leasing.lock().await;
        if let Some(t) = self.take() {
            return Ok(Some(t));
        }
        // A lease since this fresh lane began to wait found less than there were lanes.
        if drained_before.is_some_and(|d| self.drained.load(Ordering::SeqCst) != d) {
            return Ok(None);
        }
        let wanted = self.idle.load(Ordering::SeqCst).max(1);
        let now = crate::clock::now();
        let window_open = s.window.as_ref().is_none_or(|w| w.includes(now));
        let lease_until =
            now + chrono::Duration::seconds(i64::try_from(s.lease_seconds).unwrap_or(300));
        let mut tasks = ctx
            .store
            .lease(
                &s.worker,
                now,
                lease_until,
                i64::try_from(wanted).unwrap_or(1),
                window_open,
            )
            .await?
            .into_iter();
        if tasks.len() < wanted {
            self.drained.fetch_add(1, Ordering::SeqCst);
        }
        let first = tasks.next();
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(tasks);
        Ok(first)
    }

    /// For the lanes of a new stretch of the round: all idle, none has run a task.
    fn reset(&self, lanes: usize) {
        self.idle.store(lanes, std::sync::atomic::Ordering::SeqCst);
    }

    /// A task taken and not begun, for [`Dispatch::give_back`].
    fn hand_back(&self, task: crate::store::TaskRow) {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(task);
    }

    fn take(&self) -> Option<crate::store::TaskRow> {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    /// Give back the leases of tasks handed to lanes that ended before taking them (the
    /// round failed or was stopped). Any that cannot be given back now go at the start of
    /// the next round.
    async fn give_back(&self, ctx: &Context, s: &Settings) {
        while let Some(t) = self.take() {
            if let Err(e) = ctx.store.release_lease(&t.id, &s.worker).await {
                tracing::warn!(task = %t.id, code = %e.code, "cannot release the lease (it is given back before the next round): {}", e.message);
                s.unreleased.lock().await.insert(t.id.clone());
            }
        }
    }
}

/// One lane of a round: take a task, run it, again, until none is due, `stop` says so,
/// or a lane failed. The requests it completes go to `completions`.
async fn lane(
    ctx: &Context,
    s: &Settings,
    stop: &tokio::sync::watch::Receiver<bool>,
    on_task: &(dyn Fn(&crate::store::TaskRow) + Sync),
    shared: &Shared,
) -> (RunSummary, Result<()>) {
    use std::sync::atomic::Ordering;
    let Shared {
        failed,
        mail_due,
        completions,
        dispatch,
    } = shared;
    let mut summary = RunSummary::default();
    let mut fresh = true;
    while !*stop.borrow() && !failed.load(Ordering::SeqCst) {
        let task = match dispatch.next(ctx, s, fresh).await {
            Ok(t) => t,
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                return (summary, Err(e));
            }
        };
        let Some(task) = task else { break };
        // Taken while the round was stopping or failing: not begun, given back.
        if *stop.borrow() || failed.load(Ordering::SeqCst) {
            dispatch.hand_back(task);
            break;
        }
        on_task(&task);
        fresh = false;
        let outcome = run_one(ctx, s, &task, &mut summary).await;
        dispatch.back();
        match &outcome {
            // Its receipt, and with it the completion mail, comes from the issuer.
            Ok(Some(rid)) => completions.push(rid.clone()),
            // What the task may have queued (a failure alert).
            Ok(None) | Err(_) => mail_due.notify_one(),
        }
        if let Err(e) = outcome {
            failed.store(true, Ordering::SeqCst);
            if let Err(r) = ctx.store.release_lease(&task.id, &s.worker).await {
                tracing::warn!(task = %task.id, code = %r.code, "cannot release the lease (it is given back before the next round): {}", r.message);
                s.unreleased.lock().await.insert(task.id.clone());
            }
            return (summary, Err(e));
        }
    }
    (summary, Ok(()))
}
