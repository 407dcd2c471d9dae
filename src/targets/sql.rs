//! ALL dynamic SQL of quietus lives here. Names come only from a validated data map (plain
//! identifiers, checked again here) and are quoted per dialect; every value is a bound
//! parameter. Nothing a ticket says ever becomes part of a statement's text.

use crate::error::{Code, Error, Result};
use crate::policy::Identities;
use crate::policy::datamap::{is_identifier, split_target};
use crate::policy::{System, Table};

/// The SQL dialect of a target system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    /// Quote an identifier. Refuses anything that is not a plain identifier, so even a
    /// data map that skipped validation cannot inject.
    pub fn quote(self, ident: &str) -> Result<String> {
        if !is_identifier(ident) {
            return Err(Error::new(
                Code::Policy,
                format!("{ident:?} is not a plain SQL identifier"),
            ));
        }
        Ok(match self {
            Dialect::Mysql => format!("`{ident}`"),
            Dialect::Sqlite | Dialect::Postgres => format!("\"{ident}\""),
        })
    }

    /// The placeholder of the `n`-th bound value (1-based).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Mysql => "?".to_owned(),
            Dialect::Sqlite | Dialect::Postgres => format!("${n}"),
        }
    }
}

/// A statement and its bound values, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<String>,
}

struct Builder {
    dialect: Dialect,
    binds: Vec<String>,
}

impl Builder {
    fn bind(&mut self, v: &str) -> String {
        self.binds.push(v.to_owned());
        self.dialect.placeholder(self.binds.len())
    }

    fn q(&self, ident: &str) -> Result<String> {
        self.dialect.quote(ident)
    }

    /// The predicate selecting the rows of `table` that belong to the subject: one of its
    /// identity columns holds one of the subject's identities, or one of its references
    /// points at a row that belongs to the subject. `None`: no row can belong.
    fn subject_predicate(
        &mut self,
        sys: &System,
        table: &Table,
        ids: &Identities,
        depth: usize,
    ) -> Result<Option<String>> {
        if depth > 16 {
            return Err(Error::new(
                Code::Policy,
                format!("references of {}.{} nest too deep", sys.name, table.name),
            ));
        }
        let mut parts = Vec::new();
        for (kind, col) in &table.identity {
            if let Some(v) = ids.get(kind) {
                let col = self.q(col)?;
                let ph = self.bind(v);
                parts.push(format!("{col} = {ph}"));
            }
        }
        for r in &table.references {
            let (pt, pc) = split_target(&r.to).ok_or_else(|| {
                Error::new(Code::Policy, format!("bad reference target {:?}", r.to))
            })?;
            let parent = sys.table(pt).ok_or_else(|| {
                Error::new(Code::Policy, format!("reference to unmapped table {pt}"))
            })?;
            if let Some(pp) = self.subject_predicate(sys, parent, ids, depth + 1)? {
                parts.push(format!(
                    "{} IN (SELECT {} FROM {} WHERE {pp})",
                    self.q(&r.column)?,
                    self.q(pc)?,
                    self.q(pt)?
                ));
            }
        }
        Ok((!parts.is_empty()).then(|| format!("({})", parts.join(" OR "))))
    }

    /// The predicate selecting the rows of `table` that the subject owns (and an exit
    /// hands over).
    fn owned_predicate(
        &mut self,
        sys: &System,
        table: &Table,
        ids: &Identities,
    ) -> Result<Option<String>> {
        let Some(owner) = &table.owner else {
            return Ok(None);
        };
        let (pt, pc) = split_target(&owner.references).ok_or_else(|| {
            Error::new(
                Code::Policy,
                format!("bad owner target {:?}", owner.references),
            )
        })?;
        let parent = sys.table(pt).ok_or_else(|| {
            Error::new(
                Code::Policy,
                format!("owner reference to unmapped table {pt}"),
            )
        })?;
        let Some(pp) = self.subject_predicate(sys, parent, ids, 1)? else {
            return Ok(None);
        };
        let mut sql = format!(
            "{} IN (SELECT {} FROM {} WHERE {pp})",
            self.q(&owner.column)?,
            self.q(pc)?,
            self.q(pt)?
        );
        for (col, values) in &owner.when {
            let col = self.q(col)?;
            let marks: Vec<String> = values.iter().map(|v| self.bind(v)).collect();
            if marks.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND {col} IN ({})", marks.join(", ")));
            }
        }
        Ok(Some(format!("({sql})")))
    }
}

