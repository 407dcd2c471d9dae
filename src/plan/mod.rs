//! Plans: for one request, per system × table × action, which rows (count), which
//! columns, which rule and legal basis, and when it is due.
//!
//! [`make`] is a pure function of (request, policies, what the survey found, now): no
//! I/O, no clock, so every case is a test with time passed in.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::{Action, FollowUp, Jurisdiction, OnErase, Policies, RequestKind, Rule, Table};
use crate::targets::SystemSurvey;

/// What a plan is made for: the parts of a request that matter.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub request_id: String,
    pub kind: RequestKind,
    pub jurisdiction: Jurisdiction,
    /// The day the request was received, in the policy's time zone.
    pub request_date: NaiveDate,
    pub exit_date: Option<NaiveDate>,
    pub has_successor: bool,
    /// Exits: the leaver asked for a copy of their own data.
    pub wants_copy: bool,
}

impl PlanInput {
    /// The day a request's immediate work is due: the request date, and for an exit the
    /// exit date or the request date, whichever is later.
    pub fn immediate(&self) -> NaiveDate {
        match (self.kind, self.exit_date) {
            (RequestKind::Exit, Some(exit)) => exit.max(self.request_date),
            (RequestKind::Exit | RequestKind::Erasure | RequestKind::Access, _) => {
                self.request_date
            }
        }
    }
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub system: String,
    pub table: String,
    pub action: Action,
    pub rows: u64,
    pub columns: Vec<String>,
    pub categories: Vec<String>,
    /// Rule ids, comma-separated when several rules lead to the same action.
    pub rule: String,
    pub basis: String,
    /// When the action is due (for `retain`: the day the retention ends).
    pub due: NaiveDate,
    /// For `retain`: what happens when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<FollowUp>,
}

/// A plan for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub request_id: String,
    pub kind: RequestKind,
    pub jurisdiction: Jurisdiction,
    pub made_at: DateTime<Utc>,
    pub policy_digest: String,
    pub entries: Vec<Entry>,
    /// Why the plan cannot be carried out; empty when it can.
    pub blocked: Vec<String>,
    pub notes: Vec<String>,
    /// The data map the plan was made with: system -> its tables. How rows are found and
    /// changed depends on it, so execution checks that it still holds for the work left.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data_map: BTreeMap<String, Vec<Table>>,
}

impl Plan {
    pub fn is_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Total rows per action, for summaries.
    pub fn totals(&self) -> Vec<(Action, u64)> {
        let mut out: Vec<(Action, u64)> = Vec::new();
        for e in &self.entries {
            match out.iter_mut().find(|(a, _)| *a == e.action) {
                Some((_, n)) => *n += e.rows,
                None => out.push((e.action, e.rows)),
            }
        }
        out
    }
}

const ACCESS_BASIS: &str = "GDPR Art. 15; PIPL Art. 45 (right of access)";

/// Make the plan. Pure: everything it needs is passed in.
pub fn make(
    input: &PlanInput,
    policies: &Policies,
    survey: &[SystemSurvey],
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan {
        request_id: input.request_id.clone(),
        kind: input.kind,
        jurisdiction: input.jurisdiction,
        made_at: now,
        policy_digest: policies.digest.clone(),
        entries: Vec::new(),
        blocked: Vec::new(),
        notes: Vec::new(),
        data_map: BTreeMap::new(),
    };
    let immediate = input.immediate();
    if input.kind == RequestKind::Exit && input.exit_date.is_none() {
        plan.blocked.push("an exit needs an exit date".into());
    }
    for s in survey {
        let Some(sys) = policies.system(&s.system) else {
            continue;
        };
        plan.data_map.insert(sys.name.clone(), sys.tables.clone());
        if let Some(e) = &s.error {
            plan.blocked
                .push(format!("system {} could not be searched: {e}", s.system));
            continue;
        }
        if !s.lacking.is_empty() {
            // A plan is only as good as the data map: every mapped column must exist.
            plan.blocked.extend(s.lacking.iter().cloned());
            continue;
        }
        if s.manual {
            plan.notes.push(format!(
                "system {} has no connector: its owner will be asked to act and confirm (manual task; \
                 row counts there are unknown, shown as 0)",
                s.system
            ));
            // What the owner is asked to do: every mapped table, as the rules say.
            for table in &sys.tables {
                let ctx = TableCtx {
                    input,
                    policies,
                    system: &s.system,
                    table,
                    immediate,
                };
                match input.kind {
                    RequestKind::Access => ctx.export(0, &mut plan),
                    RequestKind::Erasure | RequestKind::Exit => ctx.subject_rows(0, &mut plan),
                }
            }
            continue;
        }
        for table in &sys.tables {
            let Some(counts) = s.tables.get(&table.name) else {
                continue;
            };
            let ctx = TableCtx {
                input,
                policies,
                system: &s.system,
                table,
                immediate,
            };
            if counts.subject_rows > 0 {
                if input.kind == RequestKind::Access {
                    ctx.export(counts.subject_rows, &mut plan);
                } else {
                    if input.kind == RequestKind::Exit
                        && input.wants_copy
                        && !table.columns.is_empty()
                    {
                        ctx.export(counts.subject_rows, &mut plan);
                    }
                    ctx.subject_rows(counts.subject_rows, &mut plan);
                }
            }
            if counts.owned_rows > 0 && input.kind == RequestKind::Exit {
                ctx.owned_rows(counts.owned_rows, &mut plan);
            }
        }
        if input.kind == RequestKind::Exit && sys.tables.iter().any(|t| t.owner.is_some()) {
            let owned: u64 = s.tables.values().map(|c| c.owned_rows).sum();
            match &s.successor {
                // The leaver named as their own successor is a mistake in the ticket,
                // whether or not records are handed over.
                Some(c) if c.same_as_subject > 0 => plan.blocked.extend(c.problem(&s.system)),
                _ if owned == 0 => {}
                None if !input.has_successor => plan.blocked.push(format!(
                    "{owned} records in {} must be handed over, but the ticket names no successor",
                    s.system
                )),
                None => plan.blocked.push(format!(
                    "the successor could not be looked up in {}",
                    s.system
                )),
                Some(c) => plan.blocked.extend(c.problem(&s.system)),
            }
        }
    }
    if plan.entries.is_empty() && plan.blocked.is_empty() {
        plan.notes
            .push("no rows of this subject were found in any mapped system".into());
    }
    plan
}

