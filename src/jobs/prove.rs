//! Issuing receipts: when a request completes, one receipt for its finished tasks; later
//! tasks (retention follow-ups, sweeps) get receipts of their own. Issuing is a durable
//! step of its own: finished tasks no receipt covers are found again and again until one
//! does, so a crash between finishing and proving loses no receipt.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Settings, TaskBody};
use crate::error::{Code, Error, Result};
use crate::lifecycle::{Context, State};
use crate::plan::Plan;
use crate::policy::Action;
use crate::proof::note::KeyPair;
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
    let mut groups: BTreeMap<Option<String>, Vec<TaskRow>> = BTreeMap::new();
    for t in ctx.store.unreceipted_tasks().await? {
        groups.entry(t.request_id.clone()).or_default().push(t);
    }
    let mut written = Vec::new();
    for (rid, tasks) in groups {
        match rid {
            Some(rid) => {
                let req = ctx.request(&rid).await?;
                if req.state != State::Completed {
                    continue;
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
    let mut body = json!({
        "quietus_receipt": receipt::FORMAT,
        "id": id,
        "issued_at": now,
        "tool": crate::TOOL,
        "policy_digest": ctx.policies.digest,
    });
    let mut retained = Vec::new();
    if let Some(rid) = rid {
        let req = ctx.request(rid).await?;
        let history = ctx.store.history(rid).await?;
        let approved = history.iter().rev().find(|h| h.to_state == "approved");
        let completed = history.iter().rev().find(|h| h.to_state == "completed");
        body["request"] = json!({
            "id": req.id,
            "kind": req.kind,
            "jurisdiction": req.jurisdiction,
            "received_at": req.received_at,
            "approved_at": approved.map(|h| h.at),
            "approved_by": approved.map(|h| h.actor.clone()),
            "completed_at": completed.map(|h| h.at),
        });
        // The completion receipt says what was kept, until when and why.
        let first = ctx.store.receipts_of(rid).await?.is_empty();
        if first && let Some(saved) = ctx.store.latest_plan(rid).await? {
            let plan: Plan = serde_json::from_str(&saved.body)?;
            body["policy_digest"] = json!(plan.policy_digest);
            for e in plan.entries.iter().filter(|e| e.action == Action::Retain) {
                retained.push(json!({
                    "system": e.system, "table": e.table, "rows": e.rows, "rule": e.rule,
                    "basis": e.basis, "until": e.due, "then": e.then, "categories": e.categories,
                }));
            }
        }
    }
    body["retained"] = Value::Array(retained);
    let mut task_docs = Vec::new();
    for t in tasks {
        task_docs.push(task_doc(ctx, s, t).await?);
    }
    body["tasks"] = Value::Array(task_docs);
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    // The first receipt of a request is its completion: the subject is told, in words,
    // what was erased and what was kept, with the receipt attached.
    let notify = match rid {
        Some(rid) if ctx.store.receipts_of(rid).await?.is_empty() => Some(ctx.request(rid).await?),
        _ => None,
    };
    seal_and_store(ctx, p, rid, &id, body, &ids, notify.as_ref(), now).await
}

/// The completion message's words: what was erased, handed over and disabled, and what
/// was kept, by category.
fn completion_vars(body: &Value, receipt_file: &str, now: DateTime<Utc>) -> Result<Value> {
    let mut erased = Vec::new();
    let mut handed_over = Vec::new();
    let mut disabled = Vec::new();
    let mut backups_until: Option<String> = None;
    for t in body["tasks"].as_array().into_iter().flatten() {
        if let Some(exp) = t["backup"]["expires_at"].as_str() {
            let day = exp.get(..10).unwrap_or(exp).to_owned();
            if backups_until.as_ref().is_none_or(|b| *b < day) {
                backups_until = Some(day);
            }
        }
        for c in t["changes"].as_array().into_iter().flatten() {
            let action: Action = serde_json::from_value(c["action"].clone()).map_err(|e| {
                Error::new(
                    Code::Internal,
                    format!("a change in task {} has no known action: {e}", t["id"]),
                )
            })?;
            let into = match action {
                Action::Erase | Action::Anonymize => &mut erased,
                Action::Reassign => &mut handed_over,
                Action::Disable => &mut disabled,
                Action::Retain | Action::Export => continue,
            };
            let cats: Vec<&str> = c["categories"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            into.push(
                json!({"category": cats.join(", "), "system": t["system"], "count": c["rows"]}),
            );
        }
    }
    let kept: Vec<Value> = body["retained"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let cats: Vec<&str> = r["categories"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            json!({"category": cats.join(", "), "until": r["until"], "basis": r["basis"], "system": r["system"], "rule": r["rule"]})
        })
        .collect();
    Ok(json!({
        "request_id": body["request"]["id"],
        "completed": now.format("%Y-%m-%d").to_string(),
        "erased": erased,
        "handed_over": handed_over,
        "disabled": disabled,
        "kept": kept,
        "backups_until": backups_until,
        "receipt_filename": receipt_file,
    }))
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
    completion_to: Option<&crate::lifecycle::Request>,
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
    let vars = completion_to
        .map(|_| completion_vars(&body, &format!("receipt-{id}.json"), now))
        .transpose()?;
    let sealed = receipt::seal(body, &p.key, proof)?;
    let doc = serde_json::to_string_pretty(&sealed)?;
    std::fs::create_dir_all(&p.receipts_dir)?;
    let path = p
        .receipts_dir
        .join(format!("{}-{id}.json", rid.unwrap_or("sweep")));
    std::fs::write(&path, &doc)?;
    let mails = match (completion_to, vars) {
        (Some(req), Some(vars)) => {
            let attachment = crate::store::outbox::MailAttachment {
                filename: format!("receipt-{id}.json"),
                content_type: "application/json".into(),
                content: doc.clone().into_bytes(),
            };
            ctx.mail.to_subject(
                req,
                crate::mail::MessageKind::Completion,
                vars,
                vec![attachment],
            )?
        }
        _ => Vec::new(),
    };
    ctx.store
        .save_receipt(id, rid, idx, &doc, task_ids, &mails, now)
        .await?;
    tracing::info!(receipt = %id, log_index = idx, "receipt issued");
    Ok(path)
}

async fn task_doc(ctx: &Context, s: &Settings, t: &TaskRow) -> Result<Value> {
    let body: TaskBody = serde_json::from_str(&t.body)?;
    let result: Value = t
        .result
        .as_deref()
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or(Value::Null);
    let mut doc = json!({
        "id": t.id,
        "kind": t.kind,
        "system": t.system,
        "completed_at": t.completed_at,
        "recheck": result.get("recheck").cloned().unwrap_or(Value::Null),
        "backup": Value::Null,
        "changes": [],
    });
    if t.kind == super::MANUAL {
        doc["confirmed_by"] = result.get("confirmed_by").cloned().unwrap_or(Value::Null);
    }
    let Some(bid) = &t.backup_id else {
        return Ok(doc);
    };
    let b = ctx.store.backup(bid).await?.ok_or_else(|| {
        Error::new(
            Code::Store,
            format!("task {}: backup {bid} is not recorded", t.id),
        )
    })?;
    doc["backup"] =
        json!({"id": b.id, "sha256": b.sha256, "size": b.size, "expires_at": b.expires_at});
    let (path, key) = crate::backup::paths(&s.backup_dir, &s.keys_dir, bid);
    let (manifest, roots) = receipt::archive_roots(&path, &key)?;
    let results: Vec<Value> = serde_json::from_value::<TaskResultDoc>(result.clone())
        .map(|r| r.tables)
        .unwrap_or_default();
    let mut changes = Vec::new();
    for tm in &manifest.tables {
        let entry = body.entries.iter().find(|e| e.table == tm.table);
        let (rows, root) = roots
            .get(&tm.table)
            .copied()
            .unwrap_or((0, crate::proof::merkle::root(&[])));
        let changed = results
            .iter()
            .find(|r| r["table"] == json!(tm.table))
            .cloned()
            .unwrap_or(Value::Null);
        changes.push(json!({
            "table": tm.table,
            "action": tm.action,
            "rows": rows,
            "changed": changed.get("changed").cloned().unwrap_or(Value::Null),
            "columns": tm.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            "categories": entry.map(|e| e.categories.clone()).unwrap_or_default(),
            "rule": entry.map(|e| e.rule.clone()),
            "basis": entry.map(|e| e.basis.clone()),
            "merkle_root": hex::encode(root),
        }));
    }
    doc["changes"] = Value::Array(changes);
    Ok(doc)
}

/// The part of a stored task result (`execute::TaskResult`) a receipt repeats.
#[derive(serde::Deserialize)]
struct TaskResultDoc {
    #[serde(default)]
    tables: Vec<Value>,
}