/// `SELECT COUNT(*)` of the subject's rows in `table`; `None` when no row can match.
pub fn count_subject_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    ids: &Identities,
) -> Result<Option<Statement>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let Some(pred) = b.subject_predicate(sys, table, ids, 0)? else {
        return Ok(None);
    };
    let sql = format!("SELECT COUNT(*) FROM {} WHERE {pred}", b.q(&table.name)?);
    Ok(Some(Statement {
        sql,
        binds: b.binds,
    }))
}

/// `SELECT COUNT(*)` of the rows of `table` the subject owns.
pub fn count_owned_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    ids: &Identities,
) -> Result<Option<Statement>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let Some(pred) = b.owned_predicate(sys, table, ids)? else {
        return Ok(None);
    };
    let sql = format!("SELECT COUNT(*) FROM {} WHERE {pred}", b.q(&table.name)?);
    Ok(Some(Statement {
        sql,
        binds: b.binds,
    }))
}

/// Count the rows of `table` matching `ids` directly by identity columns, and among them
/// those that are disabled accounts (every `account.set` column holds its disabled value).
/// Used to check an exit's successor: found once, and active.
pub fn count_identity_rows(
    d: Dialect,
    table: &Table,
    ids: &Identities,
) -> Result<Option<Statement>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
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
    let mut parts = Vec::new();
    for (kind, col) in &table.identity {
        if let Some(v) = ids.get(kind) {
            let col = b.q(col)?;
            let ph = b.bind(v);
            parts.push(format!("{col} = {ph}"));
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN {disabled_expr} THEN 1 ELSE 0 END), 0) FROM {} WHERE ({})",
        b.q(&table.name)?,
        parts.join(" OR ")
    );
    Ok(Some(Statement {
        sql,
        binds: b.binds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::IdentityKind;

    fn crm() -> System {
        toml::from_str(
            r#"
            name = "crm"
            driver = "sqlite"
            url = "sqlite://x.db"
            [[table]]
            name = "employees"
            key = "id"
            identity = { email = "email", employee_id = "emp_no" }
            [[table]]
            name = "notes"
            key = "id"
            references = [{ column = "employee_id", to = "employees.id" }]
            [[table]]
            name = "deals"
            key = "id"
            owner = { column = "owner_id", references = "employees.id", when = { stage = ["lead", "negotiation"] } }
            "#,
        )
        .unwrap()
    }

    fn ids() -> Identities {
        [(
            IdentityKind::Email,
            "x@y.z'); DROP TABLE customers; --".to_owned(),
        )]
        .into_iter()
        .collect()
    }

    #[test]
    fn values_are_bound_never_spliced() {
        let sys = crm();
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
            let st = count_subject_rows(d, &sys, sys.table("notes").unwrap(), &ids())
                .unwrap()
                .unwrap();
            assert!(!st.sql.contains("DROP"), "{}", st.sql);
            assert_eq!(
                st.binds,
                vec!["x@y.z'); DROP TABLE customers; --".to_owned()]
            );
        }
    }

    #[test]
    fn statements_per_dialect() {
        let sys = crm();
        let st = count_subject_rows(Dialect::Postgres, &sys, sys.table("notes").unwrap(), &ids())
            .unwrap()
            .unwrap();
        assert_eq!(
            st.sql,
            r#"SELECT COUNT(*) FROM "notes" WHERE ("employee_id" IN (SELECT "id" FROM "employees" WHERE ("email" = $1)))"#
        );
        let st = count_owned_rows(Dialect::Mysql, &sys, sys.table("deals").unwrap(), &ids())
            .unwrap()
            .unwrap();
        assert_eq!(
            st.sql,
            "SELECT COUNT(*) FROM `deals` WHERE (`owner_id` IN (SELECT `id` FROM `employees` WHERE (`email` = ?)) AND `stage` IN (?, ?))"
        );
        assert_eq!(st.binds.len(), 3);
    }

    #[test]
    fn refuses_names_that_are_not_identifiers() {
        assert!(Dialect::Postgres.quote("a\"; DROP TABLE x; --").is_err());
        assert!(Dialect::Mysql.quote("a`b").is_err());
    }
}