struct TableCtx<'a> {
    input: &'a PlanInput,
    policies: &'a Policies,
    system: &'a str,
    table: &'a Table,
    immediate: NaiveDate,
}

impl TableCtx<'_> {
    fn place(&self) -> String {
        format!("{}.{}", self.system, self.table.name)
    }

    fn entry(
        &self,
        action: Action,
        rows: u64,
        columns: Vec<String>,
        categories: Vec<String>,
        rules: &[&Rule],
        due: NaiveDate,
    ) -> Entry {
        let mut ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut bases: Vec<&str> = rules.iter().map(|r| r.basis_text()).collect();
        bases.sort_unstable();
        bases.dedup();
        Entry {
            system: self.system.to_owned(),
            table: self.table.name.clone(),
            action,
            rows,
            columns,
            categories,
            rule: ids.join(", "),
            basis: bases.join("; "),
            due,
            then: None,
        }
    }

    fn export(&self, rows: u64, plan: &mut Plan) {
        let columns: Vec<String> = self.table.columns.keys().cloned().collect();
        let categories = sorted(self.table.columns.values().cloned());
        plan.entries.push(Entry {
            system: self.system.to_owned(),
            table: self.table.name.clone(),
            action: Action::Export,
            rows,
            columns,
            categories,
            rule: "access".into(),
            basis: ACCESS_BASIS.into(),
            due: self.immediate,
            then: None,
        });
    }

    fn subject_rows(&self, rows: u64, plan: &mut Plan) {
        let (kind, j) = (self.input.kind, self.input.jurisdiction);
        // Disabling the account comes first: on the exit date itself.
        if kind == RequestKind::Exit
            && let Some(acc) = &self.table.account
        {
            match self.policies.resolve(&acc.category, kind, j) {
                Some(r) if r.action == Action::Disable => {
                    let mut cols: Vec<String> = acc.set.keys().cloned().collect();
                    cols.extend(acc.departed_at.clone());
                    plan.entries.push(self.entry(
                        Action::Disable,
                        rows,
                        cols,
                        vec![acc.category.clone()],
                        &[r],
                        self.immediate,
                    ));
                }
                Some(r) => plan.blocked.push(format!(
                    "{}: the account category {} resolves to rule {} ({}), not disable",
                    self.place(),
                    acc.category,
                    r.id,
                    r.action
                )),
                None => plan.blocked.push(format!(
                    "{}: no rule covers the account category {} for {kind} under {j}",
                    self.place(),
                    acc.category
                )),
            }
        }
        if self.table.columns.is_empty() {
            return;
        }
        let mut resolved: Vec<(&String, &String, &Rule)> = Vec::new();
        for (col, cat) in &self.table.columns {
            let r = self.policies.resolve_on(
                cat,
                kind,
                j,
                self.input.request_date,
                self.input.exit_date,
            );
            match r {
                Some(r) => resolved.push((col, cat, r)),
                None => plan.blocked.push(format!(
                    "{}.{col}: category {cat} is not covered by any rule for {kind} under {j}",
                    self.place()
                )),
            }
        }
        if resolved.len() < self.table.columns.len() {
            return;
        }
        // A row is kept whole while any of its categories must be retained; the retention
        // that lasts longest governs.
        let mut longest: Option<(NaiveDate, &Rule)> = None;
        for (_, _, r) in resolved
            .iter()
            .filter(|(_, _, r)| r.action == Action::Retain)
        {
            let (Some(period), Some(from)) = (r.period, r.from.as_ref()) else {
                continue;
            };
            let Some(start) = from.resolve(self.input.request_date, self.input.exit_date) else {
                plan.blocked.push(format!(
                    "{}: rule {} keeps data for {period} from {from}, but this {kind} request has no such date",
                    self.place(),
                    r.id
                ));
                return;
            };
            let Some(until) = period.add_calendar(start) else {
                plan.blocked.push(format!(
                    "{}: rule {}: the retention end date is out of range",
                    self.place(),
                    r.id
                ));
                return;
            };
            if longest.is_none_or(|(d, _)| until > d) {
                longest = Some((until, r));
            }
        }
        let all_cols: Vec<String> = resolved.iter().map(|(c, _, _)| (*c).clone()).collect();
        let all_cats = sorted(resolved.iter().map(|(_, k, _)| (*k).clone()));
        if let Some((until, rule)) = longest {
            let mut e = self.entry(Action::Retain, rows, all_cols, all_cats, &[rule], until);
            e.then = rule.then;
            plan.entries.push(e);
            return;
        }
        let anonymize_rule = resolved
            .iter()
            .any(|(_, _, r)| r.action == Action::Anonymize);
        let rules: Vec<&Rule> = resolved.iter().map(|(_, _, r)| *r).collect();
        let action = if self.table.on_erase == OnErase::Anonymize || anonymize_rule {
            Action::Anonymize
        } else {
            Action::Erase
        };
        plan.entries
            .push(self.entry(action, rows, all_cols, all_cats, &rules, self.immediate));
    }

    fn owned_rows(&self, rows: u64, plan: &mut Plan) {
        let Some(owner) = &self.table.owner else {
            return;
        };
        let (kind, j) = (self.input.kind, self.input.jurisdiction);
        match self.policies.resolve(&owner.category, kind, j) {
            Some(r) if r.action == Action::Reassign => plan.entries.push(self.entry(
                Action::Reassign,
                rows,
                vec![owner.column.clone()],
                vec![owner.category.clone()],
                &[r],
                self.immediate,
            )),
            Some(r) => plan.blocked.push(format!(
                "{}: the owner category {} resolves to rule {} ({}), not reassign",
                self.place(),
                owner.category,
                r.id,
                r.action
            )),
            None => plan.blocked.push(format!(
                "{}: no rule covers the owner category {} for {kind} under {j}",
                self.place(),
                owner.category
            )),
        }
    }
}

