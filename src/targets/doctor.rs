//! `quietus doctor`: checks each target system against its data map — it answers, every
//! mapped table and column exists, and every column quietus looks rows up by leads an
//! index (without one, an erasure's cost grows with the size of the table).

use serde::Serialize;

use super::sql;
use super::{Pools, Target};
use crate::policy::datamap::split_target;
use crate::policy::{Driver, System};

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub system: String,
    /// ok | warning | error
    pub level: &'static str,
    pub message: String,
}

/// The columns each table is searched by: identities, references, owners, sweep dates,
/// and the targets of references (which are matched by `IN (SELECT ...)`).
fn lookup_columns(sys: &System) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in &sys.tables {
        out.extend(t.identity.values().map(|c| (t.name.clone(), c.clone())));
        out.extend(
            t.references
                .iter()
                .map(|r| (t.name.clone(), r.column.clone())),
        );
        if let Some(o) = &t.owner {
            out.push((t.name.clone(), o.column.clone()));
        }
        if let Some(s) = &t.sweep {
            out.push((t.name.clone(), s.date.clone()));
        }
        for target in t
            .references
            .iter()
            .map(|r| &r.to)
            .chain(t.owner.iter().map(|o| &o.references))
        {
            if let Some((tt, tc)) = split_target(target) {
                out.push((tt.to_owned(), tc.to_owned()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A part of a data map that the database does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lack {
    /// The table cannot be read (it does not exist, or its catalog query failed).
    Table { table: String, why: String },
    /// The table has no column of this name.
    Column { table: String, column: String },
}

impl Lack {
    pub fn table(&self) -> &str {
        match self {
            Lack::Table { table, .. } | Lack::Column { table, .. } => table,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Lack::Table { why, .. } => why.clone(),
            Lack::Column { table, column } => {
                format!("{table}.{column}: the data map names a column the database does not have")
            }
        }
    }

    /// The message, naming the system too.
    pub fn message_in(&self, system: &str) -> String {
        match self {
            Lack::Table { .. } => format!("{system}: {}", self.message()),
            Lack::Column { .. } => format!("{system}.{}", self.message()),
        }
    }
}

/// Every mapped table and column (keys, identities, categories, accounts, owners,
/// references, anonymised columns, sweep dates) that the database lacks. `doctor` reports
/// these; a plan that meets one is blocked, so it cannot be approved.
pub async fn lacking(target: &Target, sys: &System) -> Vec<Lack> {
    let mut out = Vec::new();
    let names: Vec<&str> = sys.tables.iter().map(|t| t.name.as_str()).collect();
    let catalog = target.catalog(&names).await;
    for t in &sys.tables {
        let cols = match &catalog {
            Ok(all) => all
                .get(&t.name)
                .ok_or_else(|| super::exec::no_such_table(&t.name).message),
            Err(e) => Err(e.message.clone()),
        };
        match cols {
            Ok(cols) => out.extend(
                t.known_columns()
                    .into_iter()
                    .filter(|c| !cols.iter().any(|x| x.name == *c))
                    .map(|c| Lack::Column {
                        table: t.name.clone(),
                        column: c.to_owned(),
                    }),
            ),
            Err(why) => out.push(Lack::Table {
                table: t.name.clone(),
                why,
            }),
        }
    }
    out
}

/// Examine every system.
pub async fn check(pools: &Pools, systems: &[System]) -> Vec<Finding> {
    let mut out = Vec::new();
    for sys in systems {
        let f = |level, message: String| Finding {
            system: sys.name.clone(),
            level,
            message,
        };
        if sys.driver == Driver::Manual {
            out.push(f(
                "ok",
                "manual system: tasks are confirmed by its owner".into(),
            ));
            continue;
        }
        let target: Target = match pools.get(sys).await {
            Ok(t) => t,
            Err(e) => {
                out.push(f("error", e.message));
                continue;
            }
        };
        out.push(f("ok", format!("connected ({})", sys.driver.as_str())));
        let lacks = lacking(&target, sys).await;
        let missing_tables: Vec<&str> = lacks
            .iter()
            .filter(|l| matches!(l, Lack::Table { .. }))
            .map(Lack::table)
            .collect();
        out.extend(lacks.iter().map(|l| f("error", l.message())));
        for (table, column) in lookup_columns(sys) {
            if missing_tables.contains(&table.as_str()) {
                continue;
            }
            match target
                .fetch_text(&sql::leading_index_columns(target.dialect(), &table))
                .await
            {
                Ok(rows) => {
                    let indexed = rows
                        .iter()
                        .any(|r| r.first().cloned().flatten().as_deref() == Some(column.as_str()));
                    if indexed {
                        out.push(f("ok", format!("{table}.{column} is indexed")));
                    } else {
                        out.push(f("warning", format!(
                            "{table}.{column} leads no index: looking rows up by it reads the whole table \
                             (CREATE INDEX ON {table} ({column}))"
                        )));
                    }
                }
                Err(e) => out.push(f("error", e.message)),
            }
        }
    }
    out
}
