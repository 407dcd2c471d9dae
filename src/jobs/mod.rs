//! Jobs: approved plans become durable tasks with due dates; workers lease them, run
//! them backup-first, retry with backoff, and hand over to a person when the retry
//! budget is spent. Schedules (cron) fire the retention sweep, backup expiry and
//! reminders once across all instances.

mod approved;
mod collect;
pub mod execute;
mod expiry;
pub mod export;
pub mod prove;
pub mod recheck;
pub mod restore;
pub mod schedule;
pub mod task;
mod worker;
pub use expiry::{RecordedArchives, Shredded, expire_backups, recover, shred_unrecorded};
pub use worker::worker_loop;
pub mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::error::{Code, Error, Result};
use crate::lifecycle::State;
use crate::lifecycle::{Context, Request};
use crate::plan::{Entry, Plan};
use crate::policy::{Action, Driver};
use crate::store::NewTask;

pub use crate::store::tasks::{TaskKind, TaskState};
pub use task::TaskBody;

/// What a worker needs besides the lifecycle context.
#[derive(Debug, Clone)]
pub struct Settings {
    pub worker: String,
    pub backup_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub keep: crate::policy::Period,
    pub lease_seconds: u64,
    pub max_attempts: i64,
    pub batch_size: usize,
    /// Tasks run at once.
    pub parallel: usize,
    pub window: Option<schedule::Cron>,
    pub prover: prove::Prover,
    pub mailer: std::sync::Arc<crate::mail::Mailer>,
    pub mail_attempts: i64,
    /// Presence files of this host's workers; this worker's own is held while it lives.
    pub workers_dir: PathBuf,
    pub presence: std::sync::Arc<workers::Presence>,
    /// The archives this worker found recorded (see [`RecordedArchives`]), shared by its
    /// clones: the work rounds and the schedule ticks.
    pub recorded_archives: std::sync::Arc<tokio::sync::Mutex<RecordedArchives>>,
    /// Tasks whose lease a failed round could not give back (the store did not answer):
    /// given back at the start of the next round (see [`run_due`]).
    pub unreleased: std::sync::Arc<tokio::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Result<Settings> {
        let (backup_dir, keys_dir) = c.backup_dirs();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let worker = format!("{host}:{}:{}", std::process::id(), crate::store::new_id());
        let workers_dir = c.workers_dir();
        // (The config refuses numbers out of range: they are used as they are.)
        Ok(Settings {
            presence: std::sync::Arc::new(workers::Presence::announce(&workers_dir, &worker)?),
            worker,
            backup_dir,
            keys_dir,
            keep: c.backup.keep,
            lease_seconds: c.jobs.lease_seconds,
            max_attempts: c.jobs.max_attempts,
            batch_size: c.jobs.batch_size,
            parallel: c.jobs.parallel,
            window: {
                // Every schedule is checked here (a worker of `run` as of `serve`), so that
                // one that cannot fire is an error wherever work is done.
                schedule::from_config(&c.schedule)?;
                schedule::Cron::parse_opt("schedule.window", &c.schedule.window)?
            },
            prover: prove::Prover::from_config(c)?,
            mailer: std::sync::Arc::new(crate::mail::Mailer::from_config(c)?),
            mail_attempts: c.mail.max_attempts,
            workers_dir,
            recorded_archives: std::sync::Arc::default(),
            unreleased: std::sync::Arc::default(),
        })
    }
}

/// Midnight of `d` in the policy's time zone, as UTC.
pub fn start_of_day(ctx: &Context, d: NaiveDate) -> DateTime<Utc> {
    use chrono::TimeZone;
    let tz = ctx.policies.deadlines.timezone;
    let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| naive.and_utc())
}

