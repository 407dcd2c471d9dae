//! The request commands: submit, queue, show, plan, approve, reject, hold, release,
//! extend, cancel.

use std::io::Read;
use std::process::ExitCode;

use serde_json::json;

use super::output::{days_left_text, masked_subject};
use super::{Command, usage};
use crate::error::{Code, Error, Result};
use crate::intake::{self, Source};
use crate::lifecycle::{Context, Decision, State};
use crate::policy::Period;

pub async fn run(ctx: &Context, cmd: Command, actor: &str) -> Result<ExitCode> {
    let now = crate::clock::now();
    match cmd {
        Command::Submit { file, json } => submit(ctx, &file, json, actor, now).await,
        Command::Queue {
            state,
            overdue,
            json,
        } => queue(ctx, state, overdue, json, now).await,
        Command::Show { id, json } => show(ctx, &ctx.resolve(&id).await?, json, now).await,
        Command::Plan { id, json } => {
            let req = ctx.request(&ctx.resolve(&id).await?).await?;
            let plan = ctx.plan(&req, now).await;
            if json {
                crate::outln!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                crate::out!("{}", plan.render_text(ctx.zone()));
            }
            Ok(if plan.is_blocked() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Approve { ids, reason } => approve(ctx, &ids, reason.as_deref(), actor).await,
        Command::Reject { id, reason } => {
            decide(ctx, &id, Decision::Reject, Some(&reason), actor, now).await
        }
        Command::Hold { id, reason } => {
            decide(ctx, &id, Decision::Hold, Some(&reason), actor, now).await
        }
        Command::Release { id, reason } => {
            decide(ctx, &id, Decision::Release, reason.as_deref(), actor, now).await
        }
        Command::Cancel { id, reason } => {
            decide(ctx, &id, Decision::Cancel, reason.as_deref(), actor, now).await
        }
        Command::Extend { id, reason, by } => {
            let by: Period = by
                .parse()
                .map_err(|e: String| usage(format!("--by: {e}")))?;
            let id = ctx.resolve(&id).await?;
            let req = ctx.extend(&id, by, &reason, actor, now).await?;
            crate::outln!(
                "request {} deadline extended to {} (reason recorded; the subject is told)",
                req.id,
                req.due_date
                    .map(|d| ctx.zone().day(d).to_string())
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Error::new(Code::Internal, "not a request command")),
    }
}

async fn submit(
    ctx: &Context,
    file: &str,
    json: bool,
    actor: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ExitCode> {
    let (bytes, origin) = if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(intake::MAX_TICKET_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::new(Code::Io, format!("standard input: {e}")))?;
        (buf, "standard input".to_owned())
    } else {
        // A file, a pipe or a device alike: at most the limit plus one byte is read.
        (
            crate::fsx::read_limited(std::path::Path::new(file), intake::MAX_TICKET_BYTES as u64)?,
            file.to_owned(),
        )
    };
    let ticket = intake::parse_ticket(&bytes, &origin, ctx.policies.handover_required())?;
    // The DPO's own entry: trusted, as HR's systems are.
    let source = Source {
        door: crate::intake::Door::Cli,
        actor: actor.to_owned(),
        trusted: true,
    };
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let sub = intake::submit_all(ctx, &[(&ticket, &raw, Some(origin))], &source, now)
        .await?
        .pop()
        .ok_or_else(|| Error::new(Code::Internal, "a submission stored nothing"))?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string(
                &json!({"id": sub.id, "created": sub.created, "state": sub.state})
            )?
        );
    } else if sub.created {
        crate::outln!("{}", sub.id);
    } else {
        crate::outln!("{}", sub.id);
        eprintln!(
            "(already received: external_id {:?} is request {})",
            ticket.external_id.unwrap_or_default(),
            sub.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn queue(
    ctx: &Context,
    state: Option<String>,
    overdue: bool,
    json: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ExitCode> {
    let states = match state {
        Some(s) => vec![
            s.parse::<State>()
                .map_err(|e: String| usage(format!("--state: {e}")))?,
        ],
        None => vec![],
    };
    let today = ctx.today(now);
    let items = ctx.queue(&states, overdue, today).await?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"today": today, "requests": items}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        crate::outln!("no requests");
        return Ok(ExitCode::SUCCESS);
    }
    let zone = ctx.zone();
    let dues: Vec<String> = items
        .iter()
        .map(|i| {
            i.request
                .due_date
                .map(|d| zone.day(d).to_string())
                .unwrap_or_else(|| "-".into())
        })
        .collect();
    let w = dues.iter().map(|d| d.chars().count()).max().unwrap_or(3);
    crate::outln!(
        "{:<16}  {:<7} {:<15} {:<4}  {:<w$}  {:<18} SUBJECT",
        "ID",
        "KIND",
        "STATE",
        "LAW",
        "DUE",
        "LEFT"
    );
    for (i, due) in items.iter().zip(&dues) {
        let r = &i.request;
        crate::outln!(
            "{:<16}  {:<7} {:<15} {:<4}  {:<w$}  {:<18} {}",
            r.id,
            r.kind.as_str(),
            r.state.as_str(),
            r.jurisdiction.as_str(),
            due,
            days_left_text(r, today),
            masked_subject(r)
        );
        if let Some(a) = &i.attention {
            crate::outln!("{:<16}  ! {a}", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(
    ctx: &Context,
    id: &str,
    json: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ExitCode> {
    let req = ctx.request(id).await?;
    let today = ctx.today(now);
    let zone = ctx.zone();
    let ticket = ctx.store.ticket(&req.id).await?;
    let history = ctx.store.history(&req.id).await?;
    let saved = ctx.store.latest_plan(&req.id).await?;
    let tasks = ctx.store.tasks_of(&req.id).await?;
    let backups = ctx.store.backups_of(&req.id).await?;
    let plan = match &saved {
        Some(p) => serde_json::from_str::<crate::plan::Plan>(&p.body)?,
        None => ctx.plan(&req, now).await,
    };
    let mut warnings = Vec::new();
    if let (Some(start), Some(due)) = (req.clock_start, req.due_date) {
        use chrono::Datelike;
        for y in start.year()..=due.year() {
            if req.jurisdiction == crate::policy::Jurisdiction::Pipl && !ctx.calendar.covers(y) {
                warnings.push(format!("the holiday calendar has no data for {y}: working days in {y} were counted as weekends only"));
            }
        }
    }
    if json {
        let ticket_json: serde_json::Value =
            serde_json::from_str(&ticket).unwrap_or(serde_json::Value::String(ticket));
        let v = json!({
            "request": req, "days_left": req.days_left(today), "overdue": req.is_overdue(today),
            "deadline_warnings": warnings, "ticket": ticket_json,
            "plan": plan, "plan_approved": saved.is_some() && req.state != crate::lifecycle::State::PendingReview,
            "history": history,
            "tasks": tasks, "backups": backups,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "request {}  ({}, {}, locale {})",
        req.id,
        req.kind,
        req.jurisdiction,
        req.locale
    );
    crate::outln!(
        "  state:       {}{}",
        req.state,
        req.held_from
            .map(|h| format!(" (held from {h})"))
            .unwrap_or_default()
    );
    if let Some(e) = &req.external_id {
        crate::outln!("  external id: {e}");
    }
    crate::outln!(
        "  received:    {} via {}",
        zone.time(req.received_at),
        req.source
    );
    if let Some(x) = req.exit_date {
        crate::outln!("  exit date:   {}", zone.day(x));
    }
    match req.due_date {
        Some(d) => crate::outln!(
            "  due:         {} ({}){}",
            zone.day(d),
            days_left_text(&req, today),
            if req.extended_at.is_some() {
                " — extended"
            } else {
                ""
            }
        ),
        None => crate::outln!("  due:         the clock starts when the subject verifies"),
    }
    if let Some(r) = &req.extension_reason {
        crate::outln!(
            "  extension:   from {} — {r}",
            req.original_due_date
                .map(|d| zone.day(d).to_string())
                .unwrap_or_default()
        );
    }
    for w in &warnings {
        crate::outln!("  warning:     {w}");
    }
    crate::outln!("  ticket:      {}", ticket.trim());
    crate::outln!();
    match (&saved, req.state) {
        (Some(_), crate::lifecycle::State::PendingReview) => crate::outln!(
            "plan approved before (the policies changed it since, see the history; `quietus plan {}` shows it as it is now):",
            req.id
        ),
        (Some(_), _) => crate::outln!("approved plan:"),
        (None, _) => {}
    }
    crate::out!("{}", plan.render_text(zone));
    if !tasks.is_empty() {
        crate::outln!();
        crate::outln!("tasks:");
        for t in &tasks {
            crate::outln!(
                "  {}  {:<9} {:<6} {:<20} due {}  attempts {}{}",
                t.id,
                t.kind,
                t.system,
                t.state,
                zone.time(t.due_at),
                t.attempts,
                t.last_error
                    .as_deref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !backups.is_empty() {
        crate::outln!();
        crate::outln!("backups:");
        for b in &backups {
            let status = match b.shredded_at {
                Some(t) => format!("crypto-shredded {}", zone.day_of(t)),
                None => format!("expires {}", zone.day_of(b.expires_at)),
            };
            crate::outln!(
                "  {}  {} rows, {} bytes, sha256 {}…, {status}",
                b.id,
                b.rows,
                b.size,
                &b.sha256[..16]
            );
        }
    }
    crate::outln!();
    crate::outln!("history:");
    for h in &history {
        crate::outln!(
            "  {}  {:<28} {} -> {}{}",
            zone.time(h.at),
            h.actor,
            h.from_state.map_or("-", |s| s.as_str()),
            h.to_state,
            h.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Approvals decided at once: each surveys the systems again (round trips to every
/// target), independent of the others (issue 8: 100 approvals one after another took
/// 4.4 s, most of it waiting).
const APPROVE_AT_ONCE: usize = 8;

/// Approve each id, up to [`APPROVE_AT_ONCE`] at a time, each at its own time, reported
/// in the order given. One id: its error is the command's. Several: each failure is
/// reported on standard error and the rest go on; the exit code says whether any failed.
/// An id named twice is decided (and refused) after the first is.
async fn approve(
    ctx: &Context,
    ids: &[String],
    reason: Option<&str>,
    actor: &str,
) -> Result<ExitCode> {
    if let [id] = ids {
        return decide(
            ctx,
            id,
            Decision::Approve,
            reason,
            actor,
            crate::clock::now(),
        )
        .await;
    }
    use futures_util::StreamExt as _;
    let mut failed = 0usize;
    let mut report = |typed: &str, decided: Result<crate::lifecycle::Request>| match decided {
        Ok(req) => crate::outln!("request {} is now {}", req.id, req.state),
        Err(e) => {
            failed += 1;
            eprintln!("error: {typed}: {} (code: {})", e.message, e.code);
        }
    };
    // Resolved first (prefixes to whole ids), so that one request named twice is never
    // decided twice at once.
    let mut seen = std::collections::HashSet::new();
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for typed in ids {
        match ctx.resolve(typed).await {
            Ok(id) if seen.insert(id.clone()) => first.push((typed, Ok(id))),
            Ok(id) => again.push((typed, id)),
            Err(e) => first.push((typed, Err(e))),
        }
    }
    let mut decided = futures_util::stream::iter(first)
        .map(|(typed, id)| approve_one(ctx, typed, id, reason, actor))
        .buffered(APPROVE_AT_ONCE);
    while let Some((typed, d)) = decided.next().await {
        report(typed, d);
    }
    for (typed, id) in again {
        let (typed, d) = approve_one(ctx, typed, Ok(id), reason, actor).await;
        report(typed, d);
    }
    if failed > 0 {
        eprintln!("{failed} of {} request(s) not approved", ids.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The approval of one resolved id, at its own time, with the id as it was typed.
async fn approve_one<'a>(
    ctx: &Context,
    typed: &'a str,
    id: Result<String>,
    reason: Option<&str>,
    actor: &str,
) -> (&'a str, Result<crate::lifecycle::Request>) {
    let decided = match id {
        Ok(id) => {
            ctx.decide(&id, Decision::Approve, actor, reason, crate::clock::now())
                .await
        }
        Err(e) => Err(e),
    };
    (typed, decided)
}

/// A decision on the request `typed` names (its id or a unique prefix).
async fn decide(
    ctx: &Context,
    typed: &str,
    d: Decision,
    reason: Option<&str>,
    actor: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ExitCode> {
    let id = ctx.resolve(typed).await?;
    let req = ctx.decide(&id, d, actor, reason, now).await?;
    crate::outln!("request {} is now {}", req.id, req.state);
    Ok(ExitCode::SUCCESS)
}
