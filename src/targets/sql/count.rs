//! The counting statements: a survey's counts (per table, or every table of a system in
//! one statement) and an exit successor's check.

use super::{Builder, Dialect, Statement};
use crate::error::Result;
use crate::policy::Identities;
use crate::policy::{System, Table};

/// `SELECT COUNT(*)` of the subject's rows in `table`; `None` when no row can match.
pub fn count_subject_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    ids: &Identities,
) -> Result<Option<Statement>> {
    count_rows(d, sys, table, ids, Counted::Subject)
}

/// `SELECT COUNT(*)` of the rows of `table` the subject owns.
pub fn count_owned_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    ids: &Identities,
) -> Result<Option<Statement>> {
    count_rows(d, sys, table, ids, Counted::Owned)
}

/// `SELECT COUNT(*)` of the rows of `table` that `c` names; `None` when none can match.
pub fn count_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    ids: &Identities,
    c: Counted,
) -> Result<Option<Statement>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    Ok(b.count(sys, table, ids, c)?.map(|sql| Statement {
        sql,
        binds: b.binds,
    }))
}

/// Which rows of a table a count of [`count_tables`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The subject's rows ([`count_subject_rows`]).
    Subject,
    /// The rows the subject owns ([`count_owned_rows`]).
    Owned,
}

/// The statement of [`count_tables`] and what each of its columns counts.
#[derive(Debug)]
pub struct SurveyCounts<'a> {
    pub statement: Statement,
    pub columns: Vec<(&'a Table, Counted)>,
}

/// Every count a survey makes of `sys`'s tables, in one statement of one row (one round
/// trip instead of one per count): `SELECT (count), (count), …`, each count the statement
/// [`count_subject_rows`] or [`count_owned_rows`] would make, and which table and count
/// each column is. `None` when no row of any table can match.
pub fn count_tables<'a>(
    d: Dialect,
    sys: &'a System,
    ids: &Identities,
) -> Result<Option<SurveyCounts<'a>>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let (mut columns, mut which) = (Vec::new(), Vec::new());
    for t in &sys.tables {
        for c in [Counted::Subject, Counted::Owned] {
            if let Some(sql) = b.count(sys, t, ids, c)? {
                columns.push(format!("({sql})"));
                which.push((t, c));
            }
        }
    }
    if columns.is_empty() {
        return Ok(None);
    }
    let sql = format!("SELECT {}", columns.join(", "));
    Ok(Some(SurveyCounts {
        statement: Statement {
            sql,
            binds: b.binds,
        },
        columns: which,
    }))
}

impl Builder {
    /// `SELECT COUNT(*) FROM table WHERE …` of the rows `c` names; `None` when none can
    /// match.
    fn count(
        &mut self,
        sys: &System,
        table: &Table,
        ids: &Identities,
        c: Counted,
    ) -> Result<Option<String>> {
        let pred = match c {
            Counted::Subject => self.subject_predicate(sys, table, ids, 0)?,
            Counted::Owned => self.owned_predicate(sys, table, ids)?,
        };
        let Some(pred) = pred else {
            return Ok(None);
        };
        Ok(Some(format!(
            "SELECT COUNT(*) FROM {} WHERE {pred}",
            self.q(&table.name)?
        )))
    }
}

/// Count the rows of `table` matching the `successor`'s identities directly by identity
/// columns; among them, those that are disabled accounts (every `account.set` column holds
/// its disabled value), and those that belong to the `subject` (the leaver under another
/// identity). Used to check an exit's successor: found once, active, someone else.
pub fn count_successor_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    successor: &Identities,
    subject: &Identities,
) -> Result<Option<Statement>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    // Bound in the order the placeholders appear (MySQL's are positional).
    let mut disabled = Vec::new();
    if let Some(acc) = &table.account {
        for (col, val) in &acc.set {
            let col = b.q(col)?;
            let ph = b.bind(val);
            disabled.push(format!("{col} = {ph}"));
        }
    }
    let disabled_expr = if disabled.is_empty() {
        "1 = 0".to_owned()
    } else {
        disabled.join(" AND ")
    };
    let leaver_expr = b
        .subject_predicate(sys, table, subject, 0)?
        .unwrap_or_else(|| "1 = 0".to_owned());
    let parts = b.identity_parts(table, successor)?;
    if parts.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT COUNT(*), COUNT(CASE WHEN {disabled_expr} THEN 1 END), COUNT(CASE WHEN {leaver_expr} THEN 1 END) \
         FROM {} WHERE ({})",
        b.q(&table.name)?,
        parts.join(" OR ")
    );
    Ok(Some(Statement {
        sql,
        binds: b.binds,
    }))
}
