//! `quietus restore`: put back what a request's tasks erased or overwrote (and undo
//! reassignments), from its backups, while they live.
//!
//! Tables are restored parents first (the reverse of the order they were changed in).
//! A row is restored only when it is still as the task left it: a deleted row that is
//! absent, an updated row that holds exactly the values the task wrote. Anything else was
//! changed since, by someone else, and is reported rather than overwritten.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Settings;
use super::task::after_values;
use crate::backup::{self, Record, TableManifest};
use crate::error::{Code, Error, Result};
use crate::lifecycle::Context;
use crate::targets::Target;
use crate::targets::sql::{self, Column};

/// What a restore did (or, with `--dry-run`, would do) to one table.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub backup: String,
    pub system: String,
    pub table: String,
    pub action: crate::policy::Action,
    pub restored: u64,
    pub already: u64,
    pub changed_since: u64,
}

pub use crate::mail::vars::Lost;

/// What a restore did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tables: Vec<Restored>,
    /// Backups already crypto-shredded: their rows stay as the tasks left them.
    pub lost: Vec<Lost>,
    /// Whether this run moved the request to `restored` (false on a dry run, or when it
    /// was restored before and this run only finishes putting rows back).
    pub state_changed: bool,
    /// Who this run's restore message went to (queued with the state change; none when
    /// the state did not change).
    pub told: Vec<Told>,
}

/// Who is told of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Told {
    /// The data subject, at the request's address.
    Subject,
    /// The DPO, at `[mail] dpo`.
    Dpo,
}

