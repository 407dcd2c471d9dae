//! `quietus demo --dir DIR`: a guided tour on a fresh folder. It writes a config, the
//! example policies and the demo CRM (SQLite), submits a realistic exit ticket and an
//! erasure request, and shows their plans. Nothing outside DIR is touched.

use crate::store::BeginWrite as _;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::ConnectOptions as _;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::intake::{self, Source};
use crate::policy::EXAMPLES;

/// The demo CRM schema per dialect, and its data (portable INSERTs).
pub const CRM_SCHEMA_SQLITE: &str = include_str!("crm/schema.sqlite.sql");
pub const CRM_SCHEMA_POSTGRES: &str = include_str!("crm/schema.postgres.sql");
pub const CRM_SCHEMA_MYSQL: &str = include_str!("crm/schema.mysql.sql");
pub const CRM_SEED: &str = include_str!("crm/seed.sql");

/// Marks a folder as made by `quietus demo`, so that `--force` never deletes anything else.
const MARKER: &str = ".quietus-demo";

/// Create a demo CRM database (SQLite) at `path`.
pub async fn create_crm_sqlite(path: &Path) -> Result<()> {
    crate::fsx::create_sqlite_private(path)
        .map_err(|e| Error::new(Code::Io, format!("cannot create {}: {e}", path.display())))?;
    // Not in the statement log: the seed is made of personal values (fictional, but a
    // log never holds row values, whatever its level).
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true)
        .disable_statement_logging();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let mut tx = pool.begin_write().await?;
    sqlx::raw_sql(CRM_SCHEMA_SQLITE).execute(&mut *tx).await?;
    sqlx::raw_sql(CRM_SEED).execute(&mut *tx).await?;
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| Error::new(Code::Io, format!("{}: {e}", dir.display())))?;
        if entries.next().is_some() {
            if !force {
                return Err(Error::new(
                    Code::Usage,
                    format!(
                        "{} is not empty; choose a new folder or add --force to replace it",
                        dir.display()
                    ),
                ));
            }
            if !dir.join(MARKER).is_file() {
                return Err(Error::new(
                    Code::Usage,
                    format!(
                        "{} is not empty and was not made by `quietus demo`; refusing to delete it",
                        dir.display()
                    ),
                ));
            }
            std::fs::remove_dir_all(dir).map_err(|e| {
                Error::new(Code::Io, format!("cannot replace {}: {e}", dir.display()))
            })?;
        }
    }
    // The demo's folder holds the demo CRM's personal data and API tokens: owner-only,
    // also when it existed (empty) before.
    crate::fsx::create_dir_private(&dir.join("policies/systems"))
        .and_then(|()| crate::fsx::make_dir_private(dir))
        .map_err(|e| Error::new(Code::Io, format!("cannot create {}: {e}", dir.display())))?;
    crate::fsx::write_private(
        &dir.join(MARKER),
        "made by quietus demo; `quietus demo --force` may replace this folder\n",
    )?;
    Ok(())
}

fn token() -> (String, String) {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let t = format!("qt_{}", hex::encode(bytes));
    let h = hex::encode(Sha256::digest(t.as_bytes()));
    (t, h)
}

