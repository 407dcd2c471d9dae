//! `quietus verify`, `log verify`, `keys init|rotate`.

use std::process::ExitCode;

use super::{Command, KeysCommand, LogCommand};
use crate::app::App;
use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::proof::note::Checkpoint;
use crate::proof::receipt::{self, Check, Receipt};
use crate::proof::{keys, log};

fn print_checks(checks: &[Check], json: bool) -> Result<ExitCode> {
    let ok = !checks.is_empty() && checks.iter().all(|c| c.ok);
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "checks": checks}))?
        );
    } else {
        for c in checks {
            crate::outln!("{} {}", if c.ok { "ok    " } else { "FAILED" }, c.what);
        }
        crate::outln!(
            "{}",
            if ok {
                "the receipt holds"
            } else {
                "the receipt does NOT hold"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn run(config: &Config, cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Verify {
            receipt: path,
            public_key,
            checkpoint,
            backup,
            key,
            recheck,
            json,
        } => {
            let text = crate::fsx::read_text_limited(&path, crate::fsx::limit::RECEIPT)?;
            let r: Receipt = match serde_json::from_str(&text) {
                Ok(r) => r,
                Err(e) => {
                    return print_checks(
                        &[Check {
                            ok: false,
                            what: format!("{} is not a receipt: {e}", path.display()),
                        }],
                        json,
                    );
                }
            };
            let pk = keys::public(config, public_key.as_deref())?;
            // A later checkpoint needs the consistency proof from the log; the same tree does not.
            let later_note = checkpoint
                .as_ref()
                .map(|p| crate::fsx::read_text_limited(p, crate::fsx::limit::RECEIPT))
                .transpose()?;
            let mut consistency = Vec::new();
            if let Some(note) = &later_note
                && let Ok(cp) = Checkpoint::open(note, &pk)
                && cp.size > r.log.tree_size
            {
                let app = App::open(config.clone()).await?;
                consistency = log::consistency(&app.ctx.store, r.log.tree_size, cp.size).await?;
                app.close().await;
            }
            let mut checks = receipt::verify(
                &r,
                &pk,
                later_note.as_deref().map(|n| (n, consistency.as_slice())),
            );
            if checks.iter().all(|c| c.ok)
                && let (Some(b), Some(k)) = (&backup, &key)
            {
                checks.extend(receipt::verify_backup(&r, b, k));
            }
            if recheck && checks.iter().all(|c| c.ok) {
                checks.extend(recheck_live(config, &r).await?);
            }
            print_checks(&checks, json)
        }
        Command::Log {
            command: LogCommand::Verify { public_key, json },
        } => {
            let pk = keys::public(config, public_key.as_deref())?;
            let app = App::open(config.clone()).await?;
            let copies = log::CheckpointCopy::of_config(config);
            let report = log::verify(&app.ctx.store, &pk, &copies).await?;
            app.close().await;
            if json {
                crate::outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.problems {
                    crate::outln!("FAILED {p}");
                }
                crate::outln!(
                    "{} entries, {} checkpoints, {} checkpoint copies: {}",
                    report.entries,
                    report.checkpoints,
                    report.checkpoint_copies,
                    if report.problems.is_empty() {
                        "the log holds"
                    } else {
                        "the log does NOT hold"
                    }
                );
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Keys { command } => {
            let key = match command {
                KeysCommand::Init => keys::init(config)?,
                KeysCommand::Rotate => keys::rotate(config)?,
            };
            crate::outln!(
                "signing key:  {} (secret: keep it safe, back it up)",
                config.path(&config.proof.key_file).display()
            );
            crate::outln!(
                "public key:   {}",
                config.path(&config.proof.public_key_file).display()
            );
            crate::outln!("              {}", key.verifier().to_text());
            crate::outln!();
            crate::outln!(
                "Give the public key to anyone who verifies receipts: `quietus verify RECEIPT --public-key FILE`."
            );
            crate::outln!(
                "To rotate: `quietus keys rotate`. The old key files stay beside the new ones (*.old and"
            );
            crate::outln!(
                "*.pub.NAME+HASH); receipts name the key that signed them, so old receipts verify with the old"
            );
            crate::outln!("public key, and checkpoints after the rotation with the new one.");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Error::new(Code::Internal, "not a proof command")),
    }
}

/// Ask the live systems again about every table the receipt says was changed
/// (`jobs::recheck`).
async fn recheck_live(config: &Config, r: &Receipt) -> Result<Vec<Check>> {
    let app = App::open(config.clone()).await?;
    let ctx = &app.ctx;
    let (backup_dir, keys_dir) = config.backup_dirs();
    let checks =
        crate::jobs::recheck::receipt(ctx, &backup_dir, &keys_dir, config.jobs.batch_size, &r.body)
            .await;
    app.close().await;
    checks
}
