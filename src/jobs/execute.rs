//! Carrying out one task, backup-first:
//!
//! 1. **collect** the rows the task will change (streamed in key order, page by page) and
//!    write them to an encrypted archive; capture the keys of rows that are retained;
//! 2. **verify** the archive by reading it back whole; record it (task `backed_up`);
//! 3. **apply**, table by table (children before parents), in batches keyed by the
//!    primary keys in the archive, one transaction per batch: lock the rows, check each is
//!    still as backed up (or already changed: a re-run after a crash), change them with one
//!    statement;
//! 4. **re-check** that nothing planned remains; then the task is `done`.
//!
//! A crash anywhere resumes from the last recorded step and repeats no effect: a change
//! is only made to a row whose current value is the one in a verified backup.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::Settings;
use super::task::{Part, Source, Step, TableResult, TaskBody, TaskResult, after_values};
use crate::backup::{self, Record, TableManifest};
use crate::error::{Code, Error, Result};
use crate::failpoints::{Point, hit};
use crate::lifecycle::Context;
use crate::policy::datamap::split_target;
use crate::policy::{Action, Identities, System, Table};
use crate::store::TaskRow;
use crate::targets::Target;
use crate::targets::sql::{self, Which};

/// What one batch of changes came to.
enum Batch {
    /// Rows changed now, and rows found already changed (a re-run after a crash).
    Applied { changed: u64, already: u64 },
    /// A row is neither as backed up nor as the task leaves it: someone changed it since
    /// the backup. Nothing of the batch was changed; the task backs up again.
    ChangedSinceBackup(String),
}

/// What applying a task's changes came to.
enum Applied {
    Tables(Vec<TableResult>),
    ChangedSinceBackup(String),
}

/// Children before parents: a table that references another comes first.
fn apply_order(sys: &System, parts: &mut [Part]) {
    let depth = |t: &Table| -> usize {
        // Longest chain of references below this table (tables nobody points at sort first).
        fn up(sys: &System, t: &Table, seen: &mut BTreeSet<String>) -> usize {
            if !seen.insert(t.name.clone()) {
                return 0;
            }
            let mut best = 0;
            for other in &sys.tables {
                let points_here = other
                    .references
                    .iter()
                    .any(|r| split_target(&r.to).is_some_and(|(pt, _)| pt == t.name))
                    || other.owner.as_ref().is_some_and(|o| {
                        split_target(&o.references).is_some_and(|(pt, _)| pt == t.name)
                    });
                if points_here {
                    best = best.max(1 + up(sys, other, seen));
                }
            }
            best
        }
        up(sys, t, &mut BTreeSet::new())
    };
    parts.sort_by_key(|p| (depth(&p.table), p.table.name.clone()));
}