/// Run the demo.
pub async fn run(dir: &Path, force: bool, json_out: bool, actor: &str) -> Result<()> {
    prepare_dir(dir, force)?;
    let dir: PathBuf = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for (name, text) in EXAMPLES {
        crate::fsx::write_private(&dir.join("policies").join(name), text)?;
    }
    let crm = dir.join("crm.db");
    create_crm_sqlite(&crm).await?;

    let (hr_token, hr_hash) = token();
    let (dpo_token, dpo_hash) = token();
    let config_text = format!(
        "# quietus demo configuration (every key: deploy/quietus.toml)\n\
         [store]\nurl = \"sqlite://var/quietus.db\"\n\n\
         [policies]\ndir = \"policies\"\n\n\
         [inbox]\ndir = \"var/inbox\"\n\n\
         [server]\nlisten = \"127.0.0.1:8750\"\n\n\
         # Tokens are stored as SHA-256 hashes; the tokens themselves are in tokens.txt.\n\
         [[api.tokens]]\nname = \"hr-system\"\nrole = \"hr\"\nsha256 = \"{hr_hash}\"\n\n\
         [[api.tokens]]\nname = \"dpo\"\nrole = \"dpo\"\nsha256 = \"{dpo_hash}\"\n"
    );
    let config_path = dir.join("quietus.toml");
    crate::fsx::write_private(&config_path, config_text)?;
    write_secret(
        &dir.join("tokens.txt"),
        &format!("hr-system {hr_token}\ndpo {dpo_token}\n"),
    )?;

    let config = Config::load(Some(&config_path))?;
    let (app, _) = crate::app::App::open_with(config, crate::store::Open::CreateIfMissing).await?;
    let (config, ctx) = (&app.config, &app.ctx);
    let now = crate::clock::now();
    let today = ctx.today(now);
    let zone = ctx.zone();
    // The leaver leaves today, so that the tour can carry the exit out now.
    let exit_date = today;

    let exit_ticket = json!({
        "kind": "exit",
        "external_id": "HR-2026-0042",
        "subject": {"email": "fang.wang@corp.example", "employee_id": "E100"},
        "exit_date": exit_date.to_string(),
        "successor": {"employee_id": "E200"},
        "jurisdiction": "PIPL",
        "locale": "zh-CN",
        "requested_by": "HR system (Moka)",
        "note": "Resigned; last working day agreed with the sales director."
    });
    let erasure_ticket = json!({
        "kind": "erasure",
        "external_id": "DSR-2026-0107",
        "subject": {"email": "olivia.chen@example.com"},
        "jurisdiction": "GDPR",
        "locale": "en",
        "requested_by": "privacy web form"
    });
    let mut summary = Vec::new();
    let mut texts = Vec::new();
    for (ticket, door) in [(&exit_ticket, "hr-system"), (&erasure_ticket, "dpo")] {
        let body = serde_json::to_string_pretty(ticket)?;
        let t = intake::parse_ticket(
            body.as_bytes(),
            "demo ticket",
            ctx.policies.handover_required(),
        )?;
        let source = Source {
            door: crate::intake::Door::Cli,
            actor: format!("{actor} (demo: {door})"),
            trusted: true,
        };
        let sub = intake::submit(ctx, &t, &body, &source, now).await?;
        let req = ctx.request(&sub.id).await?;
        let plan = ctx.plan(&req, now).await;
        texts.push(plan.render_text(ctx.zone()));
        summary.push(json!({
            "id": req.id, "kind": req.kind, "state": req.state, "jurisdiction": req.jurisdiction,
            "due_date": req.due_date, "subject": req.subject, "successor": req.successor,
            "plan": {"blocked": plan.blocked, "entries": plan.entries},
        }));
    }
    // The DPO approves both; the worker carries them out, backup first.
    let before = crm_facts(&crm).await?;
    for r in &summary {
        let id = r["id"].as_str().unwrap_or_default();
        ctx.decide(
            id,
            crate::lifecycle::Decision::Approve,
            &format!("{actor} (demo: dpo)"),
            None,
            now,
        )
        .await?;
    }
    let settings = app.worker()?;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = crate::jobs::run_due(ctx, &settings, &stop, &|_| {}).await?;
    let after = crm_facts(&crm).await?;
    let mut backups = Vec::new();
    let mut followups = Vec::new();
    let mut followup_lines = Vec::new();
    for r in summary.iter_mut() {
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        let req = ctx.request(&id).await?;
        r["state"] = json!(req.state);
        for b in ctx.store.backups_of(&id).await? {
            backups.push(b.path.clone());
        }
        for t in ctx.store.tasks_of(&id).await? {
            if t.state != crate::jobs::TaskState::Done {
                followup_lines.push(format!("{} {} due {}", t.kind, t.id, zone.time(t.due_at)));
                followups.push(json!({"request": id, "task": t.id, "kind": t.kind, "due_at": t.due_at, "state": t.state}));
            }
        }
    }
    ctx.close().await;

    if json_out {
        let v = json!({
            "config": config_path,
            "crm": crm,
            "store": dir.join("var/quietus.db"),
            "policies": dir.join("policies"),
            "today": today,
            "now": now.with_timezone(&Utc),
            "requests": summary,
            "backups": backups,
            "backup_keys": dir.join("var/backup-keys"),
            "later_tasks": followups,
            "run": run,
            "outbox": config.outbox_dir(),
            "receipts": run.receipts,
            "public_key": config.path(&config.proof.public_key_file),
            "checkpoint": config.path(&config.proof.checkpoint_file),
            "crm_before": before,
            "crm_after": after,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let cfg = config_path.display();
    crate::outln!("quietus demo in {}\n", dir.display());
    crate::outln!("  config     {cfg}");
    crate::outln!(
        "  policies   {}/policies (retention.toml, systems/crm.toml)",
        dir.display()
    );
    crate::outln!(
        "  demo CRM   {} (SQLite: employees, customers, deals, follow-ups, contracts, ...)",
        crm.display()
    );
    crate::outln!("  API tokens {}/tokens.txt\n", dir.display());
    crate::outln!(
        "HR filed an exit ticket: 王芳 Wang Fang (E100) leaves on {}; 李明 Li Ming (E200) takes over.",
        zone.day(exit_date)
    );
    crate::outln!("A customer asked for erasure under GDPR: Olivia Chen.\n");
    for t in &texts {
        crate::outln!("{t}");
    }
    crate::outln!("The DPO approved both; quietus backed up, then changed the CRM:\n");
    for (k, v) in before.as_object().into_iter().flatten() {
        crate::outln!(
            "  {k:<44} {v} -> {}",
            after.get(k).cloned().unwrap_or_default()
        );
    }
    crate::outln!();
    crate::outln!("Backups (age + zstd; open one with `age -d -i KEY FILE | zstd -d`):");
    for b in &backups {
        crate::outln!("  {b}");
    }
    crate::outln!(
        "Signed receipts (check one: quietus --config {} verify FILE):",
        config_path.display()
    );
    for r in &run.receipts {
        crate::outln!("  {r}");
    }
    crate::outln!(
        "Emails (acknowledgement, approval, completion with the receipt attached): {}",
        config.outbox_dir().display()
    );
    crate::outln!("Kept for later (retention), with tasks that will act when it ends:");
    for f in &followup_lines {
        crate::outln!("  {f}");
    }
    crate::outln!();
    crate::outln!("Try next:");
    crate::outln!("  quietus --config {cfg} queue");
    crate::outln!(
        "  quietus --config {cfg} show {}",
        summary
            .first()
            .and_then(|s| s["id"].as_str())
            .unwrap_or("ID")
    );
    crate::outln!("  quietus --config {cfg} approve ID");
    crate::outln!("  quietus --config {cfg} serve");
    Ok(())
}

/// A few facts about the demo cast, read straight from the CRM.
async fn crm_facts(crm: &Path) -> Result<serde_json::Value> {
    let opts = SqliteConnectOptions::new()
        .filename(crm)
        .read_only(true)
        .disable_statement_logging();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let q = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_one(&pool)
                .await
                .map(|v| v.unwrap_or_else(|| "NULL".into()))
        }
    };
    let facts = json!({
        "E100 account status": q("SELECT status || COALESCE(' since ' || left_at, '') FROM employees WHERE emp_no = 'E100'").await?,
        "E100 name": q("SELECT name FROM employees WHERE emp_no = 'E100'").await?,
        "E100 email": q("SELECT COALESCE(email, 'NULL') FROM employees WHERE emp_no = 'E100'").await?,
        "E100 roles": q("SELECT CAST(COUNT(*) AS TEXT) FROM employee_roles WHERE employee_id = (SELECT id FROM employees WHERE emp_no = 'E100')").await?,
        "E100 personal notes": q("SELECT CAST(COUNT(*) AS TEXT) FROM personal_notes WHERE employee_id = (SELECT id FROM employees WHERE emp_no = 'E100')").await?,
        "E100 labour contracts (kept 2 years)": q("SELECT CAST(COUNT(*) AS TEXT) FROM labour_contracts WHERE employee_id = (SELECT id FROM employees WHERE emp_no = 'E100')").await?,
        "E100 follow-ups (kept as business records)": q("SELECT CAST(COUNT(*) AS TEXT) FROM follow_ups WHERE author_id = (SELECT id FROM employees WHERE emp_no = 'E100')").await?,
        "active customers owned by E100": q("SELECT CAST(COUNT(*) AS TEXT) FROM customers WHERE status = 'active' AND owner_id = (SELECT id FROM employees WHERE emp_no = 'E100')").await?,
        "open deals owned by E100": q("SELECT CAST(COUNT(*) AS TEXT) FROM deals WHERE stage IN ('lead', 'negotiation') AND owner_id = (SELECT id FROM employees WHERE emp_no = 'E100')").await?,
        "active customers owned by E200 (successor)": q("SELECT CAST(COUNT(*) AS TEXT) FROM customers WHERE status = 'active' AND owner_id = (SELECT id FROM employees WHERE emp_no = 'E200')").await?,
        "customer C-1042 name": q("SELECT name FROM customers WHERE customer_no = 'C-1042'").await?,
        "customer C-1042 email": q("SELECT COALESCE(email, 'NULL') FROM customers WHERE customer_no = 'C-1042'").await?,
        "C-1042 invoices (kept 30 years)": q("SELECT CAST(COUNT(*) AS TEXT) FROM invoices WHERE customer_id = (SELECT id FROM customers WHERE customer_no = 'C-1042')").await?,
    });
    pool.close().await;
    Ok(facts)
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    crate::fsx::write_private(path, text)?;
    Ok(())
}
