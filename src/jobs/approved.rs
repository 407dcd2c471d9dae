//! Execution carries out exactly the approved plan. Before a task of a request runs, the
//! plan that the policies in force make of the same request and the same rows is compared
//! with the plan approved, for the work still to be done: its entries (action, columns,
//! categories, rule, basis, due date, follow-up) and the data map of the tables involved
//! (how their rows are found and changed). When they differ, nothing runs: an open
//! request goes back to the DPO (`pending_review`, its open tasks cancelled, the difference
//! in its history); a completed one (a follow-up years later) has the task wait for a
//! person (`needs_attention`). Never a quieter erasure than approved.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::task::Step;
use super::{Settings, TaskBody};
use crate::error::{Code, Error, Result};
use crate::lifecycle::{Context, Request};
use crate::plan::{Entry, Plan};
use crate::policy::datamap::split_target;
use crate::policy::{Action, Driver, FollowUp, Table};
use crate::store::TaskRow;
use crate::targets::{SuccessorCheck, SystemSurvey, TableCounts};

/// States of a task whose work is still to be done.
const OPEN: [super::TaskState; 5] = [
    super::TaskState::WaitingKeys,
    super::TaskState::Pending,
    super::TaskState::BackedUp,
    super::TaskState::NeedsAttention,
    super::TaskState::WaitingConfirmation,
];

/// How the plan of `req` made now differs from the plan approved, for the work its open
/// tasks still have to do (one line per difference; empty when they agree).
pub(super) async fn differences(ctx: &Context, req: &Request) -> Result<Vec<String>> {
    let saved = ctx.store.latest_plan(&req.id).await?.ok_or_else(|| {
        Error::new(
            Code::Store,
            format!("request {} has tasks but no approved plan", req.id),
        )
    })?;
    let approved: Plan = serde_json::from_str(&saved.body)?;
    if approved.policy_digest == ctx.policies.digest {
        return Ok(Vec::new()); // the very policy files it was approved with
    }
    // The tables of the open work; and those whose data map it depends on: a follow-up
    // finds its rows by the keys captured before anything changed, the other tasks
    // through identities, references and owners.
    let mut open: BTreeSet<(String, String)> = BTreeSet::new();
    let mut watched: BTreeSet<(String, String)> = BTreeSet::new();
    for t in ctx.store.tasks_of(&req.id).await? {
        if t.kind == super::TaskKind::Manual || !OPEN.contains(&t.state) {
            continue; // done, cancelled, or carried out by a person from instructions sent
        }
        let body: TaskBody = serde_json::from_str(&t.body)?;
        for e in body.entries {
            let tables = match (t.kind, approved.data_map.get(&e.system)) {
                (super::TaskKind::Followup, _) | (_, None) => BTreeSet::from([e.table.clone()]),
                (_, Some(map)) => found_through(map, &e.table),
            };
            watched.extend(tables.into_iter().map(|n| (e.system.clone(), n)));
            open.insert((e.system, e.table));
        }
    }
    let now = crate::plan::make(
        &req.plan_input(&ctx.policies),
        &ctx.policies,
        &replayed_survey(ctx, &approved),
        approved.made_at,
    );
    let mut out: Vec<String> = now
        .blocked
        .iter()
        .map(|b| format!("the plan would now be blocked: {b}"))
        .collect();
    out.extend(entry_differences(&approved, &now, &open));
    out.extend(data_map_differences(ctx, &approved, &watched));
    Ok(out)
}

/// What the survey at approval found, as the approved plan records it: the same rows, so
/// that only the policies can make a difference.
fn replayed_survey(ctx: &Context, approved: &Plan) -> Vec<SystemSurvey> {
    let mut by_system: BTreeMap<&str, SystemSurvey> = BTreeMap::new();
    for e in &approved.entries {
        let s = by_system
            .entry(e.system.as_str())
            .or_insert_with(|| SystemSurvey {
                system: e.system.clone(),
                manual: ctx
                    .policies
                    .system(&e.system)
                    .is_some_and(|sys| sys.driver == Driver::Manual),
                ..SystemSurvey::default()
            });
        let c: &mut TableCounts = s.tables.entry(e.table.clone()).or_default();
        match e.action {
            Action::Reassign => c.owned_rows = c.owned_rows.max(e.rows),
            Action::Erase
            | Action::Anonymize
            | Action::Retain
            | Action::Disable
            | Action::Export => c.subject_rows = c.subject_rows.max(e.rows),
        }
        if e.action == Action::Reassign {
            // Approval found the successor: once, active, not the leaver.
            s.successor = Some(SuccessorCheck {
                table: String::new(),
                found: 1,
                ..SuccessorCheck::default()
            });
        }
    }
    by_system.into_values().collect()
}

