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
                    println!("retention sweep: {n} task(s) created");
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
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "scheduled {} request(s); {} task(s) done, {} to retry, {} need attention; {} request(s) completed; {} backup(s) shredded",
                    summary.scheduled,
                    summary.done,
                    summary.retried,
                    summary.failed,
                    summary.completed_requests.len(),
                    summary.shredded_backups
                );
                if summary.released_leases > 0 {
                    println!(
                        "released {} lease(s) of a worker of this host that stopped before finishing",
                        summary.released_leases
                    );
                }
                if summary.shredded_unrecorded > 0 {
                    println!(
                        "crypto-shredded {} archive(s) that a stopped worker never recorded",
                        summary.shredded_unrecorded
                    );
                }
                for w in &summary.waiting {
                    println!(
                        "waiting: task {} ({} on {}{}) is leased by worker {} until {}; it runs once that worker finishes it or the lease expires",
                        w.task,
                        w.kind,
                        w.system,
                        w.request_id
                            .as_deref()
                            .map(|r| format!(", request {r}"))
                            .unwrap_or_default(),
                        w.worker,
                        w.until.format("%Y-%m-%d %H:%M:%S UTC")
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
            json: as_json,
        } => {
            let report =
                jobs::restore::restore(ctx, s, &id, dry_run, actor, crate::clock::now()).await?;
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"dry_run": dry_run, "tables": report}))?
                );
            } else {
                let verb = if dry_run { "would restore" } else { "restored" };
                for r in &report {
                    println!(
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
            }
            let conflicts: u64 = report.iter().map(|r| r.changed_since).sum();
            Ok(if conflicts > 0 {
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
            println!(
                "task {task} will be tried again at the next run{}",
                rid.map(|r| format!(" (request {r} is retrying)"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Confirm { task, note } => {
            let t = ctx.store.task(&task).await?;
            if t.kind != jobs::MANUAL {
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
            println!("task {} confirmed", t.id);
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Error::new(Code::Internal, "not a work command")),
    }
}
