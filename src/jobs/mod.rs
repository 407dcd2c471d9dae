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
mod round;
pub mod schedule;
pub mod task;
mod worker;
pub use expiry::{RecordedArchives, Shredded, expire_backups, recover, shred_unrecorded};
pub use round::{RunSummary, run_due, run_one};
pub use worker::worker_loop;
pub mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};

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
            // Nothing expired, nothing to do: no task, no empty backup, no receipt. (When
            // the system does not answer, the task is made anyway, and its failure shows.)
            let target = match ctx.targets.get(sys).await {
                Ok(t) => Some(t.scoped()),
                Err(e) => {
                    tracing::warn!(system = %sys.name, code = %e.code, "retention sweep: cannot look for expired rows ({}); the task is made anyway", e.message);
                    None
                }
            };
            if let Some(target) = target {
                match collect::expired_rows_exist(&target, sys, t, &sw.date, before).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(system = %sys.name, table = %t.name, %before, "retention sweep: no row expired");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(system = %sys.name, table = %t.name, code = %e.code, "retention sweep: cannot look for expired rows ({}); the task is made anyway", e.message);
                    }
                }
            }
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