/// Restore a request from every backup of it that lives, newest first (each task's own
/// backup, follow-ups' included), and say plainly what cannot come back. A real restore
/// first moves the request to `restored` and cancels its pending tasks (so no follow-up
/// later erases what was put back), telling the subject and the DPO, then puts the rows
/// back; run again after a crash, it finishes the rows.
pub async fn restore(
    ctx: &Context,
    s: &Settings,
    request_id: &str,
    dry_run: bool,
    actor: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Report> {
    crate::text::printable("the actor", actor, false)?;
    crate::text::printable("the reason", reason, true)?;
    let req = ctx.request(request_id).await?;
    if ctx.store.backups_of(&req.id).await?.is_empty() {
        return Err(Error::new(
            Code::NotFound,
            format!(
                "request {} has no backups: nothing of it was changed (to stop its work, cancel it)",
                req.id
            ),
        ));
    }
    let zone = ctx.zone();
    let lost_of =
        |backups: &[crate::store::BackupRow], tasks: &[crate::store::TaskRow]| -> Vec<Lost> {
            backups
                .iter()
                .filter_map(|b| {
                    b.shredded_at.map(|at| Lost {
                        backup: b.id.clone(),
                        task: b.task_id.clone(),
                        kind: tasks.iter().find(|t| t.id == b.task_id).map(|t| t.kind),
                        shredded: zone.day_of(at),
                    })
                })
                .collect()
        };
    let mut state_changed = false;
    let mut told = Vec::new();
    if !dry_run {
        // First the state: the request is restored and its pending tasks cancelled (so
        // no follow-up erases what comes back), or, while a worker runs one of its
        // tasks, nothing happens at all.
        let lost = lost_of(
            &ctx.store.backups_of(&req.id).await?,
            &ctx.store.tasks_of(&req.id).await?,
        );
        let message = crate::mail::vars::Message::Restored(crate::mail::vars::Restored {
            request_id: req.id.clone(),
            restored: zone.day_of(now),
            reason: reason.to_owned(),
            lost,
        });
        let mut mails = ctx.mail.to_subject(&req, message.clone(), Vec::new())?;
        let to_subject = !mails.is_empty();
        mails.extend(ctx.mail.to_dpo(
            crate::mail::Concerns::Request {
                id: &req.id,
                kind: req.kind,
            },
            message,
        )?);
        let to_dpo = mails.len() > usize::from(to_subject);
        state_changed = ctx
            .store
            .restore_request(&req.id, actor, reason, &mails, now)
            .await?;
        if state_changed {
            told.extend(to_subject.then_some(Told::Subject));
            told.extend(to_dpo.then_some(Told::Dpo));
        }
    }
    // Then the rows, from the backups as they are now (a task that finished meanwhile
    // is included), newest first.
    let mut backups = ctx.store.backups_of(&req.id).await?;
    backups.reverse();
    let tasks = ctx.store.tasks_of(&req.id).await?;
    let lost = lost_of(&backups, &tasks);
    let live: Vec<_> = backups
        .into_iter()
        .filter(|b| b.shredded_at.is_none())
        .collect();
    let mut out = Vec::new();
    for b in live {
        let (path, key) = backup::paths(&s.backup_dir, &s.keys_dir, &b.id);
        backup::verify(&path, &key, Some(&b.sha256))?;
        let manifest = backup::Reader::open(&path, &key)?.manifest;
        let sys = ctx.policies.system(&manifest.system).ok_or_else(|| {
            Error::new(
                Code::Policy,
                format!(
                    "backup {}: system {} is not mapped any more",
                    b.id, manifest.system
                ),
            )
        })?;
        let target = ctx.targets.get(sys).await?.scoped();
        let result = async {
            let mut here = Vec::new();
            for tm in manifest.tables.iter().rev() {
                let table = sys.table(&tm.table).ok_or_else(|| {
                    Error::new(
                        Code::Policy,
                        format!("{}.{} is not mapped any more", sys.name, tm.table),
                    )
                })?;
                let mut r = Restored {
                    backup: b.id.clone(),
                    system: sys.name.clone(),
                    table: tm.table.clone(),
                    action: tm.action,
                    restored: 0,
                    already: 0,
                    changed_since: 0,
                };
                let mut reader = backup::Reader::open(&path, &key)?;
                let mut batch: Vec<Record> = Vec::new();
                loop {
                    let next = reader.next_row()?;
                    let end = next.is_none();
                    if let Some(rec) = next
                        && rec.t == tm.table
                    {
                        batch.push(rec);
                    }
                    if (end && !batch.is_empty()) || batch.len() >= s.batch_size {
                        restore_batch(&target, table, tm, &batch, dry_run, &mut r).await?;
                        batch.clear();
                    }
                    if end {
                        break;
                    }
                }
                here.push(r);
            }
            Ok::<_, Error>(here)
        }
        .await;
        let here = result?;
        let n: u64 = here.iter().map(|r| r.restored).sum();
        if !dry_run && n > 0 {
            ctx.store
                .note(
                    &req.id,
                    actor,
                    &format!("restored {n} row(s) from backup {}", b.id),
                    now,
                )
                .await?;
        }
        out.extend(here);
    }
    Ok(Report {
        tables: out,
        lost,
        state_changed,
        told,
    })
}

async fn restore_batch(
    target: &Target,
    table: &crate::policy::Table,
    tm: &TableManifest,
    batch: &[Record],
    dry_run: bool,
    r: &mut Restored,
) -> Result<()> {
    let d = target.dialect();
    let keys: Vec<String> = batch.iter().map(|x| x.k.clone()).collect();
    let mut tx = target.begin().await?;
    let current = tx
        .fetch_text(&sql::lock_rows(
            d,
            table,
            &tm.key.sql_type,
            &tm.columns,
            &keys,
        )?)
        .await?;
    for rec in batch {
        let backed: Vec<Option<String>> = tm
            .columns
            .iter()
            .map(|c| rec.v.get(&c.name).cloned().flatten())
            .collect();
        let cur = current
            .iter()
            .find(|row| row.first().cloned().flatten().as_deref() == Some(rec.k.as_str()))
            .map(|row| row[1..].to_vec());
        let values: Vec<(Column, Option<String>)> = tm
            .columns
            .iter()
            .cloned()
            .zip(backed.iter().cloned())
            .collect();
        use crate::policy::Action as A;
        match (tm.action, cur) {
            (A::Retain | A::Export, _) => {
                return Err(Error::new(
                    Code::Io,
                    format!(
                        "backup: {} records {}, which changes no row",
                        tm.table, tm.action
                    ),
                ));
            }
            (A::Erase, None) => {
                if !dry_run {
                    tx.execute(&sql::insert_row(
                        d,
                        table,
                        &tm.key.sql_type,
                        &rec.k,
                        &values,
                    )?)
                    .await?;
                }
                r.restored += 1;
            }
            (A::Erase, Some(_)) => r.already += 1,
            (_, None) => r.changed_since += 1,
            (_, Some(c)) if c == backed => r.already += 1,
            (_, Some(c)) if c == after_values(tm, &backed) => {
                if !dry_run {
                    let st = sql::update_rows(
                        d,
                        table,
                        &tm.key.sql_type,
                        &values,
                        std::slice::from_ref(&rec.k),
                    )?;
                    tx.execute(&st).await?;
                }
                r.restored += 1;
            }
            (_, Some(_)) => r.changed_since += 1,
        }
    }
    tx.commit().await
}
