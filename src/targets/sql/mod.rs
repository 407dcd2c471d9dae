//! ALL dynamic SQL of quietus lives here (and in `keyed`, the statements about rows named
//! by key). Names come only from a validated data map (plain identifiers, checked again
//! here) and are quoted per dialect; every value is a bound parameter. Nothing a ticket
//! says ever becomes part of a statement's text.

use crate::error::{Code, Error, Result};
use crate::policy::Identities;
use crate::policy::datamap::{is_identifier, split_target};
use crate::policy::{System, Table};

mod count;
mod keyed;
pub use count::{
    Counted, SurveyCounts, count_owned_rows, count_rows, count_subject_rows, count_successor_rows,
    count_tables,
};
pub use keyed::{
    Change, change_rows_as_backed_up, delete_rows, insert_row, lock_rows, update_rows,
};

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

    /// `col = value`, byte for byte. MySQL/MariaDB compare strings by the column's
    /// collation, by default case-insensitive (`c-1042` would find `C-1042`): there the
    /// indexed comparison is narrowed by a binary-collated one.
    fn eq_exact(&mut self, quoted: &str, v: &str) -> String {
        let ph = self.bind(v);
        match self.dialect {
            Dialect::Mysql => {
                let ph2 = self.bind(v);
                format!("({quoted} = {ph} AND {quoted} = {ph2} COLLATE utf8mb4_bin)")
            }
            Dialect::Sqlite | Dialect::Postgres => format!("{quoted} = {ph}"),
        }
    }

    /// `col = value` for each identity column of `table` the subject has a value for.
    fn identity_parts(&mut self, table: &Table, ids: &Identities) -> Result<Vec<String>> {
        let mut parts = Vec::new();
        for (kind, col) in &table.identity {
            if let Some(v) = ids.get(kind) {
                let col = self.q(col)?;
                parts.push(self.eq_exact(&col, v));
            }
        }
        Ok(parts)
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
        let mut parts = self.identity_parts(table, ids)?;
        let mut referenced = false;
        for r in &table.references {
            let (pt, pc) = split_target(&r.to).ok_or_else(|| {
                Error::new(Code::Policy, format!("bad reference target {:?}", r.to))
            })?;
            let parent = sys.table(pt).ok_or_else(|| {
                Error::new(Code::Policy, format!("reference to unmapped table {pt}"))
            })?;
            if let Some(pp) = self.subject_predicate(sys, parent, ids, depth + 1)? {
                let (col, sub) = (
                    self.q(&r.column)?,
                    format!("SELECT {} FROM {} WHERE {pp}", self.q(pc)?, self.q(pt)?),
                );
                referenced = true;
                parts.push(match self.dialect {
                    // An array computed once: `= ANY` of it is an index condition, and
                    // several of them OR together as a bitmap of index scans. (`IN
                    // (SELECT …)` OR another is a hashed sub-plan tested on every row.)
                    Dialect::Postgres => format!("{col} = ANY (ARRAY({sub}))"),
                    Dialect::Sqlite | Dialect::Mysql => format!("{col} IN ({sub})"),
                });
            }
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(match self.dialect {
            // MariaDB and MySQL read the whole table for `IN (SELECT …)` OR anything
            // else; the union of the parts' keys, materialised once, is looked up by key.
            Dialect::Mysql if referenced && parts.len() > 1 => {
                let (t, key) = (self.q(&table.name)?, self.q(&table.key)?);
                let each: Vec<String> = parts
                    .iter()
                    .map(|p| format!("SELECT {key} FROM {t} WHERE {p}"))
                    .collect();
                format!(
                    "({key} IN (SELECT {key} FROM ({}) AS quietus_subject_{depth}))",
                    each.join(" UNION ")
                )
            }
            // SQLite answers an OR of indexed terms, `IN (SELECT …)` among them, with
            // one index search per term.
            Dialect::Mysql | Dialect::Postgres | Dialect::Sqlite => {
                format!("({})", parts.join(" OR "))
            }
        }))
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

/// Which rows of a table a statement is about.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// The subject's rows (identity or references).
    Subject(&'a Identities),
    /// The rows the subject owns (`owner`, with its `when` filter).
    Owned(&'a Identities),
    /// Rows matched directly by the identity columns (a successor).
    Identity(&'a Identities),
    /// Rows whose date `column` (of SQL type `sql_type`) is before `before` (the
    /// retention sweep).
    Before {
        column: &'a str,
        sql_type: &'a str,
        before: &'a str,
    },
}

impl Dialect {
    /// A column read as text (values travel as text, with their column types recorded).
    fn as_text(self, quoted: &str) -> String {
        match self {
            Dialect::Mysql => format!("CAST({quoted} AS CHAR)"),
            Dialect::Sqlite | Dialect::Postgres => format!("CAST({quoted} AS TEXT)"),
        }
    }

    /// A bound text value converted to a column's type where the dialect needs it
    /// (PostgreSQL compares and stores strictly; MySQL and SQLite convert by themselves).
    fn typed(self, placeholder: String, sql_type: &str) -> Result<String> {
        match self {
            Dialect::Postgres => {
                if sql_type.is_empty()
                    || !sql_type.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '(' | ')' | ',')
                    })
                {
                    return Err(Error::new(
                        Code::Target,
                        format!("unsupported column type {sql_type:?}"),
                    ));
                }
                Ok(format!("CAST({placeholder} AS {sql_type})"))
            }
            Dialect::Mysql | Dialect::Sqlite => Ok(placeholder),
        }
    }
}

