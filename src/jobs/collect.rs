//! Collecting what a task will change: the parts of a task (table, action, columns, the
//! values an update writes), the successor's key, the keys of retained rows, and the
//! archive of every row the task will change, written and read back before any change.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::task::{Part, Source, column};
use super::{Settings, TaskBody};
use crate::backup::{self, Manifest, Record, TableManifest};
use crate::error::{Code, Error, Result};
use crate::failpoints::{Point, hit};
use crate::lifecycle::Context;
use crate::policy::datamap::split_target;
use crate::policy::{Action, FollowUp, Identities, System};
use crate::proof::receipt::{Roots, RootsBuilder};
use crate::store::{BackupRow, TaskRow};
use crate::targets::exec::TextRow;
use crate::targets::sql::{self, Which};
use crate::targets::{SuccessorCheck, Target};

pub(super) async fn parts_of(
    sys: &System,
    task: &TaskRow,
    body: &TaskBody,
    target: &Target,
    subject: &Identities,
    successor: Option<&Identities>,
) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for e in &body.entries {
        let table = sys
            .table(&e.table)
            .ok_or_else(|| {
                Error::new(
                    Code::Policy,
                    format!("{}.{}: not in the data map any more", sys.name, e.table),
                )
            })?
            .clone();
        let catalog = target.columns(&table.name).await?;
        let key = column(&catalog, &table.name, &table.key)?;
        let (action, source) = match (e.action, task.kind) {
            (Action::Retain, super::TaskKind::Followup) => {
                let keys = body.keys.get(&table.name).cloned().unwrap_or_default();
                let a = match e.then {
                    Some(FollowUp::Anonymize) => Action::Anonymize,
                    None => {
                        return Err(Error::new(
                            Code::Internal,
                            format!(
                                "{}.{}: a retained entry without its follow-up action",
                                sys.name, e.table
                            ),
                        ));
                    }
                    Some(FollowUp::Erase) => {
                        if table.on_erase == crate::policy::OnErase::Anonymize {
                            Action::Anonymize
                        } else {
                            Action::Erase
                        }
                    }
                };
                (a, Source::Keys(keys))
            }
            (Action::Reassign, _) => (Action::Reassign, Source::Owned),
            (a, super::TaskKind::Sweep) => {
                let sw = table.sweep.as_ref().ok_or_else(|| {
                    Error::new(
                        Code::Policy,
                        format!(
                            "{}.{}: no sweep in the data map any more",
                            sys.name, table.name
                        ),
                    )
                })?;
                let date = column(&catalog, &table.name, &sw.date)?;
                let before = body.before.ok_or_else(|| {
                    Error::new(Code::Internal, "a sweep task without its cut-off day")
                })?;
                (
                    a,
                    Source::Before {
                        column: date.name,
                        sql_type: date.sql_type,
                        before: before.to_string(),
                    },
                )
            }
            (a, _) => (a, Source::Subject),
        };
        let mut part = Part {
            table: table.clone(),
            action,
            key,
            columns: Vec::new(),
            set: Vec::new(),
            source,
        };
        match action {
            Action::Erase => {
                part.columns = catalog
                    .iter()
                    .filter(|c| c.name != table.key)
                    .cloned()
                    .collect();
            }
            Action::Anonymize => {
                for col in &e.columns {
                    // Every column the approved plan names, or nothing: never a quieter
                    // erasure than approved.
                    if !table.columns.contains_key(col) {
                        return Err(Error::new(
                            Code::PlanBlocked,
                            format!(
                                "{}.{}.{col}: the approved plan anonymises this column, but the data map no longer maps it",
                                sys.name, table.name
                            ),
                        ));
                    }
                    let c = column(&catalog, &table.name, col)?;
                    part.set
                        .push((c.clone(), table.anonymize.get(col).cloned()));
                    part.columns.push(c);
                }
            }
            Action::Disable => {
                let acc = table.account.as_ref().ok_or_else(|| {
                    Error::new(Code::Policy, format!("{}: no account mapping", table.name))
                })?;
                for (col, val) in &acc.set {
                    let c = column(&catalog, &table.name, col)?;
                    part.set.push((c.clone(), Some(val.clone())));
                    part.columns.push(c);
                }
                if let Some(d) = &acc.departed_at {
                    let c = column(&catalog, &table.name, d)?;
                    part.set
                        .push((c.clone(), body.exit_date.map(|x| x.to_string())));
                    part.columns.push(c);
                }
            }
            Action::Reassign => {
                let owner = table.owner.as_ref().ok_or_else(|| {
                    Error::new(Code::Policy, format!("{}: no owner mapping", table.name))
                })?;
                let c = column(&catalog, &table.name, &owner.column)?;
                let to = successor_key(sys, &owner.references, successor, subject, target).await?;
                part.set.push((c.clone(), Some(to)));
                part.columns.push(c);
            }
            Action::Retain | Action::Export => continue,
        }
        parts.push(part);
    }
    Ok(parts)
}

