//! The inbox folder watched by `quietus serve`: `*.json` files hold one ticket each,
//! `*.csv` files bulk exit lists from HR. Each file is moved to `done/` when all of it was
//! accepted, or to `rejected/` beside a `NAME.error.txt` that says why (a CSV list is
//! taken whole or not at all). Writers should create files under a name starting with
//! `.` or ending in `.tmp` and rename them when complete; such files are not read.
//!
//! A crash between storing a ticket and moving its file is harmless: the file is read
//! again and its external id (given, or derived from the file's content) makes the second
//! submission the same request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{MAX_TICKET_BYTES, Source, Submitted, Ticket, parse_ticket, submit};
use crate::error::{Code, Error, Result};
use crate::lifecycle::Context;

/// The columns of a CSV exit list. `exit_date` and one identity of the leaver are
/// required; `external_id` is derived from the file when absent.
pub const CSV_COLUMNS: [&str; 11] = [
    "external_id",
    "email",
    "employee_id",
    "phone",
    "exit_date",
    "successor_email",
    "successor_employee_id",
    "jurisdiction",
    "locale",
    "requested_by",
    "note",
];

/// What happened to one inbox file.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub file: String,
    pub accepted: Vec<Submitted>,
    pub error: Option<String>,
}

/// Process every complete file in the inbox once.
pub async fn process_once(ctx: &Context, dir: &Path, now: DateTime<Utc>) -> Result<Vec<Outcome>> {
    crate::fsx::create_dir_private(dir)
        .map_err(|e| Error::new(Code::Io, format!("inbox {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::new(Code::Io, format!("inbox {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !name.starts_with('.') && !name.ends_with(".tmp") && !name.ends_with(".part")
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let result = process_file(ctx, &path, &name, now).await;
        #[allow(clippy::disallowed_methods)] // part of a file name, in UTC: not a date people read
        let stamp = now.format("%Y%m%dT%H%M%SZ");
        match result {
            Ok(accepted) => {
                move_to(&path, &dir.join("done"), &format!("{stamp}-{name}"))?;
                tracing::info!(file = %name, requests = accepted.len(), "inbox file accepted");
                out.push(Outcome {
                    file: name,
                    accepted,
                    error: None,
                });
            }
            Err(e) if e.code == Code::Store || e.code == Code::Io => {
                // Not the file's fault: leave it for the next round.
                tracing::warn!(file = %name, error = %e, "inbox file left for later");
                out.push(Outcome {
                    file: name,
                    accepted: vec![],
                    error: Some(e.to_string()),
                });
            }
            Err(e) => {
                let rejected = dir.join("rejected");
                let target = format!("{stamp}-{name}");
                move_to(&path, &rejected, &target)?;
                let note = format!("{}\n\ncode: {}\n", e.message, e.code);
                crate::fsx::write_private(&rejected.join(format!("{target}.error.txt")), note)?;
                tracing::warn!(file = %name, code = %e.code, "inbox file rejected");
                out.push(Outcome {
                    file: name,
                    accepted: vec![],
                    error: Some(e.to_string()),
                });
            }
        }
    }
    Ok(out)
}

fn move_to(path: &Path, folder: &Path, name: &str) -> Result<()> {
    crate::fsx::create_dir_private(folder)?;
    std::fs::rename(path, folder.join(name)).map_err(|e| {
        Error::new(
            Code::Io,
            format!(
                "cannot move {} to {}: {e}",
                path.display(),
                folder.display()
            ),
        )
    })
}

async fn process_file(
    ctx: &Context,
    path: &Path,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Submitted>> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_TICKET_BYTES as u64 {
        return Err(Error::new(
            Code::TooLarge,
            format!(
                "{name}: file is {} bytes; the limit is {MAX_TICKET_BYTES}",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path)?;
    let file_id = hex::encode(&Sha256::digest(&bytes)[..8]);
    let source = Source {
        door: crate::intake::Door::Inbox,
        actor: format!("inbox:{name}"),
        trusted: true,
    };
    let handover = ctx.policies.handover_required();
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".json") {
        let mut ticket = parse_ticket(&bytes, name, handover)?;
        if ticket.external_id.is_none() {
            ticket.external_id = Some(format!("inbox:{file_id}"));
        }
        let body = String::from_utf8_lossy(&bytes).into_owned();
        Ok(vec![submit(ctx, &ticket, &body, &source, now).await?])
    } else if lower.ends_with(".csv") {
        let rows = parse_csv(&bytes, name, &file_id, handover)?;
        let mut out = Vec::new();
        for (ticket, body) in rows {
            out.push(submit(ctx, &ticket, &body, &source, now).await?);
        }
        Ok(out)
    } else {
        Err(Error::new(
            Code::Ticket,
            format!("{name}: not a ticket (the inbox takes *.json tickets and *.csv exit lists)"),
        ))
    }
}

/// Parse a CSV exit list whole: every row valid, or an error naming the first bad line.
pub fn parse_csv(
    bytes: &[u8],
    name: &str,
    file_id: &str,
    handover_required: bool,
) -> Result<Vec<(Ticket, String)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = rdr
        .headers()
        .map_err(|e| {
            Error::new(
                Code::Ticket,
                format!("{name}: cannot read the header line: {e}"),
            )
        })?
        .clone();
    for h in &headers {
        if !CSV_COLUMNS.contains(&h) {
            return Err(Error::new(
                Code::Ticket,
                format!(
                    "{name}: line 1: unknown column {h:?} (columns: {})",
                    CSV_COLUMNS.join(", ")
                ),
            ));
        }
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::new(Code::Ticket, format!("{name}: line {line}: {e}")))?;
        let get = |col: &str| {
            headers
                .iter()
                .position(|h| h == col)
                .and_then(|p| rec.get(p))
                .filter(|v| !v.is_empty())
        };
        let mut t = serde_json::Map::new();
        t.insert("kind".into(), "exit".into());
        let ext = get("external_id")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("inbox:{file_id}:{line}"));
        t.insert("external_id".into(), ext.into());
        let mut subject = serde_json::Map::new();
        for (col, key) in [
            ("email", "email"),
            ("employee_id", "employee_id"),
            ("phone", "phone"),
        ] {
            if let Some(v) = get(col) {
                subject.insert(key.into(), v.into());
            }
        }
        t.insert("subject".into(), subject.into());
        let mut successor = serde_json::Map::new();
        for (col, key) in [
            ("successor_email", "email"),
            ("successor_employee_id", "employee_id"),
        ] {
            if let Some(v) = get(col) {
                successor.insert(key.into(), v.into());
            }
        }
        if !successor.is_empty() {
            t.insert("successor".into(), successor.into());
        }
        for col in [
            "exit_date",
            "jurisdiction",
            "locale",
            "requested_by",
            "note",
        ] {
            if let Some(v) = get(col) {
                t.insert(col.into(), v.into());
            }
        }
        let body = serde_json::Value::Object(t).to_string();
        let origin = format!("{name}: line {line}");
        let ticket = parse_ticket(body.as_bytes(), &origin, handover_required)?;
        out.push((ticket, body));
    }
    if out.is_empty() {
        return Err(Error::new(
            Code::Ticket,
            format!("{name}: the list has no rows"),
        ));
    }
    Ok(out)
}

/// Watch the inbox until `shutdown` resolves.
pub async fn watch(
    ctx: &Context,
    dir: PathBuf,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = process_once(ctx, &dir, crate::clock::now()).await {
            tracing::warn!(error = %e, "inbox round failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lists_parse_whole_or_not_at_all() {
        let good = "employee_id,email,exit_date,successor_employee_id\nE1,a@corp.example,2026-12-31,E2\nE3,,2027-01-15,E2\n";
        let rows = parse_csv(good.as_bytes(), "x.csv", "f00", true).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0.external_id.as_deref(), Some("inbox:f00:2"));
        let bad =
            "employee_id,exit_date,successor_employee_id\nE1,2026-12-31,E2\nE3,31/12/2026,E2\n";
        let e = parse_csv(bad.as_bytes(), "x.csv", "f00", true).unwrap_err();
        assert!(e.message.contains("x.csv: line 3"), "{}", e.message);
        let e = parse_csv(b"employee_id,colour\nE1,red\n", "y.csv", "f", true).unwrap_err();
        assert!(
            e.message.contains("unknown column \"colour\""),
            "{}",
            e.message
        );
    }
}
