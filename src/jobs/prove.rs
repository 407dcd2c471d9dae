//! Issuing receipts: when a request completes, one receipt for its finished tasks; later
//! tasks (retention follow-ups, sweeps) get receipts of their own. Issuing is a durable
//! step of its own: finished tasks no receipt covers are found again and again until one
//! does, so a crash between finishing and proving loses no receipt. Receipt work is
//! claimed before it is built (as tasks are leased), and a batch of receipts, their log
//! entries and checkpoint, and their completion emails commit in one transaction only
//! while the claims are still this worker's: each receipt is issued once across
//! instances.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::task::StoredResult;
use super::{Settings, TaskBody};
use crate::error::{Code, Error, Result};
use crate::failpoints::{Point, hit};
use crate::lifecycle::{Context, State};
use crate::mail::vars;
use crate::plan::Plan;
use crate::policy::Action;
use crate::proof::note::KeyPair;
use crate::proof::receipt::{BackupDoc, ChangeDoc, RequestDoc, RetainedDoc, TaskDoc, WorkBody};
use crate::proof::{log, receipt};
use crate::store::TaskRow;
use crate::store::log::NewReceipt;

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

impl Prover {
    /// Where a receipt's file goes: `REQUEST-RECEIPT.json` (`sweep-RECEIPT.json` for a
    /// receipt of no request).
    pub fn receipt_file(&self, request_id: Option<&str>, id: &str) -> PathBuf {
        self.receipts_dir
            .join(format!("{}-{id}.json", request_id.unwrap_or("sweep")))
    }
}

/// The receipt files and the checkpoint file are written once the transaction that
/// stores the receipts has committed; a worker that died in between left them unwritten.
/// Write, from the store, every receipt file that is missing and the newest checkpoint
/// if the file holds an older one (after a worker of this host died). Returns the
/// receipt files written.
pub async fn restore_files(ctx: &Context, p: &Prover) -> Result<usize> {
    let mut written = 0;
    for (id, rid) in ctx.store.receipt_ids().await? {
        let path = p.receipt_file(rid.as_deref(), &id);
        if path.exists() {
            continue;
        }
        let Some(doc) = ctx.store.receipt_document(&id).await? else {
            continue;
        };
        crate::fsx::create_dir_private(&p.receipts_dir)?;
        crate::fsx::write_private(&path, &doc)?;
        written += 1;
    }
    if let Some(c) = ctx.store.latest_checkpoint().await? {
        // Keeps a newer checkpoint already there.
        log::publish_checkpoint(
            &p.checkpoint_file,
            u64::try_from(c.size).unwrap_or(0),
            &c.note,
        )?;
    }
    if written > 0 {
        tracing::warn!(
            receipts = written,
            "receipt files that a stopped worker had not written are written now"
        );
    }
    Ok(written)
}

/// How long a receipt claim holds before another worker may take the work over.
fn claim_until(s: &Settings, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::seconds(i64::try_from(s.lease_seconds).unwrap_or(300))
}

