//! Issuing receipts: when a request completes, one receipt for its finished tasks; later
//! tasks (retention follow-ups, sweeps) get receipts of their own. Issuing is a durable
//! step of its own: finished tasks no receipt covers are found again and again until one
//! does, so a crash between finishing and proving loses no receipt.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::task::StoredResult;
use super::{Settings, TaskBody};
use crate::error::{Code, Error, Result};
use crate::lifecycle::{Context, State};
use crate::mail::vars;
use crate::plan::Plan;
use crate::policy::Action;
use crate::proof::note::KeyPair;
use crate::proof::receipt::{BackupDoc, ChangeDoc, RequestDoc, RetainedDoc, TaskDoc, WorkBody};
use crate::proof::{log, receipt};
use crate::store::TaskRow;

/// What issuing needs: the signing key and where things go.
#[derive(Debug, Clone)]
pub struct Prover {
    pub key: KeyPair,
    pub origin: String,
    pub checkpoint_file: PathBuf,
    pub receipts_dir: PathBuf,
}

impl Prover {
    pub fn from_config(c: &crate::config::Config) -> Result<Prover> {
        Ok(Prover {
            key: crate::proof::keys::load_or_init(c)?,
            origin: c.proof.origin.clone(),
            checkpoint_file: c.path(&c.proof.checkpoint_file),
            receipts_dir: c.path(&c.proof.receipts_dir),
        })
    }
}

/// Issue receipts for every finished task no receipt covers yet (tasks of requests that
/// are not completed wait). Returns the receipt files written.
pub async fn issue_missing(
    ctx: &Context,
    s: &Settings,
    p: &Prover,
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    // Completion receipts first: one per completed request, covering every task that
    // answered it (none, when there was nothing to change).
    for rid in ctx.store.receipts_due().await? {
        let tasks = ctx.store.unreceipted_tasks_of(&rid).await?;
        written.push(issue(ctx, s, p, Some(&rid), &tasks, now).await?);
    }
    // Then what finished later: retention follow-ups, sweeps, and the work of a request
    // that a restore undid before it completed.
    let mut groups: BTreeMap<Option<String>, Vec<TaskRow>> = BTreeMap::new();
    for t in ctx.store.unreceipted_tasks().await? {
        groups.entry(t.request_id.clone()).or_default().push(t);
    }
    for (rid, tasks) in groups {
        match rid {
            Some(rid) => {
                let req = ctx.request(&rid).await?;
                match req.state {
                    State::Completed | State::Restored => {}
                    State::Unverified
                    | State::PendingReview
                    | State::Approved
                    | State::Scheduled
                    | State::Running
                    | State::Rejected
                    | State::OnHold
                    | State::Cancelled
                    | State::Failed
                    | State::NeedsAttention => continue,
                }
                written.push(issue(ctx, s, p, Some(&rid), &tasks, now).await?);
            }
            // Sweeps belong to no request: one receipt each.
            None => {
                for t in tasks {
                    written.push(issue(ctx, s, p, None, std::slice::from_ref(&t), now).await?);
                }
            }
        }
    }
    Ok(written)
}

