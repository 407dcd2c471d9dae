//! Statements about rows named by their keys, as an apply, a re-check and a restore use
//! them: read and lock a batch, change or delete it, change it in one statement where it
//! is still as backed up, put a row back. (Part of `sql`: the same rules hold — names
//! quoted per dialect, every value bound.)

use super::{Builder, Column, Dialect, Statement};
use crate::error::Result;
use crate::policy::Table;

/// The list of `keys` for `key IN (…)`. SQLite gets one bound value, a JSON array read by
/// `json_each`: it finds a named parameter by walking the statement's list of them, so n
/// bound keys cost n² steps to bind (and more than 32 766 are refused). Its values have no
/// type of their own, so each is compared as the key column compares (an INTEGER key
/// given as text finds its row, as a bound text value did). The other dialects bind each.
fn key_list(b: &mut Builder, key_type: &str, keys: &[String]) -> Result<String> {
    if b.dialect == Dialect::Sqlite {
        let array = serde_json::to_string(keys)?;
        let ph = b.bind(&array);
        return Ok(format!("SELECT value FROM json_each({ph})"));
    }
    let mut marks = Vec::with_capacity(keys.len());
    for k in keys {
        let ph = b.bind(k);
        marks.push(b.dialect.typed(ph, key_type)?);
    }
    Ok(marks.join(", "))
}

/// Read rows by key, locking them for the rest of the transaction where the dialect can.
pub fn lock_rows(
    d: Dialect,
    table: &Table,
    key_type: &str,
    columns: &[Column],
    keys: &[String],
) -> Result<Statement> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let key = b.q(&table.key)?;
    let mut cols = vec![d.as_text(&key)];
    for c in columns {
        cols.push(d.as_text(&b.q(&c.name)?));
    }
    let list = key_list(&mut b, key_type, keys)?;
    let lock = match d {
        Dialect::Sqlite => "",
        Dialect::Postgres | Dialect::Mysql => " FOR UPDATE",
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {key} IN ({list}){lock}",
        cols.join(", "),
        b.q(&table.name)?
    );
    Ok(Statement {
        sql,
        binds: b.binds,
    })
}

/// Delete rows by key.
pub fn delete_rows(
    d: Dialect,
    table: &Table,
    key_type: &str,
    keys: &[String],
) -> Result<Statement> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let key = b.q(&table.key)?;
    let list = key_list(&mut b, key_type, keys)?;
    Ok(Statement {
        sql: format!("DELETE FROM {} WHERE {key} IN ({list})", b.q(&table.name)?),
        binds: b.binds,
    })
}

/// What a batch does to the rows it changes.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Delete,
    /// Set columns to a value, or NULL.
    Set(&'a [(Column, Option<String>)]),
}

impl Dialect {
    /// Whether [`change_rows_as_backed_up`] has a statement for this dialect: SQLite's
    /// batch holds the write lock from its start (`BEGIN IMMEDIATE`), so no row changes
    /// between the statement's look at a row and its change. (PostgreSQL would need the
    /// comparison in the changed table's own WHERE, re-checked on a row updated meanwhile.)
    pub fn changes_a_batch_in_one_statement(self) -> bool {
        match self {
            Dialect::Sqlite => true,
            Dialect::Postgres | Dialect::Mysql => false,
        }
    }
}

/// SQLite only (`None` elsewhere): one statement that changes each row of `rows` — its
/// key, then its values of `columns` as backed up, as text — whose key and every one of
/// those columns still read exactly as backed up (byte for byte, whatever the column's
/// collation), and no other row. A caller that sees fewer rows changed than it gave rolls
/// the statement back and looks at each row (some were changed already, or changed since
/// their backup). The rows travel as one bound JSON array, read by `json_each`.
pub fn change_rows_as_backed_up(
    d: Dialect,
    table: &Table,
    columns: &[Column],
    change: Change<'_>,
    rows: &[Vec<Option<&str>>],
) -> Result<Option<Statement>> {
    if !d.changes_a_batch_in_one_statement() {
        return Ok(None);
    }
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let name = b.q(&table.name)?;
    let k = b.q(&table.key)?;
    let head = match change {
        Change::Delete => format!("DELETE FROM {name}"),
        Change::Set(sets) => format!("UPDATE {name} SET {}", assignments(&mut b, sets)?),
    };
    let array = serde_json::to_string(rows)?;
    let ph = b.bind(&array);
    let (row, each) = ("\"quietus_backed\"", "\"quietus_each\"");
    let at = |i: usize| format!("json_extract({each}.value, '$[{i}]')");
    let mut same = vec![format!(
        "{} COLLATE BINARY IS {}",
        d.as_text(&format!("{row}.{k}")),
        at(0)
    )];
    for (i, c) in columns.iter().enumerate() {
        same.push(format!(
            "{} COLLATE BINARY IS {}",
            d.as_text(&format!("{row}.{}", b.q(&c.name)?)),
            at(i + 1)
        ));
    }
    let sql = format!(
        "{head} WHERE {k} IN (SELECT {row}.{k} FROM json_each({ph}) AS {each} \
         JOIN {name} AS {row} ON {row}.{k} = {} WHERE {})",
        at(0),
        same.join(" AND ")
    );
    Ok(Some(Statement {
        sql,
        binds: b.binds,
    }))
}

/// `col = value` (or NULL) for each of `sets`, each value bound.
fn assignments(b: &mut Builder, sets: &[(Column, Option<String>)]) -> Result<String> {
    let mut out = Vec::with_capacity(sets.len());
    for (c, v) in sets {
        let col = b.q(&c.name)?;
        match v {
            Some(v) => {
                let ph = b.bind(v);
                out.push(format!("{col} = {}", b.dialect.typed(ph, &c.sql_type)?));
            }
            None => out.push(format!("{col} = NULL")),
        }
    }
    Ok(out.join(", "))
}

/// Set columns (to a value, or NULL) on rows by key.
pub fn update_rows(
    d: Dialect,
    table: &Table,
    key_type: &str,
    sets: &[(Column, Option<String>)],
    keys: &[String],
) -> Result<Statement> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let assigns = assignments(&mut b, sets)?;
    let key = b.q(&table.key)?;
    let list = key_list(&mut b, key_type, keys)?;
    let sql = format!(
        "UPDATE {} SET {assigns} WHERE {key} IN ({list})",
        b.q(&table.name)?,
    );
    Ok(Statement {
        sql,
        binds: b.binds,
    })
}

/// Insert one row (a restore of a deleted row).
pub fn insert_row(
    d: Dialect,
    table: &Table,
    key_type: &str,
    key: &str,
    values: &[(Column, Option<String>)],
) -> Result<Statement> {
    let mut b = Builder {
        dialect: d,
        binds: Vec::new(),
    };
    let mut cols = vec![b.q(&table.key)?];
    let ph = b.bind(key);
    let mut vals = vec![d.typed(ph, key_type)?];
    for (c, v) in values {
        if c.name == table.key {
            continue;
        }
        cols.push(b.q(&c.name)?);
        match v {
            Some(v) => {
                let ph = b.bind(v);
                vals.push(d.typed(ph, &c.sql_type)?);
            }
            None => vals.push("NULL".into()),
        }
    }
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        b.q(&table.name)?,
        cols.join(", "),
        vals.join(", ")
    );
    Ok(Statement {
        sql,
        binds: b.binds,
    })
}