/// The columns and types of each of `tables` (at least one), from the database's catalog,
/// in one statement: rows of (table, column, type), each table's columns in their order.
/// A table the database lacks has no rows.
pub fn column_types(d: Dialect, tables: &[&str]) -> Statement {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let sql = match d {
        // One table-valued pragma per table, each row named by the table asked for.
        Dialect::Sqlite => {
            let parts: Vec<String> = tables
                .iter()
                .map(|t| {
                    let ph = b.bind(t);
                    format!("SELECT {ph} AS t, cid, name, type FROM pragma_table_info({ph})")
                })
                .collect();
            format!(
                "SELECT t, name, type FROM ({}) ORDER BY t, cid",
                parts.join(" UNION ALL ")
            )
        }
        Dialect::Postgres => {
            let phs: Vec<String> = tables.iter().map(|t| b.bind(t)).collect();
            // What `information_schema.columns` says (its `data_type`, or `udt_name` for
            // arrays and user-defined types; a domain as its base type; only columns the
            // role may use), read from `pg_catalog` directly: the view took 3–25 ms a
            // statement, this well under one.
            format!(
                "SELECT c.relname::text, a.attname::text, \
                   CASE WHEN COALESCE(bt.typelem, t.typelem) <> 0 AND COALESCE(bt.typlen, t.typlen) = -1 \
                          THEN COALESCE(bt.typname, t.typname)::text \
                        WHEN COALESCE(bn.nspname, tn.nspname) = 'pg_catalog' \
                          THEN format_type(COALESCE(bt.oid, t.oid), NULL) \
                        ELSE COALESCE(bt.typname, t.typname)::text END \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
                 LEFT JOIN (pg_catalog.pg_type bt JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace) \
                   ON t.typtype = 'd' AND bt.oid = t.typbasetype \
                 WHERE n.nspname = current_schema() AND c.relname IN ({}) AND c.relkind IN ('r', 'v', 'f', 'p') \
                   AND a.attnum > 0 AND NOT a.attisdropped \
                   AND (pg_has_role(c.relowner, 'USAGE') OR has_column_privilege(c.oid, a.attnum, 'SELECT, INSERT, UPDATE, REFERENCES')) \
                 ORDER BY c.relname, a.attnum",
                phs.join(", ")
            )
        }
        Dialect::Mysql => {
            let phs: Vec<String> = tables.iter().map(|t| b.bind(t)).collect();
            format!(
                "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({}) ORDER BY TABLE_NAME, ORDINAL_POSITION",
                phs.join(", ")
            )
        }
    };
    Statement {
        sql,
        binds: b.binds,
    }
}