/// The key of the exit's successor where the owner column points: exactly one, active,
/// not the leaver.
async fn successor_key(
    sys: &System,
    references: &str,
    successor: Option<&Identities>,
    subject: &Identities,
    target: &Target,
) -> Result<String> {
    let ids = successor.ok_or_else(|| {
        Error::new(
            Code::PlanBlocked,
            "records must be handed over, but the request names no successor",
        )
    })?;
    let (tn, tc) = split_target(references)
        .ok_or_else(|| Error::new(Code::Policy, format!("bad owner target {references}")))?;
    let t = sys
        .table(tn)
        .ok_or_else(|| Error::new(Code::Policy, format!("owner target {tn} is not mapped")))?;
    let st =
        sql::count_successor_rows(target.dialect(), sys, t, ids, subject)?.ok_or_else(|| {
            Error::new(
                Code::PlanBlocked,
                format!("the successor's identities cannot be looked up in {tn}"),
            )
        })?;
    let check = SuccessorCheck::from_counts(tn, &target.query_counts(&st).await?);
    if let Some(why) = check.problem(&sys.name) {
        return Err(Error::new(Code::PlanBlocked, why));
    }
    let catalog = target.columns(tn).await?;
    let key_col = column(&catalog, tn, &t.key)?;
    let value_col = column(&catalog, tn, tc)?;
    let st = sql::select_page(
        target.dialect(),
        sys,
        t,
        Which::Identity(ids),
        &key_col.sql_type,
        &[value_col],
        None,
        2,
    )?
    .ok_or_else(|| Error::new(Code::PlanBlocked, "the successor cannot be looked up"))?;
    let rows = target.fetch_text(&st).await?;
    rows.first()
        .and_then(|r| r.get(1).cloned().flatten())
        .ok_or_else(|| {
            Error::new(
                Code::PlanBlocked,
                format!("the successor has no {tc} in {tn}"),
            )
        })
}

/// Stream the rows of every part into a new archive, verify it, and describe it. The
/// archive's intent is recorded first, so that it is crypto-shredded should it never be
/// recorded as a backup; an archive that fails here is shredded at once.
#[allow(clippy::too_many_arguments)]
pub(super) async fn collect(
    ctx: &Context,
    s: &Settings,
    task: &TaskRow,
    sys: &System,
    parts: &[Part],
    subject: &Identities,
    target: &Target,
    now: DateTime<Utc>,
) -> Result<(BackupRow, Roots)> {
    hit(Point::Collect);
    let id = crate::store::new_id();
    if !ctx
        .store
        .archive_intent(&id, &task.id, task.request_id.as_deref(), &s.worker, now)
        .await?
    {
        return Err(Error::new(
            Code::IllegalTransition,
            format!(
                "task {} is no longer leased by this worker (cancelled or taken over): nothing was backed up",
                task.id
            ),
        ));
    }
    let written = write_archive(&id, s, task, sys, parts, subject, target, now).await;
    if let Err(e) = &written {
        tracing::warn!(task = %task.id, backup = %id, code = %e.code, "the archive could not be written; it is crypto-shredded");
        discard(ctx, s, task, &id, now).await;
    }
    written
}