impl Plan {
    /// The plan as a table for people; dates in `zone` (the policy's), labelled.
    pub fn render_text(&self, zone: crate::clock::Zone) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Plan for request {} ({}, {}), made {} with policy {}",
            self.request_id,
            self.kind,
            self.jurisdiction,
            zone.time(self.made_at),
            &self.policy_digest[..12.min(self.policy_digest.len())]
        );
        if self.entries.is_empty() {
            let _ = writeln!(o, "  (nothing to do)");
        } else {
            let dues: Vec<String> = self
                .entries
                .iter()
                .map(|e| {
                    let due = zone.day(e.due);
                    match (e.action, e.then) {
                        (Action::Retain, Some(FollowUp::Erase)) => format!("{due} then erase"),
                        (Action::Retain, Some(FollowUp::Anonymize)) => {
                            format!("{due} then anonymize")
                        }
                        _ => due.to_string(),
                    }
                })
                .collect();
            let w = dues.iter().map(|d| d.chars().count()).max().unwrap_or(3);
            let _ = writeln!(
                o,
                "  {:<8} {:<18} {:<10} {:>5}  {:<w$} {:<24} COLUMNS",
                "SYSTEM", "TABLE", "ACTION", "ROWS", "DUE", "RULE"
            );
            for (e, due) in self.entries.iter().zip(&dues) {
                let _ = writeln!(
                    o,
                    "  {:<8} {:<18} {:<10} {:>5}  {:<w$} {:<24} {}",
                    e.system,
                    e.table,
                    e.action.as_str(),
                    e.rows,
                    due,
                    e.rule,
                    e.columns.join(", ")
                );
                let _ = writeln!(o, "  {:<8} {:<18} basis: {}", "", "", e.basis);
            }
        }
        for b in &self.blocked {
            let _ = writeln!(o, "  BLOCKED: {b}");
        }
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        o
    }
}

fn sorted(it: impl Iterator<Item = String>) -> Vec<String> {
    it.collect::<BTreeSet<_>>().into_iter().collect()
}
