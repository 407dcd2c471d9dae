//! Re-checking, against the live system, what a task changed — by the worker right after
//! the change, and by `quietus verify --recheck` any time later:
//!
//! - **by the archive**, while the backup lives: every erased row is absent, every
//!   updated row (anonymised, disabled, reassigned) holds the values the task wrote — a
//!   reassigned row is owned by the successor;
//! - **by the subject's identities**, always: none of the subject's rows remains where
//!   rows were erased; the subject's rows hold the replacement values where they were
//!   anonymised and the disabled values where an account was disabled; the subject owns
//!   none of the records handed over.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::task::{after_values, column};
use crate::backup::{self, Record};
use crate::error::Result;
use crate::lifecycle::Context;
use crate::policy::{Action, Identities, System};
use crate::proof::receipt::Check;
use crate::targets::Target;
use crate::targets::sql::{self, Which};

/// What re-reading one table's rows of an archive found.
#[derive(Debug, Clone)]
pub(crate) struct ArchiveTable {
    pub table: String,
    pub action: Action,
    /// Rows of the table in the archive.
    pub rows: u64,
    /// Of those, rows not as the task left them: an erased row that is there, an updated
    /// row whose changed columns hold other values.
    pub wrong: u64,
}

/// Re-read every backed-up row of an archive (except those of `skip` tables) in the live
/// system, batch by batch (memory stays flat).
pub(crate) async fn archive(
    sys: &System,
    target: &Target,
    path: &Path,
    key_path: &Path,
    batch_size: usize,
    skip: &BTreeSet<String>,
) -> Result<(backup::Manifest, Vec<ArchiveTable>)> {
    let d = target.dialect();
    let mut reader = backup::Reader::open(path, key_path)?;
    let manifest = reader.manifest.clone();
    let mut out: Vec<ArchiveTable> = Vec::new();
    for tm in manifest.tables.iter().filter(|m| !skip.contains(&m.table)) {
        let action = tm.action;
        out.push(ArchiveTable {
            table: tm.table.clone(),
            action,
            rows: 0,
            wrong: 0,
        });
    }
    let mut batch: Vec<Record> = Vec::new();
    loop {
        let next = reader.next_row()?;
        let flush = match (&next, batch.first()) {
            (None, Some(_)) => true,
            (Some(r), Some(b)) => r.t != b.t || batch.len() >= batch_size.max(1),
            _ => false,
        };
        if flush {
            let t = batch[0].t.clone();
            let (Some(tm), Some(table), Some(res)) = (
                manifest.tables.iter().find(|m| m.table == t),
                sys.table(&t),
                out.iter_mut().find(|r| r.table == t),
            ) else {
                return Err(crate::error::Error::new(
                    crate::error::Code::Policy,
                    format!(
                        "{}.{t}: in the backup, but not in its manifest or the data map",
                        sys.name
                    ),
                ));
            };
            let keys: Vec<String> = batch.iter().map(|r| r.k.clone()).collect();
            let rows = target
                .fetch_text(&sql::lock_rows(
                    d,
                    table,
                    &tm.key.sql_type,
                    &tm.columns,
                    &keys,
                )?)
                .await?;
            res.rows += batch.len() as u64;
            for mut r in rows {
                if r.is_empty() {
                    continue;
                }
                let k = r.remove(0).unwrap_or_default();
                if res.action == Action::Erase {
                    res.wrong += 1;
                    continue;
                }
                // An updated row that is gone holds none of the old values either.
                let Some(rec) = batch.iter().find(|b| b.k == k) else {
                    continue;
                };
                let backed: Vec<Option<String>> = tm
                    .columns
                    .iter()
                    .map(|c| rec.v.get(&c.name).cloned().flatten())
                    .collect();
                let want: Vec<Option<String>> = tm
                    .columns
                    .iter()
                    .map(|c| tm.set.get(&c.name).cloned().flatten())
                    .collect();
                if r != after_values(tm, &backed) && r != want {
                    res.wrong += 1;
                }
            }
            batch.clear();
        }
        match next {
            Some(r) if skip.contains(&r.t) => {}
            Some(r) => batch.push(r),
            None => break,
        }
    }
    Ok((manifest, out))
}

/// What a re-check of a table by the archive says, in words.
fn archive_check(system: &str, a: &ArchiveTable) -> Check {
    let place = format!("{system}.{}", a.table);
    let (n, bad) = (a.rows, a.wrong);
    let what = match (a.action, bad) {
        (Action::Erase, 0) => format!("{place}: none of the {n} erased row(s) is there"),
        (Action::Erase, _) => format!("{place}: {bad} of the {n} erased row(s) are there again"),
        (Action::Reassign, 0) => {
            format!("{place}: the {n} reassigned row(s) are owned by the successor")
        }
        (Action::Reassign, _) => format!(
            "{place}: {bad} of the {n} reassigned row(s) are no longer owned by the successor"
        ),
        (action, 0) => {
            format!("{place}: the {n} row(s) changed by {action} hold the values it wrote")
        }
        (action, _) => format!(
            "{place}: {bad} of the {n} row(s) changed by {action} no longer hold the values it wrote"
        ),
    };
    Check { ok: bad == 0, what }
}

