//! Running statements on a target: pages of rows as text, and transactions.

use crate::store::BeginWrite as _;
use sqlx::Row;
use std::collections::HashMap;

use super::sql::{Column, Statement};
use super::{Db, Target};
use crate::error::{Code, Error, Result};

/// A row read as text: the key, then the columns asked for (NULL as `None`).
pub type TextRow = Vec<Option<String>>;

/// A target's error, said as what it is: the database not answering (down, restarting,
/// the connection lost) or a statement it refused. (Which system: the caller says.)
fn fail(e: sqlx::Error) -> Error {
    let what = if crate::error::unreachable(&e) {
        "the database cannot be reached"
    } else {
        "statement failed"
    };
    Error::new(
        Code::Target,
        format!("{what}: {}", redact_quoted(&e.to_string())),
    )
}

/// A database's own message can quote a value it was given (PostgreSQL: `invalid input
/// syntax for type bigint: "…"`; MySQL: `Duplicate entry '…'`). Such values may be
/// personal data and go on to task errors, `queue`, and the DPO's alert: blank them.
pub fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut open: Option<char> = None;
    for c in msg.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '\'' {
                    open = Some(c);
                }
            }
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

/// A mapped table the target database lacks.
pub fn no_such_table(table: &str) -> Error {
    Error::new(
        Code::Target,
        format!("table {table} does not exist in the target database"),
    )
}

/// A query with every value bound as text. Each argument of these macros is evaluated
/// once (bound to a local first): an argument may be a query that runs on the target.
macro_rules! query {
    ($st:expr) => {{
        let st = &$st;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(st.sql.clone()));
        for b in &st.binds {
            q = q.bind(b.clone());
        }
        q
    }};
}

/// Rows read as text (`$rows`: the rows a query fetched, evaluated once).
macro_rules! text_rows {
    ($rows:expr) => {{
        let rows = $rows;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                r.push(row.try_get::<Option<String>, _>(i).map_err(fail)?);
            }
            out.push(r);
        }
        out
    }};
}

impl Target {
    /// Run a query whose columns are all text (or NULL).
    pub async fn fetch_text(&self, st: &Statement) -> Result<Vec<TextRow>> {
        Ok(match &self.db {
            Db::Sqlite(p) => text_rows!(query!(st).fetch_all(p).await.map_err(fail)?),
            Db::Postgres(p) => text_rows!(query!(st).fetch_all(p).await.map_err(fail)?),
            Db::Mysql(p) => text_rows!(query!(st).fetch_all(p).await.map_err(fail)?),
        })
    }

    /// The columns of a table with their types; an error when the table does not exist.
    pub async fn columns(&self, table: &str) -> Result<Vec<Column>> {
        self.catalog(&[table])
            .await?
            .remove(table)
            .ok_or_else(|| no_such_table(table))
    }

    /// The columns of each of `tables` that the database has (a table it lacks is not in
    /// the map), read in one statement. A [scoped](Target::scoped) target reads each
    /// table once and answers from what it read after that.
    pub async fn catalog(&self, tables: &[&str]) -> Result<super::Catalog> {
        let mut out = HashMap::new();
        let mut unread: Vec<&str> = Vec::new();
        match &self.catalog {
            Some(memo) => {
                let memo = memo
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for t in tables {
                    match memo.get(*t) {
                        Some(cols) => {
                            out.insert((*t).to_owned(), cols.clone());
                        }
                        None => unread.push(t),
                    }
                }
            }
            None => unread.extend_from_slice(tables),
        }
        unread.sort_unstable();
        unread.dedup();
        if unread.is_empty() {
            return Ok(out);
        }
        let rows = self
            .fetch_text(&super::sql::column_types(self.dialect(), &unread))
            .await?;
        let mut read: HashMap<String, Vec<Column>> = HashMap::new();
        for r in rows {
            let mut it = r.into_iter();
            let (Some(table), Some(name)) = (it.next().flatten(), it.next().flatten()) else {
                continue;
            };
            let sql_type = it.next().flatten().unwrap_or_default().to_ascii_lowercase();
            // The name asked for: the same bytes, or (MySQL/MariaDB compare table names
            // by a case-insensitive collation) the same letters when no table has them.
            let asked = unread
                .iter()
                .find(|t| **t == table)
                .or_else(|| {
                    unread
                        .iter()
                        .find(|t| t.eq_ignore_ascii_case(&table) && !read.keys().any(|k| k == **t))
                })
                .copied();
            if let Some(asked) = asked {
                read.entry(asked.to_owned())
                    .or_default()
                    .push(Column { name, sql_type });
            }
        }
        if let Some(memo) = &self.catalog {
            let mut memo = memo
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (t, cols) in &read {
                memo.insert(t.clone(), cols.clone());
            }
        }
        out.extend(read);
        Ok(out)
    }