/// The tasks that carry out an approved plan.
pub fn tasks_for(ctx: &Context, req: &Request, plan: &Plan) -> Result<Vec<NewTask>> {
    let mut by_system: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in &plan.entries {
        by_system.entry(e.system.as_str()).or_default().push(e);
    }
    let mut tasks = Vec::new();
    // Everything but the retention follow-ups is due on one day: the request date, or an
    // exit's date when that is later. Nothing of a request runs before it.
    let immediate = req.plan_input(&ctx.policies).immediate();
    let body = |entries: Vec<Entry>| TaskBody {
        entries,
        exit_date: req.exit_date,
        ..TaskBody::default()
    };
    for (system, entries) in by_system {
        let sys = ctx.policies.system(system).ok_or_else(|| {
            Error::new(
                Code::PlanBlocked,
                format!(
                    "the approved plan names system {system}, which the policies no longer map"
                ),
            )
        })?;
        let new = |kind: TaskKind,
                   b: &TaskBody,
                   due: NaiveDate,
                   windowed: bool,
                   state: TaskState|
         -> Result<NewTask> {
            Ok(NewTask {
                id: crate::store::new_id(),
                request_id: Some(req.id.clone()),
                system: system.to_owned(),
                kind,
                body: serde_json::to_string(b)?,
                due_at: start_of_day(ctx, due),
                windowed,
                state,
                confirm_token_sha256: None,
            })
        };
        if sys.driver == Driver::Manual {
            let all: Vec<Entry> = entries.iter().map(|e| (*e).clone()).collect();
            if !all.is_empty() {
                tasks.push(new(
                    TaskKind::Manual,
                    &body(all),
                    immediate,
                    false,
                    TaskState::WaitingConfirmation,
                )?);
            }
            continue;
        }
        // Access requests: one export of the system's data, changing nothing.
        let export: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.action == Action::Export)
            .collect();
        if !export.is_empty() {
            tasks.push(new(
                TaskKind::Export,
                &body(export.iter().map(|e| (*e).clone()).collect()),
                immediate,
                false,
                TaskState::Pending,
            )?);
        }
        let disable: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.action == Action::Disable)
            .collect();
        let apply: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| {
                matches!(
                    e.action,
                    Action::Erase | Action::Anonymize | Action::Reassign
                )
            })
            .collect();
        let retain: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.action == Action::Retain)
            .collect();
        if !disable.is_empty() {
            tasks.push(new(
                TaskKind::Disable,
                &body(disable.iter().map(|e| (*e).clone()).collect()),
                immediate,
                false,
                TaskState::Pending,
            )?);
        }
        // Follow-ups wait until their apply task has captured the keys of the rows they
        // will act on: none can run first, even when its retention has already ended.
        let mut followups = BTreeMap::new();
        for r in &retain {
            let t = new(
                TaskKind::Followup,
                &body(vec![(*r).clone()]),
                r.due,
                true,
                TaskState::WaitingKeys,
            )?;
            followups.insert(r.table.clone(), t.id.clone());
            tasks.push(t);
        }
        if !apply.is_empty() || !retain.is_empty() {
            let mut b = body(apply.iter().map(|e| (*e).clone()).collect());
            b.followups = followups;
            // With nothing to change, the task only captures the retained rows' keys.
            tasks.push(new(
                TaskKind::Apply,
                &b,
                immediate,
                !apply.is_empty(),
                TaskState::Pending,
            )?);
        }
    }
    Ok(tasks)
}