/// What `verify --recheck` asks the live systems about a receipt's tasks.
pub async fn receipt(
    ctx: &Context,
    backup_dir: &Path,
    keys_dir: &Path,
    batch_size: usize,
    body: &Value,
) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let body = crate::proof::receipt::WorkBody::of(body)?;
    let subject = match &body.request {
        Some(r) => Some(ctx.request(&r.id).await?.subject),
        None => None, // a retention sweep: no subject, only the archive
    };
    for t in &body.tasks {
        let system = t.system.as_str();
        let changes = &t.changes;
        if changes.is_empty() {
            continue;
        }
        let Some(sys) = ctx.policies.system(system) else {
            out.push(fail(format!(
                "{system}: the system is no longer in the policies; it cannot be re-checked"
            )));
            continue;
        };
        let target = match ctx.targets.get(sys).await {
            Ok(target) => target.scoped(),
            Err(e) => {
                out.push(fail(format!("{system}: {}", e.message)));
                continue;
            }
        };
        let checks = task_checks(
            ctx,
            sys,
            &target,
            t,
            changes,
            subject.as_ref(),
            (backup_dir, keys_dir, batch_size),
        )
        .await;
        match checks {
            Ok(c) => out.extend(c),
            Err(e) => out.push(fail(format!("{system}: {}", e.message))),
        }
    }
    Ok(out)
}

fn fail(what: String) -> Check {
    Check { ok: false, what }
}

async fn task_checks(
    ctx: &Context,
    sys: &System,
    target: &Target,
    task: &crate::proof::receipt::TaskDoc,
    changes: &[crate::proof::receipt::ChangeDoc],
    subject: Option<&Identities>,
    (backup_dir, keys_dir, batch_size): (&Path, &Path, usize),
) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    // The archive, while it lives: every row the task changed.
    let mut written: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    if let Some(bid) = task.backup.as_ref().map(|b| b.id.as_str()) {
        let (path, key) = backup::paths(backup_dir, keys_dir, bid);
        let alive = ctx
            .store
            .backup(bid)
            .await?
            .is_some_and(|b| b.shredded_at.is_none())
            && key.exists();
        if alive {
            let (manifest, tables) =
                archive(sys, target, &path, &key, batch_size, &BTreeSet::new()).await?;
            out.extend(tables.iter().map(|a| archive_check(&sys.name, a)));
            written = manifest
                .tables
                .iter()
                .map(|m| (m.table.clone(), m.set.clone()))
                .collect();
        } else {
            out.push(Check {
                ok: true,
                what: format!(
                    "{}: backup {bid} was crypto-shredded: its rows are re-checked by the subject's identities only",
                    sys.name
                ),
            });
        }
    }
    // By the subject's identities.
    let Some(subject) = subject else {
        return Ok(out);
    };
    for ch in changes {
        let table_name = ch.table.as_str();
        let place = format!("{}.{table_name}", sys.name);
        let Some(table) = sys.table(table_name) else {
            out.push(fail(format!("{place}: no longer in the data map")));
            continue;
        };
        let action = ch.action;
        let d = target.dialect();
        match action {
            Action::Erase => {
                let left = match sql::count_subject_rows(d, sys, table, subject)? {
                    Some(st) => first(&target.query_counts(&st).await?),
                    None => 0,
                };
                out.push(Check {
                    ok: left == 0,
                    what: format!("{place}: the live system holds {left} of the subject's rows"),
                });
            }
            Action::Reassign => {
                let left = match sql::count_owned_rows(d, sys, table, subject)? {
                    Some(st) => first(&target.query_counts(&st).await?),
                    None => 0,
                };
                out.push(Check {
                    ok: left == 0,
                    what: format!(
                        "{place}: the subject owns {left} of the records that are handed over"
                    ),
                });
            }
            Action::Anonymize | Action::Disable => {
                // The values each changed column must hold: as the archive recorded them,
                // else as the data map says.
                let expected: Vec<(String, Option<String>)> = match written.get(table_name) {
                    Some(set) => set.iter().map(|(c, v)| (c.clone(), v.clone())).collect(),
                    None if action == Action::Anonymize => ch
                        .columns
                        .iter()
                        .map(|c| (c.clone(), table.anonymize.get(c).cloned()))
                        .collect(),
                    None => table
                        .account
                        .iter()
                        .flat_map(|a| a.set.iter())
                        .map(|(c, v)| (c.clone(), Some(v.clone())))
                        .collect(),
                };
                let catalog = target.columns(table_name).await?;
                let key = column(&catalog, table_name, &table.key)?;
                let cols = expected
                    .iter()
                    .map(|(c, _)| column(&catalog, table_name, c))
                    .collect::<Result<Vec<_>>>()?;
                let want: Vec<Option<String>> = expected.iter().map(|(_, v)| v.clone()).collect();
                let (mut seen, mut bad) = (0u64, 0u64);
                target
                    .scan(
                        sys,
                        table,
                        Which::Subject(subject),
                        &key.sql_type,
                        &cols,
                        |row| {
                            seen += 1;
                            if row.get(1..) != Some(want.as_slice()) {
                                bad += 1;
                            }
                            Ok(())
                        },
                    )
                    .await?;
                let names: Vec<&str> = expected.iter().map(|(c, _)| c.as_str()).collect();
                out.push(Check {
                    ok: bad == 0,
                    what: if seen == 0 {
                        format!(
                            "{place}: no row of the subject is left there with other values in {}",
                            names.join(", ")
                        )
                    } else if bad == 0 {
                        format!(
                            "{place}: the subject's {seen} row(s) hold the values {action} wrote ({})",
                            names.join(", ")
                        )
                    } else {
                        format!(
                            "{place}: {bad} of the subject's {seen} row(s) no longer hold the values {action} wrote ({})",
                            names.join(", ")
                        )
                    },
                });
            }
            Action::Retain | Action::Export => {}
        }
    }
    Ok(out)
}

fn first(v: &[i64]) -> u64 {
    v.first().copied().unwrap_or(0).max(0) as u64
}