/// Issue every receipt still to issue: the completion receipts due (a request that
/// completed and whose receipt a crash, or a lost claim, left unissued), then finished
/// tasks no receipt covers (retention follow-ups, sweeps, and the work of a request that a
/// restore undid before it completed), claimed first so that no two workers issue the
/// same. Returns the receipt files written.
pub async fn issue_missing(
    ctx: &Context,
    s: &Settings,
    p: &Prover,
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>> {
    let due = ctx.store.receipts_due().await?;
    let mut written = issue_for_requests_with(ctx, s, p, &due, now).await?;
    loop {
        let tasks = ctx
            .store
            .claim_unreceipted_tasks(&s.worker, now, claim_until(s, now), CLAIM_BATCH)
            .await?;
        if tasks.is_empty() {
            break;
        }
        let claimed: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        let more = tasks.len() as i64 == CLAIM_BATCH;
        let mut groups: BTreeMap<Option<String>, Vec<TaskRow>> = BTreeMap::new();
        for t in tasks {
            groups.entry(t.request_id.clone()).or_default().push(t);
        }
        let built = async {
            let mut drafts = Vec::new();
            for (rid, tasks) in groups {
                match rid {
                    Some(rid) => drafts.push(draft(ctx, s, Some(&rid), &tasks, false, now).await?),
                    // Sweeps belong to no request: one receipt each.
                    None => {
                        for t in tasks {
                            drafts.push(
                                draft(ctx, s, None, std::slice::from_ref(&t), false, now).await?,
                            );
                        }
                    }
                }
            }
            issue_batch(ctx, p, drafts, Some(&s.worker), now).await
        }
        .await;
        match built {
            Ok(Some(files)) => written.extend(files),
            Ok(None) => {
                tracing::info!("receipt claims were taken over by another worker; it issues them");
                break;
            }
            Err(e) => {
                ctx.store
                    .release_receipt_claims(&s.worker, &[], &claimed)
                    .await?;
                return Err(e);
            }
        }
        if !more {
            break;
        }
    }
    Ok(written)
}

/// How many unreceipted tasks a worker claims at once.
const CLAIM_BATCH: i64 = 200;

/// Issue the completion receipts of `request_ids` (those due that no other worker has
/// claimed), as one batch: one log checkpoint, one transaction with their completion
/// emails. Called as requests complete; [`issue_missing`] finds whatever is left.
pub async fn issue_for_requests(
    ctx: &Context,
    s: &Settings,
    request_ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>> {
    issue_for_requests_with(ctx, s, &s.prover, request_ids, now).await
}

async fn issue_for_requests_with(
    ctx: &Context,
    s: &Settings,
    p: &Prover,
    request_ids: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>> {
    if request_ids.is_empty() {
        return Ok(Vec::new());
    }
    let claimed = ctx
        .store
        .claim_completion_receipts(request_ids, &s.worker, now, claim_until(s, now))
        .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let built = async {
        let mut drafts = Vec::with_capacity(claimed.len());
        for rid in &claimed {
            // One receipt per completed request, covering every task that answered it
            // (none, when there was nothing to change).
            let tasks = ctx.store.unreceipted_tasks_of(rid).await?;
            drafts.push(draft(ctx, s, Some(rid), &tasks, true, now).await?);
        }
        issue_batch(ctx, p, drafts, Some(&s.worker), now).await
    }
    .await;
    match built {
        Ok(Some(files)) => Ok(files),
        Ok(None) => {
            tracing::info!("a completion receipt was issued or taken over by another worker");
            Ok(Vec::new())
        }
        Err(e) => {
            ctx.store
                .release_receipt_claims(&s.worker, &claimed, &[])
                .await?;
            Err(e)
        }
    }
}

/// A receipt made, not yet sealed nor in the log.
struct Draft {
    id: String,
    rid: Option<String>,
    body: Value,
    task_ids: Vec<String>,
    completion: bool,
    /// The completion message's recipient (the request) and words.
    notify: Option<(crate::lifecycle::Request, vars::Completion)>,
}

async fn draft(
    ctx: &Context,
    s: &Settings,
    rid: Option<&str>,
    tasks: &[TaskRow],
    completion: bool,
    now: DateTime<Utc>,
) -> Result<Draft> {
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
    // The first receipt of a request (its completion receipt, or the receipt of the work
    // a restore undid before it completed) says what was kept, until when and why.
    let first = match rid {
        Some(rid) => completion || ctx.store.receipts_of(rid).await?.is_empty(),
        None => false,
    };
    let mut req = None;
    if let Some(rid) = rid {
        let r = ctx.request(rid).await?;
        let history = ctx.store.history(rid).await?;
        let approved = history.iter().rev().find(|h| h.to_state == State::Approved);
        // A request completes in its completion receipt's transaction, at `now` (one that
        // an older version completed before its receipt keeps its time).
        let completed = history
            .iter()
            .rev()
            .find(|h| h.to_state == State::Completed)
            .map(|h| h.at)
            .or(completion.then_some(now));
        body.request = Some(RequestDoc {
            id: r.id.clone(),
            kind: r.kind,
            jurisdiction: r.jurisdiction,
            received_at: r.received_at,
            approved_at: approved.map(|h| h.at),
            approved_by: approved.map(|h| h.actor.clone()),
            completed_at: completed,
        });
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
        req = Some(r);
    }
    for t in tasks {
        body.tasks.push(task_doc(ctx, s, t).await?);
    }
    // The completion receipt: the subject is told, in words, what was erased and what
    // was kept, with the receipt attached. A restored request's subject was told of the
    // restore instead.
    let notify = req
        .filter(|r| {
            completion
                && (r.state == State::Completed
                    || crate::lifecycle::state::Event::Complete
                        .target(r.state)
                        .is_some())
        })
        .map(|r| {
            let words = completion_vars(&body, &format!("receipt-{id}.json"), ctx.zone(), now);
            (r, words)
        });
    Ok(Draft {
        id,
        rid: rid.map(str::to_owned),
        body: serde_json::to_value(&body)?,
        task_ids: tasks.iter().map(|t| t.id.clone()).collect(),
        completion,
        notify,
    })
}

/// Seal drafts into the log as one batch: one checkpoint, one transaction with the
/// receipts, the tasks they cover and their messages; the receipt files and the
/// checkpoint file once it committed. `None` when a claim of `worker` no longer held, and
/// nothing was written.
async fn issue_batch(
    ctx: &Context,
    p: &Prover,
    drafts: Vec<Draft>,
    worker: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Vec<PathBuf>>> {
    if drafts.is_empty() {
        return Ok(Some(Vec::new()));
    }
    hit(Point::Receipt);
    let canonical = drafts
        .iter()
        .map(|d| receipt::canonical(&d.body))
        .collect::<Result<Vec<String>>>()?;
    let entries: Vec<log::Entry<'_>> = drafts
        .iter()
        .zip(&canonical)
        .map(|(d, c)| log::Entry {
            request_id: d.rid.as_deref(),
            body: c,
        })
        .collect();
    let signing = log::Signing {
        key: &p.key,
        origin: &p.origin,
        checkpoint_file: &p.checkpoint_file,
    };
    let mut docs: Vec<String> = Vec::with_capacity(drafts.len());
    let appended = log::append(&ctx.store, signing, &entries, worker, now, |proofs| {
        hit(Point::LogAppend);
        let mut out = Vec::with_capacity(drafts.len());
        for (d, proof) in drafts.iter().zip(proofs) {
            let log_idx = i64::try_from(proof.index).unwrap_or(i64::MAX);
            let sealed = receipt::seal(d.body.clone(), &p.key, proof.clone())?;
            let doc = serde_json::to_string_pretty(&sealed)?;
            let mails = match &d.notify {
                Some((req, words)) => {
                    let attachment = crate::store::outbox::MailAttachment {
                        filename: format!("receipt-{}.json", d.id),
                        content_type: "application/json".into(),
                        content: doc.clone().into_bytes(),
                    };
                    ctx.mail.to_subject(
                        req,
                        vars::Message::Completion(words.clone()),
                        vec![attachment],
                    )?
                }
                None => Vec::new(),
            };
            out.push(NewReceipt {
                id: d.id.clone(),
                request_id: d.rid.clone(),
                completion: d.completion,
                log_idx,
                document: doc.clone(),
                task_ids: d.task_ids.clone(),
                mails,
            });
            docs.push(doc);
        }
        Ok(out)
    })
    .await?;
    let Some(appended) = appended else {
        return Ok(None);
    };
    hit(Point::Checkpoint);
    crate::fsx::create_dir_private(&p.receipts_dir)?;
    let mut written = Vec::with_capacity(drafts.len());
    for ((d, doc), proof) in drafts.iter().zip(&docs).zip(&appended.proofs) {
        let path = p.receipt_file(d.rid.as_deref(), &d.id);
        crate::fsx::write_private(&path, doc)?;
        tracing::info!(receipt = %d.id, log_index = proof.index, "receipt issued");
        written.push(path);
    }
    log::publish_checkpoint(&p.checkpoint_file, appended.size, &appended.note)?;
    Ok(Some(written))
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
    let d = Draft {
        id,
        rid: b.request_id.clone(),
        body,
        task_ids: Vec::new(),
        completion: false,
        notify: None,
    };
    issue_batch(ctx, p, vec![d], None, now)
        .await?
        .and_then(|w| w.into_iter().next())
        .ok_or_else(|| Error::new(Code::Internal, "the shredding receipt was not written"))
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
            let d = result
                .tables
                .iter()
                .find(|r| r.table == tm.table)?
                .digest
                .as_ref()?;
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
