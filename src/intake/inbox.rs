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

/// The longest file name kept whole in `done/` and `rejected/`, in bytes; a longer one
/// keeps a prefix and a hash of the whole name, so that with the time stamp in front and
/// `.error.txt` behind the target stays far below the 255 bytes a file name may have.
const NAME_KEPT: usize = 120;

/// The name an inbox file gets in `done/` or `rejected/`: the time stamp and the file's
/// name, bounded (see [`NAME_KEPT`]).
fn target_name(stamp: &str, name: &str) -> String {
    if name.len() <= NAME_KEPT {
        return format!("{stamp}-{name}");
    }
    let mut cut = NAME_KEPT - 20;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    format!("{stamp}-{}~{hash}", &name[..cut])
}

/// Process every complete file in the inbox once. A file that cannot be taken or moved is
/// reported and the round goes on with the others.
pub async fn process_once(ctx: &Context, dir: &Path, now: DateTime<Utc>) -> Result<Vec<Outcome>> {
    crate::fsx::create_dir_private(dir)
        .map_err(|e| Error::new(Code::Io, format!("inbox {}: {e}", dir.display())))?;
    let owner = owner_of(dir)?;
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .map_err(|e| Error::new(Code::Io, format!("inbox {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // done/ and rejected/ are quietus's own (a link by those names is not).
            let own =
                (name == "done" || name == "rejected") && e.file_type().is_ok_and(|t| t.is_dir());
            let skipped =
                own || name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part");
            (!skipped).then(|| (e.path(), name))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    #[allow(clippy::disallowed_methods)] // part of a file name, in UTC: not a date people read
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    for (path, raw_name) in files {
        // The name as people see it (in messages, the actor, the log, done/ and
        // rejected/): a newline or an escape sequence in it is written out.
        let name = crate::text::escaped(&raw_name).into_owned();
        let result = process_file(ctx, &path, &name, owner, now).await;
        let target = target_name(&stamp, &name);
        let mut outcome = Outcome {
            file: name.clone(),
            accepted: vec![],
            error: None,
        };
        match result {
            Ok(accepted) => {
                tracing::info!(file = %name, requests = accepted.len(), "inbox file accepted");
                outcome.accepted = accepted;
                if let Err(e) = move_to(&path, &dir.join("done"), &target) {
                    tracing::warn!(file = %name, error = %e, "accepted inbox file not moved");
                    outcome.error = Some(e.to_string());
                }
            }
            Err(e) if e.code == Code::Store || e.code == Code::Io => {
                // Not the file's fault: leave it for the next round.
                tracing::warn!(file = %name, error = %e, "inbox file left for later");
                outcome.error = Some(e.to_string());
            }
            Err(e) => {
                let rejected = dir.join("rejected");
                let moved = move_to(&path, &rejected, &target).and_then(|()| {
                    let note = format!("{}\n\ncode: {}\n", e.message, e.code);
                    crate::fsx::write_private(&rejected.join(format!("{target}.error.txt")), note)
                        .map_err(|e| Error::new(Code::Io, format!("inbox note: {e}")))
                });
                match moved {
                    Ok(()) => tracing::warn!(file = %name, code = %e.code, "inbox file rejected"),
                    Err(m) => {
                        tracing::warn!(file = %name, code = %e.code, error = %m, "rejected inbox file not moved")
                    }
                }
                outcome.error = Some(e.to_string());
            }
        }
        out.push(outcome);
    }
    Ok(out)
}

#[cfg(unix)]
fn owner_of(dir: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .map(|m| m.uid())
        .map_err(|e| Error::new(Code::Io, format!("inbox {}: {e}", dir.display())))
}

#[cfg(not(unix))]
fn owner_of(_dir: &Path) -> Result<u32> {
    Ok(0)
}

fn move_to(path: &Path, folder: &Path, name: &str) -> Result<()> {
    let fail = |e: std::io::Error| {
        Error::new(
            Code::Io,
            format!(
                "cannot move {} to {}: {e}",
                path.display(),
                folder.display()
            ),
        )
    };
    crate::fsx::create_dir_private(folder).map_err(fail)?;
    let to = folder.join(name);
    std::fs::rename(path, &to).map_err(fail)?;
    // The copy quietus keeps is owner-only, whatever mode its writer gave it.
    crate::fsx::make_private(&to).map_err(fail)
}

/// The bytes of an inbox file: a regular file owned by the inbox's owner, read without
/// following a link, at most the ticket limit. Anything else is the file's fault (it is
/// moved aside), and nothing of what a link points at is read or echoed.
fn read_inbox_file(path: &Path, name: &str, owner: u32) -> Result<Vec<u8>> {
    use crate::fsx::Refused;
    let refused = |why: String| {
        Error::new(
            Code::Ticket,
            format!("{name}: {why}; the inbox reads only regular files owned by its owner"),
        )
    };
    let f = match crate::fsx::open_owned_regular(path, owner) {
        Ok(f) => f,
        Err(Refused::NotRegular(kind)) => return Err(refused(format!("is {kind}"))),
        Err(Refused::NotOwner) => return Err(refused("belongs to another user".into())),
        // Out of file handles or memory: not the file's fault, it waits for the next round.
        Err(Refused::Io(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            ) =>
        {
            return Err(Error::new(
                Code::Io,
                format!("{name}: cannot be opened ({e})"),
            ));
        }
        Err(Refused::Io(e)) => return Err(refused(format!("cannot be opened ({e})"))),
    };
    crate::fsx::read_bounded(f, name, MAX_TICKET_BYTES as u64).map_err(|e| {
        if e.code == Code::TooLarge {
            e
        } else {
            refused(format!("cannot be read ({})", e.message))
        }
    })
}

async fn process_file(
    ctx: &Context,
    path: &Path,
    name: &str,
    owner: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Submitted>> {
    let bytes = read_inbox_file(path, name, owner)?;
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
        let listed: Vec<crate::intake::Listed<'_>> = rows
            .iter()
            .map(|r| (&r.ticket, r.body.as_str(), Some(r.origin.clone())))
            .collect();
        // The whole list in one transaction: a bad row stores none of it.
        crate::intake::submit_all(ctx, &listed, &source, now).await
    } else {
        Err(Error::new(
            Code::Ticket,
            format!("{name}: not a ticket (the inbox takes *.json tickets and *.csv exit lists)"),
        ))
    }
}

/// A row of a CSV exit list, as a ticket.
#[derive(Debug, Clone)]
pub struct CsvRow {
    pub ticket: Ticket,
    /// The ticket as JSON (stored as the request's ticket body).
    pub body: String,
    /// `"list.csv: line 3"`.
    pub origin: String,
}

/// The line on which a quoted field opens that the file never closes (RFC 4180: a quote
/// inside a quoted field is doubled, so quotes toggle in and out of a field).
fn unclosed_quote(bytes: &[u8]) -> Option<usize> {
    let (mut line, mut open_at, mut quoted) = (1, None, false);
    for &b in bytes {
        match b {
            b'"' => {
                quoted = !quoted;
                open_at = quoted.then_some(line);
            }
            b'\n' => line += 1,
            _ => {}
        }
    }
    open_at
}

/// Parse a CSV exit list whole: every row valid, or an error naming the first bad line
/// (never a value of it).
pub fn parse_csv(
    bytes: &[u8],
    name: &str,
    file_id: &str,
    handover_required: bool,
) -> Result<Vec<CsvRow>> {
    if let Some(line) = unclosed_quote(bytes) {
        return Err(Error::new(
            Code::Ticket,
            format!("{name}: line {line}: a quoted field is never closed"),
        ));
    }
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
    for (i, h) in headers.iter().enumerate() {
        if headers.iter().take(i).any(|earlier| earlier == h) {
            return Err(Error::new(
                Code::Ticket,
                format!("{name}: line 1: the column {h:?} is named twice"),
            ));
        }
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
    // Which line each external id was first given on.
    let mut external_ids: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| Error::new(Code::Ticket, format!("{name}: line {line}: {e}")))?;
        // No spreadsheet formulas (CSV injection): the list is HR's export, and its values
        // reach reports and exports that a spreadsheet may open. A phone number may begin
        // with `+`.
        for (h, v) in headers.iter().zip(rec.iter()) {
            let first = v.chars().next();
            let formula = matches!(first, Some('=' | '@'))
                || (matches!(first, Some('+' | '-')) && h != "phone");
            if formula {
                return Err(Error::new(
                    Code::Ticket,
                    format!(
                        "{name}: line {line}: the value of column {h:?} begins with {:?}, as a spreadsheet formula does; exit lists hold none",
                        first.unwrap_or_default()
                    ),
                ));
            }
        }
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
        if let Some(first) = external_ids.insert(ext.clone(), line) {
            return Err(Error::new(
                Code::Ticket,
                format!(
                    "{name}: line {line}: the external_id of line {first} again (one row per leaver)"
                ),
            ));
        }
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
        out.push(CsvRow {
            ticket,
            body,
            origin,
        });
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
        assert_eq!(rows[0].ticket.external_id.as_deref(), Some("inbox:f00:2"));
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
