//! Validation of policy files: rules, data maps, reference cycles, and coverage (every
//! mapped category has a rule for every request kind that can reach it).

use std::collections::{BTreeMap, BTreeSet};

use super::datamap;
use super::{
    Action, Driver, Jurisdiction, OnErase, Policies, Problem, RequestKind, Rule, System, Unit, at,
};

pub(super) fn rules(
    rules: &[(Rule, String)],
    known: &BTreeSet<&str>,
    text_of: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) {
    let mut ids: BTreeMap<&str, &str> = BTreeMap::new();
    for (r, file) in rules {
        let text = &text_of(file);
        let id_needle = format!("\"{}\"", r.id);
        let here = |msg: String| at(file, text, &id_needle, msg);
        let id_ok = !r.id.is_empty()
            && r.id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !id_ok {
            problems.push(here(format!(
                "rule id {:?} must be lower-case letters, digits, - or _",
                r.id
            )));
        }
        if let Some(first) = ids.insert(&r.id, file) {
            problems.push(here(format!(
                "rule id {} is used twice (also in {first})",
                r.id
            )));
        }
        if r.categories.is_empty() {
            problems.push(here(format!("rule {} covers no categories", r.id)));
        }
        for c in &r.categories {
            if !known.contains(c.as_str()) {
                problems.push(at(file, text, &format!("\"{c}\""), format!(
                    "rule {}: unknown category {c:?} (not in the fideslang taxonomy and not declared with [[category]])",
                    r.id
                )));
            }
        }
        if r.kinds.as_ref().is_some_and(|k| k.is_empty())
            || r.jurisdictions.as_ref().is_some_and(|j| j.is_empty())
        {
            problems.push(here(format!(
                "rule {}: kinds and jurisdictions, when given, must not be empty",
                r.id
            )));
        }
        let retain = r.action == Action::Retain;
        match (retain, r.period.is_some(), r.from.is_some(), r.then.is_some()) {
            (true, true, true, true) | (false, false, false, false) => {}
            (true, ..) => problems.push(here(format!(
                "rule {}: action retain needs `for` (a period), `from` (a start rule) and `then` (erase or anonymize)",
                r.id
            ))),
            (false, ..) => problems.push(here(format!(
                "rule {}: `for`, `from` and `then` only go with action retain (this rule's action is {})",
                r.id, r.action
            ))),
        }
        if r.period.is_some_and(|p| p.unit == Unit::WorkingDays) {
            problems.push(here(format!(
                "rule {}: retention periods are in days, weeks, months or years, not working days",
                r.id
            )));
        }
        if r.action == Action::Export {
            problems.push(here(format!(
                "rule {}: action export is implied by access requests and cannot be a retention rule",
                r.id
            )));
        }
    }
}

pub(super) fn systems(
    systems: &[(System, String)],
    known: &BTreeSet<&str>,
    text_of: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) {
    use datamap::{is_identifier, split_target};
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (sys, file) in systems {
        let text = &text_of(file);
        let p = |needle: &str, msg: String| at(file, text, needle, msg);
        if !is_identifier(&sys.name) {
            problems.push(p(
                "name",
                format!("system name {:?} must be a plain identifier", sys.name),
            ));
        }
        if let Some(first) = names.insert(&sys.name, file) {
            problems.push(p(
                "name",
                format!("system {} is defined twice (also in {first})", sys.name),
            ));
        }
        match (sys.driver, &sys.url, &sys.owner_email) {
            (Driver::Manual, _, None) => problems.push(p(
                "driver",
                format!(
                    "system {}: a manual system needs owner_email (who confirms its tasks)",
                    sys.name
                ),
            )),
            (Driver::Manual, _, Some(_)) => {}
            (Driver::Sqlite | Driver::Postgres | Driver::Mysql, None, _) => {
                problems.push(p("driver", format!("system {}: url is missing", sys.name)))
            }
            (Driver::Sqlite | Driver::Postgres | Driver::Mysql, Some(_), _) => {}
        }
        let mut tables: BTreeSet<&str> = BTreeSet::new();
        for t in &sys.tables {
            let tn = format!("\"{}\"", t.name);
            let where_ = format!("{}.{}", sys.name, t.name);
            if !tables.insert(&t.name) {
                problems.push(p(&tn, format!("table {where_} is mapped twice")));
            }
            for col in t.known_columns().into_iter().chain([t.name.as_str()]) {
                if !is_identifier(col) {
                    problems.push(p(col, format!(
                        "{where_}: {col:?} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*, at most 63 characters)"
                    )));
                }
            }
            for (col, cat) in &t.columns {
                if !known.contains(cat.as_str()) {
                    problems.push(p(&format!("\"{cat}\""), format!(
                        "{where_}.{col}: unknown category {cat:?} (not in the fideslang taxonomy and not declared with [[category]])"
                    )));
                }
            }
            for cat in t
                .account
                .iter()
                .map(|a| &a.category)
                .chain(t.owner.iter().map(|o| &o.category))
            {
                if !known.contains(cat.as_str()) {
                    problems.push(p(
                        &format!("\"{cat}\""),
                        format!("{where_}: unknown category {cat:?}"),
                    ));
                }
            }
            for col in t.anonymize.keys() {
                if !t.columns.contains_key(col) {
                    problems.push(p(&format!("{col} ="), format!(
                        "{where_}: anonymize names column {col}, which is not a mapped column (columns = {{...}})"
                    )));
                }
            }
            if t.on_erase == OnErase::Anonymize && t.columns.contains_key(&t.key) {
                problems.push(p(
                    &tn,
                    format!("{where_}: the key column cannot be anonymised"),
                ));
            }
            if t.account.as_ref().is_some_and(|a| a.set.is_empty()) {
                problems.push(p(
                    "account",
                    format!("{where_}: account.set must name at least one column"),
                ));
            }
            if t.identity.is_empty() && t.references.is_empty() && t.owner.is_none() {
                problems.push(p(&tn, format!(
                    "{where_}: no identity columns, references or owner: no row of it can ever be found"
                )));
            }
        }
        // References and owners must point at a mapped table's key or identity column.
        for t in &sys.tables {
            let where_ = format!("{}.{}", sys.name, t.name);
            let targets = t
                .references
                .iter()
                .map(|r| ("reference", &r.to))
                .chain(t.owner.iter().map(|o| ("owner", &o.references)));
            for (what, target) in targets {
                let needle = format!("\"{target}\"");
                match split_target(target) {
                    None => problems.push(p(&needle, format!(
                        "{where_}: {what} target {target:?} must be written table.column"
                    ))),
                    Some((tt, tc)) => match sys.table(tt) {
                        None => problems.push(p(&needle, format!(
                            "{where_}: {what} to {target}: table {tt} is not in the data map of {}", sys.name
                        ))),
                        Some(other) if !other.is_referenceable(tc) => problems.push(p(&needle, format!(
                            "{where_}: {what} to {target}: {tc} is neither the key nor an identity column of {tt}"
                        ))),
                        Some(_) => {}
                    },
                }
            }
        }
        // A row that other mapped rows point at cannot be deleted while they may be kept.
        for t in &sys.tables {
            if t.on_erase == OnErase::Anonymize || t.columns.is_empty() {
                continue;
            }
            let pointing: Vec<String> = sys
                .tables
                .iter()
                .flat_map(|o| {
                    o.references
                        .iter()
                        .map(move |r| (o, &r.column, &r.to))
                        .chain(
                            o.owner
                                .iter()
                                .map(move |ow| (o, &ow.column, &ow.references)),
                        )
                })
                .filter(|(_, _, to)| datamap::split_target(to).is_some_and(|(tn, _)| tn == t.name))
                .map(|(o, c, _)| format!("{}.{c}", o.name))
                .collect();
            if !pointing.is_empty() {
                problems.push(p(&format!("\"{}\"", t.name), format!(
                    "{}.{}: {} point at its rows, so erasing must not delete them: set on_erase = \"anonymize\"",
                    sys.name, t.name, pointing.join(", ")
                )));
            }
        }
        if let Some(cycle) = reference_cycle(sys) {
            problems.push(p(
                "references",
                format!(
                    "system {}: references form a cycle: {}",
                    sys.name,
                    cycle.join(" -> ")
                ),
            ));
        }
    }
}