/// Crypto-shred an archive this worker wrote and will not record, and say so.
pub(super) async fn discard(
    ctx: &Context,
    s: &Settings,
    task: &TaskRow,
    id: &str,
    now: DateTime<Utc>,
) {
    let (p, k) = backup::paths(&s.backup_dir, &s.keys_dir, id);
    let tmp = s.backup_dir.join(format!(".{id}.tmp"));
    let removed = backup::shred(&p, &k).and_then(|()| {
        crate::fsx::remove_if_present(&tmp)
            .map_err(|e| Error::new(Code::Io, format!("cannot remove {}: {e}", tmp.display())))
    });
    let intent = crate::store::recovery::ArchiveIntent {
        id: id.to_owned(),
        task_id: task.id.clone(),
        request_id: task.request_id.clone(),
        worker: s.worker.clone(),
    };
    match removed {
        // (Otherwise the next expiry run tries again: the intent stays open.)
        Ok(()) => {
            if let Err(e) = ctx.store.archive_shredded(&intent, now).await {
                tracing::warn!(backup = %id, "a shredded archive is not marked so: {}", e.message);
            }
        }
        Err(e) => {
            tracing::error!(backup = %id, "an unrecorded archive is not shredded yet: {}", e.message)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_archive(
    id: &str,
    s: &Settings,
    task: &TaskRow,
    sys: &System,
    parts: &[Part],
    subject: &Identities,
    target: &Target,
    now: DateTime<Utc>,
) -> Result<(BackupRow, Roots)> {
    use rand::Rng;
    let id = id.to_owned();
    let digest_key: [u8; 32] = rand::rng().random();
    let manifest = Manifest {
        quietus_backup: backup::FORMAT,
        id: id.clone(),
        request_id: task.request_id.clone(),
        task_id: task.id.clone(),
        system: sys.name.clone(),
        created_at: now,
        digest_key: hex::encode(digest_key),
        tables: parts
            .iter()
            .map(|p| TableManifest {
                table: p.table.name.clone(),
                key: p.key.clone(),
                action: p.action,
                columns: p.columns.clone(),
                set: p
                    .set
                    .iter()
                    .map(|(c, v)| (c.name.clone(), v.clone()))
                    .collect(),
            })
            .collect(),
    };
    let mut w = backup::Writer::create(&s.backup_dir, &s.keys_dir, &manifest)?;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for p in parts {
        let mut n = 0u64;
        match &p.source {
            Source::Keys(keys) => {
                for chunk in keys.chunks(s.batch_size) {
                    let st = sql::lock_rows(
                        target.dialect(),
                        &p.table,
                        &p.key.sql_type,
                        &p.columns,
                        chunk,
                    )?;
                    for row in target.fetch_text(&st).await? {
                        w.write_row(&record(p, row))?;
                        n += 1;
                    }
                }
            }
            Source::Before {
                column,
                sql_type,
                before,
            } => {
                let which = Which::Before {
                    column,
                    sql_type,
                    before,
                };
                n += target
                    .scan(sys, &p.table, which, &p.key.sql_type, &p.columns, |row| {
                        w.write_row(&record(p, row))
                    })
                    .await?;
            }
            Source::Subject | Source::Owned => {
                let which = if matches!(p.source, Source::Owned) {
                    Which::Owned(subject)
                } else {
                    Which::Subject(subject)
                };
                n += target
                    .scan(sys, &p.table, which, &p.key.sql_type, &p.columns, |row| {
                        w.write_row(&record(p, row))
                    })
                    .await?;
            }
        }
        *expected.entry(p.table.name.clone()).or_default() += n;
    }
    hit(Point::WritingArchive);
    let written = w.finish()?;
    hit(Point::ReadBack);
    let (counts, roots) = read_back(&written.path, &written.key_path, &written.sha256)?;
    for (t, n) in &expected {
        if counts.get(t).copied().unwrap_or(0) != *n {
            return Err(Error::new(
                Code::Io,
                format!(
                    "backup {id}: {t} read back {} rows, wrote {n}",
                    counts.get(t).copied().unwrap_or(0)
                ),
            ));
        }
    }
    tracing::info!(task = %task.id, backup = %id, rows = written.rows, "backup written and verified");
    let row = BackupRow {
        id,
        request_id: task.request_id.clone(),
        task_id: task.id.clone(),
        path: written.path.display().to_string(),
        sha256: written.sha256,
        size: i64::try_from(written.size).unwrap_or(i64::MAX),
        rows: i64::try_from(written.rows).unwrap_or(i64::MAX),
        created_at: now,
        expires_at: s
            .keep
            .add_calendar(now.date_naive())
            .map(|d| d.and_time(now.time()).and_utc())
            .unwrap_or(now),
        shredded_at: None,
    };
    Ok((row, roots))
}

/// Read an archive back whole and check it (its recorded SHA-256, the trailer, the
/// tables): rows per table, and the receipt's per-table roots from the same pass.
pub(super) fn read_back(
    path: &std::path::Path,
    key_path: &std::path::Path,
    sha256: &str,
) -> Result<(BTreeMap<String, u64>, Roots)> {
    let mut roots: Option<RootsBuilder> = None;
    let counts = backup::verify_each(path, key_path, Some(sha256), |m, rec| {
        let b = match &mut roots {
            Some(b) => b,
            None => roots.insert(RootsBuilder::new(m)?),
        };
        b.add(rec)
    })?;
    let roots = match roots {
        Some(b) => b.finish(),
        // No rows: the roots of empty tables.
        None => counts
            .keys()
            .map(|t| (t.clone(), (0, crate::proof::merkle::root(&[]))))
            .collect(),
    };
    Ok((counts, roots))
}

fn record(p: &Part, row: TextRow) -> Record {
    let mut it = row.into_iter();
    let k = it.next().flatten().unwrap_or_default();
    let v = p.columns.iter().map(|c| c.name.clone()).zip(it).collect();
    Record {
        t: p.table.name.clone(),
        k,
        v,
    }
}

/// Whether `table` of `sys` holds a row whose sweep date is before `before` (the retention
/// sweep makes no task, backup nor receipt for a table with nothing expired).
pub(super) async fn expired_rows_exist(
    target: &Target,
    sys: &System,
    table: &crate::policy::Table,
    date: &str,
    before: chrono::NaiveDate,
) -> Result<bool> {
    let catalog = target.columns(&table.name).await?;
    let key = column(&catalog, &table.name, &table.key)?;
    let date = column(&catalog, &table.name, date)?;
    let before = before.to_string();
    let which = Which::Before {
        column: &date.name,
        sql_type: &date.sql_type,
        before: &before,
    };
    match sql::select_page(
        target.dialect(),
        sys,
        table,
        which,
        &key.sql_type,
        &[],
        None,
        1,
    )? {
        Some(st) => Ok(!target.fetch_text(&st).await?.is_empty()),
        None => Ok(false),
    }
}

/// Before anything changes: remember which rows are retained, for the follow-up tasks.
pub(super) async fn capture_retained_keys(
    ctx: &Context,
    sys: &System,
    body: &TaskBody,
    subject: &Identities,
    target: &Target,
    now: DateTime<Utc>,
) -> Result<()> {
    // Each follow-up's body as it will be recorded, and whether it learnt anything.
    let mut bodies: BTreeMap<&str, (TaskBody, bool)> = BTreeMap::new();
    for (table, followup_id) in &body.followups {
        let Some(t) = sys.table(table) else { continue };
        let fb = match bodies.entry(followup_id.as_str()) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let f = ctx.store.task(followup_id).await?;
                v.insert((serde_json::from_str(&f.body)?, false))
            }
        };
        if fb.0.keys.contains_key(table) {
            continue; // captured by an earlier attempt, before anything changed
        }
        let catalog = target.columns(table).await?;
        let key = column(&catalog, table, &t.key)?;
        let mut keys = Vec::new();
        target
            .scan(sys, t, Which::Subject(subject), &key.sql_type, &[], |row| {
                keys.extend(row.into_iter().next().flatten());
                Ok(())
            })
            .await?;
        fb.0.keys.insert(table.clone(), keys);
        fb.1 = true;
    }
    // Every follow-up of the task learns its keys in one transaction.
    let mut learnt = Vec::new();
    for (id, (fb, changed)) in bodies {
        if changed {
            learnt.push((id.to_owned(), serde_json::to_string(&fb)?));
        }
    }
    ctx.store.set_followup_keys(&learnt, now).await
}