fn then_text(t: Option<FollowUp>) -> &'static str {
    match t {
        Some(FollowUp::Erase) => "then erase",
        Some(FollowUp::Anonymize) => "then anonymize",
        None => "no follow-up",
    }
}

/// The entries of the open tables that differ, field by field.
fn entry_differences(
    approved: &Plan,
    now: &Plan,
    open: &BTreeSet<(String, String)>,
) -> Vec<String> {
    type Key = (String, String, &'static str);
    let index = |p: &Plan| -> BTreeMap<Key, Entry> {
        p.entries
            .iter()
            .filter(|e| open.contains(&(e.system.clone(), e.table.clone())))
            .map(|e| {
                (
                    (e.system.clone(), e.table.clone(), e.action.as_str()),
                    e.clone(),
                )
            })
            .collect()
    };
    let (a, b) = (index(approved), index(now));
    let keys: BTreeSet<&Key> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (system, table, action) = k;
        let place = format!("{system}.{table} {action}");
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!(
                "{place} ({}) was approved; the policies now plan none",
                x.columns.join(", ")
            )),
            (None, Some(y)) => out.push(format!(
                "{place} ({}) is planned now but was not approved",
                y.columns.join(", ")
            )),
            (Some(x), Some(y)) if x != y => {
                let mut d = Vec::new();
                let mut field = |name: &str, was: String, is: String| {
                    if was != is {
                        d.push(format!("{name} {was} -> {is}"));
                    }
                };
                field("rows", x.rows.to_string(), y.rows.to_string());
                field("columns", x.columns.join(", "), y.columns.join(", "));
                field(
                    "categories",
                    x.categories.join(", "),
                    y.categories.join(", "),
                );
                field("rule", x.rule.clone(), y.rule.clone());
                field("basis", x.basis.clone(), y.basis.clone());
                field("due", x.due.to_string(), y.due.to_string());
                field(
                    "follow-up",
                    then_text(x.then).into(),
                    then_text(y.then).into(),
                );
                out.push(format!("{place}: {}", d.join("; ")));
            }
            (Some(_), Some(_)) | (None, None) => {}
        }
    }
    out
}

/// `table` and the tables its rows are found through (references and owners, up the
/// chain).
fn found_through(tables: &[Table], table: &str) -> BTreeSet<String> {
    let mut todo: Vec<String> = vec![table.to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(t) = tables.iter().find(|t| t.name == name) else {
            continue;
        };
        let targets = t
            .references
            .iter()
            .map(|r| r.to.as_str())
            .chain(t.owner.iter().map(|o| o.references.as_str()));
        todo.extend(
            targets
                .filter_map(split_target)
                .map(|(pt, _)| pt.to_owned()),
        );
    }
    seen
}

/// The `watched` tables whose data map changed since approval, naming what changed.
fn data_map_differences(
    ctx: &Context,
    approved: &Plan,
    watched: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (system, name) in watched {
        let Some(was) = approved
            .data_map
            .get(system)
            .and_then(|tables| tables.iter().find(|t| t.name == *name))
        else {
            continue; // a plan saved before plans recorded their data map
        };
        let Some(is) = ctx.policies.system(system).and_then(|s| s.table(name)) else {
            out.push(format!("{system}.{name}: no longer in the data map"));
            continue;
        };
        if was == is {
            continue;
        }
        let (w, i) = (
            serde_json::to_value(was).unwrap_or_default(),
            serde_json::to_value(is).unwrap_or_default(),
        );
        let keys: BTreeSet<&String> = w
            .as_object()
            .into_iter()
            .chain(i.as_object())
            .flat_map(|o| o.keys())
            .collect();
        let changed: Vec<&str> = keys
            .into_iter()
            .filter(|k| w.get(k.as_str()) != i.get(k.as_str()))
            .map(String::as_str)
            .collect();
        out.push(format!(
            "{system}.{name}: its data map changed ({})",
            changed.join(", ")
        ));
    }
    out
}