async fn issue(
    ctx: &Context,
    s: &Settings,
    p: &Prover,
    rid: Option<&str>,
    tasks: &[TaskRow],
    now: DateTime<Utc>,
) -> Result<PathBuf> {
    let id = crate::store::new_id();
    let mut body = WorkBody {
        quietus_receipt: receipt::FORMAT,
        id: id.clone(),
        issued_at: now,
        tool: crate::TOOL.to_owned(),
        policy_digest: ctx.policies.digest.clone(),
        request: None,
        retained: Vec::new(),
        tasks: Vec::new(),
    };
    if let Some(rid) = rid {
        let req = ctx.request(rid).await?;
        let history = ctx.store.history(rid).await?;
        let approved = history.iter().rev().find(|h| h.to_state == State::Approved);
        let completed = history
            .iter()
            .rev()
            .find(|h| h.to_state == State::Completed);
        body.request = Some(RequestDoc {
            id: req.id.clone(),
            kind: req.kind,
            jurisdiction: req.jurisdiction,
            received_at: req.received_at,
            approved_at: approved.map(|h| h.at),
            approved_by: approved.map(|h| h.actor.clone()),
            completed_at: completed.map(|h| h.at),
        });
        // The completion receipt says what was kept, until when and why.
        let first = ctx.store.receipts_of(rid).await?.is_empty();
        if first && let Some(saved) = ctx.store.latest_plan(rid).await? {
            let plan: Plan = serde_json::from_str(&saved.body)?;
            body.policy_digest = plan.policy_digest.clone();
            // What this receipt's own follow-ups already erased (a retention that had
            // ended before the request completed) is not said to be kept.
            let mut ended = std::collections::BTreeSet::new();
            for t in tasks.iter().filter(|t| t.kind == super::TaskKind::Followup) {
                let b: TaskBody = serde_json::from_str(&t.body)?;
                ended.extend(b.entries.into_iter().map(|e| (e.system, e.table)));
            }
            body.retained = plan
                .entries
                .iter()
                .filter(|e| e.action == Action::Retain)
                .filter(|e| !ended.contains(&(e.system.clone(), e.table.clone())))
                .map(|e| RetainedDoc {
                    system: e.system.clone(),
                    table: e.table.clone(),
                    rows: e.rows,
                    rule: e.rule.clone(),
                    basis: e.basis.clone(),
                    until: e.due,
                    then: e.then,
                    categories: e.categories.clone(),
                })
                .collect();
        }
    }
    for t in tasks {
        body.tasks.push(task_doc(ctx, s, t).await?);
    }
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    // The first receipt of a request is its completion: the subject is told, in words,
    // what was erased and what was kept, with the receipt attached. A restored request's
    // subject was told of the restore instead.
    let notify = match rid {
        Some(rid) if ctx.store.receipts_of(rid).await?.is_empty() => {
            Some(ctx.request(rid).await?).filter(|r| r.state == State::Completed)
        }
        _ => None,
    };
    let vars = notify
        .as_ref()
        .map(|_| completion_vars(&body, &format!("receipt-{id}.json"), ctx.zone(), now));
    let body = serde_json::to_value(&body)?;
    seal_and_store(ctx, p, rid, &id, body, &ids, notify.as_ref().zip(vars), now).await
}

/// The completion message's words: what was erased, handed over and disabled, and what
/// was kept, by category; dates in `zone` (the policy's), labelled.
fn completion_vars(
    body: &WorkBody,
    receipt_file: &str,
    zone: crate::clock::Zone,
    now: DateTime<Utc>,
) -> vars::Completion {
    let (mut erased, mut handed_over, mut disabled) = (Vec::new(), Vec::new(), Vec::new());
    let mut backups_until: Option<DateTime<Utc>> = None;
    for t in &body.tasks {
        if let Some(b) = &t.backup
            && backups_until.is_none_or(|u| u < b.expires_at)
        {
            backups_until = Some(b.expires_at);
        }
        for c in &t.changes {
            let into = match c.action {
                Action::Erase | Action::Anonymize => &mut erased,
                Action::Reassign => &mut handed_over,
                Action::Disable => &mut disabled,
                Action::Retain | Action::Export => continue,
            };
            into.push(vars::Changed {
                category: c.categories.join(", "),
                system: t.system.clone(),
                count: c.rows,
            });
        }
    }
    let kept = body
        .retained
        .iter()
        .map(|r| vars::Kept {
            category: r.categories.join(", "),
            until: zone.day(r.until),
            basis: r.basis.clone(),
            system: r.system.clone(),
            rule: r.rule.clone(),
        })
        .collect();
    vars::Completion {
        request_id: body.request.as_ref().map(|r| r.id.clone()),
        completed: zone.day_of(now),
        erased,
        handed_over,
        disabled,
        kept,
        backups_until: backups_until.map(|b| zone.day_of(b)),
        receipt_filename: receipt_file.to_owned(),
    }
}

/// The receipt of a backup's crypto-shredding: which archive (by its SHA-256) and whose
/// request, and when its key was destroyed.
pub async fn shred_receipt(
    ctx: &Context,
    p: &Prover,
    b: &crate::store::BackupRow,
    now: DateTime<Utc>,
) -> Result<PathBuf> {
    let id = crate::store::new_id();
    let body = json!({
        "quietus_receipt": receipt::FORMAT,
        "id": id,
        "issued_at": now,
        "tool": crate::TOOL,
        "event": "backup_crypto_shredded",
        "request": {"id": b.request_id},
        "backup": {"id": b.id, "sha256": b.sha256, "size": b.size, "rows": b.rows, "created_at": b.created_at, "expired_at": b.expires_at},
        "shredded_at": now,
    });
    seal_and_store(ctx, p, b.request_id.as_deref(), &id, body, &[], None, now).await
}