/// A cycle in a system's reference graph (child -> parent), if any.
fn reference_cycle(sys: &System) -> Option<Vec<String>> {
    fn visit<'a>(
        sys: &'a System,
        t: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == t) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(t.to_owned());
            return Some(cycle);
        }
        if !done.insert(t) {
            return None;
        }
        path.push(t);
        if let Some(table) = sys.table(t) {
            for r in &table.references {
                if let Some((parent, _)) = datamap::split_target(&r.to)
                    && let Some(c) = visit(sys, parent, path, done)
                {
                    return Some(c);
                }
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for t in &sys.tables {
        let mut path = Vec::new();
        if let Some(c) = visit(sys, &t.name, &mut path, &mut done) {
            return Some(c);
        }
    }
    None
}

pub(super) fn coverage(
    policies: &Policies,
    sys: &System,
    file: &str,
    text: &str,
    problems: &mut Vec<Problem>,
) {
    let js = [Jurisdiction::Gdpr, Jurisdiction::Pipl];
    for t in &sys.tables {
        let where_ = format!("{}.{}", sys.name, t.name);
        for (col, cat) in &t.columns {
            for kind in [RequestKind::Exit, RequestKind::Erasure] {
                let missing: Vec<&str> = js
                    .iter()
                    .filter(|j| policies.resolve(cat, kind, **j).is_none())
                    .map(|j| j.as_str())
                    .collect();
                if !missing.is_empty() {
                    problems.push(at(file, text, &format!("\"{cat}\""), format!(
                        "{where_}.{col}: category {cat} is not covered by any rule for {kind} requests under {} \
                         (nothing is erased or kept by default: add a rule)",
                        missing.join(" and ")
                    )));
                    continue;
                }
                for j in js {
                    if let Some(r) = policies.resolve(cat, kind, j)
                        && matches!(r.action, Action::Reassign | Action::Disable)
                    {
                        problems.push(at(file, text, &format!("\"{cat}\""), format!(
                            "{where_}.{col}: rule {} ({}) resolves for a data column; {} applies only to owner and account mappings",
                            r.id, r.action, r.action
                        )));
                    }
                }
            }
        }
        let special = [
            (
                t.account.as_ref().map(|a| &a.category),
                Action::Disable,
                "account",
            ),
            (
                t.owner.as_ref().map(|o| &o.category),
                Action::Reassign,
                "owner",
            ),
        ];
        for (cat, want, what) in special {
            let Some(cat) = cat else { continue };
            for j in js {
                match policies.resolve(cat, RequestKind::Exit, j) {
                    Some(r) if r.action == want => {}
                    Some(r) => problems.push(at(file, text, what, format!(
                        "{where_}: the {what} category {cat} resolves to rule {} ({}) for exits under {j}; it must be {want}",
                        r.id, r.action
                    ))),
                    None => problems.push(at(file, text, what, format!(
                        "{where_}: the {what} category {cat} is not covered by any rule for exit requests under {j} \
                         (add a rule with action {want})"
                    ))),
                }
            }
        }
    }
}