/// Stop a task whose plan changed: the request goes back to the DPO, or, when it is
/// completed already, the task needs attention. Nothing of the task runs.
pub(super) async fn stop(
    ctx: &Context,
    s: &Settings,
    task: &TaskRow,
    req: &Request,
    diff: &[String],
    now: DateTime<Utc>,
) -> Result<Step> {
    let why = format!(
        "the policies changed since approval, and with them the plan: {}",
        diff.join("; ")
    );
    use crate::mail::vars::{FailureAlert, Message};
    // An open request goes back to review; a later task of a completed request (a
    // retention follow-up), or of one held or closed, waits for a person.
    let back_to_review = crate::lifecycle::state::Event::PlanChanged.target(req.state);
    let Some(to) = back_to_review else {
        // Nothing is tried again on its own.
        ctx.store
            .task_failed(&task.id, &s.worker, &why, now, 1)
            .await?;
        let alert = ctx.mail.to_dpo(
            crate::mail::Concerns::Request {
                id: &req.id,
                kind: req.kind,
            },
            Message::FailureAlert(FailureAlert {
                request_id: Some(req.id.clone()),
                error: why.clone(),
                task_id: Some(task.id.clone()),
                system: Some(task.system.clone()),
                attempts: None,
            }),
        )?;
        for m in &alert {
            ctx.store.enqueue(m, now).await?;
        }
        tracing::warn!(request = %req.id, task = %task.id, "the plan changed since approval; nothing was carried out");
        return Ok(Step::Stopped(why));
    };
    {
        let mails = ctx.mail.to_dpo(
            crate::mail::Concerns::Request {
                id: &req.id,
                kind: req.kind,
            },
            Message::FailureAlert(FailureAlert {
                request_id: Some(req.id.clone()),
                error: format!(
                    "{why}. Nothing was carried out; the request is back in the review queue: \
                     approve the plan as it is now, or reject the request."
                ),
                task_id: None,
                system: None,
                attempts: None,
            }),
        )?;
        let changes = crate::store::Changes {
            cancel_open_tasks: true,
            mails,
            ..crate::store::Changes::default()
        };
        ctx.store
            .transition(&req.id, req.state, to, "quietus", Some(&why), now, &changes)
            .await?;
    }
    tracing::warn!(request = %req.id, task = %task.id, "the plan changed since approval; nothing was carried out");
    Ok(Step::Stopped(why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policies;

    fn crm() -> Vec<Table> {
        let p = Policies::examples().unwrap();
        p.system("crm").unwrap().tables.clone()
    }

    #[test]
    fn rows_are_found_through_references_and_owners() {
        let t = crm();
        let names = |table: &str| -> Vec<String> { found_through(&t, table).into_iter().collect() };
        assert_eq!(
            names("follow_ups"),
            ["customers", "employees", "follow_ups"]
        );
        assert_eq!(names("deals"), ["deals", "employees"]);
        assert_eq!(names("employees"), ["employees"]);
    }

    #[test]
    fn differences_name_the_table_and_each_field() {
        let entry = |columns: &[&str], due: (i32, u32, u32)| Entry {
            system: "crm".into(),
            table: "employees".into(),
            action: Action::Anonymize,
            rows: 1,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            categories: vec!["user.name".into()],
            rule: "contact-data".into(),
            basis: "GDPR Art. 17(1)".into(),
            due: chrono::NaiveDate::from_ymd_opt(due.0, due.1, due.2).unwrap(),
            then: None,
        };
        let plan = |entries: Vec<Entry>| Plan {
            request_id: "r".into(),
            kind: crate::policy::RequestKind::Exit,
            jurisdiction: crate::policy::Jurisdiction::Pipl,
            made_at: chrono::DateTime::UNIX_EPOCH,
            policy_digest: String::new(),
            entries,
            blocked: Vec::new(),
            notes: Vec::new(),
            data_map: BTreeMap::new(),
        };
        let open = BTreeSet::from([("crm".to_owned(), "employees".to_owned())]);
        let approved = plan(vec![entry(&["email", "mobile", "name"], (2026, 12, 31))]);
        assert!(entry_differences(&approved, &approved, &open).is_empty());
        let now = plan(vec![entry(&["email", "name"], (2027, 1, 4))]);
        assert_eq!(
            entry_differences(&approved, &now, &open),
            [
                "crm.employees anonymize: columns email, mobile, name -> email, name; due 2026-12-31 -> 2027-01-04"
            ]
        );
        assert_eq!(
            entry_differences(&approved, &plan(Vec::new()), &open),
            [
                "crm.employees anonymize (email, mobile, name) was approved; the policies now plan none"
            ]
        );
        // Work that is done is not compared.
        assert!(entry_differences(&approved, &now, &BTreeSet::new()).is_empty());
    }
}