#[allow(clippy::too_many_arguments)]
async fn seal_and_store(
    ctx: &Context,
    p: &Prover,
    rid: Option<&str>,
    id: &str,
    body: Value,
    task_ids: &[String],
    completion: Option<(&crate::lifecycle::Request, vars::Completion)>,
    now: DateTime<Utc>,
) -> Result<PathBuf> {
    let canonical = receipt::canonical(&body)?;
    let signing = log::Signing {
        key: &p.key,
        origin: &p.origin,
        checkpoint_file: &p.checkpoint_file,
    };
    let proof = log::append(&ctx.store, signing, "receipt", rid, &canonical, now).await?;
    let idx = i64::try_from(proof.index).unwrap_or(i64::MAX);
    let sealed = receipt::seal(body, &p.key, proof)?;
    let doc = serde_json::to_string_pretty(&sealed)?;
    std::fs::create_dir_all(&p.receipts_dir)?;
    let path = p
        .receipts_dir
        .join(format!("{}-{id}.json", rid.unwrap_or("sweep")));
    std::fs::write(&path, &doc)?;
    let mails = match completion {
        Some((req, vars)) => {
            let attachment = crate::store::outbox::MailAttachment {
                filename: format!("receipt-{id}.json"),
                content_type: "application/json".into(),
                content: doc.clone().into_bytes(),
            };
            ctx.mail
                .to_subject(req, vars::Message::Completion(vars), vec![attachment])?
        }
        None => Vec::new(),
    };
    ctx.store
        .save_receipt(id, rid, idx, &doc, task_ids, &mails, now)
        .await?;
    tracing::info!(receipt = %id, log_index = idx, "receipt issued");
    Ok(path)
}

async fn task_doc(ctx: &Context, s: &Settings, t: &TaskRow) -> Result<TaskDoc> {
    let body: TaskBody = serde_json::from_str(&t.body)?;
    let result: StoredResult = t
        .result
        .as_deref()
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    let mut doc = TaskDoc {
        id: t.id.clone(),
        kind: t.kind,
        system: t.system.clone(),
        completed_at: t.completed_at,
        recheck: result.recheck.clone(),
        backup: None,
        changes: Vec::new(),
        confirmed_by: match t.kind {
            super::TaskKind::Manual => result.confirmed_by.clone(),
            super::TaskKind::Disable
            | super::TaskKind::Apply
            | super::TaskKind::Followup
            | super::TaskKind::Sweep
            | super::TaskKind::Export => None,
        },
    };
    let Some(bid) = &t.backup_id else {
        return Ok(doc);
    };
    let b = ctx.store.backup(bid).await?.ok_or_else(|| {
        Error::new(
            Code::Store,
            format!("task {}: backup {bid} is not recorded", t.id),
        )
    })?;
    doc.backup = Some(BackupDoc {
        id: b.id.clone(),
        sha256: b.sha256.clone(),
        size: b.size,
        expires_at: b.expires_at,
    });
    let (path, key) = crate::backup::paths(&s.backup_dir, &s.keys_dir, bid);
    // The roots taken by the read-back before anything changed; a task recorded without
    // them (by an earlier version) has its archive read for them.
    let manifest = crate::backup::Reader::open(&path, &key)?.manifest;
    let recorded: Option<BTreeMap<String, (u64, String)>> = manifest
        .tables
        .iter()
        .map(|tm| {
            let d = result.tables.iter().find(|r| r.table == tm.table)?.digest.as_ref()?;
            Some((tm.table.clone(), (d.rows, d.merkle_root.clone())))
        })
        .collect();
    let roots = match recorded {
        Some(r) => r,
        None => receipt::archive_roots(&path, &key)?
            .1
            .into_iter()
            .map(|(t, (n, root))| (t, (n, hex::encode(root))))
            .collect(),
    };
    for tm in &manifest.tables {
        let entry = body.entries.iter().find(|e| e.table == tm.table);
        let (rows, root) = roots
            .get(&tm.table)
            .cloned()
            .unwrap_or_else(|| (0, hex::encode(crate::proof::merkle::root(&[]))));
        doc.changes.push(ChangeDoc {
            table: tm.table.clone(),
            action: tm.action,
            rows,
            changed: result
                .tables
                .iter()
                .find(|r| r.table == tm.table)
                .map(|r| r.changed),
            columns: tm.columns.iter().map(|c| c.name.clone()).collect(),
            categories: entry.map(|e| e.categories.clone()).unwrap_or_default(),
            rule: entry.map(|e| e.rule.clone()),
            basis: entry.map(|e| e.basis.clone()),
            merkle_root: root,
        });
    }
    Ok(doc)
}
