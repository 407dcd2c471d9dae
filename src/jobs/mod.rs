//! Jobs: approved plans become durable tasks with due dates; workers lease them, run
//! them backup-first, retry with backoff, and hand over to a person when the retry
//! budget is spent. Schedules (cron) fire the retention sweep, backup expiry and
//! reminders once across all instances.

mod collect;
pub mod execute;
pub mod export;
pub mod prove;
pub mod restore;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Code, Error, Result};
use crate::lifecycle::{Context, Request};
use crate::plan::{Entry, Plan};
use crate::policy::{Action, Driver};
use crate::store::NewTask;

/// What a task carries out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskBody {
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub exit_date: Option<NaiveDate>,
    /// Follow-up tasks: the keys of the retained rows per table (captured by the apply
    /// task before anything changed, so they can be found after identities are erased).
    #[serde(default)]
    pub keys: BTreeMap<String, Vec<String>>,
    /// Apply tasks: table -> the follow-up task that will act on its retained rows.
    #[serde(default)]
    pub followups: BTreeMap<String, String>,
    /// Sweep tasks: rows whose sweep date is before this day.
    #[serde(default)]
    pub before: Option<NaiveDate>,
}

/// Task kinds.
pub const DISABLE: &str = "disable";
pub const APPLY: &str = "apply";
pub const FOLLOWUP: &str = "followup";
pub const MANUAL: &str = "manual";
pub const SWEEP: &str = "sweep";
pub const EXPORT: &str = "export";

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
    pub window: Option<schedule::Cron>,
    pub prover: prove::Prover,
    pub mailer: std::sync::Arc<crate::mail::Mailer>,
    pub mail_attempts: i64,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Result<Settings> {
        let (backup_dir, keys_dir) = c.backup_dirs();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        Ok(Settings {
            worker: format!("{host}:{}:{}", std::process::id(), crate::store::new_id()),
            backup_dir,
            keys_dir,
            keep: c.backup.keep,
            lease_seconds: c.jobs.lease_seconds.max(10),
            max_attempts: c.jobs.max_attempts.max(1),
            batch_size: c.jobs.batch_size.clamp(1, 5000),
            window: schedule::Cron::parse_opt("schedule.window", &c.schedule.window)?,
            prover: prove::Prover::from_config(c)?,
            mailer: std::sync::Arc::new(crate::mail::Mailer::from_config(c)?),
            mail_attempts: c.mail.max_attempts.max(1),
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
        let new = |kind: &str,
                   b: &TaskBody,
                   due: NaiveDate,
                   windowed: bool,
                   state: &str|
         -> Result<NewTask> {
            Ok(NewTask {
                id: crate::store::new_id(),
                request_id: Some(req.id.clone()),
                system: system.to_owned(),
                kind: kind.to_owned(),
                body: serde_json::to_string(b)?,
                due_at: start_of_day(ctx, due),
                windowed,
                state: state.to_owned(),
                confirm_token_sha256: None,
            })
        };
        let due_min = |es: &[&Entry]| es.iter().map(|e| e.due).min();
        if sys.driver == Driver::Manual {
            let all: Vec<Entry> = entries.iter().map(|e| (*e).clone()).collect();
            if let Some(d) = due_min(&entries) {
                tasks.push(new(MANUAL, &body(all), d, false, "waiting_confirmation")?);
            }
            continue;
        }
        // Access requests: one export of the system's data, changing nothing.
        let export: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.action == Action::Export)
            .collect();
        if let Some(d) = due_min(&export) {
            tasks.push(new(
                EXPORT,
                &body(export.iter().map(|e| (*e).clone()).collect()),
                d,
                false,
                "pending",
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
        if let Some(d) = due_min(&disable) {
            tasks.push(new(
                DISABLE,
                &body(disable.iter().map(|e| (*e).clone()).collect()),
                d,
                false,
                "pending",
            )?);
        }
        let mut followups = BTreeMap::new();
        for r in &retain {
            let t = new(FOLLOWUP, &body(vec![(*r).clone()]), r.due, true, "pending")?;
            followups.insert(r.table.clone(), t.id.clone());
            tasks.push(t);
        }
        if !apply.is_empty() || !retain.is_empty() {
            let mut b = body(apply.iter().map(|e| (*e).clone()).collect());
            b.followups = followups;
            // With nothing to change now, the task only captures the retained rows' keys.
            let due = due_min(&apply)
                .or(due_min(&disable))
                .unwrap_or_else(|| ctx.today(plan.made_at));
            tasks.push(new(APPLY, &b, due, !apply.is_empty(), "pending")?);
        }
    }
    Ok(tasks)
}

/// Turn every approved request into scheduled tasks (from the plan approved).
pub async fn schedule_approved(ctx: &Context, actor: &str, now: DateTime<Utc>) -> Result<usize> {
    let rows = ctx
        .store
        .list_requests(&crate::store::ListFilter {
            states: vec!["approved".into()],
            limit: Some(1000),
        })
        .await?;
    let mut n = 0;
    for row in rows {
        let req = ctx.request(&row.id).await?;
        let Some(saved) = ctx.store.latest_plan(&req.id).await? else {
            tracing::warn!(request = %req.id, "approved without a saved plan; skipped");
            continue;
        };
        let plan: Plan = serde_json::from_str(&saved.body)?;
        let mut tasks = tasks_for(ctx, &req, &plan)?;
        let mails = manual_task_mails(ctx, &req, &mut tasks)?;
        match ctx
            .store
            .schedule(&req.id, "approved", "scheduled", &tasks, &mails, actor, now)
            .await
        {
            Ok(()) => n += 1,
            Err(e) if e.code == Code::IllegalTransition => {} // another instance did it
            Err(e) => return Err(e),
        }
        if tasks.is_empty() {
            // Nothing to do (no rows anywhere, or an access request before exports exist).
            ctx.store
                .transition(
                    &req.id,
                    "scheduled",
                    "completed",
                    actor,
                    Some("nothing to change"),
                    now,
                    &Default::default(),
                )
                .await
                .ok();
        }
    }
    Ok(n)
}

/// Manual tasks ask their system's owner to act (and confirm).
fn manual_task_mails(
    ctx: &Context,
    req: &Request,
    tasks: &mut [NewTask],
) -> Result<Vec<crate::store::outbox::NewMail>> {
    let mut out = Vec::new();
    for t in tasks.iter_mut().filter(|t| t.kind == MANUAL) {
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
            crate::mail::MessageKind::ManualTask,
            serde_json::json!({
                "system": t.system,
                "task_id": t.id,
                "action": action.join("; "),
                "request_id": req.id,
                "due": t.due_at.format("%Y-%m-%d").to_string(),
                "confirm_command": format!("quietus confirm {}", t.id),
            "confirm_url": format!("{}/confirm?token={token}", ctx.mail.public_url),
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
}

/// Run one leased task to its next recorded state.
pub async fn run_one(
    ctx: &Context,
    s: &Settings,
    task: &crate::store::TaskRow,
    summary: &mut RunSummary,
) -> Result<()> {
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
        Ok(execute::Step::Done(mut result)) => {
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
            }
        }
        Ok(execute::Step::Rebackup(why)) => {
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
                let alert = ctx.mail.to_dpo(task.request_id.as_deref(), crate::mail::MessageKind::FailureAlert, serde_json::json!({
                    "error": e.message, "request_id": task.request_id, "task_id": task.id, "system": task.system,
                    "attempts": s.max_attempts,
                }))?;
                for m in &alert {
                    ctx.store.enqueue(m, crate::clock::now()).await?;
                }
            } else {
                summary.retried += 1;
            }
        }
    }
    Ok(())
}

/// Everything due now: schedule approved requests, then lease and run tasks one at a
/// time until none is due (or `stop` says so). `on_task` is told of each task taken.
pub async fn run_due(
    ctx: &Context,
    s: &Settings,
    stop: &tokio::sync::watch::Receiver<bool>,
    on_task: &(dyn Fn(&crate::store::TaskRow) + Sync),
) -> Result<RunSummary> {
    let mut summary = RunSummary {
        scheduled: schedule_approved(ctx, "quietus", crate::clock::now()).await?,
        ..RunSummary::default()
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let now = crate::clock::now();
        let window_open = s.window.as_ref().is_none_or(|w| w.includes(now));
        let lease_until =
            now + chrono::Duration::seconds(i64::try_from(s.lease_seconds).unwrap_or(300));
        let tasks = ctx
            .store
            .lease(&s.worker, now, lease_until, 1, window_open)
            .await?;
        let Some(task) = tasks.into_iter().next() else {
            break;
        };
        on_task(&task);
        run_one(ctx, s, &task, &mut summary).await?;
    }
    summary.shredded_backups = expire_backups(ctx, s, crate::clock::now()).await?;
    summary.receipts = prove::issue_missing(ctx, s, &s.prover, crate::clock::now())
        .await?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    let sent = crate::mail::send_due(
        &ctx.store,
        &s.mailer,
        &s.worker,
        crate::clock::now(),
        s.mail_attempts,
    )
    .await?;
    summary.mail_sent = sent.sent.len();
    summary.mail_failed = sent.failed.len();
    Ok(summary)
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
        if ctx.store.open_tasks(SWEEP, &sys.name).await? > 0 {
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
                kind: SWEEP.into(),
                body: serde_json::to_string(&body)?,
                due_at: now,
                windowed: true,
                state: "pending".into(),
                confirm_token_sha256: None,
            });
        }
    }
    ctx.store.insert_tasks(&tasks, now).await?;
    Ok(tasks.len())
}