/// Turn every approved request into scheduled tasks (from the plan approved). Returns how
/// many were scheduled, and those that completed at once (nothing to change).
pub async fn schedule_approved(
    ctx: &Context,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(usize, Vec<String>)> {
    let rows = ctx
        .store
        .list_requests(&crate::store::ListFilter {
            states: vec![State::Approved],
            limit: Some(1000),
        })
        .await?;
    let mut n = 0;
    let mut completed = Vec::new();
    for row in rows {
        let req = ctx.request(&row.id).await?;
        let Some(saved) = ctx.store.latest_plan(&req.id).await? else {
            tracing::warn!(request = %req.id, "approved without a saved plan; skipped");
            continue;
        };
        let plan: Plan = serde_json::from_str(&saved.body)?;
        let mut tasks = tasks_for(ctx, &req, &plan)?;
        let mails = manual_task_mails(ctx, &req, &mut tasks)?;
        // A request with nothing to change completes in the same transaction; its
        // receipt (of no changes) and completion message follow like any other's.
        match ctx
            .store
            .schedule(&req.id, &tasks, &mails, actor, now)
            .await
        {
            Ok(done) => {
                n += 1;
                if done {
                    completed.push(req.id.clone());
                }
            }
            Err(e) if e.code == Code::IllegalTransition => {} // another instance did it
            Err(e) => return Err(e),
        }
    }
    Ok((n, completed))
}

/// Manual tasks ask their system's owner to act (and confirm).
fn manual_task_mails(
    ctx: &Context,
    req: &Request,
    tasks: &mut [NewTask],
) -> Result<Vec<crate::store::outbox::NewMail>> {
    let mut out = Vec::new();
    for t in tasks.iter_mut().filter(|t| t.kind == TaskKind::Manual) {
        use sha2::Digest;
        // The owner's confirmation link; only its hash is kept.
        let token = crate::store::new_id() + &crate::store::new_id();
        t.confirm_token_sha256 = Some(hex::encode(sha2::Sha256::digest(token.as_bytes())));
        let Some(owner) = ctx
            .policies
            .system(&t.system)
            .and_then(|s| s.owner_email.clone())
        else {
            continue;
        };
        let body: TaskBody = serde_json::from_str(&t.body)?;
        let action: Vec<String> = body
            .entries
            .iter()
            .map(|e| {
                format!(
                    "{} {} ({}; rule {})",
                    e.action,
                    e.table,
                    e.categories.join(", "),
                    e.rule
                )
            })
            .collect();
        out.extend(ctx.mail.to_owner(
            &owner,
            crate::mail::Concerns::Request {
                id: &req.id,
                kind: req.kind,
            },
            crate::mail::vars::Message::ManualTask(crate::mail::vars::ManualTask {
                request_id: req.id.clone(),
                system: t.system.clone(),
                task_id: t.id.clone(),
                action: action.join("; "),
                due: ctx.zone().day_of(t.due_at),
                confirm_command: format!("quietus confirm {}", t.id),
                confirm_url: format!("{}/confirm?token={token}", ctx.mail.public_url),
            }),
        )?);
    }
    Ok(out)
}

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
    // `parallel` lanes, each leasing and running one task at a time, until none is due
    // (or `stop` says so). Each lane is its own future, polled all the time: a lane never
    // waits on the store while another holds a store transaction that it cannot finish
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
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mail_due = tokio::sync::Notify::new();
    mail_due.notify_one();
    let completions = Completions::default();
    let (lanes_over, lanes_over_rx) = tokio::sync::watch::channel(false);
    let (issuer_over, issuer_over_rx) = tokio::sync::watch::channel(false);
    let lanes = async {
        let parts = futures_util::future::join_all(
            (0..s.parallel.max(1))
                .map(|_| lane(ctx, s, stop, on_task, &failed, &mail_due, &completions)),
        )
        .await;
        lanes_over.send_replace(true);
        parts
    };
    let issuer = async {
        let issued = issue_completions(ctx, s, &completions, lanes_over_rx, &mail_due).await;
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
            tokio::select! {
                biased;
                _ = over.wait_for(|o| *o) => return sent,
                () = mail_due.notified() => {}
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
    let (parts, issued, (sent_early, failed_early)) = tokio::join!(lanes, issuer, sender);
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

/// One lane of a round: lease a task, run it, again, until none is due, `stop` says so,
/// or a lane failed. The requests it completes go to `completions`.
async fn lane(
    ctx: &Context,
    s: &Settings,
    stop: &tokio::sync::watch::Receiver<bool>,
    on_task: &(dyn Fn(&crate::store::TaskRow) + Sync),
    failed: &std::sync::atomic::AtomicBool,
    mail_due: &tokio::sync::Notify,
    completions: &Completions,
) -> (RunSummary, Result<()>) {
    use std::sync::atomic::Ordering;
    let mut summary = RunSummary::default();
    while !*stop.borrow() && !failed.load(Ordering::SeqCst) {
        let now = crate::clock::now();
        let window_open = s.window.as_ref().is_none_or(|w| w.includes(now));
        let lease_until =
            now + chrono::Duration::seconds(i64::try_from(s.lease_seconds).unwrap_or(300));
        let task = match ctx
            .store
            .lease(&s.worker, now, lease_until, 1, window_open)
            .await
        {
            Ok(tasks) => tasks.into_iter().next(),
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                return (summary, Err(e));
            }
        };
        let Some(task) = task else { break };
        on_task(&task);
        let outcome = run_one(ctx, s, &task, &mut summary).await;
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

/// The retention sweep: for every table with a `sweep`, a task that erases (or
/// anonymises) the rows whose retention ran out, backup-first like any other. One open
/// sweep task per system at a time. Returns how many tasks it created.
pub async fn sweep(ctx: &Context, now: DateTime<Utc>) -> Result<usize> {
    let today = ctx.today(now);
    let mut tasks = Vec::new();
    for sys in ctx
        .policies
        .systems
        .iter()
        .filter(|s| s.driver != Driver::Manual)
    {
        if ctx.store.open_tasks(TaskKind::Sweep, &sys.name).await? > 0 {
            continue;
        }
        for t in &sys.tables {
            let Some(sw) = &t.sweep else { continue };
            let Some(rule) = ctx.policies.rule(&sw.rule) else {
                continue;
            };
            let (Some(period), Some(then)) = (rule.period, rule.then) else {
                continue;
            };
            let Some(before) = period.sub_calendar(today) else {
                continue;
            };
            let action = match then {
                crate::policy::FollowUp::Anonymize => Action::Anonymize,
                crate::policy::FollowUp::Erase
                    if t.on_erase == crate::policy::OnErase::Anonymize =>
                {
                    Action::Anonymize
                }
                crate::policy::FollowUp::Erase => Action::Erase,
            };
            let entry = Entry {
                system: sys.name.clone(),
                table: t.name.clone(),
                action,
                rows: 0,
                columns: t.columns.keys().cloned().collect(),
                categories: t
                    .columns
                    .values()
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                rule: rule.id.clone(),
                basis: format!(
                    "retention ended: {} (kept {period} from {})",
                    rule.basis_text(),
                    sw.date
                ),
                due: today,
                then: None,
            };
            let body = TaskBody {
                entries: vec![entry],
                before: Some(before),
                ..TaskBody::default()
            };
            tasks.push(NewTask {
                id: crate::store::new_id(),
                request_id: None,
                system: sys.name.clone(),
                kind: TaskKind::Sweep,
                body: serde_json::to_string(&body)?,
                due_at: now,
                windowed: true,
                state: TaskState::Pending,
                confirm_token_sha256: None,
            });
        }
    }
    ctx.store.insert_tasks(&tasks, now).await?;
    Ok(tasks.len())
}
