//! `quietus run`, `restore` and `confirm`.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::Command;
use crate::error::{Code, Error, Result};
use crate::jobs::{self, Settings};
use crate::lifecycle::Context;

pub async fn run(ctx: &Context, s: &Settings, cmd: Command, actor: &str) -> Result<ExitCode> {
    match cmd {
        Command::Run {
            sweep,
            json: as_json,
        } => {
            let (_tx, stop) = tokio::sync::watch::channel(false);
            if sweep {
                let n = jobs::sweep(ctx, crate::clock::now()).await?;
                if !as_json {
                    crate::outln!("retention sweep: {n} task(s) created");
                }
            }
            let due = ctx.store.count_due(crate::clock::now()).await?;
            let bar = if as_json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(u64::try_from(due).unwrap_or(0))
            };
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} tasks {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let summary = jobs::run_due(ctx, s, &stop, &|t| {
                if bar.position() >= bar.length().unwrap_or(0) {
                    bar.inc_length(1);
                }
                bar.set_message(format!("{} {} on {}", t.kind, t.id, t.system));
                bar.inc(1);
            })
            .await;
            bar.finish_and_clear();
            let summary = summary?;
            if as_json {
                crate::outln!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                crate::outln!(
                    "scheduled {} request(s); {} task(s) done, {} to retry, {} need attention; {} request(s) completed; {} backup(s) shredded",
                    summary.scheduled,
                    summary.done,
                    summary.retried,
                    summary.failed,
                    summary.completed_requests.len(),
                    summary.shredded_backups
                );
                if summary.released_leases > 0 {
                    crate::outln!(
                        "released {} lease(s) of a worker of this host that stopped before finishing",
                        summary.released_leases
                    );
                }
                if summary.shredded_unrecorded > 0 {
                    crate::outln!(
                        "crypto-shredded {} archive(s) that a stopped worker never recorded",
                        summary.shredded_unrecorded
                    );
                }
                for w in &summary.waiting {
                    crate::outln!(
                        "waiting: task {} ({} on {}{}) is leased by worker {} until {}; it runs once that worker finishes it or the lease expires",
                        w.task,
                        w.kind,
                        w.system,
                        w.request_id
                            .as_deref()
                            .map(|r| format!(", request {r}"))
                            .unwrap_or_default(),
                        w.worker,
                        ctx.zone().time(w.until)
                    );
                }
            }
            Ok(if summary.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Restore {
            id,
            dry_run,
            reason,
            yes,
            json: as_json,
        } => {
            let reason = reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
            let reason = match (dry_run, reason) {
                (true, r) => r.unwrap_or_default().to_owned(),
                (false, Some(r)) => r.to_owned(),
                (false, None) => {
                    return Err(Error::new(
                        Code::Usage,
                        "restore needs a reason (--reason): it is recorded and sent to the subject and the DPO",
                    ));
                }
            };
            let id = ctx.resolve(&id).await?;
            if !dry_run && !yes {
                confirm_restore(&id)?;
            }
            let report =
                jobs::restore::restore(ctx, s, &id, dry_run, actor, &reason, crate::clock::now())
                    .await?;
            if as_json {
                crate::outln!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "dry_run": dry_run, "tables": report.tables, "lost": report.lost,
                        "state_changed": report.state_changed, "told": report.told,
                    }))?
                );
            } else {
                let verb = if dry_run { "would restore" } else { "restored" };
                for r in &report.tables {
                    crate::outln!(
                        "{:<8} {:<18} {:<10} {verb} {:>5}; already as backed up {:>4}; changed since, left alone {:>3}  (backup {})",
                        r.system,
                        r.table,
                        r.action,
                        r.restored,
                        r.already,
                        r.changed_since,
                        r.backup
                    );
                }
                for l in &report.lost {
                    crate::outln!(
                        "cannot come back: backup {} of {} task {} expired and was crypto-shredded on {}",
                        l.backup,
                        l.kind.map_or("unknown", |k| k.as_str()),
                        l.task,
                        l.shredded
                    );
                }
                if report.state_changed {
                    use jobs::restore::Told;
                    let subject = report.told.contains(&Told::Subject);
                    let dpo = report.told.contains(&Told::Dpo);
                    let told = match (subject, dpo) {
                        (true, true) => "the subject and the DPO are told",
                        (true, false) => {
                            "the subject is told; no DPO is told ([mail] dpo is not set)"
                        }
                        (false, true) => {
                            "the DPO is told; the subject is not (the request has no address)"
                        }
                        (false, false) => {
                            "no one is told: the request has no address, and [mail] dpo is not set"
                        }
                    };
                    crate::outln!(
                        "request {id} is now restored; its pending tasks are cancelled; {told}"
                    );
                }
            }
            let conflicts: u64 = report.tables.iter().map(|r| r.changed_since).sum();
            Ok(if conflicts > 0 || !report.lost.is_empty() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Retry { task } => {
            let rid = ctx
                .store
                .task_retry(&task, actor, crate::clock::now())
                .await?;
            crate::outln!(
                "task {task} will be tried again at the next run{}",
                rid.map(|r| format!(" (request {r} is retrying)"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Confirm { task, note } => {
            let t = ctx.store.task(&task).await?;
            if t.kind != jobs::TaskKind::Manual {
                return Err(Error::new(
                    Code::IllegalTransition,
                    format!(
                        "task {task} is a {} task; only manual tasks are confirmed",
                        t.kind
                    ),
                ));
            }
            ctx.store.take_for_confirmation(&t.id, actor).await?;
            let result = json!({"confirmed_by": actor, "note": note}).to_string();
            ctx.store
                .task_done(&t.id, actor, &result, &[], crate::clock::now())
                .await?;
            crate::outln!("task {} confirmed", t.id);
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Error::new(Code::Internal, "not a work command")),
    }
}

/// Ask on a terminal before a restore changes the target systems; without a terminal,
/// `--yes` is needed.
fn confirm_restore(id: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(Error::new(
            Code::Usage,
            "restore changes the target systems and cancels the request's pending tasks: \
             confirm on a terminal, or pass --yes",
        ));
    }
    eprint!(
        "Restore request {id}? This puts rows back in the target systems and cancels its pending tasks. [y/N] "
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(Error::new(
            Code::Usage,
            "restore not confirmed; nothing was changed",
        ))
    }
}