/// Run one leased task.
pub async fn run(ctx: &Context, s: &Settings, task: &TaskRow, now: DateTime<Utc>) -> Result<Step> {
    // Still this worker's, and still to be done: a sibling task of the same request may
    // have sent it back to the DPO (cancelling this one) since the lease was taken. (The
    // archive's intent is refused likewise, for a cancellation that comes later still.)
    if !ctx.store.holds_lease(&task.id, &s.worker).await? {
        return Ok(Step::Gone(format!(
            "task {} was cancelled or taken over since it was leased",
            task.id
        )));
    }
    // Exactly the approved plan, or nothing.
    let req = match &task.request_id {
        Some(rid) => Some(ctx.request(rid).await?),
        None => None,
    };
    if let Some(req) = &req {
        let diff = super::approved::differences(ctx, req).await?;
        if !diff.is_empty() {
            return super::approved::stop(ctx, s, task, req, &diff, now).await;
        }
    }
    if task.kind == super::TaskKind::Export {
        return super::export::run(ctx, s, task, now).await;
    }
    let sys = ctx
        .policies
        .system(&task.system)
        .ok_or_else(|| {
            Error::new(
                Code::Policy,
                format!(
                    "task {}: system {} is not in the policies",
                    task.id, task.system
                ),
            )
        })?
        .clone();
    let body: TaskBody = serde_json::from_str(&task.body)?;
    // The request as read for the plan check above.
    let (subject, successor) = match req {
        Some(req) => (req.subject, req.successor),
        None => (Identities::new(), None),
    };
    // One task, one read of the catalog.
    let target = ctx.targets.get(&sys).await?.scoped();
    run_on(
        ctx,
        s,
        task,
        &sys,
        &body,
        &subject,
        successor.as_ref(),
        &target,
        now,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_on(
    ctx: &Context,
    s: &Settings,
    task: &TaskRow,
    sys: &System,
    body: &TaskBody,
    subject: &Identities,
    successor: Option<&Identities>,
    target: &Target,
    now: DateTime<Utc>,
) -> Result<Step> {
    // The database still has every table and column the data map names (as planning
    // checked): a request that could not be finished is not begun — no account is
    // disabled before an apply that would fail on a missing column.
    let lacks = crate::targets::doctor::lacking(target, sys).await;
    if !lacks.is_empty() {
        let what: Vec<String> = lacks.iter().map(|l| l.message_in(&sys.name)).collect();
        return Err(Error::new(Code::Target, what.join("; ")));
    }
    // From here on, what the database says (a statement refused, the server gone) is said
    // as the system's: a statement's error does not know which system it ran on.
    let in_system = |e: Error| {
        if e.code == Code::Target {
            e.context(format!("system {}", sys.name))
        } else {
            e
        }
    };
    let mut parts = super::collect::parts_of(sys, task, body, target, subject, successor)
        .await
        .map_err(in_system)?;
    apply_order(sys, &mut parts);

    use super::TaskState as S;
    let (backup_id, roots) = match (task.state, &task.backup_id) {
        (S::BackedUp, Some(b)) => (b.clone(), None),
        (
            S::WaitingKeys | S::WaitingConfirmation | S::Done | S::Cancelled | S::NeedsAttention,
            _,
        ) => {
            return Err(Error::new(
                Code::Internal,
                format!("task {} is {} and cannot run", task.id, task.state),
            ));
        }
        (S::Pending, _) | (S::BackedUp, None) => {
            // Keys of retained rows first, while the subject can still be found.
            super::collect::capture_retained_keys(ctx, sys, body, subject, target, now)
                .await
                .map_err(in_system)?;
            let (b, roots) =
                super::collect::collect(ctx, s, task, sys, &parts, subject, target, now)
                    .await
                    .map_err(in_system)?;
            hit(Point::BeforeRecord);
            if let Err(e) = ctx.store.task_backed_up(&task.id, &s.worker, &b, now).await {
                if e.code == Code::IllegalTransition {
                    // The lease was lost, so the archive was not recorded: destroy it now.
                    // (After any other error it may have been recorded after all; the
                    // expiry run shreds it if not.)
                    super::collect::discard(ctx, s, task, &b.id, now).await;
                }
                return Err(e);
            }
            hit(Point::AfterBackup);
            // `collect` read the archive back whole before recording it.
            (b.id, Some(roots))
        }
    };
    let (path, key_path) = backup::paths(&s.backup_dir, &s.keys_dir, &backup_id);
    // Never act on an archive that does not verify: this run's was read back whole before
    // it was recorded; on a resume, check it again against its record.
    let resumed = roots.is_none();
    let roots = match roots {
        Some(r) => r,
        None => {
            let row = ctx.store.backup(&backup_id).await?.ok_or_else(|| {
                Error::new(
                    Code::Store,
                    format!("task {}: backup {backup_id} is not recorded", task.id),
                )
            })?;
            super::collect::read_back(&path, &key_path, &row.sha256)?.1
        }
    };
    let mut results = match apply(
        ctx, s, task, sys, &parts, target, &backup_id, &path, &key_path, resumed,
    )
    .await
    .map_err(in_system)?
    {
        Applied::Tables(r) => r,
        // Someone changed a row since the backup (say, while a crashed worker's task
        // waited). Back up again.
        Applied::ChangedSinceBackup(why) => return Ok(Step::Rebackup(why)),
    };
    hit(Point::AfterApply);
    if let Some(why) = recheck(sys, &parts, subject, target, &path, &key_path, s.batch_size)
        .await
        .map_err(in_system)?
    {
        return Ok(Step::Rebackup(why));
    }
    for r in &mut results {
        r.backed_up = r.changed + r.already_done;
        r.digest = roots
            .get(&r.table)
            .map(|&(rows, root)| super::task::TableDigest {
                rows,
                merkle_root: hex::encode(root),
            });
    }
    Ok(Step::Done(TaskResult {
        backup: Some(backup_id),
        tables: results,
        recheck: "nothing planned remains".into(),
        retained_keys: BTreeMap::new(),
        mails: Vec::new(),
    }))
}

/// How far an apply came in its archive, recorded after each batch commits: a resumed
/// apply (after a crash, or a lost lease) starts after the rows it names instead of
/// reading every finished batch back from the database again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ApplyProgress {
    /// The archive it is about (a task backed up again starts from its beginning).
    backup: String,
    /// Rows of the archive whose batches committed, in archive order.
    rows: u64,
    /// (table, changed, already done) so far.
    tables: Vec<(String, u64, u64)>,
}

/// Apply the changes recorded in the archive, batch by batch, from where a previous run
/// of the task got to (`resumed`: the archive is not this run's; one this run wrote has
/// no progress yet).
#[allow(clippy::too_many_arguments)]
async fn apply(
    ctx: &Context,
    s: &Settings,
    task: &TaskRow,
    sys: &System,
    parts: &[Part],
    target: &Target,
    backup_id: &str,
    path: &std::path::Path,
    key_path: &std::path::Path,
    resumed: bool,
) -> Result<Applied> {
    let mut reader = backup::Reader::open(path, key_path)?;
    let manifest = reader.manifest.clone();
    let mut results: Vec<TableResult> = manifest
        .tables
        .iter()
        .map(|t| TableResult {
            table: t.table.clone(),
            action: t.action,
            backed_up: 0,
            changed: 0,
            already_done: 0,
            digest: None,
        })
        .collect();
    // Resume after the rows whose batches committed (their changes are in the database;
    // the re-check at the end still looks at every planned row).
    let mut rows_done = 0u64;
    let progress: Option<ApplyProgress> = if resumed {
        match ctx.store.apply_progress(&task.id).await? {
            Some(p) => Some(serde_json::from_str(&p)?),
            None => None,
        }
    } else {
        None
    };
    if let Some(p) = progress.filter(|p| p.backup == backup_id) {
        for _ in 0..p.rows {
            if reader.next_row()?.is_none() {
                return Err(Error::new(
                    Code::Internal,
                    format!(
                        "task {}: its progress names more rows than its backup holds",
                        task.id
                    ),
                ));
            }
        }
        rows_done = p.rows;
        for (table, changed, already) in p.tables {
            if let Some(r) = results.iter_mut().find(|r| r.table == table) {
                r.changed = changed;
                r.already_done = already;
            }
        }
        tracing::info!(task = %task.id, rows = rows_done, "the apply resumes after the batches already committed");
    }
    let mut batch: Vec<Record> = Vec::new();
    let mut first_batch = true;
    let mut batches = 0u64;
    loop {
        let next = reader.next_row()?;
        let flush = match (&next, batch.first()) {
            (None, Some(_)) => true,
            (Some(r), Some(b)) => r.t != b.t || batch.len() >= s.batch_size,
            _ => false,
        };
        if flush {
            let t = batch[0].t.clone();
            let tm = manifest
                .tables
                .iter()
                .find(|m| m.table == t)
                .ok_or_else(|| {
                    Error::new(
                        Code::Io,
                        format!("backup: rows of {t} without a manifest entry"),
                    )
                })?;
            let part = parts.iter().find(|p| p.table.name == t).ok_or_else(|| {
                Error::new(
                    Code::Policy,
                    format!("{}.{t}: in the backup but not in the task", sys.name),
                )
            })?;
            let (changed, done) = match apply_batch(target, part, tm, &batch, first_batch).await? {
                Batch::Applied { changed, already } => (changed, already),
                Batch::ChangedSinceBackup(why) => return Ok(Applied::ChangedSinceBackup(why)),
            };
            first_batch = false;
            if let Some(r) = results.iter_mut().find(|r| r.table == t) {
                r.changed += changed;
                r.already_done += done;
            }
            rows_done += batch.len() as u64;
            batch.clear();
            // The batch committed: record how far the apply came, which also keeps the
            // lease alive (and says whether it still is this worker's).
            let progress = ApplyProgress {
                backup: backup_id.to_owned(),
                rows: rows_done,
                tables: results
                    .iter()
                    .map(|r| (r.table.clone(), r.changed, r.already_done))
                    .collect(),
            };
            let until = crate::clock::now()
                + chrono::Duration::seconds(i64::try_from(s.lease_seconds).unwrap_or(300));
            if !ctx
                .store
                .record_apply_progress(
                    &task.id,
                    &s.worker,
                    &serde_json::to_string(&progress)?,
                    until,
                )
                .await?
            {
                return Err(Error::new(
                    Code::IllegalTransition,
                    format!(
                        "task {}: the lease was lost mid-way; another worker resumes it",
                        task.id
                    ),
                ));
            }
            batches += 1;
            hit(Point::AfterBatch(batches));
        }
        match next {
            Some(r) => batch.push(r),
            None => break,
        }
    }
    Ok(Applied::Tables(results))
}

/// One transaction: lock the batch's rows, check them against the backup, change them.
/// A row still as backed up is changed; a row already in its new state (a re-run after a
/// crash) is left; a row in neither state changed since its backup, and the batch stops.
async fn apply_batch(
    target: &Target,
    part: &Part,
    tm: &TableManifest,
    batch: &[Record],
    first: bool,
) -> Result<Batch> {
    let d = target.dialect();
    let change = match part.action {
        Action::Erase => sql::Change::Delete,
        Action::Anonymize | Action::Reassign | Action::Disable => sql::Change::Set(&part.set),
        Action::Retain | Action::Export => {
            return Err(Error::new(
                Code::Internal,
                format!("{}: {} changes no row", part.table.name, part.action),
            ));
        }
    };
    // Where the dialect can say it in one statement: change every row of the batch that
    // is still as backed up. When that is all of them (the usual case), that is the
    // batch; otherwise it is rolled back and each row is looked at below.
    if d.changes_a_batch_in_one_statement() {
        let backed: Vec<Vec<Option<&str>>> = batch
            .iter()
            .map(|rec| {
                std::iter::once(Some(rec.k.as_str()))
                    .chain(
                        tm.columns
                            .iter()
                            .map(|c| rec.v.get(&c.name).and_then(Option::as_deref)),
                    )
                    .collect()
            })
            .collect();
        if let Some(st) =
            sql::change_rows_as_backed_up(d, &part.table, &tm.columns, change, &backed)?
        {
            let mut tx = target.begin().await?;
            let n = tx.execute(&st).await?;
            if n == batch.len() as u64 {
                if first {
                    hit(Point::InBatch);
                }
                tx.commit().await?;
                return Ok(Batch::Applied {
                    changed: n,
                    already: 0,
                });
            }
            tx.rollback().await?;
        }
    }
    let keys: Vec<String> = batch.iter().map(|r| r.k.clone()).collect();
    let mut tx = target.begin().await?;
    let current = tx
        .fetch_text(&sql::lock_rows(
            d,
            &part.table,
            &part.key.sql_type,
            &tm.columns,
            &keys,
        )?)
        .await?;
    let current: BTreeMap<String, Vec<Option<String>>> = current
        .into_iter()
        .filter_map(|mut r| {
            if r.is_empty() {
                return None;
            }
            let k = r.remove(0)?;
            Some((k, r))
        })
        .collect();
    let mut to_change = Vec::new();
    let mut done = 0u64;
    for rec in batch {
        let backed: Vec<Option<String>> = tm
            .columns
            .iter()
            .map(|c| rec.v.get(&c.name).cloned().flatten())
            .collect();
        match (current.get(&rec.k), part.action) {
            (None, Action::Erase) => done += 1,
            (None, _) => {
                return Ok(Batch::ChangedSinceBackup(format!(
                    "{}: a backed-up row is gone; it changed since its backup",
                    part.table.name
                )));
            }
            (Some(cur), _) if *cur == backed => to_change.push(rec.k.clone()),
            (Some(cur), a) if a != Action::Erase && *cur == after_values(tm, &backed) => done += 1,
            (Some(_), _) => {
                return Ok(Batch::ChangedSinceBackup(format!(
                    "{}: a row changed since its backup; it will be backed up again",
                    part.table.name
                )));
            }
        }
    }
    if !to_change.is_empty() {
        let st = match change {
            sql::Change::Delete => {
                sql::delete_rows(d, &part.table, &part.key.sql_type, &to_change)?
            }
            sql::Change::Set(set) => {
                sql::update_rows(d, &part.table, &part.key.sql_type, set, &to_change)?
            }
        };
        let n = tx.execute(&st).await?;
        if n != to_change.len() as u64 {
            return Err(Error::new(
                Code::Target,
                format!(
                    "{}: {n} rows changed where {} were expected; rolled back",
                    part.table.name,
                    to_change.len()
                ),
            ));
        }
        if first {
            hit(Point::InBatch);
        }
    }
    tx.commit().await?;
    Ok(Batch::Applied {
        changed: to_change.len() as u64,
        already: done,
    })
}

/// Confirm nothing planned remains; `Some(reason)` when something does.
async fn recheck(
    sys: &System,
    parts: &[Part],
    subject: &Identities,
    target: &Target,
    path: &std::path::Path,
    key_path: &std::path::Path,
    batch_size: usize,
) -> Result<Option<String>> {
    hit(Point::Recheck);
    let d = target.dialect();
    for p in parts {
        // Rows of the subject that appeared since the backup.
        let which = match p.source {
            Source::Subject if p.action == Action::Erase => Some(Which::Subject(subject)),
            Source::Owned => Some(Which::Owned(subject)),
            Source::Before {
                ref column,
                ref sql_type,
                ref before,
            } if p.action == Action::Erase => Some(Which::Before {
                column,
                sql_type,
                before,
            }),
            _ => None,
        };
        if let Some(w) = which
            && let Some(st) = sql::select_page(d, sys, &p.table, w, &p.key.sql_type, &[], None, 1)?
            && !target.fetch_text(&st).await?.is_empty()
        {
            return Ok(Some(format!(
                "{}.{}: rows of the subject remain after {}",
                sys.name, p.table.name, p.action
            )));
        }
    }
    let covered: BTreeSet<String> = parts
        .iter()
        .filter(|p| p.action == Action::Erase && !matches!(p.source, Source::Keys(_)))
        .map(|p| p.table.name.clone())
        .collect();
    // Every other backed-up row is gone (erase) or holds its new values (updates).
    // (Erased rows found by a predicate were re-checked by the query above.)
    let (_, tables) =
        super::recheck::archive(sys, target, path, key_path, batch_size, &covered).await?;
    if let Some(t) = tables.iter().find(|t| t.wrong > 0) {
        return Ok(Some(match t.action {
            Action::Erase => format!("{}.{}: an erased row is still there", sys.name, t.table),
            Action::Anonymize
            | Action::Reassign
            | Action::Disable
            | Action::Retain
            | Action::Export => format!(
                "{}.{}: a changed row does not hold its new values",
                sys.name, t.table
            ),
        }));
    }
    Ok(None)
}