/// A column and its SQL type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub sql_type: String,
}

/// Every row `which` selects: the key and `columns`, as text (streamed by the caller).
pub fn select_all(
    d: Dialect,
    sys: &System,
    table: &Table,
    which: Which<'_>,
    key_type: &str,
    columns: &[Column],
) -> Result<Option<Statement>> {
    select_rows(d, sys, table, which, key_type, columns, None, None)
}

/// A page of rows: the key and `columns`, as text, in key order, after `after`.
#[allow(clippy::too_many_arguments)]
pub fn select_page(
    d: Dialect,
    sys: &System,
    table: &Table,
    which: Which<'_>,
    key_type: &str,
    columns: &[Column],
    after: Option<&str>,
    limit: usize,
) -> Result<Option<Statement>> {
    select_rows(d, sys, table, which, key_type, columns, after, Some(limit))
}
#[allow(clippy::too_many_arguments)]
fn select_rows(
    d: Dialect,
    sys: &System,
    table: &Table,
    which: Which<'_>,
    key_type: &str,
    columns: &[Column],
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<Option<Statement>> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let pred = match which {
        Which::Subject(ids) => b.subject_predicate(sys, table, ids, 0)?,
        Which::Owned(ids) => b.owned_predicate(sys, table, ids)?,
        Which::Identity(ids) => identity_predicate(&mut b, table, ids)?,
        Which::Before {
            column,
            sql_type,
            before,
        } => {
            let col = b.q(column)?;
            let ph = b.bind(before);
            Some(format!("({col} < {})", d.typed(ph, sql_type)?))
        }
    };
    let Some(pred) = pred else { return Ok(None) };
    let key = b.q(&table.key)?;
    let mut cols = vec![d.as_text(&key)];
    for c in columns {
        cols.push(d.as_text(&b.q(&c.name)?));
    }
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {pred}",
        cols.join(", "),
        b.q(&table.name)?
    );
    if let Some(a) = after {
        let ph = b.bind(a);
        sql.push_str(&format!(" AND {key} > {}", d.typed(ph, key_type)?));
    }
    if let Some(limit) = limit {
        sql.push_str(&format!(" ORDER BY {key} LIMIT {limit}"));
    }
    Ok(Some(Statement {
        sql,
        binds: b.binds,
    }))
}

fn identity_predicate(b: &mut Builder, table: &Table, ids: &Identities) -> Result<Option<String>> {
    let parts = b.identity_parts(table, ids)?;
    Ok((!parts.is_empty()).then(|| format!("({})", parts.join(" OR "))))
}