/// Crypto-shred every backup past its expiry, and record it. Archives and keys that no
/// backup record names (a worker died between writing an archive and recording it) are
/// shredded too, once they are a day old.
pub async fn expire_backups(ctx: &Context, s: &Settings, now: DateTime<Utc>) -> Result<usize> {
    shred_orphans(ctx, s).await?;
    export::expire(ctx, now).await?;
    let mut n = 0;
    for b in ctx.store.expired_backups(now).await? {
        let (path, key) = crate::backup::paths(&s.backup_dir, &s.keys_dir, &b.id);
        crate::backup::shred(&path, &key)?;
        ctx.store.backup_shredded(&b.id, now).await?;
        prove::shred_receipt(ctx, &s.prover, &b, now).await?;
        tracing::info!(backup = %b.id, "backup expired and crypto-shredded");
        n += 1;
    }
    Ok(n)
}

async fn shred_orphans(ctx: &Context, s: &Settings) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(&s.keys_dir) else {
        return Ok(());
    };
    // A day: far longer than any worker takes between writing an archive and recording it.
    let min_age = std::time::Duration::from_secs(s.lease_seconds.max(86_400));
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".key") else {
            continue;
        };
        let old_enough = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > min_age);
        if !old_enough || ctx.store.backup(id).await?.is_some() {
            continue;
        }
        let (path, key) = crate::backup::paths(&s.backup_dir, &s.keys_dir, id);
        crate::backup::shred(&path, &key)?;
        let _ = std::fs::remove_file(s.backup_dir.join(format!(".{id}.tmp")));
        tracing::warn!(backup = %id, "an archive no backup record names was shredded (left by a worker that died)");
    }
    Ok(())
}