    /// Start a transaction (SQLite: take the write lock at once).
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match &self.db {
            Db::Sqlite(p) => Tx::Sqlite(p.begin_write().await.map_err(fail)?),
            Db::Postgres(p) => Tx::Postgres(p.begin_write().await.map_err(fail)?),
            Db::Mysql(p) => Tx::Mysql(p.begin_write().await.map_err(fail)?),
        })
    }
}

/// A transaction on a target.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Tx {
    pub async fn fetch_text(&mut self, st: &Statement) -> Result<Vec<TextRow>> {
        Ok(match self {
            Tx::Sqlite(t) => text_rows!(query!(st).fetch_all(&mut **t).await.map_err(fail)?),
            Tx::Postgres(t) => text_rows!(query!(st).fetch_all(&mut **t).await.map_err(fail)?),
            Tx::Mysql(t) => text_rows!(query!(st).fetch_all(&mut **t).await.map_err(fail)?),
        })
    }

    pub async fn execute(&mut self, st: &Statement) -> Result<u64> {
        Ok(match self {
            Tx::Sqlite(t) => query!(st)
                .execute(&mut **t)
                .await
                .map_err(fail)?
                .rows_affected(),
            Tx::Postgres(t) => query!(st)
                .execute(&mut **t)
                .await
                .map_err(fail)?
                .rows_affected(),
            Tx::Mysql(t) => query!(st)
                .execute(&mut **t)
                .await
                .map_err(fail)?
                .rows_affected(),
        })
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
            Tx::Mysql(t) => t.rollback().await,
        }
        .map_err(fail)
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
            Tx::Mysql(t) => t.commit().await,
        }
        .map_err(fail)
    }
}

impl Target {
    /// Stream the rows `which` selects from `table`: one query whose rows are read as
    /// they arrive (memory stays flat however many rows there are; no re-sorting per
    /// page). Each row is the key then `columns`, as text. Returns how many rows were seen.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        sys: &crate::policy::System,
        table: &crate::policy::Table,
        which: super::sql::Which<'_>,
        key_type: &str,
        columns: &[Column],
        mut each: impl FnMut(TextRow) -> Result<()>,
    ) -> Result<u64> {
        use futures_util::TryStreamExt;
        let Some(st) =
            super::sql::select_all(self.dialect(), sys, table, which, key_type, columns)?
        else {
            return Ok(0);
        };
        let mut n = 0u64;
        macro_rules! drain {
            ($pool:expr) => {{
                let mut rows = query!(st).fetch($pool);
                while let Some(row) = rows.try_next().await.map_err(fail)? {
                    let mut r = Vec::with_capacity(row.len());
                    for i in 0..row.len() {
                        r.push(row.try_get::<Option<String>, _>(i).map_err(fail)?);
                    }
                    each(r)?;
                    n += 1;
                }
            }};
        }
        match &self.db {
            Db::Sqlite(p) => drain!(p),
            Db::Postgres(p) => drain!(p),
            Db::Mysql(p) => drain!(p),
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text_rows!` evaluates the rows it is given once: its argument is a query run
    /// against the target, and each evaluation is one more round trip.
    #[test]
    fn text_rows_evaluates_its_argument_once() -> Result<()> {
        let mut evaluations = 0;
        let rows: Vec<TextRow> = text_rows!({
            evaluations += 1;
            Vec::<sqlx::sqlite::SqliteRow>::new()
        });
        assert!(rows.is_empty());
        assert_eq!(
            evaluations, 1,
            "the rows expression ran {evaluations} times"
        );
        Ok(())
    }

    /// `query!` reads its statement once.
    #[test]
    fn query_evaluates_its_statement_once() {
        let mut evaluations = 0;
        let st = Statement {
            sql: "SELECT ?".into(),
            binds: vec!["x".into()],
        };
        let _q: sqlx::query::Query<'_, sqlx::Sqlite, <sqlx::Sqlite as sqlx::Database>::Arguments> =
            query!({
                evaluations += 1;
                &st
            });
        assert_eq!(
            evaluations, 1,
            "the statement expression ran {evaluations} times"
        );
    }

    #[test]
    fn quoted_values_are_blanked() {
        assert_eq!(
            super::redact_quoted(r#"invalid input syntax for type bigint: "x@y.z""#),
            r#"invalid input syntax for type bigint: "…""#
        );
        assert_eq!(
            super::redact_quoted("Duplicate entry 'a@b.c' for key 'email'"),
            "Duplicate entry '…' for key '…'"
        );
        assert_eq!(super::redact_quoted("no quotes here"), "no quotes here");
    }
}