/// The columns that lead an index of `table` (the first column of each index, and the
/// primary key): a lookup on one of them uses an index.
pub fn leading_index_columns(d: Dialect, table: &str) -> Statement {
    let sql = match d {
        Dialect::Sqlite => {
            "SELECT ii.name FROM pragma_index_list($1) il, pragma_index_info(il.name) ii WHERE ii.seqno = 0 \
             UNION SELECT name FROM pragma_table_info($1) WHERE pk = 1"
        }
        Dialect::Postgres => {
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema() \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
             WHERE c.relname = $1"
        }
        Dialect::Mysql => {
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND SEQ_IN_INDEX = 1"
        }
    };
    let binds = match d {
        Dialect::Sqlite => vec![table.to_owned(), table.to_owned()],
        Dialect::Postgres | Dialect::Mysql => vec![table.to_owned()],
    };
    Statement {
        sql: sql.to_owned(),
        binds,
    }
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
            // MySQL binds the value twice (an indexed and an exact comparison).
            let n = if d == Dialect::Mysql { 2 } else { 1 };
            assert_eq!(
                st.binds,
                vec!["x@y.z'); DROP TABLE customers; --".to_owned(); n]
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
            r#"SELECT COUNT(*) FROM "notes" WHERE ("employee_id" = ANY (ARRAY(SELECT "id" FROM "employees" WHERE ("email" = $1))))"#
        );
        let st = count_owned_rows(Dialect::Mysql, &sys, sys.table("deals").unwrap(), &ids())
            .unwrap()
            .unwrap();
        assert_eq!(
            st.sql,
            "SELECT COUNT(*) FROM `deals` WHERE (`owner_id` IN (SELECT `id` FROM `employees` WHERE ((`email` = ? AND `email` = ? COLLATE utf8mb4_bin))) AND `stage` IN (?, ?))"
        );
        assert_eq!(st.binds.len(), 4);
    }

    /// The survey's one statement is the per-table counts side by side, placeholders
    /// numbered across them.
    #[test]
    fn every_count_of_a_survey_in_one_statement() {
        let sys = crm();
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
            let SurveyCounts {
                statement: st,
                columns: which,
            } = count_tables(d, &sys, &ids()).unwrap().unwrap();
            let mut parts = Vec::new();
            let mut binds = Vec::new();
            for (t, c) in &which {
                let one = match c {
                    Counted::Subject => count_subject_rows(d, &sys, t, &ids()),
                    Counted::Owned => count_owned_rows(d, &sys, t, &ids()),
                }
                .unwrap()
                .unwrap();
                // Renumber `$n` past the binds before it.
                let mut sql = one.sql.clone();
                if d != Dialect::Mysql {
                    for n in (1..=one.binds.len()).rev() {
                        sql = sql.replace(&format!("${n}"), &format!("$#{}", n + binds.len()));
                    }
                    sql = sql.replace("$#", "$");
                }
                parts.push(format!("({sql})"));
                binds.extend(one.binds);
            }
            assert_eq!(st.sql, format!("SELECT {}", parts.join(", ")), "{d:?}");
            assert_eq!(st.binds, binds, "{d:?}");
            let tables: Vec<&str> = which.iter().map(|(t, _)| t.name.as_str()).collect();
            assert!(
                tables.contains(&"notes") && tables.contains(&"deals"),
                "{tables:?}"
            );
            assert!(
                which
                    .iter()
                    .any(|(t, c)| t.name == "deals" && *c == Counted::Owned)
            );
        }
    }

    #[test]
    fn the_successor_count_binds_in_placeholder_order() {
        let sys = crm();
        let successor: Identities = [(IdentityKind::EmployeeId, "E2".to_owned())]
            .into_iter()
            .collect();
        let leaver: Identities = [(IdentityKind::Email, "a@b.c".to_owned())]
            .into_iter()
            .collect();
        let t = sys.table("employees").unwrap();
        let st = count_successor_rows(Dialect::Mysql, &sys, t, &successor, &leaver)
            .unwrap()
            .unwrap();
        assert_eq!(
            st.sql,
            "SELECT COUNT(*), COUNT(CASE WHEN 1 = 0 THEN 1 END), COUNT(CASE WHEN ((`email` = ? AND `email` = ? COLLATE utf8mb4_bin)) THEN 1 END) \
             FROM `employees` WHERE ((`emp_no` = ? AND `emp_no` = ? COLLATE utf8mb4_bin))"
        );
        assert_eq!(st.binds, ["a@b.c", "a@b.c", "E2", "E2"]);
    }

    #[test]
    fn refuses_names_that_are_not_identifiers() {
        assert!(Dialect::Postgres.quote("a\"; DROP TABLE x; --").is_err());
        assert!(Dialect::Mysql.quote("a`b").is_err());
    }
}