/// The daemon's worker: due work every `every`, schedule ticks once across instances.
pub async fn worker_loop(
    ctx: &Context,
    s: Settings,
    schedules: Vec<(String, schedule::Cron)>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = run_due(ctx, &s, &stop, &|_| {}).await {
            tracing::warn!(code = %e.code, "work round failed: {}", e.message);
        }
        let now = crate::clock::now();
        for (name, cron) in &schedules {
            let Some(tick) = cron.last_tick(now, chrono::Duration::days(1)) else {
                continue;
            };
            match ctx.store.claim_tick(name, tick, &s.worker).await {
                Ok(true) => fire(ctx, &s, name, now).await,
                Ok(false) => {}
                Err(e) => tracing::warn!("schedule {name}: {}", e.message),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn fire(ctx: &Context, s: &Settings, name: &str, now: DateTime<Utc>) {
    let r = match name {
        "backup_expiry" => expire_backups(ctx, s, now)
            .await
            .map(|n| format!("{n} backup(s) shredded")),
        "reminders" => reminders(ctx, now).await,
        _ => Ok(String::new()),
    };
    match r {
        Ok(msg) => tracing::info!(schedule = name, "{msg}"),
        Err(e) => tracing::warn!(schedule = name, "{}", e.message),
    }
}

/// Deadline reminders: requests due within three days or overdue (ids only in the log).
async fn reminders(ctx: &Context, now: DateTime<Utc>) -> Result<String> {
    let today = ctx.today(now);
    let items = ctx.queue(&[], false, today).await?;
    let near: Vec<&crate::lifecycle::QueueItem> = items
        .iter()
        .filter(|i| i.days_left.is_some_and(|d| d <= 3))
        .collect();
    for i in &near {
        tracing::warn!(request = %i.id, days_left = i.days_left.unwrap_or_default(), "deadline near or passed");
        let about = crate::mail::Concerns::Request {
            id: &i.id,
            kind: i.kind,
        };
        let m = ctx.mail.to_dpo(about, crate::mail::MessageKind::Reminder, serde_json::json!({
            "request_id": i.id, "deadline": i.due_date.map(|d| d.to_string()), "days_left": i.days_left,
            "state": i.state, "jurisdiction": i.jurisdiction,
        }))?;
        for m in &m {
            ctx.store.enqueue(m, now).await?;
        }
    }
    Ok(format!(
        "{} request(s) due within three days or overdue",
        near.len()
    ))
}
